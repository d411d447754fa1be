"""
The FlexMDM joint interpolant (paper eq. 6, Def. D.2), the MDM interpolant, and their losses (eq. 7).
Pure tensor functions: no model, no I/O. The losses of a batch (flexmdm_loss, mdm_loss) take the network
as a function of the sequences, net(xt, lengths, cond_time, fixed, at) (model.network for the DiT,
retrofit_llada.py's for LLaDA), and their settings as one LossConfig.

Conventions used across the repo:
- Time runs from t = 0 (the empty sequence, or only the fixed tokens) to t = 1 (the data). alpha(t) is the
  fraction of x1's tokens present at t, beta(t) the fraction of the present ones unmasked.
- A batch of clean sequences x1 is a LongTensor [B, L] right-padded with pad_id; lengths [B].
- fixed [B, L] bool marks tokens exempt from the interpolant: present and clean at every t
  (maze subgoals, a prompt, an infilling prefix/suffix). They get no unmasking loss.
- span [B, 2] (start, end) is the region of x1 a task leaves open to insertion (infilling: the cut span, between
  a fixed prefix and suffix; default the whole sequence). The gaps of x_t outside it are closed: FlexBatch.closed,
  the same gaps the sampler closes around a prompt (sampler.open_gap_mask), which the network reads as an input.
- x_t of row b holds the present tokens of x1[b] in order, right-padded with pad_id.
- Gap slots: a sequence of length n has n+1 gaps. Gap j sits just before token j; gap n is after
  the last token. gaps[b, j] (j <= len_b) counts the tokens of x1 still to be inserted there.
"""
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from configurator import InputError, check_ranges


SCHEDULES = ("linear", "poly", "cosine")


