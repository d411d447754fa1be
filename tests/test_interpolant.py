"""interpolant.py against closed forms: schedules, the FlexMDM joint interpolant (eq. 6, appendix
E.2.1), the MDM interpolant, the Bregman divergence, the stratified times."""
import math

import numpy as np
import pytest
import torch

from interpolant import (FlexBatch, Schedule, bregman, flexmdm_interpolant, insertion_loss,
                         length_posterior_insertions, mdm_interpolant, sample_times, unmasking_loss)

PAD, MASK, VOCAB = 100, 101, 102  # ordinary tokens are 0..99
ROWS = 20000  # draws for the statistical checks
N = 24  # sequence length for the statistical checks
Z = 4.5  # tolerance in standard errors: a false alarm about once in 150 000 checks

SCHEDULE_PAIRS = {
    "linear": (Schedule("linear"), Schedule("linear")),
    "poly2-cosine": (Schedule("poly", 2.0), Schedule("cosine")),  # alpha != beta
    "cosine-poly3": (Schedule("cosine"), Schedule("poly", 3.0)),
}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def distinct_rows(rows, n, seed=0):
    """x1 [rows, n]: each row n distinct ordinary tokens, so a token identifies its position."""
    g = gen(seed)
    return torch.stack([torch.randperm(PAD, generator=g)[:n] for _ in range(rows)])


def positions_from_gaps(gaps, lengths):
    """s_t[j] (index in x1 of present token j) from the gap counts: s[j] = j + sum_{k<=j} gap[k]."""
    L1 = gaps.shape[1]
    s = torch.arange(L1)[None] + torch.cumsum(gaps, 1).round().long()
    return torch.where(torch.arange(L1)[None] < lengths[:, None], s, -1)[:, :-1]


def p_mask(t, alpha, beta, steps=200001):
    """P(T1 <= t < T2) = (1 - beta(t)) * int_0^t alpha'(s) / (1 - beta(s)) ds  (appendix E.2.1:
    1 - gamma_t), by the trapezoid rule in float64. (Given T1 = s, beta(T2) is uniform on
    [beta(s), 1], so P(T2 > t | T1 = s) = (1 - beta(t)) / (1 - beta(s)).)"""
    s = torch.linspace(0, t, steps, dtype=torch.float64)
    integrand = alpha.deriv(s) / (1 - beta(s))
    return float((1 - beta(torch.tensor(t, dtype=torch.float64))) * torch.trapezoid(integrand, s))


