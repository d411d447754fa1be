"""model.gap_embedding: the network is told which gaps a task keeps empty (an infilling row's prefix and suffix).
Training marks them from the row's span (interpolant.closed_gaps), the sampler from its open gaps
(sampler.gap_masks): on every state the two agree; the marks carry no target; the minimiser of eq. 7 given the
marks is the posterior mean of the gaps given (x_t, marks), worked out in closed form on a small law; off, the
model is the one without the option; on, packed and padded agree."""
import numpy as np
import torch

from conftest import off_and_on, random_dit
from data import keep_spans
from interpolant import LossConfig, flexmdm_interpolant, flexmdm_loss, sample_times
from model import DiT, ModelConfig, network
from sampler import SamplerConfig, generate, infill, open_gap_mask

V, PAD, MASK = 40, 38, 39
LINEAR = LossConfig().alpha


def span_batch(rows, max_n, prob, seed):
    """Random sequences of 1..max_n tokens, keep_spans with probability prob: (x1, lengths, fixed, span)."""
    rng = np.random.default_rng(seed)
    lengths = torch.from_numpy(rng.integers(1, max_n + 1, size=rows))
    x1 = torch.full((rows, max_n), PAD)
    for b, n in enumerate(lengths.tolist()):
        x1[b, :n] = torch.from_numpy(rng.integers(0, PAD, size=n))
    fixed, span = keep_spans(lengths, torch.zeros_like(x1, dtype=torch.bool), prob, rng)
    return x1, lengths, fixed, span


def test_training_closes_the_gaps_the_sampler_closes():
    """On interpolant states at every t, an infilling row's closed gaps are exactly the sampler's for the same
    state (its prefix and suffix fixed, the cut opened: sampler.infill_prompts); they never hold a token still to
    insert; a whole row has none."""
    x1, lengths, fixed, span = span_batch(3000, 12, 0.7, seed=0)
    t = torch.rand(len(x1), generator=torch.Generator().manual_seed(1))
    t[:300] = 0.0
    fb = flexmdm_interpolant(x1, lengths, t, LINEAR, LINEAR, MASK, PAD, fixed=fixed, span=span,
                             generator=torch.Generator().manual_seed(2))
    whole = (span[:, 0] == 0) & (span[:, 1] == lengths)
    cut = fb.lengths - (lengths - span[:, 1])  # x_t's first suffix token: the sampler opened the gap before it
    j = torch.arange(x1.shape[1])[None]
    open_left = whole[:, None] | (j == cut[:, None])
    open_end = whole | (span[:, 1] == lengths)
    sampler_closed = ~open_gap_mask(fb.fixed, open_left, open_end, fb.lengths)
    sampler_closed &= torch.arange(x1.shape[1] + 1)[None] <= fb.lengths[:, None]
    assert torch.equal(fb.closed, sampler_closed)
    assert (fb.gaps[fb.closed] == 0).all() and not fb.closed[whole].any()
    assert fb.closed[~whole].any() and (fb.gaps[~whole] > 0).any()  # the check sees closed gaps and targets


def test_the_minimiser_at_the_start_is_the_span_in_the_open_gap():
    """At t = 0 an infilling row is its prefix and suffix (m tokens). Lengths n uniform on 1..N, the span's length
    uniform on 1..n and its start uniform where it fits: the cut is uniform over the m + 1 gaps and independent of
    the span's length, so given the marks the minimiser (the mean of the targets) is E[span | m] in the open gap
    and 0 elsewhere, and without them E[span | m] / (m + 1) in every gap."""
    N = 6
    x1, lengths, fixed, span = span_batch(60000, N, 1.0, seed=3)
    fb = flexmdm_interpolant(x1, lengths, torch.zeros(len(x1)), LINEAR, LINEAR, MASK, PAD, fixed=fixed, span=span,
                             generator=torch.Generator().manual_seed(4))
    for m in range(N):
        rows = fb.lengths == m
        want = sum((n - m) / n for n in range(m + 1, N + 1)) / sum(1 / n for n in range(m + 1, N + 1))
        opened = fb.gaps[rows, :m + 1][~fb.closed[rows, :m + 1]]  # one open gap per row
        assert len(opened) == int(rows.sum())
        assert abs(opened.mean().item() - want) < 4 * opened.std().item() / len(opened) ** 0.5 + 1e-9, (m, want)
        spread = fb.gaps[rows, :m + 1].mean(0)  # unmarked: the same mean in every gap
        se = fb.gaps[rows, :m + 1].std(0) / int(rows.sum()) ** 0.5
        assert ((spread - want / (m + 1)).abs() < 4 * se + 1e-9).all(), (m, spread, want / (m + 1))


