"""Packed vs padded FlexMDM training: model.pack's layout, the same network outputs,
losses and gradients in both layouts, the same learning on a tiny maze, and bench.py on CPU."""
import json
import os

import pytest
import torch

from conftest import ROOT, random_dit, run_python, val_losses
from interpolant import LossConfig, Schedule, flexmdm_interpolant, flexmdm_loss, sample_times
from model import network, pack

V, PAD, MASK = 40, 38, 39  # vocab incl. pad and mask; the FlexMDM slot id is V
LENGTHS = [0, 37, 1, 5, 0, 20, 39, 2]  # very different lengths, empty ones included
L = 39


def tiny_model(attention="sdpa", seed=0):
    return random_dit(V, PAD, seed, max_len=L, attention=attention)


def padded_batch(lengths, seed=0, masks=False):
    """Right-padded rows of ordinary tokens (ids below PAD), some of them masks if masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), max(max(lengths), 1)), PAD)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randint(0, PAD, (n,), generator=g)
        if masks:
            x[b, :n][torch.rand(n, generator=g) < 0.5] = MASK
    return x, torch.tensor(lengths)


def next_fit_rows(lengths, row_tokens):
    rows, col = 1, 0
    for n in lengths:
        if col + n + 1 > row_tokens:
            rows, col = rows + 1, 0
        col += n + 1
    return rows


@pytest.mark.parametrize("row_tokens", [40, 64, 100, 1000])
def test_pack_layout(row_tokens):
    x, lengths = padded_batch(LENGTHS, masks=True)  # masks included
    slot = V
    tokens, seq_ids, positions, where = pack(x, lengths, slot, PAD, row_tokens)
    R, T = tokens.shape
    assert T == row_tokens and seq_ids.shape == positions.shape == (R, T)
    assert R == next_fit_rows(LENGTHS, row_tokens)
    assert where.shape == (len(LENGTHS), x.shape[1] + 1)
    flat_tok, flat_seq, flat_pos = tokens.flatten(), seq_ids.flatten(), positions.flatten()
    used = []
    prev = -1
    for b, n in enumerate(LENGTHS):
        w = where[b]
        assert (w[n + 1:] == -1).all(), "where is -1 past the slot"
        w = w[: n + 1]
        assert (w >= 0).all()
        # contiguous, in one row (never split), after the previous sequence (next-fit order)
        assert torch.equal(w, w[0] + torch.arange(n + 1))
        assert w[0] // T == w[-1] // T
        assert w[0] > prev
        prev = int(w[-1])
        assert torch.equal(flat_tok[w[:n]], x[b, :n]) and flat_tok[w[n]] == slot
        assert (flat_seq[w] == b).all()
        assert torch.equal(flat_pos[w], torch.arange(n + 1)), "positions restart at 0 per sequence"
        used.append(w)
    used = torch.cat(used)
    assert len(set(used.tolist())) == len(used) == sum(LENGTHS) + len(LENGTHS)
    rest = torch.ones(R * T, dtype=torch.bool)
    rest[used] = False
    assert (flat_seq[rest] == -1).all() and (flat_tok[rest] == PAD).all()


def next_fit_starts(lengths, row_tokens):
    """The flat index of each sequence's first position under next-fit, by the plain loop."""
    starts, row, col = [], 0, 0
    for n in lengths:
        if col + n + 1 > row_tokens:
            row, col = row + 1, 0
        starts.append(row * row_tokens + col)
        col += n + 1
    return starts


