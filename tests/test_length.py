"""Length fidelity: the length prior term of the loss, the g head options, the sampler's time
grid, the exact length oracle (i.i.d. tokens, g in closed form) and the calibration diagnostics of
diagnostics.py, each against the math."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import diagnostics
from checkpoint import load_checkpoint
from conftest import ROOT, random_dit, subprocess_env
from data import load_data
from interpolant import LossConfig, Schedule, flexmdm_loss
from model import DiT, ModelConfig, network
from sampler import SamplerConfig, generate, time_grid
from scripts.length_oracle import MASK, PAD, distances, oracle, quantiles
from test_sampler import DISCRETISATION, P1, flex_oracle, sample_flex, tv_check
from test_text import tiny_reference  # noqa: F401 (a fixture)

LINEAR = Schedule("linear")
# a bimodal law over 1..12 with holes: any smoothing of the length shows
LAW = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.0, 0.0, 0.1, 0.0, 0.15, 0.0, 0.0, 0.1, 0.3], dtype=torch.float64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def law_batch(n, seed=0):
    """x1 [n, 12] of i.i.d. tokens in {0, 1} with lengths from LAW, right-padded with PAD."""
    g = gen(seed)
    lengths = torch.multinomial(LAW.float(), n, replacement=True, generator=g)
    x1 = torch.where(torch.arange(12)[None] < lengths[:, None], torch.randint(0, 2, (n, 12), generator=g), PAD)
    return x1, lengths, torch.zeros_like(x1, dtype=torch.bool)


def scaled(model_fn, factor):
    def wrong(x, t, fixed, closed):
        f_at, g = model_fn(x, t, fixed, closed)
        return f_at, factor * g
    return wrong


# ---------------------------------------------------------------------------------------------
# The length prior: LossConfig(prior_weight=w) adds w * phi(gaps of x_0, g(x_0, 0)) per sequence

@pytest.mark.parametrize("row_tokens", [0, 64], ids=["padded", "packed"])
def test_prior_term_is_the_insertion_loss_at_x0(row_tokens):
    """At t = 1 every token is present and clean, so eq. 7 (flat weighting) is sum_j g(x1, 1)_j (all gap
    targets 0); with prior_weight w the loss gains w * sum_j phi(gap_j, g(x_0, 0)_j), x_0 the fixed tokens
    and gap_j the tokens between them, counted here by hand from the fixed positions."""
    from interpolant import bregman
    V, MASK_ID, PAD_ID = 12, 11, 10
    x1 = torch.tensor([[3, 1, 4, 1, 5, 9, 2, PAD_ID], [2, 7, 1, 8, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    lengths = torch.tensor([7, 4])
    fixed = torch.zeros_like(x1, dtype=torch.bool)
    fixed[0, [1, 2, 5]] = True  # x_0 of row 0 is [1, 4, 9] with gaps 1, 0, 2, 1; row 1 has no fixed token
    x0 = torch.tensor([[1, 4, 9], [PAD_ID, PAD_ID, PAD_ID]])
    gaps0 = torch.tensor([[1.0, 0.0, 2.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    model = random_dit(V, PAD_ID, seed=3)
    t = torch.ones(2)
    losses = [flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, t,
                           LossConfig(time_weighting="flat", prior_weight=w), MASK_ID, PAD_ID, gen(0))[0]
              for w in (0.0, 0.5)]
    with torch.no_grad():
        g1 = model.forward_padded(x1, t, fixed)[1]
        g0 = model.forward_padded(x0, torch.zeros(2), x0 != PAD_ID)[1]
    real1 = torch.arange(9)[None] <= lengths[:, None]
    real0 = torch.arange(4)[None] <= torch.tensor([[3], [0]])
    n = (torch.arange(8)[None] < lengths[:, None]).logical_and(~fixed).sum()
    eq7 = (g1 * real1).sum() / n
    prior = (bregman(gaps0, g0) * real0).sum() / n
    torch.testing.assert_close(losses[0], eq7)
    torch.testing.assert_close(losses[1], eq7 + 0.5 * prior)
    assert prior > 0.1  # the check has something to see


@pytest.mark.parametrize("row_tokens", [0, 32], ids=["padded", "packed"])
def test_behind_rows_add_the_insertion_term_at_their_time(row_tokens):
    """Rows behind their time: drawn at s, asked at t. With s = 0 the state is x_0 (the fixed tokens), so the
    loss gains behind_weight * w_alpha(t) * sum_j phi(gap_j, g(x_0, t)_j) (flat: w = 1), counted by hand; the
    main rows at t = 1 give eq. 7's sum_j g(x1, 1)_j as before."""
    from interpolant import bregman
    V, MASK_ID, PAD_ID = 12, 11, 10
    x1 = torch.tensor([[3, 1, 4, 1, 5, 9, 2, PAD_ID], [2, 7, 1, 8, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    lengths, fixed = torch.tensor([7, 4]), torch.zeros(2, 8, dtype=torch.bool)
    fixed[0, [1, 2, 5]] = True
    x0, gaps0 = torch.tensor([[1, 4, 9], [PAD_ID] * 3]), torch.tensor([[1.0, 0.0, 2.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    model, t_behind = random_dit(V, PAD_ID, seed=3), torch.tensor([0.7, 0.4])
    cfg = LossConfig(time_weighting="flat", behind_weight=0.5)
    behind = (x1, lengths, fixed, t_behind, torch.zeros(2))
    loss = flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, torch.ones(2), cfg, MASK_ID, PAD_ID, gen(0),
                        behind)[0]
    with torch.no_grad():
        g1 = model.forward_padded(x1, torch.ones(2), fixed)[1]
        g0 = model.forward_padded(x0, t_behind, x0 != PAD_ID)[1]  # asked at t, not at s = 0
    n = (torch.arange(8)[None] < lengths[:, None]).logical_and(~fixed).sum()
    eq7 = (g1 * (torch.arange(9)[None] <= lengths[:, None])).sum() / n
    behind_term = (bregman(gaps0, g0) * (torch.arange(4)[None] <= torch.tensor([[3], [0]]))).sum() / n
    torch.testing.assert_close(loss, eq7 + 0.5 * behind_term)
    assert behind_term > 0.1


def test_early_rows_add_the_insertion_term_only():
    """prior_time > 0: the extra rows are early states with masks in them; they add to the insertion
    term only (main rows at t = 1 have no masks, so the unmasking term stays 0 however many masks the
    early rows hold), and they are drawn at t = prior_time * u^2 < prior_time."""
    V, MASK_ID, PAD_ID = 12, 11, 10
    x1 = torch.randint(0, 10, (64, 8), generator=gen(1))
    lengths, fixed = torch.full((64,), 8), torch.zeros(64, 8, dtype=torch.bool)
    model = random_dit(V, PAD_ID, seed=4)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[3].clone()))  # the conditioning times
    loss, unmask, insert = flexmdm_loss(network(model), x1, lengths, fixed, torch.ones(64),
                                        LossConfig(time_weighting="flat", prior_weight=1.0, prior_time=0.9), MASK_ID,
                                        PAD_ID, gen(0))
    early = seen[0][64:]
    assert unmask == 0 and (early < 0.9).all() and (early > 0).all() and early.mean() < 0.45  # u^2: mean 0.3
    alone = flexmdm_loss(network(model), x1, lengths, fixed, torch.ones(64), LossConfig(time_weighting="flat"),
                         MASK_ID, PAD_ID, gen(0))[2]
    assert insert > alone


def test_prior_weight_is_refused_for_the_mdm(tiny_maze):
    from configurator import InputError
    from conftest import TINY_TRAIN_ARGS, run_train
    with pytest.raises(InputError, match="prior_weight"):
        run_train(["--dataset=tiny", *TINY_TRAIN_ARGS, "--model_type=mdm", "--prior_weight=1.0"], tiny_maze)


# ---------------------------------------------------------------------------------------------
# The g head: linear or mlp, times insert_scale

@pytest.mark.parametrize("head,scale", [("linear", 1.0), ("mlp", 1.0), ("mlp", 128.0)])
def test_insert_head_starts_at_scale_times_softplus0_and_trains(head, scale):
    model = DiT(ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=16, cond_dim=8, pad_id=8, insert_head=head,
                            insert_scale=scale))
    x = torch.tensor([[1, 2, 3], [4, 8, 8]])
    g = model.forward_padded(x, torch.tensor([0.2, 0.7]))[1]
    torch.testing.assert_close(g[0], torch.full((4,), scale * math.log(2.0)))
    g.sum().backward()
    last = model.insert_head if head == "linear" else model.insert_head[-1]
    assert last.weight.grad.abs().sum() > 0  # the zero-initialised output layer is trained
    assert (head == "mlp") == isinstance(model.insert_head, torch.nn.Sequential)


# ---------------------------------------------------------------------------------------------
# The sampler's time grid

def test_time_grid():
    times, taus = time_grid(5, "flexmdm")
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0] and taus == [0.25] * 4 + [0.0]
    times, taus = time_grid(4, "mdm", 2.0)
    assert times == [0.0, 1 / 16, 1 / 4, 9 / 16] and sum(taus) == pytest.approx(1.0)
    times, taus = time_grid(64, "flexmdm", 3.0)
    assert times[-1] == 1.0 and all(b > a for a, b in zip(times, times[1:]))
    assert all(tau == pytest.approx(b - a) for a, b, tau in zip(times, times[1:], taus))


def test_exact_oracle_reproduces_p1_on_a_power_grid():
    """The enumerated exact oracle of test_sampler on the grid t_k = (k / (N - 1))^2: the same TV bound."""
    samples = sample_flex(flex_oracle(LINEAR), 4000, "linear", grid_power=2.0)
    tv, bound, tv_in, bound_in = tv_check(samples, P1, DISCRETISATION["linear"])
    assert tv <= bound and tv_in <= bound_in, (tv, bound, tv_in, bound_in)


# ---------------------------------------------------------------------------------------------
# The length oracle: i.i.d. tokens, g = E[n - m | m] / (m + 1) in closed form

def test_length_oracle_reproduces_the_length_law():
    """Driven by the exact g of LAW, the sampler's lengths follow LAW: TV within the noise of 3000 draws
    plus the discretisation allowance of 256 steps, and the law's holes stay nearly empty; the same with
    g scaled by 1.3 is far off."""
    lengths = {}
    for factor in (1.0, 1.3):
        samples = generate(scaled(oracle(LAW, LINEAR), factor), 3000,
                           SamplerConfig(max_len=12, mask_id=MASK, pad_id=PAD, steps=256), generator=gen(1))
        lengths[factor] = np.array([len(s) for s in samples])
    rng = np.random.default_rng(0)
    noise = np.quantile([distances(rng.choice(13, 3000, p=LAW.numpy()), LAW)["tv_exact"] for _ in range(200)], 0.999)
    good, bad = distances(lengths[1.0], LAW), distances(lengths[1.3], LAW)
    assert good["tv_exact"] <= noise + 0.045, (good, noise)
    assert np.isin(lengths[1.0], np.flatnonzero(LAW.numpy() == 0)).mean() < 0.03
    assert bad["tv_exact"] > noise + 0.1 and bad["mean"] > good["mean"] + 1, (bad, good)


def test_length_oracle_quantiles_of_the_law_are_those_of_its_exact_sample():
    """A sample whose histogram is exactly the law (each n repeated in proportion to p(n)) has the law's
    quantiles, by the one rule both sides use; and a shifted sample moves them."""
    counts = (LAW * 1000).round().long()
    law = counts / counts.sum()
    exact = np.repeat(np.arange(len(counts)), counts.numpy())
    row = distances(exact, law)
    assert quantiles(probs=law) == quantiles(exact) == {k: row[k] for k in ("p10", "p50", "p90")}
    assert quantiles(exact + 1) == {k: v + 1 for k, v in quantiles(exact).items()}


# ---------------------------------------------------------------------------------------------
# Calibration diagnostics (diagnostics.py) on the exact oracle: no bias within the standard error

def test_calibration_of_the_exact_oracle_has_no_bias():
    """On interpolant states at every t (and at x_0: g = the mean length), and on states drawn at t / 2 and
    weighted back to t, the exact g has no bias beyond 4 standard errors; g scaled by 1.1 does."""
    x1, lengths, fixed = law_batch(4000)
    rows = diagnostics.calibration_table(oracle(LAW, LINEAR), x1, lengths, fixed, LINEAR, LINEAR, MASK, PAD,
                                      generator=gen(2))
    mean_length = float((LAW * torch.arange(13)).sum())
    assert rows[0]["t"] == 0.0 and rows[0]["forecast"] == pytest.approx(mean_length, rel=1e-5)
    for r in rows:
        assert abs(r["bias"]) <= 4 * r["bias_se"], r
        if "lag_bias" in r:
            assert abs(r["lag_bias"]) <= 4 * r["lag_bias_se"] and r["lag_ess"] > 300, r
    wrong = diagnostics.calibration_table(scaled(oracle(LAW, LINEAR), 1.1), x1, lengths, fixed, LINEAR, LINEAR,
                                          MASK, PAD, generator=gen(2))
    assert max(abs(r["bias"]) / r["bias_se"] for r in wrong) > 6
    assert max(abs(r["lag_bias"]) / r["lag_bias_se"] for r in wrong if "lag_bias" in r) > 6


def test_lagged_check_sees_a_g_that_ignores_the_shortfall():
    """A g that reads the length prior off t alone (E[n] (1 - alpha(t)) spread over the gaps, blind to how
    many tokens x_t holds) is unbiased on average over interpolant states at t, but not on states with
    fewer tokens than t implies: the lagged check must flag it where the plain one cannot."""
    mean_length = float((LAW * torch.arange(13)).sum())

    def blind(x, t, fixed, closed):
        m = (x != PAD).sum(1)
        g = mean_length * (1 - LINEAR(t)) / (m + 1)
        return None, g[:, None].expand(-1, x.shape[1] + 1)
    x1, lengths, fixed = law_batch(4000, seed=1)
    rows = diagnostics.calibration_table(blind, x1, lengths, fixed, LINEAR, LINEAR, MASK, PAD, generator=gen(3))
    assert all(abs(r["bias"]) <= 4 * r["bias_se"] for r in rows), rows
    assert max(abs(r["lag_bias"]) / r["lag_bias_se"] for r in rows if "lag_bias" in r) > 6, rows


def test_sampling_forecast_of_the_exact_oracle():
    """Along the sampler's trajectories (512 steps, little discretisation), the forecast sum of g at each
    call matches the tokens the chain then inserts, on average over 1000 samples, within 4 standard errors
    plus 0.1 token; it starts at the mean length. A g read off a clock running at half speed (the exact g
    of time t / 2: it expects too many tokens to come, and then the chain inserts even more) fails."""
    cfg = SamplerConfig(max_len=12, mask_id=MASK, pad_id=PAD, steps=512, alpha=LINEAR, beta=LINEAR)
    times, lengths, forecast, final = diagnostics.sampling_forecast(oracle(LAW, LINEAR), 1000, cfg, generator=gen(4))
    assert times[0] == 0.0 and times[-1] == 1.0 and forecast.shape == lengths.shape == (512, 1000)
    assert forecast[0].mean() == pytest.approx(float((LAW * torch.arange(13)).sum()), rel=1e-5)
    gap = forecast - (final[None] - lengths)
    for k in (0, 64, 256):
        assert abs(gap[k].mean()) <= 4 * gap[k].std() / math.sqrt(1000) + 0.1, (k, gap[k].mean())
    exact = oracle(LAW, LINEAR)
    slow = lambda x, t, fixed, closed: exact(x, t / 2, fixed, closed)
    times, lengths, forecast, final = diagnostics.sampling_forecast(slow, 1000, cfg, generator=gen(4))
    gap = forecast - (final[None] - lengths)
    assert abs(gap[0].mean()) > 4 * gap[0].std() / math.sqrt(1000) + 0.1, gap[0].mean()


def test_sampler_state_ratio_of_the_exact_oracle():
    """On the sampler's own states, the exact g's forecast is E[n - m | m] of the law, state by state: the ratio is
    1 to float precision at every t. g scaled by 1.1 reads 1.1; a g read off a clock at half speed (it expects
    too many tokens to come) reads above 1.1; the states' mean length follows the interpolant's at t."""
    cfg = SamplerConfig(max_len=12, mask_id=MASK, pad_id=PAD, steps=64, alpha=LINEAR, beta=LINEAR)
    law = np.repeat(np.arange(13), (LAW * 1000).round().long().numpy())  # lengths whose histogram is LAW
    exact = oracle(LAW, LINEAR)
    for model_fn, expect in ((exact, 1.0), (scaled(exact, 1.1), 1.1)):
        trace = diagnostics.sampling_forecast(model_fn, 400, cfg, generator=gen(5))
        rows = diagnostics.sampler_state_ratio(*trace[:3], law, LINEAR, (0.2, 0.4, 0.6))
        assert [r["t"] for r in rows] == pytest.approx([0.2, 0.4, 0.6], abs=1 / 63)
        assert all(r["ratio"] == pytest.approx(expect, rel=1e-5) and r["se"] < 1e-5 for r in rows), rows
    trace = diagnostics.sampling_forecast(exact, 400, cfg, generator=gen(5))
    for r in diagnostics.sampler_state_ratio(*trace[:3], law, LINEAR, (0.2, 0.4, 0.6)):
        assert r["mean_length"] == pytest.approx(r["interpolant_mean_length"], abs=0.4), r
    slow = lambda x, t, fixed, closed: exact(x, t / 2, fixed, closed)
    trace = diagnostics.sampling_forecast(slow, 400, cfg, generator=gen(5))
    assert all(r["ratio"] > 1.1 for r in diagnostics.sampler_state_ratio(*trace[:3], law, LINEAR, (0.2, 0.4, 0.6)))


def test_heldout_batch_reads_the_validation_split(tiny_maze):
    (x1, lengths, fixed), meta = diagnostics.heldout_batch(os.path.join(str(tiny_maze), "data", "tiny"), 50)
    assert x1.shape == (50, meta["max_len"]) and fixed.sum(1).eq(2).all()  # K = 2: start and goal fixed
    assert ((x1 != meta["pad_id"]).sum(1) == lengths).all()


# ---------------------------------------------------------------------------------------------
# Rows behind their time (interpolant.behind_times): the minimiser of the insertion term stays eq. 7's

SEQUENCES = {(0,): 0.2, (0, 1): 0.1, (1, 1): 0.15, (0, 0, 1): 0.2, (1, 0, 1, 1): 0.25, (0, 1, 1, 0, 1): 0.1}


def status_chances(tau, alpha, beta, grid=4000):
    """P(absent), P(mask), P(clean) of one token at time tau under the joint interpolant (eq. 6): inserted at
    T1 ~ alpha, clean at T2 with beta(T2) ~ U(beta(T1), 1), by quadrature over T1."""
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * tau
    a, b = alpha(torch.tensor(tau, dtype=torch.float64)), beta(torch.tensor(tau, dtype=torch.float64))
    clean = float((alpha.deriv(u) * (b - beta(u)) / (1 - beta(u))).sum() * tau / grid)
    return 1 - float(a), float(a) - clean, clean


def state_law(time, alpha, beta, tilt=1.0):
    """{state x: (probability, E[gaps | x])} of the interpolant at `time` over SEQUENCES, each x1 weighted by
    tilt^len(x1) (1: the data's own law), exactly, by enumerating every token's status."""
    chances = status_chances(time, alpha, beta)
    mass, gaps = {}, {}
    for x1, p in SEQUENCES.items():
        for statuses in np.ndindex(*(3,) * len(x1)):  # 0 absent, 1 mask, 2 clean
            q = p * tilt ** len(x1) * math.prod(chances[s] for s in statuses)
            present = [i for i, s in enumerate(statuses) if s]
            x = tuple("m" if statuses[i] == 1 else x1[i] for i in present)
            edges = [-1, *present, len(x1)]
            target = np.array([b - a - 1 for a, b in zip(edges, edges[1:])], dtype=np.float64)
            mass[x] = mass.get(x, 0.0) + q
            gaps[x] = gaps.get(x, 0.0) + q * target
    total = sum(mass.values())
    return {x: (m / total, gaps[x] / m) for x, m in mass.items()}


@pytest.mark.parametrize("alpha,beta", [(LINEAR, LINEAR), (Schedule("cosine"), Schedule("poly", 2.0))],
                         ids=["linear", "cosine-poly2"])
@pytest.mark.parametrize("t,u", [(0.3, 0.5), (0.6, 0.8), (0.8, 0.25)])
def test_behind_rows_keep_the_minimiser(alpha, beta, t, u):
    """Exactly, by enumeration: states drawn at s = u t from sequences drawn with probability proportional to
    r^len, r = (1 - alpha(t)) / (1 - alpha(s)), have the interpolant's own posterior mean of the gaps at t,
    E[gaps | x] (the minimiser of the insertion term at (x, t)), for every state; and their law is not the one
    at t: it leans to states with fewer tokens (the point of drawing them)."""
    s = u * t
    r = float((1 - alpha(torch.tensor(t, dtype=torch.float64))) / (1 - alpha(torch.tensor(s, dtype=torch.float64))))
    at_t, behind = state_law(t, alpha, beta), state_law(s, alpha, beta, tilt=r)
    assert set(behind) == set(at_t)
    for x, (_, mean) in at_t.items():
        np.testing.assert_allclose(behind[x][1], mean, rtol=1e-10, atol=1e-12)
    tokens = lambda law: sum(p * len(x) for x, (p, _) in law.items())
    assert tokens(behind) < tokens(at_t) - 0.1
    # the tilt is needed: states drawn at s from the data's own lengths have another posterior
    untilted = state_law(s, alpha, beta)
    assert max(abs(untilted[x][1] - at_t[x][1]).max() for x in at_t) > 0.05


def test_behind_rows_as_the_loss_draws_them():
    """The implemented path (behind_times, data.LengthTilt, the interpolant at s) against the exact posterior at t,
    by Monte Carlo: for each frequent state, the mean gaps of 200,000 behind rows within 4 standard errors."""
    from data import LengthTilt
    from interpolant import behind_times, flexmdm_interpolant
    seqs, probs = list(SEQUENCES), torch.tensor(list(SEQUENCES.values()))
    copies = torch.multinomial(probs, 20000, replacement=True, generator=gen(0)).numpy()  # a dataset of the law
    idx = np.concatenate([[0], np.cumsum([len(seqs[c]) for c in copies])])
    cfg = LossConfig(behind_weight=1.0, behind_lag=0.5)
    n = 200_000
    t, s, log_r = behind_times(n, cfg, generator=gen(1))
    assert ((s >= 0.5 * t) & (s <= t)).all() and torch.allclose(log_r, torch.log1p(-t) - torch.log1p(-s))
    t = torch.full((n,), 0.6)  # one t, so that the states can be pooled; s = u t with u as drawn
    s = t * torch.rand(n, generator=gen(4)) * 0.5 + 0.5 * t
    log_r = torch.log1p(-cfg.alpha(t)) - torch.log1p(-cfg.alpha(s))
    chosen = copies[LengthTilt(idx).draw(log_r.numpy(), np.random.default_rng(2))]
    x1 = torch.full((n, 5), PAD)
    for b, c in enumerate(chosen):
        x1[b, :len(seqs[c])] = torch.tensor(seqs[c])
    lengths = torch.tensor([len(seqs[c]) for c in chosen])
    fb = flexmdm_interpolant(x1, lengths, s, cfg.alpha, cfg.beta, MASK, PAD, generator=gen(3))
    rows = {}
    for b in range(n):
        m = int(fb.lengths[b])
        x = tuple("m" if v == MASK else int(v) for v in fb.xt[b, :m].tolist())
        rows.setdefault(x, []).append(fb.gaps[b, : m + 1].numpy())
    exact, checked = state_law(0.6, LINEAR, LINEAR), 0  # the posterior at t, whatever s the state was drawn at
    for x, found in rows.items():
        if len(found) >= 2000:
            found = np.array(found)
            se = found.std(0) / math.sqrt(len(found)) + 1e-9
            assert (abs(found.mean(0) - exact[x][1]) < 4 * se + 1e-3).all(), (x, found.mean(0), exact[x][1])
            checked += 1
    assert checked >= 5


def test_floor_of_200_samples(tiny_maze, monkeypatch):
    """scripts/length_seeds.py's floor: its W1 (diagnostics.wasserstein1) is the area between CDFs (for samples of
    one size, the mean distance between sorted values), and the quantile tolerance is at least 10 % of the data's
    quantiles."""
    from diagnostics import wasserstein1
    from scripts.length_seeds import floors
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 50, 300).astype(float), rng.integers(5, 80, 300).astype(float)
    assert wasserstein1(a, b) == pytest.approx(np.abs(np.sort(a) - np.sort(b)).mean())
    assert wasserstein1(a, a) == 0
    monkeypatch.chdir(tiny_maze)
    lengths = np.diff(load_data(os.path.join("data", "tiny"))[1]["val"][1])
    w1, q, tol = floors("tiny", draws=200)
    assert np.allclose(q, np.percentile(lengths, (10, 50, 90))) and (tol >= 0.1 * q).all() and 0 < w1 < lengths.std()