def test_off_and_fresh_on_are_the_model_without_it():
    off, on = off_and_on("gap_embedding", V, PAD)
    assert off.closed_emb is None and not on.closed_emb.any()
    x1, lengths, fixed, span = span_batch(6, 12, 1.0, seed=5)
    fb = flexmdm_interpolant(x1, lengths, torch.full((6,), 0.5), LINEAR, LINEAR, MASK, PAD, fixed=fixed, span=span)
    with torch.no_grad():
        base = off.forward_padded(fb.xt, torch.full((6,), 0.5))
        for model in (off, on):
            got = model.forward_padded(fb.xt, torch.full((6,), 0.5), closed=fb.closed)
            assert torch.equal(got[0], base[0]) and torch.equal(got[1], base[1])
    assert DiT(ModelConfig(vocab_size=V, model_type="mdm", gap_embedding=True, n_layer=1, n_head=2, n_embd=8,
                           cond_dim=4)).closed_emb is None  # the MDM has no gaps


def test_on_reads_the_marks_and_packed_matches_padded():
    model = random_dit(V, PAD, max_len=32, gap_embedding=True)
    x1, lengths, fixed, span = span_batch(6, 12, 1.0, seed=6)
    t = sample_times(6, generator=torch.Generator().manual_seed(7))

    def loss_and_grads(row_tokens, span):
        model.zero_grad(set_to_none=True)
        loss = flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, t, LossConfig(), MASK, PAD,
                            generator=torch.Generator().manual_seed(8), span=span)[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    padded, g_pad = loss_and_grads(0, span)
    packed, g_pack = loss_and_grads(24, span)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert model.closed_emb.grad.abs().max() > 0  # the vector is trained
    unmarked, _ = loss_and_grads(0, None)
    assert (unmarked - padded).abs() > 1e-4  # and read


def test_sampler_tells_the_model_the_closed_gaps():
    """At every call of an infill, the closed gaps are those between two prompt tokens (or a prompt token and
    an end) but the cuts, wherever insertions moved them; a plain generation closes none."""
    pieces = [[[3, 4], [5, 6, 7]], [[], [1, 2]], [[8], [9], []]]
    calls = []

    def model_fn(x, t, fixed, closed):
        m = (x != PAD).sum(1)
        want = torch.cat([torch.ones_like(fixed[:, :1]), fixed], 1) & torch.cat([fixed | (x == PAD), torch.ones_like(
            fixed[:, :1])], 1) & (torch.arange(x.shape[1] + 1)[None] <= m[:, None])  # both neighbours prompt or end
        for b, parts in enumerate(pieces):
            at = fixed[b].nonzero().flatten().tolist() + [int(m[b])]  # gap before each prompt token, then the end
            for c in np.cumsum([len(p) for p in parts[:-1]]):
                want[b, at[c]] = False  # the cut stays open
        assert torch.equal(closed, want)
        calls.append(int(m.sum()))
        return torch.zeros(*x.shape, V), torch.full((x.shape[0], x.shape[1] + 1), 1.0)
    cfg = SamplerConfig(max_len=24, mask_id=MASK, pad_id=PAD, steps=8)
    infill(model_fn, 3, cfg, pieces, generator=torch.Generator().manual_seed(0))
    assert len(calls) > 2 and calls[-1] > calls[0] == 9

    def unmarked(x, t, fixed, closed):
        assert not closed.any()
        return torch.zeros(*x.shape, V), torch.full((x.shape[0], x.shape[1] + 1), 1.0)
    generate(unmarked, 2, cfg, prompts=[[3, 4], [5]], generator=torch.Generator().manual_seed(1))