class Schedule:
    """An increasing s(t) on [0, 1] with s(0) = 0 and s(1) = 1.
    linear: t;  poly: t**exponent;  cosine: 1 - cos(pi t / 2)."""

    def __init__(self, kind="linear", exponent=2.0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        self.kind, self.p = kind, (1.0 if kind == "linear" else float(exponent))

    def __call__(self, t):
        if self.kind == "cosine":
            return 1 - torch.cos(math.pi / 2 * t)
        return t ** self.p

    def deriv(self, t):
        if self.kind == "cosine":
            return math.pi / 2 * torch.sin(math.pi / 2 * t)
        return self.p * t ** (self.p - 1)

    def inverse(self, u):
        if self.kind == "cosine":
            return 2 / math.pi * torch.acos(1 - u)
        return u ** (1 / self.p)

    def rate(self, t, eps=1e-4):
        """The rate factor w(t) = s'(t) / (1 - s(t)) (for linear: 1 / (1 - t)), kept finite at t=1."""
        return self.deriv(t) / (1 - self(t)).clamp_min(eps)


def schedules(config):
    """The insertion and unmasking schedules (alpha, beta) of a run's settings (a checkpoint's config)."""
    return (Schedule(config["alpha_schedule"], config["schedule_exponent"]),
            Schedule(config["beta_schedule"], config["schedule_exponent"]))


def sample_times(batch_size, device="cpu", generator=None):
    """Low-discrepancy times: one t uniform in each stratum [i/B, (i+1)/B) (paper F.1)."""
    u = torch.rand(batch_size, device=device, generator=generator)
    return (torch.arange(batch_size, device=device) + u) / batch_size


class FlexBatch(NamedTuple):
    xt: torch.Tensor       # [B, L] present tokens of x1 (clean or mask), right-padded with pad_id
    lengths: torch.Tensor  # [B] len(x_t)
    targets: torch.Tensor  # [B, L] the clean token x1[s_t[j]] behind each position j of x_t
    masked: torch.Tensor   # [B, L] bool, x_t[j] is a mask (these get the unmasking loss)
    gaps: torch.Tensor     # [B, L+1] float, tokens of x1 still to be inserted in each gap
    fixed: torch.Tensor    # [B, L] bool, x_t[j] is a fixed token of x1
    closed: torch.Tensor   # [B, L+1] bool, gap j lies outside the row's span: the task keeps it empty


def flexmdm_interpolant(x1, lengths, t, alpha, beta, mask_id, pad_id, fixed=None, span=None, generator=None):
    """Draw x_t from the joint interpolant (eq. 6) for every row of x1 at its own time t[b].
    Each token independently gets an insertion time T1 = alpha^-1(U1) and an unmasking time
    T2 >= T1 with beta(T2) ~ Uniform(beta(T1), 1); it is absent before T1, a mask in [T1, T2)
    and clean after T2. Hence len(x_t) ~ Binomial(n, alpha(t)) and x_0 is empty.
    span [B, 2] or None (module docstring): which gaps of x_t are closed."""
    B, L = x1.shape
    real = torch.arange(L, device=x1.device)[None, :] < lengths[:, None]
    fixed = torch.zeros_like(real) if fixed is None else fixed & real
    u1, u2 = torch.rand(2, B, L, device=x1.device, generator=generator)
    t1 = alpha.inverse(u1)
    b1 = beta(t1)
    t2 = beta.inverse(b1 + u2 * (1 - b1))
    tt = t[:, None]
    present = real & ((t1 <= tt) | fixed)
    clean = fixed | (t2 <= tt)
    # Compact the present tokens to the left: token i of x1 lands at position (#present before i).
    # Scattered by row, the absent tokens to a spare column L that is dropped (no boolean indexing:
    # its data-dependent size would make the host wait for the device).
    before = torch.cumsum(present, dim=1) - present.long()  # present tokens strictly before i
    dest = torch.where(present, before, L)
    compact = lambda values, fill: torch.full((B, L + 1), fill, dtype=values.dtype, device=x1.device).scatter_(
        1, dest, values)[:, :L]
    xt = compact(torch.where(clean, x1, mask_id), pad_id)
    targets = compact(x1, pad_id)
    masked = compact(present & ~clean, False)
    fixed_t = compact(fixed & present, False)
    # An absent token i still has to be inserted in the gap before the next present token,
    # i.e. gap number (#present before i).
    absent = real & ~present
    gaps = torch.zeros(B, L + 1, device=x1.device).scatter_add_(1, before, absent.float())
    source = compact(torch.arange(L, device=x1.device).expand(B, L), L)  # where each token of x_t sits in x1
    m = present.sum(1)
    return FlexBatch(xt, m, targets, masked, gaps, fixed_t, closed_gaps(source, m, span))


def closed_gaps(source, m, span):
    """Gap j of x_t (between its tokens j-1 and j, which came from x1's positions source[j-1] and source[j]) is
    closed when it lies wholly before the span (source[j] < start) or after it (source[j-1] >= end): an x1 token
    inserted there would sit outside the span. The gap between the last token before the span and the first
    after it stays open (the cut). source [B, L] (L past the last token); m [B]; span [B, 2] or None (none)."""
    B, L = source.shape
    if span is None:
        return torch.zeros(B, L + 1, dtype=torch.bool, device=source.device)
    j = torch.arange(L + 1, device=source.device)[None]
    right = torch.cat([source, source.new_full((B, 1), L)], 1)  # the end gap's right: past every token
    left = torch.cat([source.new_full((B, 1), -1), source], 1)
    return ((right < span[:, :1]) | (left >= span[:, 1:])) & (j <= m[:, None])


def mdm_interpolant(x1, t, beta, mask_id, fixed=None, generator=None):
    """The MDM interpolant: every non-fixed position (pads included: in the baseline pad is an
    ordinary token) is masked independently with probability 1 - beta(t). Returns (xt, masked)."""
    u = torch.rand(x1.shape, device=x1.device, generator=generator)
    masked = u >= beta(t)[:, None]
    if fixed is not None:
        masked &= ~fixed
    return torch.where(masked, torch.full_like(x1, mask_id), x1), masked


def length_posterior_insertions(length_probs, m, a):
    """E[n - m | len(x_t) = m], the tokens still to insert, when x1's tokens are i.i.d. and independent of
    its length n ~ length_probs [N + 1] (p(n), n = 0..N); m [B] lengths of x_t, a [B] = alpha(t).
    len(x_t) ~ Binomial(n, a) (eq. 6), so P(n | m) is proportional to p(n) C(n, m) (1 - a)^(n - m). The
    present tokens then say nothing about where the absent ones are (every m-subset of the n positions is
    as likely), so the n - m absent tokens spread evenly: E[gap_j | x_t] = E[n - m | m] / (m + 1) for
    every gap j, the exact g of such data (Prop. 1)."""
    n = torch.arange(len(length_probs), dtype=torch.float64, device=m.device)
    m, a = m.double()[:, None], a.double()[:, None]
    log_w = (torch.log(length_probs.double())[None] + torch.lgamma(n + 1) - torch.lgamma((n - m).clamp_min(0) + 1)
             + torch.xlogy(n - m, 1 - a))  # C(n, m) up to its 1 / m! factor, which is the same for every n
    log_w = torch.where(n >= m, log_w, -math.inf)
    return (torch.softmax(log_w, dim=1) * (n - m)).sum(1)


TIME_WEIGHTINGS = ("elbo", "flat")


def time_weight(schedule, t, kind="elbo"):
    """The weight of each sequence's loss terms at its time t. "elbo" is eq. 7's rate factor
    s'(t) / (1 - s(t)), which makes the loss a bound on the negative log-likelihood. "flat" is 1:
    each t is its own regression problem (the model sees t), so any positive weight has the same
    minimisers f and g, and the flat one avoids the 1 / (1 - t) spikes near t = 1 that make the
    gradient noisy (it gives more weight to early t, where g decides the length)."""
    return schedule.rate(t) if kind == "elbo" else torch.ones_like(t)


def bregman(x, y, eps=1e-8):
    """phi(x, y) = y - x log y + x log x - x: >= 0, zero at y = x, minimised in y by the mean of x."""
    y = y.clamp_min(eps)
    return y - x * torch.log(y) + torch.xlogy(x, x) - x


def num_targets(lengths, fixed):
    """The x1 tokens the interpolant acts on (real, not fixed): the losses are per such token."""
    real = torch.arange(fixed.shape[1], device=fixed.device)[None] < lengths[:, None]
    return (real & ~fixed).sum().clamp_min(1)


def unmasking_loss(logits, targets, weight):
    """sum_j w_beta(t) * -log f[j, x1[s_t[j]]] over the masked positions passed in (eq. 7, first
    term). logits [M, V], targets [M], weight [M] = w_beta(t) of each position's sequence."""
    return (weight * F.cross_entropy(logits.float(), targets, reduction="none")).sum()


def insertion_loss(g, gaps, weight):
    """sum_j w_alpha(t) * phi(gap_j, g_j) over the gap slots passed in (eq. 7, second term)."""
    return (weight * bregman(gaps, g.float())).sum()



# ----------------------------------------------------------------------------------------------
# The loss of a batch: what train.py optimises, bench.py times and retrofit_llada.py fine-tunes with

@dataclass
class LossConfig:
    """The loss settings, each a setting of train.py (and bench.py) of the same name."""
    model_type: str = "flexmdm"  # flexmdm: eq. 7 | mdm: the masked diffusion baseline
    alpha_schedule: str = "linear"  # insertion schedule (SCHEDULES)
    beta_schedule: str = "linear"  # unmasking schedule
    schedule_exponent: float = 2.0  # for poly schedules
    time_weighting: str = "elbo"  # TIME_WEIGHTINGS (time_weight)
    prior_weight: float = 0.0  # > 0: the insertion term again at an early time, with this weight (flexmdm_loss):
    # on text it lifts g at x_0 from 0.47 to about 0.9 of the mean length (RESULTS.md); on the maze it costs ~60 %
    # more packed positions and does not help at equal compute, so 0 (the paper's loss) is the default
    prior_time: float = 0.0  # > 0: that early time is prior_time * u^2, u ~ U[0, 1); 0: t = 0, the length prior
    behind_weight: float = 0.0  # > 0: the insertion term again on states behind their time, with this weight
    # (behind_times, flexmdm_loss): g where a sampler that fell behind goes; 0: the paper's loss
    behind_lag: float = 0.5  # those states are drawn at s = u t, u ~ U[behind_lag, 1)

    def __post_init__(self):
        for name, allowed in (("model_type", ("flexmdm", "mdm")), ("alpha_schedule", SCHEDULES),
                              ("beta_schedule", SCHEDULES), ("time_weighting", TIME_WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        check_ranges(vars(self), dict(schedule_exponent=">0", behind_lag="[0,1)"))
        if min(self.prior_time, self.prior_weight, self.behind_weight) < 0 or (
                (self.prior_weight or self.behind_weight) and self.model_type == "mdm"):
            raise InputError(f"prior_weight={self.prior_weight}, prior_time={self.prior_time} and behind_weight="
                             f"{self.behind_weight} must be >= 0, prior_weight and behind_weight 0 for the MDM (it has "
                             "no insertion head)")
        self.alpha, self.beta = schedules(vars(self))

    def eq7(self):
        """The same loss with eq. 7's own weighting and no extra rows: what validation reports."""
        return replace(self, time_weighting="elbo", prior_weight=0.0, behind_weight=0.0)


def behind_times(batch_size, cfg, device="cpu", generator=None):
    """The times of rows behind their time (flexmdm_loss): t (sample_times), s = u t with u ~ U[behind_lag, 1),
    and log r = log((1 - alpha(t)) / (1 - alpha(s))), the tilt of their sequences' lengths: each such row's x1
    is drawn from the data with probability proportional to r^len(x1) (data.LengthTilt), then x_s from the
    interpolant at s, and the network is asked at t.

    Why the minimiser stays eq. 7's: given x1 of length n, the interpolant puts a state x with m present
    tokens at time t with probability (1 - alpha(t))^(n - m) alpha(t)^m times, for each present token, the
    chance of its status (mask or clean), which is the same for every token and read off x. So, as functions
    of (x1, alignment), p_t(x1, z) / [p_data(x1) r^n p_s(z | x1)] = [alpha(t) (1 - alpha(s)) / (alpha(s)
    (1 - alpha(t)))]^m times the ratio of the present tokens' status chances: a function of x alone. The law of
    x1 and its alignment given x is therefore the interpolant's own posterior at t, whose mean of the gaps is
    the minimiser g(x, t) (Prop. 1); only the law of the states changes, tilted toward states with fewer
    tokens than t implies, the ones a sampler reaches after an early shortfall. No importance weight is needed:
    the tilt of the lengths is drawn, not weighted."""
    t = sample_times(batch_size, device=device, generator=generator)
    u = cfg.behind_lag + (1 - cfg.behind_lag) * torch.rand(batch_size, device=device, generator=generator)
    s = u * t
    return t, s, torch.log1p(-cfg.alpha(t)) - torch.log1p(-cfg.alpha(s))


def flexmdm_loss(net, x1, lengths, fixed, t, cfg, mask_id, pad_id, generator=None, behind=None, span=None):
    """Eq. 7 for one batch, summed over sequences and divided by the number of x1 tokens that the
    interpolant acts on (non-fixed). Returns the (loss, unmask, insert) terms.
    cfg.prior_weight > 0 adds, with that weight, the insertion term of every sequence again at an early time
    t = prior_time * u^2, u ~ U[0, 1): with prior_time = 0 its x_0 (empty, or its fixed tokens), the length
    prior g(x_0, 0) = E[gaps | x_0] where sampling starts, which the interpolant reaches only with
    probability (1 - alpha(t))^n; with prior_time > 0 the early states where the length is decided. Each
    (x_t, t) is its own regression problem, so the minimisers stay those of eq. 7; packed, it costs one
    position per sequence plus its few early tokens.
    behind = (x1, lengths, fixed, t, s) adds rows behind their time, with weight cfg.behind_weight times the
    time weighting at t: x_t drawn at s, the network asked at t, the insertion term only (behind_times has the
    construction and why the minimiser stays eq. 7's); their span is their whole sequence.
    span [B, 2] or None: the region each row leaves open (infilling rows, data.keep_spans); the network is told
    which gaps of x_t lie outside it (FlexBatch.closed)."""
    alpha, beta = cfg.alpha, cfg.beta
    n = num_targets(lengths, fixed)
    whole = lambda lengths: torch.stack([torch.zeros_like(lengths), lengths], 1)
    span = whole(lengths) if span is None else span
    weight_alpha = time_weight(alpha, t, cfg.time_weighting)
    rows, drawn = len(x1), t  # drawn: the time each row's x_t is drawn at; the network is asked at t
    if cfg.prior_weight:  # the same sequences again at an early time, the insertion term only
        early = cfg.prior_time * torch.rand(t.shape, device=t.device, generator=generator) ** 2 if cfg.prior_time else 0 * t
        x1, lengths, fixed, span = (torch.cat([z, z]) for z in (x1, lengths, fixed, span))
        t = drawn = torch.cat([t, early])
        weight_alpha = torch.cat([weight_alpha, torch.full_like(weight_alpha, cfg.prior_weight)])
    if behind is not None:
        x1, lengths, fixed = (torch.cat([z, extra]) for z, extra in zip((x1, lengths, fixed), behind[:3]))
        span = torch.cat([span, whole(behind[1])])
        t, drawn = torch.cat([t, behind[3]]), torch.cat([drawn, behind[4]])
        weight_alpha = torch.cat([weight_alpha, cfg.behind_weight * time_weight(alpha, behind[3], cfg.time_weighting)])
    fb = flexmdm_interpolant(x1, lengths, drawn, alpha, beta, mask_id, pad_id, fixed=fixed, span=span, generator=generator)
    b, j = fb.masked[:rows].nonzero(as_tuple=True)  # the one host sync of the loss: the number of masks
    logits, g = net(fb.xt, fb.lengths, alpha(t), fb.fixed, (b, j), fb.closed)
    unmask = unmasking_loss(logits, fb.targets[b, j], time_weight(beta, t, cfg.time_weighting)[b])
    gap = torch.arange(g.shape[1], device=g.device)[None] <= fb.lengths[:, None]  # the gaps of each row; the rest weighs 0
    insert = insertion_loss(torch.where(gap, g, 0.0), fb.gaps, torch.where(gap, weight_alpha[:, None], 0.0))
    return (unmask + insert) / n, unmask.detach() / n, insert.detach() / n


def mdm_loss(net, x1, lengths, fixed, t, cfg, mask_id, generator=None):
    """The MDM loss: w_beta(t) * cross-entropy at the masked positions (pads included: they are the
    MDM's tokens), divided like flexmdm_loss by the non-fixed x1 tokens, so the two compare."""
    xt, masked = mdm_interpolant(x1, t, cfg.beta, mask_id, fixed=fixed, generator=generator)
    b, j = masked.nonzero(as_tuple=True)  # one host sync: the number of masks
    logits, _ = net(xt, None, cfg.beta(t), fixed, (b, j))
    unmask = unmasking_loss(logits, x1[b, j], time_weight(cfg.beta, t, cfg.time_weighting)[b])
    n = num_targets(lengths, fixed)
    return unmask / n, unmask.detach() / n, torch.zeros((), device=x1.device)


def batch_loss(net, x1, lengths, fixed, cfg, mask_id, pad_id, generator=None, t=None, behind=None, span=None):
    """The loss of a batch of clean sequences at times t (default: low-discrepancy times, sample_times), with
    FlexMDM's rows behind their time and the rows' open spans (flexmdm_loss): (loss, unmask, insert). The MDM
    has no gaps: its infilling rows close the canvas with fixed pads instead (data.keep_spans)."""
    t = sample_times(len(x1), device=x1.device, generator=generator) if t is None else t
    if cfg.model_type == "mdm":
        return mdm_loss(net, x1, lengths, fixed, t, cfg, mask_id, generator)
    return flexmdm_loss(net, x1, lengths, fixed, t, cfg, mask_id, pad_id, generator, behind, span)