def test_claim_verdict():
    """scripts/length_seeds.py's verdict: half the MDM's W1, 2-SE intervals apart (none with one seed), quantiles
    within tolerance, behind ratio at least 0.9 within one SE; each can say yes and no."""
    from scripts.length_seeds import verdict

    def record(w1, quantiles=(10, 50, 100), behind=(0.95, 0.9, 0.9)):
        return {"samples": {"s64": {"w1": w1, **dict(zip(("p10", "p50", "p90"), quantiles))}},
                "g": {"behind": [{"ratio": r} for r in behind]}}
    q, tol = np.array([10.0, 50.0, 100.0]), np.array([1.0, 5.0, 10.0])
    mdm = [record(w) for w in (20, 21, 22)]
    assert verdict([record(w) for w in (4, 5, 6)], mdm, "s64", q, tol) == [
        "5.0 / 21.0", "yes", "yes", "10 yes / 50 yes / 100 yes", "yes"]
    assert verdict([record(w) for w in (1, 5, 25)], mdm, "s64", q, tol)[1:3] == ["yes", "no"]  # 10.3 +- 7.4 vs 21
    assert verdict([record(12)], [record(20)], "s64", q, tol)[1:3] == ["no", "-"]
    low = [record(5, (8, 50, 120), (0.8, 0.85, 0.88)), record(5, (8, 50, 120), (0.8, 0.85, 0.9))]
    assert verdict(low, mdm, "s64", q, tol)[3:] == ["8 no / 50 yes / 120 no", "no"]
    close = [record(5, behind=(0.9, 0.87, 0.85)), record(5, behind=(0.9, 0.93, 0.93))]  # 0.89 +- 0.04 reaches 0.9
    assert verdict(close, mdm, "s64", q, tol)[4] == "yes"


