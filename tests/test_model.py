"""model.py: FlexAttention vs dense SDPA, invariance to padding, pad content and the other rows,
the packed layout, the MDM variant, the zero initialisation, the paper's parameter count.
FlexAttention runs compiled, as on CUDA; on CPU torch has no FlexAttention backward, so those checks
run under torch.no_grad (the gradients are checked on CUDA only). Each new shape compiles the kernel
(seconds): the flex checks reuse few shapes, and the invariance tests run on SDPA, which the flex
checks tie FlexAttention to."""
import math

import pytest
import torch

import model as model_py
from configurator import InputError
from interpolant import Schedule
from model import DiT, ModelConfig

V, PAD, MASK = 30, 28, 29  # ordinary tokens 0..27; the FlexMDM slot id is V
LENGTHS = [5, 0, 13, 1, 9, 13, 3]  # an empty sequence and two full ones (L = 13)
ATOL = 2e-4  # float32, different batch shapes take different matmul kernels

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def make_model(model_type="flexmdm", attention="sdpa", seed=0, randomise=True, n_layer=2):
    torch.manual_seed(seed)
    model = DiT(ModelConfig(vocab_size=V, max_len=64, n_layer=n_layer, n_head=2, n_embd=32, cond_dim=16,
                            dropout=0.0, model_type=model_type, pad_id=PAD, attention=attention)).eval()
    if randomise:  # the zero-initialised adaLN gates and heads would hide attention mistakes
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 1)
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def padded_batch(lengths, L=None, seed=0, masks=True):
    """Right-padded rows of ordinary tokens (some of them masks), pad_id after each length."""
    L = L or max(lengths)
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(lengths), L), PAD)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randint(0, PAD, (n,), generator=g)
        if masks:
            x[b, :n][torch.rand(n, generator=g) < 0.4] = MASK
    return x


def times(n, seed=1):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def assert_same_real_outputs(out_a, out_b, lengths, model_type="flexmdm"):
    (la, ga), (lb, gb) = out_a, out_b
    for b, n in enumerate(lengths):
        torch.testing.assert_close(la[b, :n], lb[b, :n], atol=ATOL, rtol=ATOL)
        if model_type == "flexmdm":
            torch.testing.assert_close(ga[b, : n + 1], gb[b, : n + 1], atol=ATOL, rtol=ATOL)


# ---------------------------------------------------------------------------------------------
# FlexAttention == dense SDPA

@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_flex_matches_sdpa_padded(model_type):
    flex, sdpa = make_model(model_type, "flex"), make_model(model_type, "sdpa")
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    with torch.no_grad():
        out_f, out_s = flex.forward_padded(x, t), sdpa.forward_padded(x, t)
    lengths = LENGTHS if model_type == "flexmdm" else [x.shape[1]] * len(LENGTHS)
    assert_same_real_outputs(out_f, out_s, lengths, model_type)
    assert out_s[0].std() > 0.1, "random weights give non-trivial logits"
    if model_type == "flexmdm":
        assert (out_f[1] >= 0).all() and (out_s[1] >= 0).all()  # softplus rates


def test_flex_matches_sdpa_packed():
    flex, sdpa = make_model("flexmdm", "flex"), make_model("flexmdm", "sdpa")
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    tokens, seq_ids, positions, where = model_py.pack(x, torch.tensor(LENGTHS), flex.slot_id, PAD, 24)
    assert tokens.shape[0] > 1 and (seq_ids == -1).any()
    with torch.no_grad():
        hf, hs = flex(tokens, seq_ids, positions, t), sdpa(tokens, seq_ids, positions, t)
    real = seq_ids >= 0
    torch.testing.assert_close(hf[real], hs[real], atol=ATOL, rtol=ATOL)