def chi2_upper(df, z=Z):
    """Wilson-Hilferty approximation of the chi-square quantile at z standard normal deviations."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


# ---------------------------------------------------------------------------------------------
# Schedules

@pytest.mark.parametrize("kind,exponent", [("linear", 1.0), ("poly", 2.0), ("poly", 0.5), ("cosine", 2.0)])
def test_schedule_closed_forms(kind, exponent):
    s = Schedule(kind, exponent)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    assert float(s(torch.tensor(0.0))) == 0.0 and float(s(torch.tensor(1.0))) == pytest.approx(1.0, abs=1e-7)
    expected = {"linear": t, "poly": t ** exponent, "cosine": 1 - torch.cos(math.pi * t / 2)}[kind]
    torch.testing.assert_close(s(t), expected)
    assert (torch.diff(s(t)) > 0).all(), "increasing"
    torch.testing.assert_close(s.inverse(s(t)), t)
    torch.testing.assert_close(s(s.inverse(t)), t)
    h = 1e-6
    torch.testing.assert_close(s.deriv(t), (s(t + h) - s(t - h)) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.rate(t), s.deriv(t) / (1 - s(t)))


def test_linear_rate_is_one_over_one_minus_t_and_finite_at_one():
    s = Schedule("linear")
    t = torch.tensor([0.0, 0.25, 0.5, 0.9])
    torch.testing.assert_close(s.rate(t), 1 / (1 - t))
    assert torch.isfinite(s.rate(torch.tensor([1.0]))).all()


def test_unknown_schedule_is_a_value_error():
    with pytest.raises(ValueError, match="exponential"):
        Schedule("exponential")


def test_sample_times_one_per_stratum():
    for B in (1, 7, 64):
        t = sample_times(B, generator=gen(B))
        assert t.shape == (B,)
        assert torch.equal(torch.floor(t * B).long(), torch.arange(B)), "t[i] in [i/B, (i+1)/B)"
    a, b = sample_times(64, generator=gen(1)), sample_times(64, generator=gen(2))
    assert not torch.equal(a, b), "random within the strata"
    # offsets within strata are uniform: their mean over many draws is about 1/2
    offs = torch.cat([sample_times(100, generator=gen(s)) * 100 % 1 for s in range(50)])
    assert abs(offs.mean().item() - 0.5) < Z * math.sqrt(1 / 12 / offs.numel())


# ---------------------------------------------------------------------------------------------
# Bregman divergence and the two loss terms

def test_bregman_nonnegative_zero_on_diagonal():
    g = gen(0)
    x = torch.randint(0, 20, (1000,)).float()
    y = torch.rand(1000, generator=g) * 30 + 1e-3
    assert (bregman(x, y) >= -1e-5).all()
    torch.testing.assert_close(bregman(x, x.clamp_min(1e-8)), torch.zeros(1000), atol=1e-5, rtol=0)
    assert (bregman(x, x + 1) > 0).all()
    # phi(0, y) = y: a gap with nothing to insert pays exactly the predicted rate
    torch.testing.assert_close(bregman(torch.zeros(3), torch.tensor([0.5, 1.0, 4.0])), torch.tensor([0.5, 1.0, 4.0]))


def test_bregman_minimised_by_the_mean():
    """argmin_y E[phi(X, y)] = E[X] for a skewed X (the insertion head's target, Prop. 1)."""
    x = torch.poisson(torch.full((5000,), 2.7), generator=gen(3)) * torch.randint(0, 2, (5000,), generator=gen(4))
    ys = torch.linspace(0.05, 5, 2000)
    risk = torch.stack([bregman(x, y.expand_as(x)).mean() for y in ys])
    best = ys[risk.argmin()].item()
    assert best == pytest.approx(x.mean().item(), abs=3 * (ys[1] - ys[0]).item())
    y = torch.tensor(1.0, requires_grad=True)  # and the gradient vanishes at the mean
    bregman(x, x.mean().expand_as(x) * y).mean().backward()
    assert abs(y.grad.item()) < 1e-4


def test_loss_terms_are_weighted_sums():
    g = gen(5)
    logits, targets, w = torch.randn(7, 11, generator=g), torch.randint(0, 11, (7,), generator=g), torch.rand(7, generator=g)
    expected = -(w * torch.log_softmax(logits, -1)[torch.arange(7), targets]).sum()
    torch.testing.assert_close(unmasking_loss(logits, targets, w), expected)
    rates, gaps = torch.rand(9, generator=g) * 3, torch.randint(0, 4, (9,), generator=g).float()
    w = torch.rand(9, generator=g)
    expected = (w * (rates - gaps * torch.log(rates) + torch.xlogy(gaps, gaps) - gaps)).sum()
    torch.testing.assert_close(insertion_loss(rates, gaps, w), expected)


# ---------------------------------------------------------------------------------------------
# The FlexMDM joint interpolant: structure (every row, exactly)

def draw_structured(t_value, alpha, beta, seed=0, rows=400, L=30):
    """Rows of different lengths (0 and L included) with random fixed tokens; fixed flags are also
    set beyond each row's length, where they must be ignored."""
    g = gen(seed)
    lengths = torch.randint(0, L + 1, (rows,), generator=g)
    lengths[:2] = torch.tensor([0, L])
    x1 = distinct_rows(rows, L, seed)
    x1[torch.arange(L)[None] >= lengths[:, None]] = PAD
    fixed = torch.rand(rows, L, generator=g) < 0.15
    t = torch.full((rows,), float(t_value)) if t_value is not None else torch.rand(rows, generator=g)
    fb = flexmdm_interpolant(x1, lengths, t, alpha, beta, MASK, PAD, fixed=fixed, generator=g)
    return x1, lengths, fixed, t, fb


def check_structure(x1, lengths, fixed, fb):
    B, L = x1.shape
    assert isinstance(fb, FlexBatch)
    assert fb.xt.shape == fb.targets.shape == fb.masked.shape == (B, L) and fb.gaps.shape == (B, L + 1)
    real = torch.arange(L)[None] < lengths[:, None]
    fixed = fixed & real
    n_t = fb.lengths
    assert (n_t <= lengths).all() and (n_t >= fixed.sum(1)).all()
    inside = torch.arange(L)[None] < n_t[:, None]
    # right-padded: content before len(x_t), pad after; no pad inside, masks only where masked
    assert (fb.xt[~inside] == PAD).all() and (fb.targets[~inside] == PAD).all() and not fb.masked[~inside].any()
    assert (fb.xt[inside] != PAD).all()
    assert torch.equal(fb.xt == MASK, fb.masked)
    # gaps: non-negative integers, only at slots j <= len(x_t), summing to n - len(x_t) exactly
    assert (fb.gaps >= 0).all() and torch.equal(fb.gaps, fb.gaps.round())
    assert (fb.gaps[torch.arange(L + 1)[None] > n_t[:, None]] == 0).all()
    assert torch.equal(fb.gaps.sum(1).long(), lengths - n_t)
    # positions implied by the gaps: strictly increasing indices into x1, and x1 there = targets
    s = positions_from_gaps(fb.gaps, n_t)
    assert (s[inside] < lengths[:, None].expand(B, L)[inside]).all()
    assert (torch.diff(s, dim=1)[inside[:, 1:]] > 0).all(), "order of present tokens preserved"
    assert torch.equal(torch.gather(x1, 1, s.clamp_min(0))[inside], fb.targets[inside])
    # clean present tokens are x1 there; masked ones are masks
    assert torch.equal(fb.xt[inside & ~fb.masked], fb.targets[inside & ~fb.masked])
    # fixed tokens: present, clean, at every t
    present = torch.zeros(B, L, dtype=torch.bool)
    present[torch.arange(B)[:, None].expand(B, L)[inside], s[inside]] = True
    assert present[fixed].all(), "a fixed token is absent"
    fixed_at = torch.gather(fixed, 1, s.clamp_min(0)) & inside
    assert not fb.masked[fixed_at].any(), "a fixed token is masked"
    assert torch.equal(present.sum(1), n_t)
    return s, present


@pytest.mark.parametrize("pair", list(SCHEDULE_PAIRS))
@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.77, 1.0, None])
def test_flexmdm_interpolant_structure(pair, t_value):
    alpha, beta = SCHEDULE_PAIRS[pair]
    x1, lengths, fixed, t, fb = draw_structured(t_value, alpha, beta, seed=int(1000 * (t_value or 0.5)))
    check_structure(x1, lengths, fixed, fb)
    fixed = fixed & (torch.arange(x1.shape[1])[None] < lengths[:, None])
    if t_value == 0.0:  # x_0: only the fixed tokens, clean, in order
        assert torch.equal(fb.lengths, fixed.sum(1)) and not fb.masked.any()
        for b in range(20):
            assert torch.equal(fb.xt[b, : fb.lengths[b]], x1[b][fixed[b]])
    if t_value == 1.0:  # x_1 = x1: everything present and clean
        assert torch.equal(fb.lengths, lengths) and not fb.masked.any()
        assert torch.equal(fb.xt, x1) and torch.equal(fb.targets, x1) and (fb.gaps == 0).all()


