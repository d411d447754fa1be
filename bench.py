"""
Throughput of one training step (forward + backward + optimizer step) or of sampling, nanoGPT's
bench.py for this repo. Settings are the globals below, overridden by config files then
--key=value (configurator.py, strict: an unknown key is an error naming it).

    python bench.py --packing=True                               # 175M OWT shape, synthetic data
    python bench.py config/owt.py --batch_size=32 --packing=False # a train.py config file works
    python bench.py --device=cpu --dtype=float32 --n_layer=2 --n_head=4 --n_embd=128 \
        --vocab_size=1024 --max_len=256 --batch_size=32 --packing=True   # CPU, seconds
    python bench.py --mode=sample --sample_batch=64 --sample_steps=256
    python bench.py --mode=sample --ckpt=out/bench_maze/ckpt.pt --device=cpu --dtype=float32 --full_width=True

Training (mode='train') times train.py's step, built by the same library calls from the same settings:
the model DiT(configurator.pick(ModelConfig, settings)), the network model.network(model, row_tokens)
and the loss interpolant.batch_loss with pick(LossConfig, settings), so every setting that changes a step
(insert_head, insert_scale, fixed_embedding, gap_embedding with infill_prob, time_weighting, prior_weight,
prior_time, ...) is timed as trained. Every setting of train.py is a setting here, so a train config file
loads; the block "train.py's, not used by one step" below is accepted and ignored. One timed step is
train.py's loop body for one micro-batch of batch_size sequences (gradient_accumulation_steps repeats it):
the loss, backward, grad clipping (grad_clip), the fused AdamW step and the EMA update (ema_decay), at the
constant learning_rate (train.py's schedule only changes its value). packing=True packs x_t into rows of
max(pack_tokens, max_len + 1) tokens; packing=False is the padded layout (one sequence per row, padded to
max_len + 1 positions, as the published code does). Packing is a FlexMDM option: the MDM baseline's
padding is its method (pad is a token it predicts), so for model_type='mdm' packing is ignored. The
batches (data.get_batch) and the times t are drawn before timing; the loss's own draws (the interpolant,
prior_time's early times) are inside the timed step, from a torch.Generator re-seeded to seed + step, so
padded and packed runs of one seed see the very same x_t. warmup_steps steps (compilation, allocator
warm-up) are run first and not timed. profile=True runs the timed steps under torch.profiler (as nanoGPT's
bench.py can) and prints where their CPU time goes: by op, and by region of the step (the interpolant,
packing, the attention mask, the network's forward, backward, the AdamW step).

Data: data='synthetic' draws num_sequences sequences with lengths round(LogNormal(log(len_median),
len_sigma)) clipped to [1, max_len] (defaults: median 60, sigma 1.0, so mean ~99, 95th percentile
~310, ~0.2% clipped at 1024: roughly OpenWebText paragraphs in GPT-2 BPE), tokens uniform over
the vocab_size - 2 ordinary ids; pad = vocab_size - 2, mask = vocab_size - 1. data=<directory>
reads a prepared dataset (train split; meta.json gives vocab and max length).

Reported: x1 tokens/s (non-pad tokens of the clean sequences), x_t tokens/s (tokens of the x_t the network
runs, slots not included; for the MDM all max_len positions of its rows), step time (median and mean),
layout fill (real positions / positions run), peak CUDA memory, and MFU = useful FLOPs / time / peak_flops,
where useful FLOPs count non-pad work only. What a step runs is counted before timing, by its loss run once
with a stand-in network that records what it is asked and returns zeros. With P = positions of real
sequences run through the network (FlexMDM: len(x_t) + 1 per sequence, the slot included, prior_weight's
early rows included; MDM: all max_len positions, pads being its content), M = masked positions (where the
unmasking head runs), B = sequences run, len_i = the positions of sequence i:
    FLOPs = 6 * N_token * P                       qkv, proj and MLP weights of every block
          + 6 * N_unmask_head * M + 6 * N_insert_head * P   the heads where the loss reads them
          + 6 * N_conditioning * B                time MLP and adaLN projections (per sequence)
          + 12 * n_layer * n_embd * sum_i len_i^2 attention scores and values, fwd + bwd
The token embedding (and fixed_embedding's vector) is a lookup and is not counted. A padded FlexMDM batch
runs the same useful FLOPs on B * (max_len + 1) positions, so its MFU shows what padding wastes.

Sampling (mode='sample'): sampler.generate on a random-init model (or ckpt=<path to ckpt.pt>) for
each unmasking rule in `samplers` at sample_steps steps and sample_batch sequences; reports
sequences/s, model calls/s (counted by wrapping model_fn) and the mean length of the samples (throughput
depends on it: a random-init insertion head grows sequences fast, a trained one follows the data).
sample_options sets more fields of sampler.SamplerConfig (e.g. temperature, early_stop, min_len).
full_width=True runs the network on all max_len positions at every step (x and fixed padded, outputs
sliced back: pad_to), as the published FlexMDM code does, instead of the batch's current width.
head_at='masks' applies the V-way head at every mask of every step (the sampler before f_at), instead of
only where the sampler reads f ('read': the masks it unmasks). On a CPU the sampling times are the
process's CPU time (fair when other jobs share the machine: give it one thread), on CUDA the wall time.

Every setting is checked before any work (check_settings): its range, its choices, and the relations between
them (a setting of one mode given to the other is refused, not ignored); the model's, the loss's and the
sampler's own by ModelConfig, LossConfig and SamplerConfig. out_json is refused when it exists, unless
overwrite=True (and then only a results file of ours: data.check_output), and written whole or not at all.
"""
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import fields

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_device, check_ranges, configure, pick, run

