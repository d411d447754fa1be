"""
Sample from a trained FlexMDM (or the MDM baseline) by simulating its CTMC (paper section 4,
appendix E.1, Algorithms 1-3), and write the samples as JSON lines:

    python sample.py --out_dir=out/maze_cpu                        # EMA weights of out_dir/ckpt.pt
    python sample.py --out_dir=out/wikitext --num_samples=256 --steps=256 --sampler=adaptive
    python sample.py --out_dir=out/wikitext --target_len=100 --early_stop=0.01 --samples_file=out/wikitext/len100.jsonl
    torchrun --standalone --nproc_per_node=8 sample.py --out_dir=out/owt --num_samples=1024   # the same samples, 8 GPUs

`generate(model_fn, ...)` is the sampler itself; it only needs a model callable with the contract
of SPEC section 2, so the tests drive it with an exact oracle and the LLaDA retrofit with its own
network. Settings are the globals below, overridden by config files then --key=value. An existing
samples file is never replaced unless --overwrite=True.

The CLI gives batch i (samples i * batch_size onwards) its own random stream, seeded from (seed, i), so
the samples depend on seed and batch_size only: under torchrun the batches go round-robin to the
processes (each on its own GPU) and rank 0 gathers them and writes the file, which is the file one
process would write (on the same kind of device). Library callers may pass one `generator` instead.

A FlexMDM with N steps calls the model at t = k/(N-1), k = 0..N-1 (the grid 0 = t_0 < ... < t_{N-1} = 1
of Algorithm 1 and Def. E.1, so insertion covers all of [0, 1]; tau = 1/(N-1)); the MDM at t = k/N with
tau = 1/N. With grid_power p != 1 the calls are at (k/(N-1))^p (the MDM: (k/N)^p) and tau is the step to
the next call: p > 1 spends more calls early, where the length is decided (time_grid). Each step runs the
model once on x_t and then, from that one call:
- unmasks: vanilla (tau-leaping) turns each mask into a token drawn from f with probability
  lam * exp(-lam), lam = tau * w_beta(t) (`unmask="poisson"`: the paper's rule, "exactly one
  Poisson event"), or with the exact probability (beta(t+tau) - beta(t)) / (1 - beta(t))
  (`unmask="exact"`); adaptive draws K ~ Poisson(tau * w_beta(t) * #masks) and unmasks the K most
  confident masks, optionally among the leftmost min(floor(gamma1 * K), gamma2) only;
- inserts Poisson(tau * w_alpha(t) * g[j]) masks into every open gap j (FlexMDM).
The last step (at t = 1 for the FlexMDM) inserts nothing and fills every remaining mask. The MDM
starts from max_len masks after the prompt and only unmasks; pad is one of its tokens, and a sample
ends at its first pad. Length control (FlexMDM): target_len inserts the whole canvas of masks at step 0
and then only unmasks, with the model at t = 1 (exact for an exact model when the masks have one place
to go: no prompt, or one open gap); min_len steers the insertion rates (an approximation). Finished
rows leave the batch (exactly, or by the early_stop estimate). README "Samplers" has the details.
"""
import json
import math
import os
import pickle
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from configurator import InputError, check_choices, check_device, configure, run
from interpolant import Schedule

# -----------------------------------------------------------------------------
out_dir = "out"  # the run directory holding ckpt.pt
ckpt_file = ""  # default: out_dir/ckpt.pt (another checkpoint of the run: train.py's keep_at copies)
samples_file = ""  # default: out_dir/samples.jsonl
overwrite = False  # replace an existing samples_file
num_samples = 64
batch_size = 64  # the unit of work: one random stream per batch; the samples depend on seed and batch_size
steps = 256  # model calls per sample
grid_power = 1.0  # the calls at t_k = (k / (N - 1))^grid_power; 1 = the paper's uniform grid (time_grid)
sampler = "vanilla"  # vanilla | adaptive
unmask = "poisson"  # vanilla unmasking rule: poisson (paper) | exact
confidence = "top_prob"  # adaptive: top_prob | margin | entropy | position
gamma1 = 0.0  # adaptive sliding window: the leftmost min(floor(gamma1 * K), gamma2) masks; 0 = off
gamma2 = 64
temperature = 1.0  # 0 = argmax
final = "draw"  # last step: draw the remaining masks from f, or take the argmax
use_ema = True
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
early_stop = 0.0  # FlexMDM: a row without masks stops once its expected future insertions are below this; 0 = off
min_len = 0  # FlexMDM length control (prompt included): every sample at least this long; 0 = off
target_len = 0  # FlexMDM: every sample exactly this long (conditioned on the length, README "Samplers"); 0 = off
progress = True  # a progress bar (steps, samples/s) on a terminal
seed = 1337
# -----------------------------------------------------------------------------