def test_flex_mask_follows_the_batch_with_the_compiled_kernel(monkeypatch):
    """attention="flex" on CPU runs the compiled kernel (the CUDA default path), not the eager
    reference (replaced here by one that fails); and the compiled kernel reads each batch's mask: a
    second batch of the same shape (no recompile) with other lengths gets its own SDPA output."""
    model_py.compiled_flex_attention()  # compiled from the real flex_attention, before the replacement

    def eager_reference(*args, **kwargs):
        raise AssertionError("attend ran the eager flex_attention")
    monkeypatch.setattr(model_py, "flex_attention", eager_reference)
    flex, sdpa = make_model("flexmdm", "flex"), make_model("flexmdm", "sdpa")
    for lengths in (LENGTHS, LENGTHS[::-1], [13] * len(LENGTHS)):
        x, t = padded_batch(lengths, L=max(LENGTHS)), times(len(lengths))
        with torch.no_grad():
            assert_same_real_outputs(flex.forward_padded(x, t), sdpa.forward_padded(x, t), lengths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no FlexAttention backward on CPU")
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_flex_gradients_match_sdpa_on_cuda(layout):
    """The CUDA default path in training: compiled FlexAttention's outputs and parameter gradients
    equal dense SDPA's, padded and packed. Tolerance: float32, and the fused kernel sums in another order."""
    flex, sdpa = make_model("flexmdm", "flex").cuda(), make_model("flexmdm", "sdpa").cuda()
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    if layout == "padded":
        tokens, seq_ids, positions = flex.padded_layout(x)
    else:
        tokens, seq_ids, positions, _ = model_py.pack(x, torch.tensor(LENGTHS), flex.slot_id, PAD, 24)
    args = [z.cuda() for z in (tokens, seq_ids, positions, t)]
    real = args[1] >= 0
    hidden = []
    for model in (flex, sdpa):
        h = model(*args)[real]
        (model.unmask_head(h).float().logsumexp(-1).mean() + model.insertion_rates(h).mean()).backward()
        hidden.append(h.detach())
    torch.testing.assert_close(hidden[0], hidden[1], atol=1e-3, rtol=1e-3)
    for (name, a), b in zip(flex.named_parameters(), sdpa.parameters()):
        assert b.grad.abs().max() > 0, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-3, msg=name)