import numpy as np
import torch
from torch.profiler import ProfilerActivity, record_function

import interpolant
import model
from checkpoint import load_model
from data import (LengthTilt, atomic_write, check_output, get_batch, keep_spans, load_data, maze_prompts,
                  max_prompt_len)
from interpolant import LossConfig, batch_loss, behind_times, sample_times, schedules
from model import Block, DiT, ModelConfig, autocast, network, pack
from sampler import SamplerConfig, generate

# -----------------------------------------------------------------------------
mode = "train"  # train | sample
data = "synthetic"  # synthetic | path of a prepared dataset directory
verify_data = False  # data=<dir>: also check every byte against the SHA-256 in its meta.json (as train.py)
vocab_size = 50259  # synthetic data: GPT-2 BPE + pad + mask
max_len = 1024  # synthetic data
len_median = 60.0  # synthetic lengths: round(LogNormal(log(len_median), len_sigma)), clipped [1, max_len]
len_sigma = 1.0
num_sequences = 8192  # synthetic sequences to draw batches from
warmup_steps = 5  # not timed
timed_steps = 20
peak_flops = 989e12  # H100 SXM dense bf16
num_threads = 0  # CPU threads for torch; 0 keeps torch's default
out_json = ""  # also write the results here
overwrite = False  # replace an existing out_json (one of ours)
profile = False  # torch.profiler over the timed steps: the ops by self CPU time, then the step's regions
# sampling
ckpt = ""  # mode=sample: load model_args and EMA weights from this ckpt.pt instead of random init
samplers = "poisson,adaptive"  # to time, comma-separated: poisson | exact (vanilla rules) | adaptive
sample_steps = 256
sample_batch = 64
sample_rounds = 2  # timed generate calls per sampler (one untimed call first)
sample_options = {}  # more SamplerConfig fields, e.g. --sample_options="{'temperature': 0.0}"
full_width = False  # mode=sample: the network sees all max_len positions every step (the published code's way)
head_at = "read"  # mode=sample: the V-way head where the sampler reads f (read) or at every mask of every step (masks)
# train.py's settings that change a step (their meaning: train.py), with the defaults of the 175M OWT shape
batch_size = 32  # sequences per step
packing = True  # FlexMDM only
pack_tokens = 2048
model_type = "flexmdm"  # flexmdm | mdm
n_layer = 12
n_head = 12
n_embd = 768
cond_dim = 128
dropout = 0.05
alpha_schedule = "linear"
beta_schedule = "linear"
schedule_exponent = 2.0
time_weighting = "elbo"
insert_head = "linear"
insert_scale = 1.0
prior_weight = 0.0
prior_time = 0.0
behind_weight = 0.0
behind_lag = 0.5
infill_prob = 0.0
fixed_embedding = False
gap_embedding = True
learning_rate = 1e-4
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0
ema_decay = 0.9999
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # float32 | bfloat16
compile = False
seed = 1337
# train.py's, not used by one step: accepted so that any train config file loads
out_dir = "out"
init_from = "scratch"
eval_interval = 500
save_interval = 0
save_seconds = 600.0
keep_at = ()
eval_iters = 20
log_interval = 10
wandb_log = False
wandb_project = "flexmdm"
wandb_run_name = "run"
dataset = "maze_k2"
gradient_accumulation_steps = 1
max_iters = 10000
max_seconds = 0.0
budget_clock = "wall"
warmup_iters = 500
lr_decay_iters = 0
min_lr = 1e-5
# -----------------------------------------------------------------------------
RULES = {"poisson": {"unmask": "poisson"}, "exact": {"unmask": "exact"}, "adaptive": {"sampler": "adaptive"}}
# SamplerConfig's fields that bench.py sets itself (sample_options sets the others)
SET_HERE = ("max_len", "mask_id", "pad_id", "model_type", "steps", "alpha", "beta", "banned", "device")
MODE_ONLY = {"train": ("data", "num_sequences", "len_median", "len_sigma", "warmup_steps", "timed_steps", "peak_flops",
                       "profile"),
             "sample": ("ckpt", "samplers", "sample_steps", "sample_batch", "sample_rounds", "sample_options",
                        "full_width", "head_at")}