SAMPLERS, UNMASK_RULES, FINALS = ("vanilla", "adaptive"), ("poisson", "exact"), ("draw", "argmax")
CONFIDENCES = ("top_prob", "margin", "entropy", "position")


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


def adaptive_choice(probs, masks, rate, conf_kind, gamma1, gamma2, generator):
    """Which masks to unmask this step (adaptive, appendix E.1): K ~ Poisson(rate * #masks) per row,
    the K most confident masks, among the leftmost min(floor(gamma1 * K), gamma2) if gamma1 > 0."""
    n_masks = masks.sum(1)
    k = torch.poisson(rate * n_masks.float(), generator=generator).long().clamp(max=n_masks)
    score = confidence_scores(probs, masks, conf_kind)
    if gamma1 > 0:
        # never narrower than K itself, so that K masks are unmasked as drawn
        window = torch.minimum((gamma1 * k).floor().long(), torch.full_like(k, gamma2)).clamp_min(k)
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


def unmask_step(x, masks, f_at, t, tau, beta, opts, last, generator):
    """Unmask in place the masks of x [B, L] (masks [B, L]); f_at(where) is f where it is read
    (f_reader). Vanilla chooses the masks without reading f, so f is read at the chosen ones only;
    adaptive reads it at every mask for the confidence."""
    if opts["sampler"] == "adaptive" and not last:
        at_masks = f_at(masks)
        chosen = adaptive_choice(tempered(at_masks, opts["temperature"]), masks, tau * beta.rate(t),
                                 opts["confidence"], opts["gamma1"], opts["gamma2"], generator)
        logits = at_masks[chosen[masks]]
    else:
        chosen = masks if last else vanilla_choice(masks, t, tau, beta, opts["unmask"], generator)
        logits = f_at(chosen)
    greedy = opts["temperature"] == 0 or (last and opts["final"] == "argmax")
    x[chosen] = draw(logits, opts["temperature"], greedy, generator)


def open_gap_mask(fixed, open_left, open_end, lengths):
    """Gap j (before token j; gap len after the last) is open unless both of its neighbours are
    prompt tokens and the prompt did not open it. [B, L+1]."""
    B, L = fixed.shape
    j = torch.arange(L + 1, device=fixed.device)
    real = j[None, :L] < lengths[:, None]  # the end gap's right neighbour is the end, not a pad slot
    right_fixed = torch.cat([fixed | ~real, torch.ones_like(fixed[:, :1])], 1)
    left_fixed = torch.cat([torch.ones_like(fixed[:, :1]), fixed], 1)
    opened = torch.cat([open_left & real, torch.zeros_like(open_left[:, :1])], 1) | ((j == lengths[:, None]) & open_end[:, None])
    return (opened | ~right_fixed | ~left_fixed) & (j <= lengths[:, None])


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
    """Insert counts[b, j] masks into gap j of every row; state holds x, fixed, open_left, lengths."""
    x, fixed, open_left, lengths = state
    B, L = x.shape
    j = torch.arange(L, device=x.device)
    real = j[None] < lengths[:, None]
    new_index = j[None] + counts[:, :L].cumsum(1)  # token i moves past the masks of gaps 0..i
    new_lengths = lengths + counts.sum(1)
    new_x = torch.where(j[None] < new_lengths[:, None], mask_id, pad_id)
    new_fixed, new_open = torch.zeros_like(fixed), torch.ones_like(open_left)
    rows = torch.arange(B, device=x.device)[:, None].expand(B, L)
    dest = (rows[real], new_index[real])
    new_x[dest], new_fixed[dest], new_open[dest] = x[real], fixed[real], open_left[real]
    return new_x, new_fixed, new_open, new_lengths