def test_x0_is_empty_without_fixed_tokens():
    x1 = distinct_rows(50, 12)
    lengths = torch.randint(0, 13, (50,), generator=gen(1))
    x1[torch.arange(12)[None] >= lengths[:, None]] = PAD
    fb = flexmdm_interpolant(x1, lengths, torch.zeros(50), Schedule(), Schedule(), MASK, PAD, generator=gen(2))
    assert (fb.lengths == 0).all() and (fb.xt == PAD).all()
    assert torch.equal(fb.gaps[:, 0].long(), lengths) and (fb.gaps[:, 1:] == 0).all()


def test_flexmdm_interpolant_is_reproducible_with_a_generator():
    x1 = distinct_rows(8, 10)
    lengths, t = torch.full((8,), 10), torch.rand(8, generator=gen(0))
    a = flexmdm_interpolant(x1, lengths, t, Schedule(), Schedule(), MASK, PAD, generator=gen(7))
    b = flexmdm_interpolant(x1, lengths, t, Schedule(), Schedule(), MASK, PAD, generator=gen(7))
    c = flexmdm_interpolant(x1, lengths, t, Schedule(), Schedule(), MASK, PAD, generator=gen(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


# ---------------------------------------------------------------------------------------------
# The FlexMDM joint interpolant: statistics against closed forms

def test_p_mask_integral_matches_the_linear_closed_form():
    # alpha = beta = t: T1 = U1, T2 = T1 + U2 (1 - T1); P(T1 <= t < T2) = -(1 - t) log(1 - t)
    for t in (0.05, 0.3, 0.5, 0.9):
        assert p_mask(t, Schedule(), Schedule()) == pytest.approx(-(1 - t) * math.log(1 - t), rel=1e-7)


@pytest.mark.parametrize("pair", list(SCHEDULE_PAIRS))
@pytest.mark.parametrize("t_value", [0.15, 0.5, 0.85])
def test_flexmdm_interpolant_statistics(pair, t_value):
    alpha, beta = SCHEDULE_PAIRS[pair]
    x1 = torch.randint(0, PAD, (ROWS, N), generator=gen(11))
    lengths = torch.full((ROWS,), N)
    fixed = torch.zeros(ROWS, N, dtype=torch.bool)
    fixed[:, [0, 7, N - 1]] = True  # maze-style subgoals: first, last and one inside
    free = N - 3
    t = torch.full((ROWS,), t_value)
    fb = flexmdm_interpolant(x1, lengths, t, alpha, beta, MASK, PAD, fixed=fixed, generator=gen(12))
    a = float(alpha(torch.tensor(t_value, dtype=torch.float64)))

    # len(x_t) - #fixed ~ Binomial(free, alpha(t)): mean, variance and the whole histogram
    k = (fb.lengths - 3).double()
    assert k.min() >= 0
    mean_se = math.sqrt(free * a * (1 - a) / ROWS)
    assert abs(k.mean().item() - free * a) < Z * mean_se
    var = free * a * (1 - a)
    var_se = math.sqrt((free * a * (1 - a) * (1 - 6 * a * (1 - a)) + 2 * var ** 2) / ROWS)  # (mu4 - sigma^4) / rows
    assert abs(k.var().item() - var) < Z * var_se
    pmf = np.array([math.comb(free, i) * a ** i * (1 - a) ** (free - i) for i in range(free + 1)])
    counts = np.bincount(k.long().numpy(), minlength=free + 1)
    expected = ROWS * pmf
    keep = expected >= 5  # pool the sparse tails into one bin
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < chi2_upper(len(obs) - 1), (chi2, len(obs))

    # each non-fixed position present with probability alpha(t), independently of the others
    s, present = check_structure(x1, lengths, fixed, fb)
    rate = present[:, ~fixed[0]].double().mean(0)
    assert (rate - a).abs().max() < Z * math.sqrt(a * (1 - a) / ROWS)

    # P(mask | present, not fixed) = (1 - gamma_t) / alpha_t (appendix E.2.1)
    p = p_mask(t_value, alpha, beta) / a
    fixed_at = torch.gather(fixed, 1, s.clamp_min(0))
    inside = torch.arange(N)[None] < fb.lengths[:, None]
    cand = inside & ~fixed_at
    frac = fb.masked[cand].double().mean().item()
    assert abs(frac - p) < Z * math.sqrt(p * (1 - p) / cand.sum().item()), (frac, p)
    if pair == "linear":
        assert p == pytest.approx(-(1 - t_value) * math.log(1 - t_value) / t_value, rel=1e-6)


def test_interpolant_statistics_with_per_row_times():
    """Each row at its own t: the present fraction of row b tracks alpha(t_b) (not some shared t)."""
    alpha, beta = SCHEDULE_PAIRS["poly2-cosine"]
    rows, n = 4000, 40
    t = sample_times(rows, generator=gen(0))
    x1 = torch.randint(0, PAD, (rows, n), generator=gen(1))
    fb = flexmdm_interpolant(x1, torch.full((rows,), n), t, alpha, beta, MASK, PAD, generator=gen(2))
    a = alpha(t.double())
    var = n * a * (1 - a)
    ok = var >= 1  # standardised residuals are heavy-tailed where the variance is tiny
    resid = ((fb.lengths.double() - n * a) / var.clamp_min(1e-12).sqrt())[ok]
    assert ok.sum() > rows // 2
    assert abs(resid.mean().item()) < Z / math.sqrt(len(resid))
    assert abs(resid.pow(2).mean().item() - 1) < Z * math.sqrt(2.2 / len(resid))
    # the expected masked count given t: n * P(mask)(t); compare summed over the batch
    pm = torch.tensor([p_mask(float(tb), alpha, beta, steps=2001) for tb in t[::40]], dtype=torch.float64)
    obs = fb.masked[::40].sum().item()
    exp = n * pm.sum().item()
    assert abs(obs - exp) < Z * math.sqrt(exp)


# ---------------------------------------------------------------------------------------------
# The MDM interpolant

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_mdm_interpolant(kind):
    beta = Schedule(kind)
    rows, L = 20000, 16
    x1 = torch.randint(0, PAD, (rows, L), generator=gen(0))
    x1[:, 12:] = PAD  # pads are ordinary tokens for the baseline: they get masked too
    fixed = torch.zeros(rows, L, dtype=torch.bool)
    fixed[:, :3] = True  # the prompt
    for t_value in (0.2, 0.6):
        xt, masked = mdm_interpolant(x1, torch.full((rows,), t_value), beta, MASK, fixed=fixed, generator=gen(1))
        assert torch.equal(xt == MASK, masked) and torch.equal(xt[~masked], x1[~masked])
        assert not masked[fixed].any()
        p = 1 - float(beta(torch.tensor(t_value, dtype=torch.float64)))
        frac = masked[~fixed].double().mean().item()
        assert abs(frac - p) < Z * math.sqrt(p * (1 - p) / (~fixed).sum().item())
        assert abs(masked[:, 12:].double().mean().item() - p) < Z * math.sqrt(p * (1 - p) / (rows * 4))
    xt, masked = mdm_interpolant(x1, torch.zeros(rows), beta, MASK, fixed=fixed, generator=gen(2))
    assert torch.equal(masked, ~fixed)
    xt, masked = mdm_interpolant(x1, torch.ones(rows), beta, MASK, fixed=fixed, generator=gen(2))
    assert not masked.any() and torch.equal(xt, x1)


# ---------------------------------------------------------------------------------------------
# The exact g when tokens are independent of the length (the length oracle)

@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.8])
def test_length_posterior_insertions_is_the_mean_gap_of_the_interpolant(t_value):
    """Draw n from a bimodal law, x1 i.i.d. tokens, x_t from the interpolant; per length m of x_t the mean
    of every gap target must be E[n - m | m] / (m + 1) within Z standard errors (closed form), and the
    same check against a wrong law (p shifted by one token) must fail somewhere."""
    probs = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.3, 0.0, 0.1, 0.3])  # n in 0..9
    g = gen(5)
    n = torch.multinomial(probs, ROWS, replacement=True, generator=g)
    x1 = torch.where(torch.arange(9)[None] < n[:, None], torch.randint(0, PAD, (ROWS, 9), generator=g), PAD)
    alpha, beta = SCHEDULE_PAIRS["poly2-cosine"]
    t = torch.full((ROWS,), t_value)
    fb = flexmdm_interpolant(x1, n, t, alpha, beta, MASK, PAD, generator=g)
    want = length_posterior_insertions(probs, fb.lengths, alpha(t))
    wrong = length_posterior_insertions(torch.roll(probs, 1), fb.lengths, alpha(t))
    checked, misfit = 0, 0.0
    for m in fb.lengths.unique().tolist():
        rows = fb.lengths == m
        if rows.sum() < 200:
            continue
        gaps = fb.gaps[rows][:, : m + 1].double()
        se = gaps.std(0) / math.sqrt(rows.sum()) + 1e-12
        assert ((gaps.mean(0) - want[rows][0] / (m + 1)).abs() <= Z * se + 1e-9).all(), (m, gaps.mean(0), want[rows][0])
        misfit = max(misfit, float(((gaps.mean(0) - wrong[rows][0] / (m + 1)).abs() / se).max()))
        checked += 1
    assert checked >= (1 if t_value == 0.0 else 4)
    assert misfit > Z
    if t_value == 0.0:  # x_0 is empty: g is the mean length
        torch.testing.assert_close(want, torch.full_like(want, float((probs * torch.arange(10)).sum())), check_dtype=False)