def check_settings(given, inputs):
    """Every setting's range and choices and the relations between them, before any work: one line naming the
    key, its value and the rule (given: the settings the command set; inputs: the files it reads). The model's,
    the loss's and the sampler's own settings are checked by ModelConfig, LossConfig and SamplerConfig."""
    check_choices(globals(), dict(mode=("train", "sample"), dtype=("float32", "bfloat16"), head_at=("read", "masks")))
    check_device(device)
    check_ranges(globals(), dict(batch_size=">0", pack_tokens=">0", timed_steps=">0", warmup_steps=">=0",
                                 num_sequences=">0", len_median=">0", len_sigma=">=0", max_len=">0", peak_flops=">0",
                                 num_threads=">=0", sample_steps=">0", sample_batch=">0", sample_rounds=">0",
                                 seed=">=0", learning_rate=">0", beta1="[0,1)", beta2="[0,1)", grad_clip=">=0",
                                 ema_decay="[0,1)", weight_decay=">=0", infill_prob="[0,1]"))
    if vocab_size < 3:
        raise InputError(f"vocab_size={vocab_size!r} must be >= 3 (the data's tokens, then pad and mask)")
    other = "sample" if mode == "train" else "train"
    if wrong := sorted(given & set(MODE_ONLY[other])):
        raise InputError(f"{wrong[0]} is a setting of mode={other}, not of mode={mode}: drop it or give --mode={other}")
    if mode == "train":
        pick(LossConfig, globals())  # its own checks
        pick(ModelConfig, globals(), vocab_size=1, max_len=1, pad_id=0)  # ... and the model's, before the data is read
    else:
        if not rules() or any(rule not in RULES for rule in rules()):
            raise InputError(f"samplers={samplers!r} must name one or more of {', '.join(RULES)}, comma-separated")
        check_sample_options()
        if not ckpt:  # the model and the sampler of the settings; a checkpoint's are checked once it is read
            pick(ModelConfig, globals(), max_len=max_len, pad_id=vocab_size - 2, dropout=0.0)
            sampler_configs(dict(max_len=max_len, mask_id=vocab_size - 1, pad_id=vocab_size - 2, model_type=model_type,
                                 steps=sample_steps, device=device))
    data_files = [os.path.join(data, f) for f in os.listdir(data)] if os.path.isdir(data) else []
    check_output(out_json, overwrite, "out_json", inputs=(ckpt, *inputs, *data_files))