def initial_state(prompts, open_gaps, n, max_len, mask_id, pad_id, model_type, device):
    """Padded tensors for the prompts: x [n, max_len], fixed, open_left [n, max_len], open_end,
    lengths [n]. FlexMDM starts from the prompt; the MDM from the prompt followed by masks."""
    x = torch.full((n, max_len), pad_id, dtype=torch.long)
    fixed = torch.zeros((n, max_len), dtype=torch.bool)
    open_left = torch.ones((n, max_len), dtype=torch.bool)
    open_end = torch.ones(n, dtype=torch.bool)
    lengths = torch.zeros(n, dtype=torch.long)
    for b in range(n):
        p = list(prompts[b]) if prompts is not None else []
        if len(p) > max_len or (model_type == "flexmdm" and mask_id in p):
            raise InputError(f"prompt {b} has length {len(p)} > max_len {max_len}" if len(p) > max_len
                     else f"prompt {b} contains mask_id {mask_id}: FlexMDM prompts are clean tokens")
        x[b, :len(p)] = torch.tensor(p, dtype=torch.long)
        fixed[b, :len(p)] = torch.tensor([v != mask_id for v in p], dtype=torch.bool)
        if open_gaps is not None:
            opened = set(open_gaps[b])
            open_left[b, :len(p)] = torch.tensor([i in opened for i in range(len(p))], dtype=torch.bool)
            open_end[b] = len(p) in opened
        lengths[b] = len(p)
        if model_type == "mdm":
            x[b, len(p):] = mask_id
            lengths[b] = max_len
    return tuple(z.to(device) for z in (x, fixed, open_left, open_end, lengths))


def finish(x, length, prompt_len, model_type, pad_id):
    """The sample as a list: FlexMDM the whole sequence; MDM cut at its first pad after the prompt."""
    seq = x[:length].tolist()
    if model_type == "mdm":
        tail = seq[prompt_len:]
        seq = seq[:prompt_len] + (tail[:tail.index(pad_id)] if pad_id in tail else tail)
    return seq


def time_grid(steps, model_type, power=1.0):
    """The times of the model calls t_k and the step lengths tau_k = t_{k+1} - t_k, k = 0..steps-1 (lists).
    FlexMDM: t_k = (k / (N - 1))^power, so the last call is at t = 1 (it only fills the masks left: tau 0);
    MDM: t_k = (k / N)^power, the last step running to 1. power 1 is the paper's uniform grid; power > 1
    puts more of the calls early, where the length is decided (README "Samplers")."""
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


def insertion_counts(g, gaps, lengths, rate, max_len, opts, last_insertion, generator):
    """Masks to insert per gap [B, L+1] and the g they were drawn with.
    target_len (called at step 0 only): the whole canvas at once, target_len - len(x) masks split over
    the open gaps in proportion to g. Otherwise Poisson(tau * w_alpha(t) * g_j) in every open gap j, capped
    at max_len; with min_len, g is first scaled up in rows where its total, the expected number of
    insertions still to come (sum_j g_j = E[n - len(x_t) | x_t], SPEC section 1), falls short of
    min_len - len(x_t), and the last inserting step tops every row up to min_len. That is an
    approximation (README "Samplers"): the model's g and f average over all final lengths."""
    if opts["target_len"]:
        counts = torch.zeros_like(gaps, dtype=torch.long)
        return top_up(counts, gap_shares(g, gaps), opts["target_len"] - lengths, generator), g
    if opts["min_len"]:
        g = gap_shares(g, gaps) * torch.maximum((g * gaps).sum(1), opts["min_len"] - lengths)[:, None]
    counts = torch.poisson(rate[:, None] * g, generator=generator).long() * gaps
    counts = cap_insertions(counts, max_len - lengths, generator)
    if opts["min_len"] and last_insertion:
        counts = top_up(counts, gap_shares(g, gaps), opts["min_len"] - lengths - counts.sum(1), generator)
    return counts, g