def repo_layout(tmp_path):
    """tmp_path/main: the repo's files as links, without its data/, out/ and results/ (a script run there writes
    its own), and ../shared beside it."""
    main = tmp_path / "main"
    main.mkdir()
    for name in os.listdir(ROOT):
        if name not in ("data", "out", "results", ".git", ".venv"):
            (main / name).symlink_to(os.path.join(ROOT, name))
    (tmp_path / "shared").symlink_to(os.path.realpath(os.path.join(ROOT, "..", "shared")))
    return main


def test_length_seeds_script_runs_resumes_and_tabulates(tmp_path, tiny_reference):  # noqa: F811
    """scripts/length_seeds.sh end to end on the dropped data, tiny: both cells of seed 1 (train, sample, evaluate
    with the reference LM, gather), each landing as its JSON; run again, a finished cell is left as it is; then the
    table with its verdict row. In a copy of the repo's layout, so that its data/ and out/ stay untouched."""
    main = repo_layout(tmp_path)
    env = dict(subprocess_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PHASE="claim",
               SEEDS="1", DATA="wikitext128drop", BUDGET="2", SAMPLES="4", STEPS="4", BEHIND_SAMPLES="16",
               REF=tiny_reference, OUT=str(tmp_path / "out"), RESULTS=str(tmp_path / "results"))
    script = lambda: subprocess.run(["bash", "scripts/length_seeds.sh"], cwd=main, env=env, capture_output=True,
                                    text=True, timeout=900)
    proc = script()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = {run: tmp_path / "results" / "wikitext128drop" / f"{run}_s1.json" for run in ("mdm", "flex")}
    records = {run: json.loads(path.read_text()) for run, path in cells.items()}
    for run, r in records.items():
        assert r["seed"] == 1 and r["iterations"] > 0 and math.isfinite(r["bound"]["loss"]) and list(r["samples"]) == ["s4"]
        genppl = r["samples"]["s4"]["genppl"]  # None where no sample of a 2-s model is long enough to score
        assert (genppl is None or genppl > 1) and r["settings"]["max_seconds"] == 2
    assert records["flex"]["settings"]["prior_weight"] == 1.0 and len(records["flex"]["g"]["behind"]) == 3
    assert "g" not in records["mdm"]
    stamps = {run: path.stat().st_mtime_ns for run, path in cells.items()}
    proc = script()  # everything is done: nothing is trained, sampled or gathered again
    assert proc.returncode == 0 and {run: path.stat().st_mtime_ns for run, path in cells.items()} == stamps
    table = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "scripts/length_seeds.py", f"--results={tmp_path / 'results'}",
                           f"--out={table}"], cwd=main, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| wikitext128drop | flex | 4 | " in table.read_text()
    run_dir = str(tmp_path / "out" / "wikitext128drop" / "flex_s1")  # the lag sweep: its lag-0.3 column is the cell's
    proc = subprocess.run([sys.executable, "scripts/length_seeds.py", f"--sweep={run_dir}", "--behind_samples=16"],
                          cwd=main, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith(f"| {run_dir} |")]
    assert len(rows) == 1 and len(rows[0]) == 9 and all(len(cell.split(" / ")) == 3 for cell in rows[0][2:8])
    assert rows[0][5] == " / ".join(f"{b['ratio']:.2f}" for b in records["flex"]["g"]["behind"])


