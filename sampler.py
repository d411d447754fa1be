"""
The reverse process: sample a FlexMDM (or the MDM baseline) by simulating its CTMC (paper section 4,
appendix E.1, Algorithms 1-3). generate(model_fn, num_samples, cfg) returns the samples as lists of token
ids; sample.py is its command line, and the LLaDA retrofit, evaluate.py's checks of g (diagnostics.py)
and the exact-oracle tests drive it with their own model functions.

The model. model_fn(x [B, L] right-padded with pad_id, t [B], fixed [B, L] bool: the prompt's tokens,
wherever insertions moved them, closed [B, L+1] bool or None (the MDM): the gaps where nothing may be inserted
(open_gap_mask), as training marks them (interpolant.closed_gaps)) -> (logits [B, L, V], g [B, L+1] or None
for the MDM), with row b's tokens x[b, :len_b] and g[b, j], j <= len_b, the insertion expectation of gap j
(gap j sits just before token j, gap len_b after the last). Instead of the logits a model may return
f_at(where [B, L] bool) -> logits [where.sum(), V], and the sampler then asks for f only where it reads it
(DiT.sampler_fn does: at V = 50k the head costs more than the whole network).

The time grid. A FlexMDM with N steps calls the model at t_k = k/(N-1), k = 0..N-1 (the grid 0 = t_0 < ...
< t_{N-1} = 1 of Algorithm 1 and Def. E.1, so insertion covers all of [0, 1]; the call at t = 1 only fills
the masks left); the MDM at t = k/N. With grid_power p the calls are at (k/(N-1))^p (the MDM: (k/N)^p) and
tau_k is the step to the next call: p > 1 spends more calls early, where the length is decided (a tau-leap
holds g fixed over its step; with the exact f and g of WikiText's length law, 64 uniform steps leave a
length W1 of 4.7-6.2 tokens, p = 2 leaves 1.1-2.9: scripts/length_oracle.py). The default is the paper's
uniform grid (p = 2 hurts the maze at 64 steps: fewer calls late, where the cells are drawn).

One step runs the model once on x_t and then, from that one call:
- unmasks. Vanilla (tau-leaping) turns each mask into a token drawn from f with probability lam exp(-lam),
  lam = tau w_beta(t) (unmask="poisson": the paper's rule, "exactly one Poisson event"), or with the exact
  probability (beta(t + tau) - beta(t)) / (1 - beta(t)) (unmask="exact"). Adaptive draws K ~ Poisson(tau
  w_beta(t) #masks) and unmasks the K most confident masks (confidence: top_prob, margin, entropy or
  position), with gamma1 > 0 among the leftmost min(floor(gamma1 K), gamma2) only (the sliding window of
  appendix E.3). temperature scales the logits (0 = argmax).
- inserts Poisson(tau w_alpha(t) g_j) masks into every open gap j (FlexMDM), never past max_len (a row
  that would overflow keeps a uniformly random subset of its proposed masks).
The last step inserts nothing and fills every remaining mask (final="draw" from f, or "argmax"). The MDM
starts from max_len masks after the prompt and only unmasks; pad is one of its tokens, and a sample ends
at its first pad.

Prompts are fixed tokens, never masked or removed; open_gaps says where insertion may happen around them
(default: everywhere). Finished rows leave the batch, and the model runs on the live rows only: exactly
when a row has no masks and nothing can be inserted any more (all its gaps closed, at target_len, or an
MDM row), and with early_stop = eps > 0 also a FlexMDM row without masks whose expected future insertions,
sum over the remaining inserting steps of tau w_alpha(t) sum_j g_j, fall below eps (an approximation: g is
held at its current value; on the exact oracle, eps 0.05: TV to p1 0.047 against 0.036 without it).

Length control (FlexMDM; lengths count the prompt):
- target_len = n: every sample exactly n long. Given the final length, the posterior q_t(x1 | x) is
  proportional to p1(x1) (1 - alpha_t)^(n - len(x)) #{alignments} (appendix E.2.1) and no longer depends on
  t; once len(x) = n it is q_1, the model at t = 1. So the whole canvas of n - len(prompt) masks is inserted
  at step 0 (over the open gaps in proportion to g) and then only unmasked, the model asked at t = 1.
  Exact for an exact model when the masks have one place to go (no prompt, or one open gap); with several
  open gaps the split by the unconditioned g is an approximation, and a row whose gaps are all closed keeps
  its length. For a learned network, masks at t = 1 lie outside its training distribution. Rescaling g so
  that the expected length hits n on the usual grid was tried and rejected (TV 0.28-0.49 to p1 on the oracle:
  f and g average over all lengths).
- min_len = n: every sample at least n long, without rejection: where sum_j g_j = E[n1 - len(x_t) | x_t]
  falls short of n - len(x_t), g is scaled up to that total, and the last inserting step tops any row still
  short up to n. An approximation (measured TV 0.05-0.13 to p1 conditioned on the length on the oracle).

Infilling: infill(model_fn, num_samples, cfg, pieces) fills the gaps between fixed pieces of tokens (sample.py's
text prompts): generate with the pieces as the prompt, open at the gaps between them only, and the final fixed
flags telling which tokens filled which gap (generate_with_fixed). The MDM baseline gets a fixed number of
masks per gap instead, in a canvas closed after the last piece. generate(..., trace=[None] * k) records the
first k samples step by step (what was inserted and unmasked at each step), for sample.py --trace=True.

Randomness: one `generator` drives every batch in turn (None: torch's global one), or with `seed` batch i
(samples i * batch_size onwards) draws from its own generator seeded with batch_seed(seed, i), so the
samples depend on seed and batch_size only; with rank and world (torchrun) a process makes the batches
i with i % world == rank.
"""
import itertools
import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tqdm import tqdm