def finished(state, mask_id, model_type, opts):
    """Rows that leave the batch [B]: no masks and no insertion to come, exactly (the MDM never inserts; all
    gaps closed; at target_len) or by the estimate (early stop: expected future insertions < early_stop)."""
    done = ~(state["x"] == mask_id).any(1)
    if model_type == "mdm":
        return done
    closed = ~open_gap_mask(state["fixed"], state["open_left"], state["open_end"], state["lengths"]).any(1)
    at_target = state["lengths"] >= opts["target_len"] if opts["target_len"] else torch.zeros_like(closed)
    return done & (closed | at_target | (state["expected"] < opts["early_stop"]))


def retire(state, done, samples, model_type, pad_id):
    """Move the finished rows' samples into samples (at their original index) and drop them from state."""
    for b in done.nonzero().flatten().tolist():
        samples[int(state["index"][b])] = finish(state["x"][b], int(state["lengths"][b]),
                                                 int(state["prompt_len"][b]), model_type, pad_id)
    return {key: value[~done] for key, value in state.items()}


@torch.no_grad()
def generate_batch(model_fn, n, steps, max_len, mask_id, pad_id, opts, prompts, open_gaps, generator, device, bar):
    alpha, beta, model_type = opts["alpha"], opts["beta"], opts["model_type"]
    x, fixed, open_left, open_end, lengths = initial_state(prompts, open_gaps, n, max_len, mask_id, pad_id,
                                                           model_type, device)
    # the live rows; index: their sample's position; expected: the insertions still to come as estimated
    # from the last g (early stop: g held at its current value, an approximation), inf before the first
    state = dict(x=x, fixed=fixed, open_left=open_left, open_end=open_end, lengths=lengths,
                 prompt_len=torch.tensor([len(p) for p in prompts] if prompts is not None else [0] * n, device=device),
                 index=torch.arange(n, device=device), expected=torch.full((n,), math.inf, device=device))
    times, taus = time_grid(steps, model_type, opts["grid_power"])  # see the module docstring
    tail = insertion_tail(alpha, times, taus).to(device)
    samples = [None] * n
    for k in range(steps):
        done = finished(state, mask_id, model_type, opts)
        if done.any():
            state = retire(state, done, samples, model_type, pad_id)
        if not len(state["index"]):
            break
        B, lengths = len(state["index"]), state["lengths"]
        t, tau = torch.full((B,), times[k], device=device), taus[k]
        width = max(1, int(lengths.max()))
        x, fixed = state["x"][:, :width], state["fixed"][:, :width]  # views: unmask_step writes into state
        # target_len: after step 0 every row is at its final length, whose posterior is q_1 (appendix
        # E.2.1: given n = len(x), (1 - alpha_t)^(n - len(x)) = 1 at every t), so the model is asked at t = 1
        logits, g = model_fn(x, torch.ones_like(t) if opts["target_len"] and k > 0 else t, fixed)
        last = k == steps - 1
        unmask_step(x, x == mask_id, f_reader(logits, opts["banned"]), t, tau, beta, opts, last, generator)
        if model_type == "flexmdm" and not last and not (opts["target_len"] and k > 0):
            gaps = open_gap_mask(fixed, state["open_left"][:, :width], state["open_end"], lengths)
            counts, g = insertion_counts(g[:, : width + 1].float().clamp_min(0), gaps, lengths,
                                         tau * alpha.rate(t), max_len, opts, k == steps - 2, generator)
            below_floor = lengths + counts.sum(1) < opts["min_len"]
            state["expected"] = torch.where(below_floor, math.inf, (g * gaps).sum(1) * tail[k])
            counts = torch.nn.functional.pad(counts, (0, max_len - width))
            state["x"], state["fixed"], state["open_left"], state["lengths"] = insert_masks(
                (state["x"], state["fixed"], state["open_left"], lengths), counts, mask_id, pad_id)
        bar.update(1)
    retire(state, torch.ones_like(state["index"], dtype=torch.bool), samples, model_type, pad_id)
    return samples