def rules():
    """The unmasking rules of samplers, in order."""
    return [s for s in samplers.split(",") if s]


def check_sample_options():
    """sample_options may set the SamplerConfig fields that bench.py does not set itself (SET_HERE)."""
    unknown = set(sample_options) - ({f.name for f in fields(SamplerConfig)} - set(SET_HERE))
    if unknown:
        raise InputError(f"sample_options {sorted(unknown)} are not SamplerConfig fields that bench.py leaves open "
                         f"(it sets {', '.join(SET_HERE)} itself)")


def sampler_configs(base):
    """[(rule, its SamplerConfig)] for each rule of samplers: base (the fields bench.py sets), the rule and
    sample_options; each config checks itself."""
    check_sample_options()
    return [(rule, SamplerConfig(**base, **{**RULES[rule], **sample_options})) for rule in rules()]


def synthetic_data(rng):
    """A dataset in load_data's layout: (tokens, idx, fix) and meta."""
    lengths = np.rint(rng.lognormal(math.log(len_median), len_sigma, size=num_sequences))
    lengths = np.clip(lengths, 1, max_len).astype(np.int64)
    idx = np.zeros(num_sequences + 1, dtype=np.int64)
    np.cumsum(lengths, out=idx[1:])
    tokens = rng.integers(0, vocab_size - 2, size=int(idx[-1])).astype(np.uint32 if vocab_size > 2**16 else np.uint16)
    meta = {"vocab_size": vocab_size, "pad_id": vocab_size - 2, "mask_id": vocab_size - 1, "sep_id": None,
            "max_len": max_len, "tokenizer": "synthetic"}
    return meta, (tokens, idx, None)


def bench_data(rng):
    """(meta, the train split, the model's max length as train.py sets it: the MDM's rows hold
    [prompt, SEP] before the sequence)."""
    if data == "synthetic":
        meta, split = synthetic_data(rng)
        return meta, split, meta["max_len"]
    meta, splits = load_data(data, checksums=verify_data)
    prompt = max_prompt_len(splits)
    return meta, splits["train"], meta["max_len"] + (prompt + 1 if model_type == "mdm" and prompt else 0)


def row_tokens_of(seq_len):
    """The row length of the network's layout, as train.py's: packed rows of max(pack_tokens, seq_len + 1)
    with packing=True (FlexMDM only), 0 for the padded layout."""
    return max(pack_tokens, seq_len + 1) if packing and model_type == "flexmdm" else 0


def build(meta, seq_len):
    """What train.py builds from the settings for its step: the model (torch seeded to seed, as train.py),
    the network the loss calls (compiled with compile=True), the loss settings, the fused AdamW and the EMA."""
    torch.manual_seed(seed)
    raw = DiT(pick(ModelConfig, globals(), vocab_size=meta["vocab_size"], max_len=seq_len, pad_id=meta["pad_id"],
                   gap_embedding=gap_embedding and infill_prob > 0)).to(device)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=learning_rate, betas=(beta1, beta2), weight_decay=weight_decay,
                                  fused=True)
    ema = [p.detach().clone() for p in raw.parameters()]
    net = network(torch.compile(raw) if compile else raw, row_tokens_of(seq_len))
    return raw, net, pick(LossConfig, globals()), optimizer, ema


