"""model.fixed_embedding: a learned vector added to fixed tokens (maze subgoals, prompts). Off, the
model is exactly the one without the option; on, the packed and padded layouts still agree, and the
sampler tells the model which tokens are fixed."""
import torch

from conftest import off_and_on, random_dit
from interpolant import LossConfig, flexmdm_loss, mdm_loss, sample_times
from model import network
from sampler import SamplerConfig, generate

V, PAD, MASK = 40, 38, 39
LENGTHS = [0, 17, 1, 5, 20, 2]


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(LENGTHS), max(LENGTHS)), PAD)
    fixed = torch.zeros_like(x, dtype=torch.bool)
    for b, n in enumerate(LENGTHS):
        x[b, :n] = torch.randint(0, PAD, (n,), generator=g)
        fixed[b, :n] = torch.rand(n, generator=g) < 0.3
    return x, torch.tensor(LENGTHS), fixed


def test_off_and_fresh_on_are_the_model_without_it():
    """Same initial weights bitwise (the vector draws no RNG), same outputs bitwise; off ignores fixed."""
    off, on = off_and_on("fixed_embedding", V, PAD)
    assert off.fixed_emb is None and on.fixed_emb is not None and not on.fixed_emb.any()
    x, _, fixed = batch()
    t = torch.rand(len(LENGTHS), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = off.forward_padded(x, t)
        for got in (off.forward_padded(x, t, fixed), on.forward_padded(x, t, fixed), on.forward_padded(x, t)):
            assert torch.equal(got[0], base[0]) and torch.equal(got[1], base[1])


def test_on_reads_the_fixed_flags():
    model = random_dit(V, PAD, max_len=32, fixed_embedding=True).eval()
    x, _, fixed = batch()
    t = torch.full((len(LENGTHS),), 0.5)
    with torch.no_grad():
        a, b = model.forward_padded(x, t, fixed), model.forward_padded(x, t, torch.zeros_like(fixed))
    assert (a[0] - b[0]).abs().max() > 1e-3 and (a[1] - b[1]).abs().max() > 1e-3


def loss_and_grads(model, row_tokens, x1, lengths, fixed, t):
    model.zero_grad(set_to_none=True)
    loss = flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, t, LossConfig(), MASK, PAD,
                        generator=torch.Generator().manual_seed(5))[0]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_on_packed_loss_and_gradients_match_padded():
    model = random_dit(V, PAD, max_len=32, fixed_embedding=True)
    x1, lengths, fixed = batch(seed=2)
    t = sample_times(len(LENGTHS), generator=torch.Generator().manual_seed(3))
    padded, g_pad = loss_and_grads(model, 0, x1, lengths, fixed, t)
    packed, g_pack = loss_and_grads(model, 24, x1, lengths, fixed, t)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert model.fixed_emb.grad.abs().max() > 0  # the vector is trained


def test_mdm_trains_the_vector_on_its_prompt():
    model = random_dit(V, PAD, max_len=32, model_type="mdm", fixed_embedding=True)
    x1, lengths, fixed = batch(seed=4)
    t = torch.full((len(LENGTHS),), 0.5)
    loss = mdm_loss(network(model), x1, lengths, fixed, t, LossConfig(model_type="mdm"), MASK)[0]
    loss.backward()
    assert model.fixed_emb.grad.abs().max() > 0


def test_sampler_marks_the_prompt_as_fixed():
    """At every model call, the tokens flagged fixed are the prompt, in order, wherever insertions moved
    them, and nothing else."""
    prompts = [[3, 4, 5], [7], [1, 2]]
    calls = []

    def model_fn(x, t, fixed, closed):
        for b, p in enumerate(prompts):
            assert x[b][fixed[b]].tolist() == p
        calls.append(int((x != PAD).sum()))
        logits = torch.zeros(*x.shape, V)
        return logits, torch.full((x.shape[0], x.shape[1] + 1), 5.0)  # P(a row gets no insertion) < e^-10
    cfg = SamplerConfig(max_len=24, mask_id=MASK, pad_id=PAD, steps=16)
    out = generate(model_fn, 3, cfg, prompts=prompts, generator=torch.Generator().manual_seed(0))
    assert calls[-1] > calls[0] == 6 and all(len(s) > len(p) for s, p in zip(out, prompts))