def check_lengths(model_type, max_len, min_len, target_len, early_stop, prompts):
    """One-line errors for the early stop and length control options."""
    if early_stop < 0:
        raise InputError(f"early_stop must be >= 0 (0 = off), got {early_stop}")
    if (min_len or target_len) and model_type != "flexmdm":
        raise InputError("min_len and target_len are FlexMDM options (the MDM's canvas is max_len)")
    if min_len < 0 or target_len < 0 or max(min_len, target_len) > max_len:
        raise InputError(f"need 0 <= min_len, target_len <= max_len {max_len} (got {min_len}, {target_len})")
    if target_len and min_len > target_len:
        raise InputError(f"min_len {min_len} > target_len {target_len}")
    longest = max((len(p) for p in prompts), default=0) if prompts is not None else 0
    if target_len and longest > target_len:
        raise InputError(f"a prompt of length {longest} is longer than target_len {target_len}")


def check_streams(batch_size, generator, seed, rank, world):
    """One-line errors for the batching and random-stream options of generate()."""
    if batch_size is not None and batch_size < 0:
        raise InputError(f"batch_size must be >= 0 (0 or None: one batch), got {batch_size}")
    if seed is not None and generator is not None:
        raise InputError("pass a generator or a seed, not both")
    if seed is not None and seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if world > 1 and seed is None:
        raise InputError(f"{world} processes need a seed (one random stream per batch), not a generator")
    if not 0 <= rank < world:
        raise InputError(f"rank {rank} is not one of the {world} processes")