def param_groups(raw):
    """Parameter counts by how often their FLOPs run: per token, per masked position (unmasking
    head), per gap slot (insertion head), per sequence (time embedding, adaLN). The token
    embedding and fixed_embedding's vector (lookups) are left out."""
    count = lambda mods: sum(p.numel() for m in mods if m is not None for p in m.parameters())
    per_seq = count([raw.time_emb, raw.ada_out] + [b.ada for b in raw.blocks])
    head, insert = count([raw.unmask_head]), count([raw.insert_head])
    emb = count([raw.tok_emb]) + (raw.fixed_emb.numel() if raw.fixed_emb is not None else 0)
    per_token = raw.num_params() - per_seq - head - insert - emb  # qkv, proj, mlp of the blocks
    return per_token, head, insert, per_seq


def recorder(raw, row_tokens, seen):
    """A stand-in for the network the loss calls (model.network's contract): it records into `seen` what
    the loss asks of it and returns zeros. P, sq: the positions of its sequences and the sum of their
    squares; M: the masked positions where f is read; B: the sequences; xt: their x_t tokens; run: the
    positions the network runs in the layout of row_tokens."""
    def net(xt, lengths, cond_time, fixed, at, closed=None):
        B, L = xt.shape
        if lengths is None:  # the MDM: every position is a token, pads included
            span, run, tokens = torch.full((B,), L), B * L, B * L
        else:  # FlexMDM: x_t and its gap slot
            span, tokens = lengths + 1, int(lengths.sum())
            run = pack(xt, lengths, raw.slot_id, raw.cfg.pad_id, row_tokens)[0].numel() if row_tokens else B * (L + 1)
        seen.update(P=int(span.sum()), sq=int((span.double() ** 2).sum()), M=len(at[0]), B=B, xt=tokens, run=run)
        g = None if lengths is None else torch.zeros(B, L + 1, device=xt.device)
        return torch.zeros(len(at[0]), raw.cfg.vocab_size, device=xt.device), g
    return net


@torch.no_grad()
def draw_steps(split, meta, seq_len, rng, raw, loss_cfg):
    """The batches and times of every step, drawn before timing, with what each step's loss runs
    (recorder) and its useful FLOPs (module docstring)."""
    per_token, head, insert, per_seq = param_groups(raw)
    gen, tgen = torch.Generator(device=device), torch.Generator(device=device).manual_seed(seed)
    steps, n_seq = [], len(split[1]) - 1
    tilt = LengthTilt(split[1]) if loss_cfg.behind_weight and model_type == "flexmdm" else None
    rows = lambda indices: tuple(z.to(device) for z in get_batch(split, indices, meta, model_type, seq_len))
    for i in range(warmup_steps + timed_steps):
        x1, lengths, fixed = rows(rng.integers(0, n_seq, size=batch_size))
        span = None
        if infill_prob:  # as train.py's step: span-trained rows
            fixed, span = keep_spans(lengths, fixed, infill_prob, rng, model_type == "mdm")
        behind = None
        if tilt is not None:  # as train.py's step: rows behind their time, length-tilted
            t, s, log_r = behind_times(batch_size, loss_cfg, device, tgen)
            behind = (*rows(tilt.draw(log_r.cpu().numpy(), rng)), t, s)
        t = sample_times(batch_size, device=device, generator=tgen)
        seen = {}
        batch_loss(recorder(raw, row_tokens_of(seq_len), seen), x1, lengths, fixed, loss_cfg, meta["mask_id"],
                   meta["pad_id"], gen.manual_seed(seed + i), t=t, behind=behind, span=span)
        flops = (6 * (per_token + insert) * seen["P"] + 6 * head * seen["M"] + 6 * per_seq * seen["B"]
                 + 12 * n_layer * n_embd * seen["sq"])
        steps.append(dict(batch=(x1, lengths, fixed, t), behind=behind, span=span, seed=seed + i, x1=int(lengths.sum()),
                          flops=flops, **seen))
    return steps