def test_attention_auto_is_sdpa_on_cpu():
    model = DiT(ModelConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, cond_dim=8, pad_id=PAD))
    assert not model.use_flex(torch.device("cpu"))
    assert isinstance(model.attention_mask(torch.zeros(2, 5, dtype=torch.long)), torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Invariances of the padded layout

def test_more_padding_changes_nothing():
    model = make_model("flexmdm")
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    longer = torch.cat([x, torch.full((len(LENGTHS), 11), PAD)], 1)
    with torch.no_grad():
        assert_same_real_outputs(model.forward_padded(x, t), model.forward_padded(longer, t), LENGTHS)


@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_other_rows_change_nothing(model_type):
    model = make_model(model_type)
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    other = padded_batch(LENGTHS, seed=5)  # different content in every other row
    with torch.no_grad():
        full = model.forward_padded(x, t)
        for b, n in enumerate(LENGTHS):
            alone = model.forward_padded(x[b: b + 1], t[b: b + 1])
            mixed = other.clone()
            mixed[b] = x[b]
            t_mixed = times(len(LENGTHS), seed=9)
            t_mixed[b] = t[b]
            swapped = model.forward_padded(mixed, t_mixed)
            n = n if model_type == "flexmdm" else x.shape[1]
            for out in (alone, (swapped[0][b: b + 1], None if swapped[1] is None else swapped[1][b: b + 1])):
                torch.testing.assert_close(out[0][0, :n], full[0][b, :n], atol=ATOL, rtol=ATOL)
                if model_type == "flexmdm":
                    torch.testing.assert_close(out[1][0, : n + 1], full[1][b, : n + 1], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_pad_content_beyond_the_slot_changes_nothing(attention):
    model = make_model("flexmdm", attention)
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    tokens, seq_ids, positions = model.padded_layout(x)
    pads = seq_ids < 0
    assert pads.any()
    g = torch.Generator().manual_seed(3)
    junk = tokens.clone()
    junk[pads] = torch.randint(0, V + 1, (int(pads.sum()),), generator=g)  # any id, the slot included
    junk_pos = positions.clone()
    junk_pos[pads] = torch.randint(0, 50, (int(pads.sum()),), generator=g)
    with torch.no_grad():
        h = model(tokens, seq_ids, positions, t)
        h_junk = model(junk, seq_ids, junk_pos, t)
    torch.testing.assert_close(h_junk[~pads], h[~pads], atol=ATOL, rtol=ATOL)
    assert (h_junk[pads] - h[pads]).abs().max() > 1e-3  # the junk did reach the network


def test_padded_layout_places_the_slot():
    model = make_model("flexmdm", randomise=False)
    x = padded_batch(LENGTHS)
    tokens, seq_ids, positions = model.padded_layout(x)
    L = x.shape[1]
    assert tokens.shape == seq_ids.shape == positions.shape == (len(LENGTHS), L + 1)
    for b, n in enumerate(LENGTHS):
        assert torch.equal(tokens[b, :n], x[b, :n]) and tokens[b, n] == model.slot_id == V
        assert (seq_ids[b, : n + 1] == b).all() and (seq_ids[b, n + 1:] == -1).all()
        assert torch.equal(positions[b, : n + 1], torch.arange(n + 1))


def test_content_and_time_matter():
    """Guards the invariance tests above: outputs do depend on real tokens and on t."""
    model = make_model("flexmdm")
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    y = x.clone()
    y[2, 4] = (x[2, 4] + 1) % PAD
    with torch.no_grad():
        base, changed, later = model.forward_padded(x, t), model.forward_padded(y, t), model.forward_padded(x, t + 0.3)
    assert (base[0][2, :13] - changed[0][2, :13]).abs().max() > 1e-3  # bidirectional: all of row 2 moves
    assert (base[1][2, :14] - changed[1][2, :14]).abs().max() > 1e-3
    torch.testing.assert_close(base[0][3], changed[0][3])
    assert (base[0][0, :5] - later[0][0, :5]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Packed layout == padded layout

@pytest.mark.parametrize("row_tokens", [14, 20, 64])
def test_packed_matches_padded(row_tokens):
    model = make_model("flexmdm")
    lengths = [0, 4, 13, 0, 2, 7, 1, 13, 0]
    x, t = padded_batch(lengths), times(len(lengths))
    with torch.no_grad():
        logits, g = model.forward_padded(x, t)
        tokens, seq_ids, positions, where = model_py.pack(x, torch.tensor(lengths), model.slot_id, PAD, row_tokens)
        h = model(tokens, seq_ids, positions, t).flatten(0, 1)
    per_row = max(len(set(r[r >= 0].tolist())) for r in seq_ids)
    assert per_row >= 2, "several sequences share a row"
    for b, n in enumerate(lengths):
        hb = h[where[b, : n + 1]]
        torch.testing.assert_close(model.unmask_head(hb[:n]).float(), logits[b, :n], atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(model.insertion_rates(hb), g[b, : n + 1], atol=ATOL, rtol=ATOL)


# ---------------------------------------------------------------------------------------------
# Variants, initialisation, size

def test_mdm_variant_has_no_insertion_head_and_no_slot():
    mdm, flex = make_model("mdm", randomise=False), make_model("flexmdm", randomise=False)
    assert mdm.insert_head is None and mdm.slot_id is None
    assert mdm.tok_emb.num_embeddings == V and flex.tok_emb.num_embeddings == V + 1
    assert flex.num_params() - mdm.num_params() == 32 + 32 + 1  # slot row + insertion head
    x = padded_batch(LENGTHS)
    with torch.no_grad():
        logits, g = mdm.forward_padded(x, times(len(LENGTHS)))
    assert g is None and logits.shape == (len(LENGTHS), x.shape[1], V)
    tokens, seq_ids, positions = mdm.padded_layout(x)
    assert torch.equal(tokens, x) and (seq_ids >= 0).all()  # pads are ordinary tokens for the baseline


def test_unknown_model_type():
    with pytest.raises(InputError, match="bert"):
        DiT(ModelConfig(vocab_size=V, model_type="bert"))


@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_zero_initialised_model_is_uniform_and_constant(model_type):
    model = make_model(model_type, randomise=False)
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    with torch.no_grad():
        logits, g = model.forward_padded(x, t)
    torch.testing.assert_close(torch.log_softmax(logits, -1), torch.full_like(logits, -math.log(V)))
    if model_type == "flexmdm":
        for b, n in enumerate(LENGTHS):
            torch.testing.assert_close(g[b, : n + 1], torch.full((n + 1,), math.log(2.0)),
                                       msg=lambda m: f"g of the fresh model is not softplus(0) everywhere: {m}")


def test_sampler_fn_conditions_on_alpha_and_reads_f_at_the_masks():
    model = make_model("flexmdm")
    alpha = Schedule("poly", 2.0)
    x, t = padded_batch(LENGTHS), times(len(LENGTHS))
    masks = x == MASK
    with torch.no_grad():
        f_at, g = model.sampler_fn(alpha)(x, t, x == -1, None)  # no fixed tokens, no closed gaps
        got = (f_at(masks), g)
        want = model.forward_padded(x, alpha(t))
        other = model.forward_padded(x, t)
    assert got[0].shape == (int(masks.sum()), V) and 0 < masks.sum() < (x != PAD).sum()
    torch.testing.assert_close(got[0], want[0][masks])
    torch.testing.assert_close(got[1], want[1])
    assert (got[0] - other[0][masks]).abs().max() > 1e-4


def test_paper_maze_model_size():
    model = DiT(ModelConfig(vocab_size=41 * 41 + 3, max_len=300, n_layer=8, n_head=8, n_embd=256, cond_dim=128,
                            dropout=0.1))
    assert 8.5e6 <= model.num_params() <= 9.0e6, model.num_params()
    assert model.num_params() == sum(p.numel() for p in model.parameters())