def test_pack_is_next_fit_on_random_batches():
    """The tensor next-fit (pointer doubling) opens the same rows as the loop, at every batch size
    up to past a power of two, with sequences that fill a row and empty ones."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        B, row_tokens = trial % 70 + 1, int(torch.randint(1, 50, (1,), generator=g))
        lengths = torch.randint(0, row_tokens, (B,), generator=g)
        lengths[torch.rand(B, generator=g) < 0.2] = row_tokens - 1  # a sequence and its slot fill a row
        x = torch.randint(0, PAD, (B, max(row_tokens - 1, 1)), generator=g)
        tokens, _, _, where = pack(x, lengths, V, PAD, row_tokens)
        starts = next_fit_starts(lengths.tolist(), row_tokens)
        assert where[:, 0].tolist() == starts and tokens.shape[0] == starts[-1] // row_tokens + 1


def test_pack_single_rows_when_each_sequence_fills_a_row():
    x, lengths = padded_batch([L, L, L])
    tokens, seq_ids, _, where = pack(x, lengths, V, PAD, L + 1)
    assert tokens.shape == (3, L + 1) and (seq_ids >= 0).all()
    assert torch.equal(where[:, 0], torch.tensor([0, L + 1, 2 * (L + 1)]))


def test_packed_forward_matches_padded():
    """With SDPA; test_model ties FlexAttention to SDPA on the packed layout."""
    model = tiny_model("sdpa").eval()
    x, lengths = padded_batch(LENGTHS, masks=True)
    t = torch.rand(len(LENGTHS), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, g = model.forward_padded(x, t)
        tokens, seq_ids, positions, where = pack(x, lengths, model.slot_id, PAD, 64)
        assert tokens.shape[0] > 1  # several rows, several sequences per row
        h = model(tokens, seq_ids, positions, t).flatten(0, 1)
    for b, n in enumerate(LENGTHS):
        hb = h[where[b, : n + 1]]
        torch.testing.assert_close(model.unmask_head(hb[:n]), logits[b, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.insertion_rates(hb), g[b, : n + 1], atol=1e-5, rtol=1e-5)


def loss_and_grads(model, row_tokens, x1, lengths, fixed, t):
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(123)
    loss, unmask, insert = flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, t, LossConfig(), MASK, PAD,
                                        generator=gen)
    loss.backward()
    return torch.stack([loss.detach(), unmask, insert]), [p.grad.clone() for p in model.parameters()]


def test_packed_loss_and_gradients_match_padded():
    model = tiny_model()
    lengths = [1, 37, 3, 39, 12, 8, 25, 2, 39, 5, 17, 30]
    x1, lengths_t = padded_batch(lengths, seed=3)
    x1 = torch.cat([x1, torch.full((len(lengths), L - x1.shape[1]), PAD)], 1) if x1.shape[1] < L else x1
    fixed = torch.zeros_like(x1, dtype=torch.bool)
    fixed[1, [0, 36]] = True  # maze-style subgoals: first and last
    fixed[3, 10] = True
    t = sample_times(len(lengths), generator=torch.Generator().manual_seed(4))
    t[0] = 0.0  # an empty x_t: it still has its one gap slot
    # the draw both layouts will see has an empty x_t and masks
    fb = flexmdm_interpolant(x1, lengths_t, t, Schedule(), Schedule(), MASK, PAD, fixed=fixed,
                             generator=torch.Generator().manual_seed(123))
    assert (fb.lengths == 0).any() and fb.masked.any() and (fb.gaps > 0).any()
    padded, g_pad = loss_and_grads(model, 0, x1, lengths_t, fixed, t)
    packed, g_pack = loss_and_grads(model, 64, x1, lengths_t, fixed, t)
    assert padded[1] > 0 and padded[2] > 0
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# End to end: train.py on a tiny maze, and bench.py, as subprocesses (one CPU thread each).

def run(args, cwd):
    proc = run_python(args, cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_packed_training_learns_the_tiny_maze_like_padded(tiny_maze):
    common = ["--dataset=tiny", "--n_layer=2", "--n_head=2", "--n_embd=64", "--cond_dim=32", "--dropout=0.0",
              "--batch_size=32", "--max_iters=60", "--eval_interval=60", "--eval_iters=4", "--log_interval=1000",
              "--learning_rate=3e-3", "--warmup_iters=5", "--ema_decay=0.0", "--device=cpu", "--dtype=float32"]
    train_py = os.path.join(ROOT, "train.py")
    padded = val_losses(run([train_py, *common, "--out_dir=out_padded", "--packing=False"], tiny_maze))
    packed = val_losses(run([train_py, *common, "--out_dir=out_packed", "--packing=True", "--pack_tokens=64"],
                            tiny_maze))
    assert len(padded) == len(packed) == 2
    assert padded[0] == pytest.approx(packed[0], rel=1e-4)  # same initial model, same draws
    assert padded[1] < 0.6 * padded[0], f"padded run did not learn: {padded}"
    # same seed and iterations: the same draws, so the runs differ by float rounding only
    assert packed[1] == pytest.approx(padded[1], rel=0.02), (padded, packed)


def test_bench_cpu_packed_vs_padded(tmp_path):
    common = [os.path.join(ROOT, "bench.py"), "--device=cpu", "--dtype=float32", "--n_layer=1", "--n_head=2",
              "--n_embd=32", "--cond_dim=16", "--vocab_size=256", "--max_len=128", "--num_sequences=256",
              "--batch_size=16", "--dropout=0.0", "--warmup_steps=1", "--timed_steps=3", "--pack_tokens=256", "--num_threads=1"]
    res = {}
    for packing in (False, True):
        run([*common, f"--packing={packing}", f"--out_json={tmp_path / f'{packing}.json'}"], tmp_path)
        res[packing] = json.loads((tmp_path / f"{packing}.json").read_text())
    for r in res.values():
        assert r["x1_tok_per_s"] > 0 and r["xt_tok_per_s"] > 0 and 0 < r["mfu"] < 1 and r["step_ms_median"] > 0
    assert res[True]["fill"] > 2 * res[False]["fill"]  # packing runs far fewer pad positions
    # both layouts trained on the same batches and draws: the same final loss up to rounding
    assert res[True]["final_loss"] == pytest.approx(res[False]["final_loss"], rel=1e-3)