def forward_backward(net, step, loss_cfg, meta, gen):
    """The loss of a drawn step (its own draws from gen, re-seeded to the step's seed) and its backward."""
    x1, lengths, fixed, t = step["batch"]
    with autocast(device, dtype):
        loss = batch_loss(net, x1, lengths, fixed, loss_cfg, meta["mask_id"], meta["pad_id"],
                          gen.manual_seed(step["seed"]), t=t, behind=step["behind"], span=step["span"])[0]
    loss.backward()
    return loss


def update(raw, optimizer, ema):
    """The rest of train.py's step after backward: grad clipping, the fused AdamW step, the EMA update."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema_decay:
        torch._foreach_lerp_(ema, [p.detach() for p in raw.parameters()], 1 - ema_decay)


def setup():
    """torch's CPU threads (num_threads) and seed; returns the device type."""
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    return "cuda" if device.startswith("cuda") else "cpu"


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def bench_train():
    device_type = setup()
    rng = np.random.default_rng(seed)
    meta, split, seq_len = bench_data(rng)
    raw, net, loss_cfg, optimizer, ema = build(meta, seq_len)
    per_token, head, _, _ = param_groups(raw)
    row_tokens = row_tokens_of(seq_len)
    layout = f"packed rows of {row_tokens}" if row_tokens else f"padded rows of {seq_len + (model_type == 'flexmdm')}"
    print(f"{model_type}: {raw.num_params() / 1e6:.2f}M parameters ({per_token / 1e6:.2f}M per token, "
          f"{head / 1e6:.2f}M unmasking head), batch {batch_size}, max length {seq_len}, {layout}, "
          f"{device} {dtype}{' compiled' if compile else ''}, data {data}")
    steps = draw_steps(split, meta, seq_len, rng, raw, loss_cfg)
    gen = torch.Generator(device=device)

    def step(i):  # the timed step
        loss = forward_backward(net, steps[i], loss_cfg, meta, gen)
        update(raw, optimizer, ema)
        return loss
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(warmup_steps):
        step(i)
    # A packed batch's row count varies from step to step, and each new shape compiles
    # (FlexAttention, and the model with compile=True) once. Over a training run that cost is paid
    # once per shape, so warm every shape of the timed steps up (forward + backward only, global
    # RNG restored: the model and its training draws stay those of an unwarmed run).
    seen, extra = {s["run"] for s in steps[:warmup_steps]}, 0
    for i in range(warmup_steps, len(steps)):
        if steps[i]["run"] not in seen:
            seen.add(steps[i]["run"])
            with torch.random.fork_rng(devices=[torch.device(device)] if device_type == "cuda" else [],
                                       device_type=device_type):
                forward_backward(net, steps[i], loss_cfg, meta, gen)
            optimizer.zero_grad(set_to_none=True)
            extra += 1
    sync(device_type)
    shapes = len({s["run"] for s in steps[warmup_steps:]})
    print(f"warmup: {warmup_steps} steps + {extra} forward/backward for new layout shapes in "
          f"{time.perf_counter() - t0:.1f} s; {shapes} layout shape(s) in the timed steps")
    times = []
    with profiled():
        for i in range(warmup_steps, warmup_steps + timed_steps):
            t0 = time.perf_counter()
            loss = step(i)
            sync(device_type)
            times.append(time.perf_counter() - t0)
    if not math.isfinite(loss.item()):
        raise InputError(f"non-finite loss {loss.item()}")
    return train_report(steps[warmup_steps:], times, loss.item(), raw, seq_len, shapes)


def marked(fn, name):
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