def batch_seed(seed, index):
    """The seed of batch `index`'s random stream: numpy's SeedSequence hashes (seed, index), so nearby
    seeds and batch indices get unrelated streams."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def generate(model_fn, num_samples, steps, max_len, mask_id, pad_id, *, model_type="flexmdm", alpha=None, beta=None,
             sampler="vanilla", unmask="poisson", confidence="top_prob", gamma1=0.0, gamma2=64, temperature=1.0,
             final="draw", prompts=None, open_gaps=None, batch_size=None, generator=None, seed=None, rank=0, world=1,
             device="cpu", banned=(), early_stop=0.0, min_len=0, target_len=0, grid_power=1.0, progress=False):
    """Samples as lists of token ids (see the module docstring). model_fn(x [B, L] right-padded with
    pad_id, t [B], fixed [B, L] bool: the prompt's tokens) -> (logits [B, L, V], g [B, L+1] or None):
    SPEC section 2, plus the fixed flags (a model may ignore them); instead of the logits a model may
    return f_at(where [B, L] bool) -> logits [where.sum(), V], and the sampler then asks for f only where
    it reads it (the masks it unmasks: DiT.sampler_fn). prompts: one list of
    fixed tokens per sample (for the MDM, mask_id inside a prompt marks a position to fill);
    open_gaps: per sample, the prompt's gaps where insertion may happen (default: all).
    Finished rows leave the batch (README "Samplers"): always where that is exact, and with early_stop > 0
    also a FlexMDM row without masks whose expected future insertions are below early_stop.
    min_len / target_len (FlexMDM, prompt included): length control (insertion_counts; target_len is exact
    for an exact model with one place for the masks, min_len an approximation); every sample then has
    length >= min_len, or exactly target_len, wherever an open gap allows it.
    Randomness: one `generator` drives every batch in turn (None: torch's global one), or with `seed`
    batch i (samples i * batch_size onwards; batch_size None or 0: one batch) draws from its own
    generator seeded with batch_seed(seed, i), so the samples depend on seed and batch_size only.
    rank, world (with seed): make only the batches i with i % world == rank (torchrun), and return None
    for the samples of the other batches.
    progress: a bar of the steps and samples/s on a terminal."""
    check_choices(locals(), dict(model_type=("flexmdm", "mdm"), sampler=SAMPLERS, unmask=UNMASK_RULES,
                                 confidence=CONFIDENCES, final=FINALS))
    min_steps = 2 if model_type == "flexmdm" else 1
    if steps < min_steps or temperature < 0 or grid_power <= 0:
        raise InputError(f"need steps >= {min_steps}, temperature >= 0 and grid_power > 0 (got steps={steps}, "
                         f"temperature={temperature}, grid_power={grid_power})")
    for name, per_sample in (("prompts", prompts), ("open_gaps", open_gaps)):
        if per_sample is not None and len(per_sample) != num_samples:
            raise InputError(f"{len(per_sample)} {name} for {num_samples} samples")
    check_streams(batch_size, generator, seed, rank, world)
    check_lengths(model_type, max_len, min_len, target_len, early_stop, prompts)
    banned = {mask_id, *banned} | ({pad_id} if model_type == "flexmdm" else set())
    opts = dict(model_type=model_type, alpha=alpha or Schedule("linear"), beta=beta or Schedule("linear"),
                sampler=sampler, unmask=unmask, confidence=confidence, gamma1=gamma1, gamma2=gamma2,
                temperature=temperature, final=final, banned=torch.tensor(sorted(banned), device=device), early_stop=early_stop,
                min_len=min_len, target_len=target_len, grid_power=grid_power)
    batch_size = batch_size or max(num_samples, 1)
    mine = range(rank, math.ceil(num_samples / batch_size), world)  # the batches this process makes
    samples, made, t0 = [None] * num_samples, 0, time.perf_counter()
    with tqdm(total=steps * len(mine), unit="step", disable=None if progress else True) as bar:
        for done, i in enumerate(mine, 1):
            chunk = slice(i * batch_size, min(num_samples, (i + 1) * batch_size))
            rng = generator if seed is None else torch.Generator(device=device).manual_seed(batch_seed(seed, i))
            samples[chunk] = generate_batch(model_fn, chunk.stop - chunk.start, steps, max_len, mask_id, pad_id, opts,
                                            prompts[chunk] if prompts is not None else None,
                                            open_gaps[chunk] if open_gaps is not None else None, rng, device, bar)
            made += chunk.stop - chunk.start
            bar.update(steps * done - bar.n)  # a batch whose rows all finished early stopped short
            bar.set_postfix_str(f"{made / (time.perf_counter() - t0):.2f} samples/s")
    return samples


# -----------------------------------------------------------------------------
# The CLI: a checkpoint in, JSON lines out

def load_model(ckpt_path, device, use_ema=True):
    """The DiT of a train.py checkpoint, with its EMA weights by default; returns (model, ckpt)."""
    from model import DiT, ModelConfig
    if not os.path.exists(ckpt_path):
        raise InputError(f"checkpoint {ckpt_path!r} not found: train first (train.py) or fix --out_dir")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise InputError(f"{ckpt_path!r} is not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise InputError(f"{ckpt_path!r} is not a train.py checkpoint (no model_args)")
    # x changes shape at every step and FlexAttention compiles per shape: sample with the equivalent
    # dense-mask attention (tests/test_model.py checks that the two agree)
    model = DiT(ModelConfig(**{**ckpt["model_args"], "attention": "sdpa"}))
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        torch._foreach_copy_([p.detach() for p in model.parameters()], ckpt["ema"])
    return model.to(device).eval(), ckpt


def maze_prompts(data_dir, n, maze):
    """Subgoal lists g1..gK of the held-out (val) paths, distinct, in file order, cycled to n."""
    from train import load_data
    meta, splits = load_data(data_dir)
    tokens, idx, fix = splits["val"]
    if fix is None:
        raise InputError(f"{os.path.join(data_dir, 'val.fix')!r} not found: the maze data for the held-out subgoals is missing")
    if meta.get("maze") != maze:
        raise InputError(f"{data_dir!r} holds another maze than the one this checkpoint was trained on")
    goals = list(dict.fromkeys(tuple(tokens[a:b][fix[a:b] == 1].tolist()) for a, b in zip(idx[:-1], idx[1:])))
    return [list(goals[i % len(goals)]) for i in range(n)]


def schedules(config):
    """The insertion and unmasking schedules (alpha, beta) of a training config."""
    return (Schedule(config["alpha_schedule"], config["schedule_exponent"]),
            Schedule(config["beta_schedule"], config["schedule_exponent"]))


def write_jsonl(path, records):
    """One JSON line per record, written to a temporary file and renamed (never half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)


def gather_samples(samples, world):
    """Under torchrun: rank 0 gets every sample, each from the process that made it (generate returns None
    for the others' samples), in sample order; the other ranks get None. gather_object pickles the
    token lists, small next to the model, and needs no shared file system."""
    if world == 1:
        return samples
    parts = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(samples, parts, dst=0)
    return [next(s for s in copies if s is not None) for copies in zip(*parts)] if parts is not None else None


def sample_records(model, ckpt, dev, rank=0, world=1):
    """Generate num_samples samples for the checkpoint's task, the batches split over the world processes;
    returns the JSON-line records on rank 0 (None on the others)."""
    meta, model_type = ckpt["meta"], ckpt["model_args"]["model_type"]
    alpha, beta = schedules(ckpt["config"])
    is_maze = meta.get("tokenizer") == "maze"
    subgoals = maze_prompts(os.path.join("data", ckpt["config"]["dataset"]), num_samples, meta["maze"]) if is_maze else None
    prompts = [s + [meta["sep_id"]] for s in subgoals] if is_maze and model_type == "mdm" else subgoals
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bfloat16" and "cuda" in dev else nullcontext()
    model_fn = model.sampler_fn(alpha if model_type == "flexmdm" else beta)  # as in training
    with autocast:
        seqs = generate(model_fn, num_samples, steps, model.cfg.max_len, meta["mask_id"], meta["pad_id"],
                        model_type=model_type, alpha=alpha, beta=beta, sampler=sampler, unmask=unmask,
                        confidence=confidence, gamma1=gamma1, gamma2=gamma2, temperature=temperature, final=final,
                        prompts=prompts, batch_size=batch_size, seed=seed, rank=rank, world=world, device=dev,
                        banned=[meta["sep_id"]] if "sep_id" in meta else [],  # SEP only ever ends a prompt
                        early_stop=early_stop, min_len=min_len, target_len=target_len, grid_power=grid_power,
                        progress=progress and rank == 0)
    seqs = gather_samples(seqs, world)
    if seqs is None:
        return None
    records = []
    for b, seq in enumerate(seqs):
        if prompts is not None and model_type == "mdm":
            seq = seq[len(prompts[b]):]
        record = {"tokens": seq, "length": len(seq)}
        if is_maze:
            record["subgoals"] = subgoals[b]
        records.append(record)
    if meta.get("tokenizer") == "gpt2":
        from prepare_owt import decode, gpt2
        enc = gpt2()
        for r in records:
            r["text"] = decode(enc, r["tokens"])
    return records


def main():
    configure(globals(), sys.argv[1:])
    check_device(device)
    check_choices(globals(), dict(dtype=("float32", "bfloat16")))
    if num_samples < 1:
        raise InputError(f"num_samples must be at least 1, got {num_samples}")
    path = samples_file or os.path.join(out_dir, "samples.jsonl")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path} exists: write elsewhere with --samples_file=PATH, or replace it with --overwrite=True")
    from train import init_distributed
    ddp, rank, _, world, dev = init_distributed(device)
    model, ckpt = load_model(ckpt_file or os.path.join(out_dir, "ckpt.pt"), dev, use_ema)
    records = sample_records(model, ckpt, dev, rank, world)
    if ddp:
        dist.destroy_process_group()
    if rank == 0:
        write_jsonl(path, records)
        lengths = [r["length"] for r in records]
        print(f"wrote {len(records)} samples to {path} ({world} process(es); length mean {np.mean(lengths):.1f}, "
              f"min {min(lengths)}, max {max(lengths)})")


if __name__ == "__main__":
    run(main)