def test_length_fixes_script_runs_resumes_and_tabulates(tmp_path):
    """scripts/length_fixes.sh end to end, tiny (one setting, the dropped data): train, sample on both grids,
    evaluate, calibrate, and the table row, whose cells are the evaluate.py metrics; run again, nothing is redone.
    In a copy of the repo's layout, so that its data/ and out/ stay untouched."""
    main = repo_layout(tmp_path)
    env = dict(subprocess_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               DATA="wikitext128drop", FIXES="prior_time", BUDGET="2", SAMPLES="4", HELDOUT="8", TRACE="4",
               OUT=str(tmp_path / "out"))
    script = lambda: subprocess.run(["bash", "scripts/length_fixes.sh"], cwd=main, env=env, capture_output=True,
                                    text=True, timeout=600)
    proc = script()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "out" / "wikitext128drop" / "prior_time"
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| wikitext128drop | prior_weight=1, prior_time=0.1 |"))
    length = json.loads((run / "s64_g2.0.jsonl.length.json").read_text())["length"]["samples"]
    assert row.split(" | ")[-1] == f"{length['p10']:.0f} / {length['p50']:.0f} / {length['p90']:.0f} |"
    assert load_checkpoint(str(run / "ckpt.pt"))["config"]["prior_time"] == 0.1
    stamps = {path: path.stat().st_mtime_ns for path in run.iterdir()}
    assert script().returncode == 0 and {path: path.stat().st_mtime_ns for path in run.iterdir()} == stamps