@contextmanager
def profiled():
    """With profile=True, torch.profiler (CPU) over the block, with the step's regions marked by wrapping
    the library's functions for its duration (nothing is added to the code timed); then prints the ops by
    self CPU time and the regions by total CPU time (the profiler slows the steps it times)."""
    if not profile:
        yield
        return
    regions = [(interpolant, "flexmdm_interpolant"), (interpolant, "mdm_interpolant"), (model, "pack"),
               (interpolant, "unmasking_loss"), (interpolant, "insertion_loss"), (DiT, "attention_mask"),
               (DiT, "forward"), (Block, "forward"), (torch.Tensor, "backward")]
    originals = [getattr(owner, name) for owner, name in regions]
    names = [f"{owner.__name__}.{name}" for owner, name in regions] + ["Optimizer.step#AdamW.step"]
    for (owner, name), fn, label in zip(regions, originals, names):
        setattr(owner, name, marked(fn, label))
    try:
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
    finally:
        for (owner, name), fn in zip(regions, originals):
            setattr(owner, name, fn)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    total = sum(e.self_cpu_time_total for e in events)
    for e in sorted((e for e in events if e.key in names), key=lambda e: -e.cpu_time_total):
        share = 100 * e.cpu_time_total / total
        print(f"{e.key:32s} {e.cpu_time_total / 1e3:9.1f} ms total ({share:5.1f}%), {e.count} calls")


def train_report(timed, times, final_loss, raw, seq_len, shapes):
    """The results of the timed steps as a dict (printed in one line)."""
    total = sum(times)
    total_of = lambda key: sum(s[key] for s in timed)
    res = {
        "mode": "train", "model_type": model_type, "packing": bool(row_tokens_of(seq_len)), "batch_size": batch_size,
        "max_len": seq_len, "row_tokens": row_tokens_of(seq_len), "n_layer": n_layer, "n_head": n_head,
        "n_embd": n_embd, "params": raw.num_params(), "device": device, "dtype": dtype, "compile": compile,
        "data": data, "timed_steps": timed_steps, "layout_shapes": shapes,
        "step_ms_median": 1000 * statistics.median(times), "step_ms_mean": 1000 * total / len(times),
        "x1_tok_per_s": total_of("x1") / total, "xt_tok_per_s": total_of("xt") / total,
        "positions_per_s": total_of("P") / total, "fill": total_of("P") / total_of("run"),
        "tflops_per_s": total_of("flops") / total / 1e12, "mfu": total_of("flops") / total / peak_flops,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "final_loss": final_loss,
    }
    mem = f", peak memory {res['peak_mem_gib']:.1f} GiB" if res["peak_mem_gib"] is not None else ""
    print(f"step {res['step_ms_median']:.1f} ms (median; mean {res['step_ms_mean']:.1f}), "
          f"{res['x1_tok_per_s']:.0f} x1 tok/s, {res['xt_tok_per_s']:.0f} x_t tok/s, fill {100 * res['fill']:.1f}%, "
          f"{res['tflops_per_s']:.3g} useful TFLOP/s, MFU {100 * res['mfu']:.3g}% of {peak_flops:.3g}{mem}")
    return res


def pad_to(model_fn, width, pad_id):
    """model_fn run on x padded to width with pad_id (fixed with False) and its outputs sliced back: the
    published FlexMDM code's layout. The network masks padding, so the samples' distribution is ours."""
    def padded(x, t, fixed, closed):
        extra = width - x.shape[1]
        logits, g = model_fn(torch.nn.functional.pad(x, (0, extra), value=pad_id), t,
                             torch.nn.functional.pad(fixed, (0, extra), value=False),
                             None if closed is None else torch.nn.functional.pad(closed, (0, extra), value=False))
        if callable(logits):  # f_at(where): read where the sampler reads, in the padded layout
            f_at = logits
            logits = lambda where: f_at(torch.nn.functional.pad(where, (0, extra), value=False))
        else:
            logits = logits[:, : x.shape[1]]
        return logits, None if g is None else g[:, : x.shape[1] + 1]
    return padded