from configurator import InputError, check_ranges
from interpolant import Schedule

SAMPLERS, UNMASK_RULES, FINALS = ("vanilla", "adaptive"), ("poisson", "exact"), ("draw", "argmax")
CONFIDENCES = ("top_prob", "margin", "entropy", "position")


@dataclass
class SamplerConfig:
    """The sampler's settings (sample.py's of the same names) and the model's vocabulary and length."""
    max_len: int  # the longest sample, prompt included
    mask_id: int
    pad_id: int
    model_type: str = "flexmdm"  # flexmdm | mdm
    steps: int = 256  # model calls per sample
    alpha: Schedule = field(default_factory=Schedule)  # the insertion schedule the model was trained with
    beta: Schedule = field(default_factory=Schedule)  # the unmasking schedule
    sampler: str = "vanilla"  # SAMPLERS
    unmask: str = "poisson"  # vanilla's rule: UNMASK_RULES
    confidence: str = "top_prob"  # adaptive: CONFIDENCES
    gamma1: float = 0.0  # adaptive sliding window: the leftmost min(floor(gamma1 * K), gamma2) masks; 0 = off
    gamma2: int = 64
    temperature: float = 1.0  # 0 = argmax
    final: str = "draw"  # the last step: FINALS
    banned: tuple = ()  # tokens never drawn (besides mask, and pad for FlexMDM)
    early_stop: float = 0.0  # FlexMDM: a row without masks stops once its expected future insertions are below this
    min_len: int = 0  # FlexMDM: every sample at least this long; 0 = off
    target_len: int = 0  # FlexMDM: every sample exactly this long; 0 = off
    grid_power: float = 1.0  # the calls at t_k = (k / (N - 1))^grid_power
    batch_size: int = 0  # samples per batch, the unit of work and of random streams; 0 = one batch
    device: str = "cpu"
    progress: bool = False  # a bar of the steps and samples/s on a terminal

    def __post_init__(self):
        for name, allowed in (("model_type", ("flexmdm", "mdm")), ("sampler", SAMPLERS), ("unmask", UNMASK_RULES),
                              ("confidence", CONFIDENCES), ("final", FINALS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        min_steps = 2 if self.model_type == "flexmdm" else 1
        if self.steps < min_steps or self.temperature < 0 or self.grid_power <= 0:
            raise InputError(f"need steps >= {min_steps}, temperature >= 0 and grid_power > 0 (got steps={self.steps}, "
                             f"temperature={self.temperature}, grid_power={self.grid_power})")
        check_ranges(vars(self), dict(gamma1=">=0", gamma2=">0", batch_size=">=0"))
        if self.early_stop < 0:
            raise InputError(f"early_stop must be >= 0 (0 = off), got {self.early_stop}")
        if (self.min_len or self.target_len) and self.model_type != "flexmdm":
            raise InputError("min_len and target_len are FlexMDM options (the MDM's canvas is max_len)")
        if self.min_len < 0 or self.target_len < 0 or max(self.min_len, self.target_len) > self.max_len:
            raise InputError(f"need 0 <= min_len, target_len <= max_len {self.max_len} "
                             f"(got {self.min_len}, {self.target_len})")
        if self.target_len and self.min_len > self.target_len:
            raise InputError(f"min_len {self.min_len} > target_len {self.target_len}")
        # every token never drawn, as the index f_reader fills with -inf: mask, banned, and pad for FlexMDM
        banned = {self.mask_id, *self.banned} | ({self.pad_id} if self.model_type == "flexmdm" else set())
        self.banned_ids = torch.tensor(sorted(banned), device=self.device)


@dataclass
class State:
    """The live rows of a batch, each tensor indexed by row."""
    x: torch.Tensor  # [B, max_len] tokens, right-padded with pad_id
    fixed: torch.Tensor  # [B, max_len] bool, the prompt's tokens
    open_left: torch.Tensor  # [B, max_len] bool, insertion may happen just before this token
    open_end: torch.Tensor  # [B] bool, ... after the last token
    lengths: torch.Tensor  # [B]
    prompt_len: torch.Tensor  # [B]
    index: torch.Tensor  # [B] the row's sample, its position in the output
    to_come: torch.Tensor  # [B] expected insertions still to come, from the last g (early_stop); inf before it

    def rows(self, keep):
        """The rows where keep [B] (bool) holds."""
        return State(*(getattr(self, f.name)[keep] for f in fields(self)))


# ----------------------------------------------------------------------------------------------
# Unmasking

def tempered(logits, temperature):
    """f at temperature T [M, V]: softmax(logits / T); T = 0 (argmax) leaves the logits as they are."""
    return torch.softmax(logits / temperature if temperature > 0 else logits, dim=-1)


def draw(logits, temperature, greedy, generator):
    """One token per row of logits [M, V]: argmax when greedy, else a categorical draw from the
    tempered f, by inverting its CDF (float64, so no token's share is lost to rounding): at V = 50k
    3x faster on a CPU than torch.multinomial, which draws V exponentials per row."""
    if greedy or logits.shape[0] == 0:
        return logits.argmax(-1)
    cdf = tempered(logits, temperature).cumsum(-1, dtype=torch.float64)
    if not torch.isfinite(cdf[:, -1]).all():
        raise InputError("f is not a distribution at some mask (NaN or inf logits): a diverged checkpoint?")
    # u in (0, total]: the first index with cdf >= u always has f > 0, and one always exists
    u = (1 - torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device, generator=generator)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


def confidence_scores(probs, masks, kind):
    """Higher is more confident, -inf where x holds no mask: [B, L]. probs [M, V] is f at the masks."""
    if kind == "position":
        score = -torch.arange(masks.shape[1], device=masks.device, dtype=torch.float).expand(masks.shape)
        return score.masked_fill(~masks, -math.inf)
    if kind == "top_prob":
        conf = probs.max(-1).values
    elif kind == "margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    else:  # entropy
        conf = (probs * probs.clamp_min(1e-30).log()).sum(-1)
    score = torch.full(masks.shape, -math.inf, device=masks.device)
    score[masks] = conf.float()
    return score


def adaptive_choice(probs, masks, rate, cfg, generator):
    """Which masks to unmask this step (adaptive, appendix E.1): K ~ Poisson(rate * #masks) per row,
    the K most confident masks, among the leftmost min(floor(gamma1 * K), gamma2) if gamma1 > 0."""
    n_masks = masks.sum(1)
    k = torch.poisson(rate * n_masks.float(), generator=generator).long().clamp(max=n_masks)
    score = confidence_scores(probs, masks, cfg.confidence)
    if cfg.gamma1 > 0:
        # never narrower than K itself, so that K masks are unmasked as drawn
        window = torch.minimum((cfg.gamma1 * k).floor().long(), torch.full_like(k, cfg.gamma2)).clamp_min(k)
        rank_from_left = masks.long().cumsum(1) - 1
        score = score.masked_fill(rank_from_left >= window[:, None], -math.inf)
    order = score.argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros_like(masks)
    chosen.scatter_(1, order, torch.arange(masks.shape[1], device=masks.device)[None] < k[:, None])
    return chosen & masks


def f_reader(logits, banned):
    """f as a function of where it is read, f_at(where [B, L] bool) -> logits [where.sum(), V] in
    float with the banned tokens at -inf, from a model's dense logits [B, L, V] or its own f_at."""
    def f_at(where):
        at = logits(where) if callable(logits) else logits[where]
        return at.float().index_fill(1, banned, -math.inf)
    return f_at


def vanilla_choice(masks, t, tau, beta, unmask, generator):
    """The masks that tau-leaping unmasks this step [B, L], chosen without reading f."""
    if unmask == "exact":
        p = (beta(t + tau) - beta(t)) / (1 - beta(t))
    else:  # exactly one Poisson event among the V entries: total rate lam, P = lam * exp(-lam)
        lam = tau * beta.rate(t)
        p = lam * torch.exp(-lam)
    u = torch.rand(masks.shape, device=masks.device, generator=generator)
    return masks & (u < p[:, None])


def unmask_step(x, masks, f_at, t, tau, cfg, last, generator):
    """Unmask in place the masks of x [B, L] (masks [B, L]); f_at(where) is f where it is read
    (f_reader). Vanilla chooses the masks without reading f, so f is read at the chosen ones only;
    adaptive reads it at every mask for the confidence."""
    if cfg.sampler == "adaptive" and not last:
        at_masks = f_at(masks)
        chosen = adaptive_choice(tempered(at_masks, cfg.temperature), masks, tau * cfg.beta.rate(t), cfg, generator)
        logits = at_masks[chosen[masks]]
    else:
        chosen = masks if last else vanilla_choice(masks, t, tau, cfg.beta, cfg.unmask, generator)
        logits = f_at(chosen)
    greedy = cfg.temperature == 0 or (last and cfg.final == "argmax")
    x[chosen] = draw(logits, cfg.temperature, greedy, generator)


# ----------------------------------------------------------------------------------------------
# Insertion

def open_gap_mask(fixed, open_left, open_end, lengths):
    """Gap j (before token j; gap len after the last) is open unless both of its neighbours are
    prompt tokens and the prompt did not open it. [B, L+1]."""
    B, L = fixed.shape
    j = torch.arange(L + 1, device=fixed.device)
    real = j[None, :L] < lengths[:, None]  # the end gap's right neighbour is the end, not a pad slot
    right_fixed = torch.cat([fixed | ~real, torch.ones_like(fixed[:, :1])], 1)
    left_fixed = torch.cat([torch.ones_like(fixed[:, :1]), fixed], 1)
    opened_end = (j == lengths[:, None]) & open_end[:, None]  # the end gap, where the prompt opened it
    opened = torch.cat([open_left & real, torch.zeros_like(open_left[:, :1])], 1) | opened_end
    return (opened | ~right_fixed | ~left_fixed) & (j <= lengths[:, None])


def gap_masks(state, width):
    """The open gaps of the state's rows [B, width+1] (open_gap_mask), and the closed ones, which the network
    is told (model.DiT.forward; training marks the same gaps, interpolant.closed_gaps)."""
    gaps = open_gap_mask(state.fixed[:, :width], state.open_left[:, :width], state.open_end, state.lengths)
    return gaps, ~gaps & (torch.arange(width + 1, device=gaps.device) <= state.lengths[:, None])


def cap_insertions(counts, room, generator):
    """Thin the insertion counts of rows that would exceed max_len: keep a uniformly random subset
    of the proposed masks (row-wise), so no gap is favoured."""
    over = (counts.sum(1) > room).nonzero().flatten().tolist()
    for b in over:
        items = torch.repeat_interleave(torch.arange(counts.shape[1], device=counts.device), counts[b])
        keep = items[torch.randperm(len(items), generator=generator, device=counts.device)[: int(room[b])]]
        counts[b] = torch.bincount(keep, minlength=counts.shape[1])
    return counts


def insert_masks(state, counts, mask_id, pad_id):
    """Insert counts[b, j] masks into gap j of every row of the state, in place."""
    x, fixed, open_left, lengths = state.x, state.fixed, state.open_left, state.lengths
    B, L = x.shape
    j = torch.arange(L, device=x.device)
    real = j[None] < lengths[:, None]
    new_index = j[None] + counts[:, :L].cumsum(1)  # token i moves past the masks of gaps 0..i
    state.lengths = lengths + counts.sum(1)
    state.x = torch.where(j[None] < state.lengths[:, None], mask_id, pad_id)
    state.fixed, state.open_left = torch.zeros_like(fixed), torch.ones_like(open_left)
    rows = torch.arange(B, device=x.device)[:, None].expand(B, L)
    dest = (rows[real], new_index[real])
    state.x[dest], state.fixed[dest], state.open_left[dest] = x[real], fixed[real], open_left[real]


def gap_shares(g, gaps):
    """g [B, L+1] over the open gaps (gaps [B, L+1] bool) normalised per row; uniform where it sums to 0."""
    g = g * gaps
    total = g.sum(1, keepdim=True)
    return torch.where(total > 0, g / total.clamp_min(1e-30), gaps / gaps.sum(1, keepdim=True).clamp_min(1))


def top_up(counts, shares, shortfall, generator):
    """Add shortfall[b] masks to row b of counts [B, L+1], over the gaps drawn from shares (multinomial);
    rows without an open gap (all shares 0) cannot grow and are left alone."""
    for b in ((shortfall > 0) & (shares.sum(1) > 0)).nonzero().flatten().tolist():
        gaps = torch.multinomial(shares[b], int(shortfall[b]), replacement=True, generator=generator)
        counts[b] += torch.bincount(gaps, minlength=counts.shape[1])
    return counts


def insertion_counts(g, gaps, lengths, rate, cfg, last_insertion, generator):
    """Masks to insert per gap [B, L+1] and the g they were drawn with (module docstring, length control).
    target_len (called at step 0 only): the whole canvas at once. Otherwise Poisson(tau w_alpha(t) g_j) in
    every open gap j, capped at max_len; with min_len, g scaled up where its total falls short."""
    if cfg.target_len:
        counts = torch.zeros_like(gaps, dtype=torch.long)
        return top_up(counts, gap_shares(g, gaps), cfg.target_len - lengths, generator), g
    if cfg.min_len:
        g = gap_shares(g, gaps) * torch.maximum((g * gaps).sum(1), cfg.min_len - lengths)[:, None]
    counts = torch.poisson(rate[:, None] * g, generator=generator).long() * gaps
    counts = cap_insertions(counts, cfg.max_len - lengths, generator)
    if cfg.min_len and last_insertion:
        counts = top_up(counts, gap_shares(g, gaps), cfg.min_len - lengths - counts.sum(1), generator)
    return counts, g


# ----------------------------------------------------------------------------------------------
# A batch, from its prompts to its samples

def time_grid(steps, model_type, power=1.0):
    """The times of the model calls t_k and the step lengths tau_k = t_{k+1} - t_k, k = 0..steps-1 (lists).
    FlexMDM: t_k = (k / (N - 1))^power, so the last call is at t = 1 (it only fills the masks left: tau 0);
    MDM: t_k = (k / N)^power, the last step running to 1 (module docstring)."""
    n = steps - 1 if model_type == "flexmdm" else steps
    edges = [(k / n) ** power for k in range(n + 1)]
    taus = [b - a for a, b in zip(edges, edges[1:])]
    return edges[:steps], taus + [0.0] * (steps - len(taus))


def insertion_tail(alpha, times, taus):
    """tail[k] = sum_{k < k' < steps - 1} tau_k' w_alpha(t_k'): the insertion rate per unit of g that the
    steps after step k still apply (the last step inserts nothing). [steps]"""
    rate = torch.tensor(taus) * alpha.rate(torch.tensor(times))
    rate[-1] = 0
    return rate.flip(0).cumsum(0).flip(0) - rate


def initial_state(prompts, open_gaps, n, cfg):
    """The state of n rows at their prompts: FlexMDM starts from the prompt; the MDM from the prompt
    followed by masks."""
    x = torch.full((n, cfg.max_len), cfg.pad_id, dtype=torch.long)
    fixed = torch.zeros((n, cfg.max_len), dtype=torch.bool)
    open_left = torch.ones((n, cfg.max_len), dtype=torch.bool)
    open_end = torch.ones(n, dtype=torch.bool)
    lengths = torch.zeros(n, dtype=torch.long)
    for b in range(n):
        p = list(prompts[b]) if prompts is not None else []
        if len(p) > cfg.max_len or (cfg.model_type == "flexmdm" and cfg.mask_id in p):
            raise InputError(f"prompt {b} has length {len(p)} > max_len {cfg.max_len}" if len(p) > cfg.max_len
                             else f"prompt {b} contains mask_id {cfg.mask_id}: FlexMDM prompts are clean tokens")
        x[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        fixed[b, :len(p)] = torch.tensor([v != cfg.mask_id for v in p], dtype=torch.bool)
        if open_gaps is not None:
            opened = set(open_gaps[b])
            open_left[b, :len(p)] = torch.tensor([i in opened for i in range(len(p))], dtype=torch.bool)
            open_end[b] = len(p) in opened
        lengths[b] = len(p)
        if cfg.model_type == "mdm":
            x[b, len(p):] = cfg.mask_id
            lengths[b] = cfg.max_len
    prompt_len = torch.tensor([len(p) for p in prompts] if prompts is not None else [0] * n)
    state = (x, fixed, open_left, open_end, lengths, prompt_len, torch.arange(n), torch.full((n,), math.inf))
    return State(*(z.to(cfg.device) for z in state))


def finish(x, fixed, length, prompt_len, cfg):
    """The sample and its fixed flags, as lists: FlexMDM the whole sequence; MDM cut at its first pad after the
    prompt."""
    seq = x[:length].tolist()
    if cfg.model_type == "mdm":
        tail = seq[prompt_len:]
        seq = seq[:prompt_len] + (tail[:tail.index(cfg.pad_id)] if cfg.pad_id in tail else tail)
    return seq, fixed[:len(seq)].tolist()


def finished(state, cfg):
    """Rows that leave the batch [B]: no masks and no insertion to come, exactly (the MDM never inserts; all
    gaps closed; at target_len) or by the estimate (early stop: expected future insertions < early_stop)."""
    done = ~(state.x == cfg.mask_id).any(1)
    if cfg.model_type == "mdm":
        return done
    closed = ~open_gap_mask(state.fixed, state.open_left, state.open_end, state.lengths).any(1)
    at_target = state.lengths >= cfg.target_len if cfg.target_len else torch.zeros_like(closed)
    return done & (closed | at_target | (state.to_come < cfg.early_stop))


def retire(state, done, samples, cfg):
    """Move the finished rows' (sample, fixed flags) into samples (at their original index); returns the other rows."""
    for b in done.nonzero().flatten().tolist():
        samples[int(state.index[b])] = finish(state.x[b], state.fixed[b], int(state.lengths[b]),
                                              int(state.prompt_len[b]), cfg)
    return state.rows(~done)


# ----------------------------------------------------------------------------------------------
# The trace: the state after every step, for a few samples (generate's trace)

def start_trace(trace, state):
    """trace[i] = {"start": sample i's first state, "fixed": its fixed flags, "steps": []} for the rows whose
    sample is traced (index < len(trace))."""
    for b in (state.index < len(trace)).nonzero().flatten().tolist():
        n = int(state.lengths[b])
        trace[int(state.index[b])] = {"start": state.x[b, :n].tolist(), "fixed": state.fixed[b, :n].tolist(),
                                      "steps": []}


def snapshot(state, trace):
    """The traced rows' tokens and lengths before a step (None when no live row is traced)."""
    rows = state.index < len(trace) if trace else None
    return None if rows is None or not rows.any() else (rows, state.x[rows], state.lengths[rows])


def record_step(trace, before, state, counts, t, mask_id):
    """Append to trace the step that took the traced rows from before (snapshot) to state: "t" the time the
    step reached, "unmasked" [[position, token]] and "inserted" [position] (the new masks), both positions in
    the state after the step, and "tokens" that state. counts [B, L+1]: the masks inserted per gap, or None."""
    if before is None:
        return
    rows, x_before, len_before = before
    for r, b in enumerate(rows.nonzero().flatten().tolist()):
        n, now = int(len_before[r]), state.x[b, :int(state.lengths[b])]
        moved = torch.arange(n, device=now.device)  # where token i of the state before went
        if counts is not None:
            moved = moved + counts[b, :n].cumsum(0)
        revealed = ((x_before[r, :n] == mask_id) & (now[moved] != mask_id)).nonzero().flatten()
        inserted = torch.ones(len(now), dtype=torch.bool, device=now.device).index_fill(0, moved, False)
        trace[int(state.index[b])]["steps"].append(
            {"t": t, "unmasked": [[int(moved[i]), int(now[moved[i]])] for i in revealed],
             "inserted": inserted.nonzero().flatten().tolist(), "tokens": now.tolist()})


@torch.no_grad()
def generate_batch(model_fn, n, cfg, prompts, open_gaps, generator, bar, trace):
    """n (sample, fixed flags) pairs of lists from one random stream: the steps of Algorithm 1 on the live rows
    (module docstring), the model called once per step on the rows' current width; bar advances one step at a
    time; the first len(trace) samples are traced into trace (generate's trace)."""
    state = initial_state(prompts, open_gaps, n, cfg)
    start_trace(trace, state)
    times, taus = time_grid(cfg.steps, cfg.model_type, cfg.grid_power)
    tail = insertion_tail(cfg.alpha, times, taus).to(cfg.device)
    samples = [None] * n
    for k in range(cfg.steps):
        done = finished(state, cfg)
        if done.any():
            state = retire(state, done, samples, cfg)
        if not len(state.index):
            break
        B, lengths = len(state.index), state.lengths
        t, tau = torch.full((B,), times[k], device=cfg.device), taus[k]
        width = max(1, int(lengths.max()))
        x, fixed = state.x[:, :width], state.fixed[:, :width]  # views: unmask_step writes into the state
        gaps, closed = gap_masks(state, width) if cfg.model_type == "flexmdm" else (None, None)
        # target_len: after step 0 every row is at its final length, whose posterior is q_1 (appendix
        # E.2.1: given n = len(x), (1 - alpha_t)^(n - len(x)) = 1 at every t), so the model is asked at t = 1
        logits, g = model_fn(x, torch.ones_like(t) if cfg.target_len and k > 0 else t, fixed, closed)
        last, before, counts = k == cfg.steps - 1, snapshot(state, trace), None
        unmask_step(x, x == cfg.mask_id, f_reader(logits, cfg.banned_ids), t, tau, cfg, last, generator)
        if cfg.model_type == "flexmdm" and not last and not (cfg.target_len and k > 0):
            counts, g = insertion_counts(g[:, : width + 1].float().clamp_min(0), gaps, lengths,
                                         tau * cfg.alpha.rate(t), cfg, k == cfg.steps - 2, generator)
            below_floor = lengths + counts.sum(1) < cfg.min_len
            state.to_come = torch.where(below_floor, math.inf, (g * gaps).sum(1) * tail[k])
            insert_masks(state, torch.nn.functional.pad(counts, (0, cfg.max_len - width)), cfg.mask_id, cfg.pad_id)
        record_step(trace, before, state, counts, times[k] + tau, cfg.mask_id)
        bar.update(1)
    retire(state, torch.ones_like(state.index, dtype=torch.bool), samples, cfg)
    return samples


# ----------------------------------------------------------------------------------------------
# Many batches

def batch_seed(seed, index):
    """The seed of batch `index`'s random stream: numpy's SeedSequence hashes (seed, index), so nearby
    seeds and batch indices get unrelated streams."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def check_call(cfg, num_samples, prompts, open_gaps, generator, seed, rank, world, trace=None):
    """One-line errors for what a call brings: the per-sample lists, the random streams and the trace."""
    if trace is not None and not isinstance(trace, list):
        raise InputError(f"trace must be a list (its length: the samples to trace), got a {type(trace).__name__}")
    for name, per_sample in (("prompts", prompts), ("open_gaps", open_gaps)):
        if per_sample is not None and len(per_sample) != num_samples:
            raise InputError(f"{len(per_sample)} {name} for {num_samples} samples")
    longest = max((len(p) for p in prompts), default=0) if prompts is not None else 0
    if cfg.target_len and longest > cfg.target_len:
        raise InputError(f"a prompt of length {longest} is longer than target_len {cfg.target_len}")
    if seed is not None and generator is not None:
        raise InputError("pass a generator or a seed, not both")
    if seed is not None and seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if world > 1 and seed is None:
        raise InputError(f"{world} processes need a seed (one random stream per batch), not a generator")
    if not 0 <= rank < world:
        raise InputError(f"rank {rank} is not one of the {world} processes")


def generate_with_fixed(model_fn, num_samples, cfg, prompts=None, open_gaps=None, seed=None, generator=None, rank=0,
                        world=1, trace=None):
    """generate's samples, each with its fixed flags: (tokens, fixed) pairs of lists, where fixed tells the
    prompt's tokens (wherever insertions moved them) from the generated ones. The one loop over the batches,
    behind generate and infill."""
    check_call(cfg, num_samples, prompts, open_gaps, generator, seed, rank, world, trace)
    batch_size = cfg.batch_size or max(num_samples, 1)
    mine = range(rank, math.ceil(num_samples / batch_size), world)  # the batches this process makes
    samples, made, t0 = [None] * num_samples, 0, time.perf_counter()
    with tqdm(total=cfg.steps * len(mine), unit="step", disable=None if cfg.progress else True) as bar:
        for batches_made, i in enumerate(mine, 1):
            chunk = slice(i * batch_size, min(num_samples, (i + 1) * batch_size))
            rng = generator if seed is None else torch.Generator(device=cfg.device).manual_seed(batch_seed(seed, i))
            traced = [None] * max(0, min(len(trace or ()), chunk.stop) - chunk.start)  # this batch's traced samples
            samples[chunk] = generate_batch(model_fn, chunk.stop - chunk.start, cfg,
                                            prompts[chunk] if prompts is not None else None,
                                            open_gaps[chunk] if open_gaps is not None else None, rng, bar, traced)
            if traced:
                trace[chunk.start:chunk.start + len(traced)] = traced
            made += chunk.stop - chunk.start
            bar.update(cfg.steps * batches_made - bar.n)  # a batch whose rows all finished early stopped short
            bar.set_postfix_str(f"{made / (time.perf_counter() - t0):.2f} samples/s")
    return samples


def generate(model_fn, num_samples, cfg, prompts=None, open_gaps=None, seed=None, generator=None, rank=0, world=1,
             trace=None):
    """num_samples samples as lists of token ids (module docstring), with the settings cfg (SamplerConfig).
    prompts: one list of fixed tokens per sample (for the MDM, mask_id inside a prompt marks a position to
    fill); open_gaps: per sample, the prompt's gaps where insertion may happen (default: all). Randomness:
    a seed (one stream per batch) or one generator (None for both: torch's global one). rank, world (with
    seed): make only the batches i with i % world == rank, and return None for the others' samples.
    trace: a list, whose first len(trace) samples are recorded step by step: trace[i] becomes {"start": sample
    i's first state (the prompt; the MDM's with its masks), "fixed": its fixed flags, "steps": one record per
    step, the state after it: "t" the time it reached, "unmasked" [[position, token]], "inserted" [position]
    (positions in that state) and "tokens"} (None for a sample another process made). Applying each step's
    insertions (masks at those positions, the other tokens in order) and then its unmaskings to "start"
    gives the step's "tokens", and after the last step the sample (for the MDM before its cut at the first
    pad). Tracing draws no random number: the samples are the same with and without it."""
    samples = generate_with_fixed(model_fn, num_samples, cfg, prompts, open_gaps, seed, generator, rank, world, trace)
    return [None if s is None else s[0] for s in samples]


# ----------------------------------------------------------------------------------------------
# Infilling: fixed pieces with gaps between them

def infill_prompts(pieces, cfg, infill_len):
    """generate's prompts and open_gaps for infill: FlexMDM the pieces joined, open only at the gaps between
    them; the MDM the pieces joined by infill_len masks each and followed by fixed pads up to max_len."""
    if cfg.model_type == "flexmdm" and infill_len:
        raise InputError(f"infill_len={infill_len!r} is the MDM's masks per gap: a FlexMDM chooses each gap's length "
                         "(leave it 0)")
    if isinstance(infill_len, (list, tuple)) and len(infill_len) != len(pieces):
        raise InputError(f"{len(infill_len)} infill_len values for {len(pieces)} samples")
    prompts, open_gaps = [], []
    for b, parts in enumerate(pieces):
        if len(parts) < 2 or any(not p for p in parts[1:-1]) or any(cfg.mask_id in p for p in parts):
            raise InputError(f"pieces[{b}] must be two or more token lists, a gap between each two, none empty but the "
                             f"first and the last (two adjacent gaps are one), without mask_id {cfg.mask_id}")
        prompt, bounds = [v for p in parts for v in p], list(itertools.accumulate(len(p) for p in parts[:-1]))
        if cfg.model_type == "mdm":
            n = infill_len[b] if isinstance(infill_len, (list, tuple)) else infill_len
            prompt = list(parts[0]) + [v for p in parts[1:] for v in [cfg.mask_id] * n + list(p)]
            if n < 1 or len(prompt) > cfg.max_len:
                raise InputError(f"pieces[{b}] with {n} masks per gap is {len(prompt)} tokens: the MDM needs 1 to "
                                 f"{cfg.max_len} in all (max_len), at least one mask per gap")
            prompt += [cfg.pad_id] * (cfg.max_len - len(prompt))
        prompts.append(prompt)
        open_gaps.append(bounds)
    return prompts, open_gaps if cfg.model_type == "flexmdm" else None


def gap_tokens(seq, fixed, parts, pad_id=None):
    """Each gap's tokens in a sample (seq, fixed) of infill: the generated tokens that follow exactly as many
    fixed tokens as the pieces before the gap hold; pad_id (the MDM's) is left out."""
    bounds = list(itertools.accumulate(len(p) for p in parts[:-1]))
    gaps, seen = [[] for _ in bounds], 0
    for v, f in zip(seq, fixed):
        seen += f
        if not f and v != pad_id:
            gaps[bounds.index(seen)].append(v)
    return gaps


def interleave(parts, gaps):
    """The sequence of the pieces with each gap's tokens between them."""
    return [v for p, gap in zip(parts, [*gaps, []]) for v in [*p, *gap]]


def infill(model_fn, num_samples, cfg, pieces, infill_len=0, seed=None, generator=None, rank=0, world=1, trace=None):
    """Fill the gaps between fixed pieces: pieces[b] is sample b's list of token lists p_0, ..., p_k, a gap
    between each two (k gaps; p_0 = [] puts a gap at the start, p_k = [] one at the end, [[], []] is one gap:
    unconditional). Returns per sample the list of each gap's tokens (None for a sample another process made);
    interleave(pieces[b], gaps) is the whole sample. Works with any model_fn (generate's).
    FlexMDM: the pieces are fixed tokens, insertion happens in the gaps only, each gap gets as many tokens as
    the chain inserts there (target_len / min_len count the pieces too). The MDM baseline cannot choose a
    length: each gap gets infill_len masks (an int, or one per sample), and the canvas is closed after the
    last piece: its positions after it are fixed pads, the MDM's own end of a sequence as it was trained
    (padded to max_len), so nothing is appended. A pad the MDM draws inside a gap is left out of the gap (it
    shortens the infill: its way to a shorter one). seed, generator, rank, world and trace are generate's."""
    if len(pieces) != num_samples:
        raise InputError(f"{len(pieces)} pieces lists for {num_samples} samples")
    prompts, open_gaps = infill_prompts(pieces, cfg, infill_len)
    samples = generate_with_fixed(model_fn, num_samples, cfg, prompts, open_gaps, seed, generator, rank, world, trace)
    pad = cfg.pad_id if cfg.model_type == "mdm" else None
    return [None if s is None else gap_tokens(*s, parts, pad) for s, parts in zip(samples, pieces)]