def sample_setup():
    """The model to sample (a checkpoint's EMA weights, or a random-init one from the settings), its
    SamplerConfig fields, its prompts (a maze model samples paths through held-out subgoals and never SEP, as
    sample.py) and the SamplerConfig of each rule, checked before any sampling."""
    prompts, banned = None, ()
    if ckpt:
        raw, state = load_model(ckpt, device)
        meta, mt, config = state["meta"], state["model_args"]["model_type"], state["config"]
        mask_id, pad_id = meta["mask_id"], meta["pad_id"]
        if meta.get("tokenizer") == "maze":
            goals = maze_prompts(os.path.join("data", config["dataset"]), sample_batch, meta)
            prompts, banned = [g + [meta["sep_id"]] for g in goals] if mt == "mdm" else goals, (meta["sep_id"],)
    else:
        mt, config, mask_id, pad_id = model_type, globals(), vocab_size - 1, vocab_size - 2
        raw = DiT(pick(ModelConfig, globals(), vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, dropout=0.0,
                       attention="sdpa")).to(device).eval()
    alpha, beta = schedules(config)  # a checkpoint's own, as sample.py uses them
    base = dict(max_len=raw.cfg.max_len, mask_id=mask_id, pad_id=pad_id, model_type=mt, steps=sample_steps,
                alpha=alpha, beta=beta, banned=banned, device=device)
    return raw, base, prompts, sampler_configs(base)


def bench_sample():
    device_type = setup()
    raw, base, prompts, configs = sample_setup()
    if compile:  # sequence lengths change at every step: compile for dynamic shapes
        raw.padded_states = torch.compile(raw.padded_states, dynamic=True)
    mt, mask_id = base["model_type"], base["mask_id"]
    net, calls = raw.sampler_fn(base["alpha"] if mt == "flexmdm" else base["beta"]), [0]  # conditioned as in training

    def model_fn(x, t, fixed, closed):
        calls[0] += 1
        with autocast(device, dtype):
            f_at, g = net(x, t, fixed, closed)
            if head_at == "masks":
                masks = x == mask_id
                at_masks = f_at(masks)
                f_at = lambda where: at_masks[where[masks]]
            return f_at, g
    if full_width:
        model_fn = pad_to(model_fn, base["max_len"], base["pad_id"])
    print(f"{mt}: {raw.num_params() / 1e6:.2f}M parameters, max length {base['max_len']}, batch {sample_batch}, "
          f"{sample_steps} steps, {'full width' if full_width else 'our width'}, {device} {dtype}{' compiled' if compile else ''}"
          f"{', ckpt ' + ckpt if ckpt else ', random init'}")
    results = []
    for rule, cfg in configs:
        torch.manual_seed(seed)
        with torch.no_grad():
            generate(model_fn, sample_batch, cfg, prompts=prompts)  # untimed: compilation, allocator
            sync(device_type)
            calls[0], total, lens = 0, 0.0, []
            clock = time.perf_counter if device_type == "cuda" else time.process_time
            for _ in range(sample_rounds):
                t0 = clock()
                out = generate(model_fn, sample_batch, cfg, prompts=prompts)
                sync(device_type)
                total += clock() - t0
                lens.append(np.mean([len(s) for s in out]))
        res = {"mode": "sample", "sampler": rule, "model_type": mt, "steps": sample_steps, "batch": sample_batch,
               "device": device, "dtype": dtype, "compile": compile, "full_width": full_width,
               "seq_per_s": sample_rounds * sample_batch / total, "calls_per_s": calls[0] / total,
               "calls_per_sample_call": calls[0] / sample_rounds, "mean_len": float(np.mean(lens))}
        print(f"{rule}: {res['seq_per_s']:.2f} sequences/s, {res['calls_per_s']:.1f} model calls/s "
              f"({res['calls_per_sample_call']:.0f} calls per generate), mean length {res['mean_len']:.1f}")
        results.append(res)
    return results


def main():
    given = configure(globals(), sys.argv[1:])
    check_settings(given, [a for a in sys.argv[1:] if not a.startswith("--")])
    res = bench_train() if mode == "train" else bench_sample()
    if out_json:
        atomic_write(out_json, lambda f: json.dump(res, f, indent=1))


if __name__ == "__main__":
    run(main, interrupted="no results were written (out_json is written at the end); run the command again")
