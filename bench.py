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

Config files: bench.py accepts every setting of train.py (it takes them from train.py, so a
train config file such as config/owt.py loads), but only the ones named below change what it
does; the rest (out_dir, eval_interval, max_iters, dataset, ...) are read and ignored.
gradient_accumulation_steps is ignored too: one timed step is one micro-batch of batch_size
sequences followed by an optimizer step.

Training (mode='train'). Each step runs train.flexmdm_loss (or train.mdm_loss), backward, grad
clipping (grad_clip), the fused AdamW step and the EMA update (ema_decay), exactly as train.py
does, with the row length train.py uses: packing=True packs x_t into rows of
max(pack_tokens, max_len + 1) tokens; packing=False is the padded layout (one sequence per row,
padded to max_len + 1 positions, as the published code does). Packing is a FlexMDM option: the
MDM baseline's padding is its method (pad is a token it predicts), so for model_type='mdm' packing
is ignored. The batches (train.get_batch) and the times t are drawn before timing; the interpolant
draw is inside the timed step (it is part of the loss), from a torch.Generator re-seeded to
seed + step, so padded and packed runs of one seed see the very same x_t. warmup_steps steps
(compilation, allocator warm-up) are run first and not timed.

Data: data='synthetic' draws num_sequences sequences with lengths round(LogNormal(log(len_median),
len_sigma)) clipped to [1, max_len] (defaults: median 60, sigma 1.0, so mean ~99, 95th percentile
~310, ~0.2% clipped at 1024: roughly OpenWebText paragraphs in GPT-2 BPE), tokens uniform over
the vocab_size - 2 ordinary ids; pad = vocab_size - 2, mask = vocab_size - 1. data=<directory>
reads a prepared dataset (train split; meta.json gives vocab and max length).

Reported: x1 tokens/s (non-pad tokens of the clean sequences), x_t tokens/s (tokens of x_t, slots
not included; for the MDM all max_len positions of its rows), step time (median and mean), layout fill (real positions / positions run),
peak CUDA memory, and MFU = useful FLOPs / time / peak_flops, where useful FLOPs count non-pad
work only. With P = positions of real sequences run through the network (FlexMDM: len(x_t) + 1
per sequence, the slot included; MDM: all max_len positions, pads being its content), M = masked
positions (where the unmasking head runs), B = sequences, len_i = the positions of sequence i:
    FLOPs = 6 * N_token * P                       qkv, proj and MLP weights of every block
          + 6 * N_unmask_head * M + 6 * N_insert_head * P   the heads where the loss reads them
          + 6 * N_conditioning * B                time MLP and adaLN projections (per sequence)
          + 12 * n_layer * n_embd * sum_i len_i^2 attention scores and values, fwd + bwd
The token embedding is a lookup and is not counted. A padded FlexMDM batch runs the same useful
FLOPs on B * (max_len + 1) positions, so its MFU shows what padding wastes.

Sampling (mode='sample'): sample.generate on a random-init model (or ckpt=<path to ckpt.pt>) for
each unmasking rule in `samplers` at sample_steps steps and sample_batch sequences; reports
sequences/s, model calls/s (counted by wrapping model_fn) and the mean length of the samples (throughput depends on it: a
random-init insertion head grows sequences fast, a trained one follows the data).
sample_options passes more keyword arguments to generate (e.g. the MDM or window options, early_stop).
full_width=True runs the network on all max_len positions at every step (x and fixed padded, outputs
sliced back: pad_to), as the published FlexMDM code does, instead of the batch's current width.
head_at='masks' applies the V-way head at every mask of every step (the sampler before f_at), instead of
only where the sampler reads f ('read': the masks it unmasks). On a CPU the sampling times are the
process's CPU time (fair when other jobs share the machine: give it one thread), on CUDA the wall time.
"""
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import train
from configurator import InputError, check_choices, check_device, configure, run
from interpolant import Schedule, flexmdm_interpolant, mdm_interpolant, sample_times
from model import DiT, ModelConfig

# -----------------------------------------------------------------------------
mode = "train"  # train | sample
data = "synthetic"  # synthetic | path of a prepared dataset directory
vocab_size = 50259  # synthetic data: GPT-2 BPE + pad + mask
max_len = 1024  # synthetic data
len_median = 60.0  # synthetic lengths: round(LogNormal(log(len_median), len_sigma)), clipped [1, max_len]
len_sigma = 1.0
num_sequences = 8192  # synthetic sequences to draw batches from
batch_size = 32  # sequences per step
packing = True  # FlexMDM only
pack_tokens = 2048
model_type = "flexmdm"  # flexmdm | mdm
n_layer = 12
n_head = 12
n_embd = 768
cond_dim = 128
dropout = 0.05
warmup_steps = 5  # not timed
timed_steps = 20
peak_flops = 989e12  # H100 SXM dense bf16
num_threads = 0  # CPU threads for torch; 0 keeps torch's default
out_json = ""  # also write the results here
# sampling
ckpt = ""  # mode=sample: load model_args and EMA weights from this ckpt.pt instead of random init
samplers = "poisson,adaptive"  # to time, comma-separated: poisson | exact (vanilla rules) | adaptive
sample_steps = 256
sample_batch = 64
sample_rounds = 2  # timed generate calls per sampler (one untimed call first)
sample_options = {}  # more keyword arguments for sample.generate, e.g. --sample_options="{'temperature': 0.0}"
full_width = False  # mode=sample: the network sees all max_len positions every step (the published code's way)
head_at = "read"  # mode=sample: the V-way head where the sampler reads f (read) or at every mask of every step (masks)
# every other setting of train.py is accepted (and ignored unless named above: the optimizer,
# schedule and system settings are used as train.py uses them)
for _k, _v in vars(train).items():
    if not _k.startswith("_") and isinstance(_v, (int, float, bool, str)) and _k not in globals():
        globals()[_k] = _v
# -----------------------------------------------------------------------------


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


def param_groups(raw):
    """Parameter counts by how often their FLOPs run: per token, per masked position (unmasking
    head), per gap slot (insertion head), per sequence (time embedding, adaLN). The token
    embedding (a lookup) is left out."""
    count = lambda mods: sum(p.numel() for m in mods if m is not None for p in m.parameters())
    per_seq = count([raw.time_emb, raw.ada_out] + [b.ada for b in raw.blocks])
    head, insert, emb = count([raw.unmask_head]), count([raw.insert_head]), count([raw.tok_emb])
    per_token = raw.num_params() - per_seq - head - insert - emb  # qkv, proj, mlp of the blocks
    return per_token, head, insert, per_seq


def setup():
    if num_threads:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device_type, autocast


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def bench_train():
    device_type, autocast = setup()
    rng = np.random.default_rng(seed)
    if data == "synthetic":
        meta, split = synthetic_data(rng)
        prompt = 0
    else:
        meta, splits = train.load_data(data)
        split, prompt = splits["train"], train.max_prompt_len(splits)
    # as train.py: the MDM's rows hold [prompt, SEP] before the sequence; FlexMDM rows max_len + 1
    seq_len = meta["max_len"] + (prompt + 1 if model_type == "mdm" and prompt else 0)
    packed = packing and model_type == "flexmdm"
    row_tokens = max(pack_tokens, seq_len + 1) if packed else 0
    alpha = Schedule(alpha_schedule, schedule_exponent)
    beta = Schedule(beta_schedule, schedule_exponent)
    mask_id, pad_id = meta["mask_id"], meta["pad_id"]
    raw = DiT(ModelConfig(vocab_size=meta["vocab_size"], max_len=seq_len, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, cond_dim=cond_dim, dropout=dropout, model_type=model_type,
                          pad_id=pad_id)).to(device)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=learning_rate, betas=(beta1, beta2),
                                  weight_decay=weight_decay, fused=True)
    ema = [p.detach().clone() for p in raw.parameters()] if ema_decay else None
    model = torch.compile(raw) if compile else raw
    per_token, head, insert, per_seq = param_groups(raw)
    layout = f"packed rows of {row_tokens}" if packed else f"padded rows of {seq_len + (model_type == 'flexmdm')}"
    print(f"{model_type}: {raw.num_params() / 1e6:.2f}M parameters ({per_token / 1e6:.2f}M per token, "
          f"{head / 1e6:.2f}M unmasking head), batch {batch_size}, max length {seq_len}, {layout}, "
          f"{device} {dtype}{' compiled' if compile else ''}, data {data}")

    # Batches, times and the interpolant's statistics, drawn before timing. The loss re-draws the
    # same x_t from a generator re-seeded to seed + step.
    gen = torch.Generator(device=device)
    tgen = torch.Generator(device=device).manual_seed(seed)
    steps, n_seq = [], len(split[1]) - 1
    for i in range(warmup_steps + timed_steps):
        x1, lengths, fixed = (z.to(device) for z in train.get_batch(split, rng.integers(0, n_seq, size=batch_size),
                                                                    meta, model_type, seq_len))
        t = sample_times(batch_size, device=device, generator=tgen)
        gen.manual_seed(seed + i)
        if model_type == "mdm":
            _, masked = mdm_interpolant(x1, t, beta, mask_id, fixed=fixed, generator=gen)
            span = torch.full_like(lengths, seq_len)
            xt_tokens = run = batch_size * seq_len  # the MDM's x_t is the whole row, pads included
        else:
            fb = flexmdm_interpolant(x1, lengths, t, alpha, beta, mask_id, pad_id, fixed=fixed, generator=gen)
            masked, span = fb.masked, fb.lengths + 1
            xt_tokens = int(fb.lengths.sum())
            if packed:
                run = train.pack(fb.xt, fb.lengths, raw.slot_id, pad_id, row_tokens)[0].numel()
            else:
                run = batch_size * (seq_len + 1)
        P, M = int(span.sum()), int(masked.sum())
        flops = (6 * (per_token + insert) * P + 6 * head * M + 6 * per_seq * batch_size
                 + 12 * n_layer * n_embd * int((span.double() ** 2).sum()))
        steps.append(dict(batch=(x1, lengths, fixed, t), x1=int(lengths.sum()), xt=xt_tokens, P=P, run=run,
                          flops=flops))

    def forward_backward(i):
        x1, lengths, fixed, t = steps[i]["batch"]
        gen.manual_seed(seed + i)
        with autocast:
            if model_type == "mdm":
                loss = train.mdm_loss(model, x1, lengths, fixed, t, beta, mask_id, gen)[0]
            else:
                loss = train.flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, mask_id, pad_id, row_tokens, gen)[0]
        loss.backward()
        return loss

    def step(i):
        loss = forward_backward(i)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in raw.parameters()], 1 - ema_decay)
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
    seen = {s["run"] for s in steps[:warmup_steps]}
    extra = 0
    for i in range(warmup_steps, len(steps)):
        if steps[i]["run"] not in seen:
            seen.add(steps[i]["run"])
            with torch.random.fork_rng(devices=[torch.device(device)] if device_type == "cuda" else [],
                                       device_type=device_type):
                forward_backward(i)
            optimizer.zero_grad(set_to_none=True)
            extra += 1
    sync(device_type)
    shapes = len({s["run"] for s in steps[warmup_steps:]})
    print(f"warmup: {warmup_steps} steps + {extra} forward/backward for new layout shapes in "
          f"{time.perf_counter() - t0:.1f} s; {shapes} layout shape(s) in the timed steps")
    times = []
    for i in range(warmup_steps, warmup_steps + timed_steps):
        t0 = time.perf_counter()
        loss = step(i)
        sync(device_type)
        times.append(time.perf_counter() - t0)
    if not math.isfinite(loss.item()):
        raise InputError(f"non-finite loss {loss.item()}")
    timed = steps[warmup_steps:]
    total = sum(times)
    total_of = lambda key: sum(s[key] for s in timed)
    res = {
        "mode": "train", "model_type": model_type, "packing": packed, "batch_size": batch_size, "max_len": seq_len,
        "row_tokens": row_tokens, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
        "params": raw.num_params(), "device": device, "dtype": dtype, "compile": compile, "data": data,
        "timed_steps": timed_steps, "layout_shapes": shapes,
        "step_ms_median": 1000 * statistics.median(times), "step_ms_mean": 1000 * total / len(times),
        "x1_tok_per_s": total_of("x1") / total, "xt_tok_per_s": total_of("xt") / total,
        "positions_per_s": total_of("P") / total, "fill": total_of("P") / total_of("run"),
        "tflops_per_s": total_of("flops") / total / 1e12, "mfu": total_of("flops") / total / peak_flops,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None,
        "final_loss": loss.item(),
    }
    mem = f", peak memory {res['peak_mem_gib']:.1f} GiB" if res["peak_mem_gib"] is not None else ""
    print(f"step {res['step_ms_median']:.1f} ms (median; mean {res['step_ms_mean']:.1f}), "
          f"{res['x1_tok_per_s']:.0f} x1 tok/s, {res['xt_tok_per_s']:.0f} x_t tok/s, fill {100 * res['fill']:.1f}%, "
          f"{res['tflops_per_s']:.3g} useful TFLOP/s, MFU {100 * res['mfu']:.3g}% of {peak_flops:.3g}{mem}")
    return res


def pad_to(model_fn, width, pad_id):
    """model_fn run on x padded to width with pad_id (fixed with False) and its outputs sliced back: the
    published FlexMDM code's layout. The network masks padding, so the samples' distribution is ours."""
    def padded(x, t, fixed):
        extra = width - x.shape[1]
        logits, g = model_fn(torch.nn.functional.pad(x, (0, extra), value=pad_id), t,
                             torch.nn.functional.pad(fixed, (0, extra), value=False))
        if callable(logits):  # f_at(where): read where the sampler reads, in the padded layout
            f_at = logits
            logits = lambda where: f_at(torch.nn.functional.pad(where, (0, extra), value=False))
        else:
            logits = logits[:, : x.shape[1]]
        return logits, None if g is None else g[:, : x.shape[1] + 1]
    return padded


def bench_sample():
    import sample
    device_type, autocast = setup()
    prompt_options = {}
    if ckpt:
        raw, state = sample.load_model(ckpt, "cpu")
        meta, mt, config = state["meta"], state["model_args"]["model_type"], state["config"]
        length, mask_id, pad_id = raw.cfg.max_len, meta["mask_id"], meta["pad_id"]
        if meta.get("tokenizer") == "maze":  # a maze model samples paths through held-out subgoals, as sample.py
            goals = sample.maze_prompts(f"data/{config['dataset']}", sample_batch, meta["maze"])
            prompt_options = dict(prompts=[g + [meta["sep_id"]] for g in goals] if mt == "mdm" else goals,
                                  banned=[meta["sep_id"]])
    else:
        mt, length, config = model_type, max_len, globals()
        mask_id, pad_id = vocab_size - 1, vocab_size - 2
        raw = DiT(ModelConfig(vocab_size=vocab_size, max_len=length, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                              cond_dim=cond_dim, dropout=0.0, model_type=mt, pad_id=pad_id, attention="sdpa"))
    raw = raw.to(device).eval()
    alpha, beta = sample.schedules(config)  # a checkpoint's own, as sample.py uses them
    if compile:  # sequence lengths change at every step: compile for dynamic shapes
        raw.padded_states = torch.compile(raw.padded_states, dynamic=True)
    net, calls = raw.sampler_fn(alpha if mt == "flexmdm" else beta), [0]  # conditioned as in training

    def model_fn(x, t, fixed):
        calls[0] += 1
        with autocast:
            f_at, g = net(x, t, fixed)
            if head_at == "masks":
                masks = x == mask_id
                at_masks = f_at(masks)
                f_at = lambda where: at_masks[where[masks]]
            return f_at, g
    if full_width:
        model_fn = pad_to(model_fn, length, pad_id)

    print(f"{mt}: {raw.num_params() / 1e6:.2f}M parameters, max length {length}, batch {sample_batch}, "
          f"{sample_steps} steps, {'full width' if full_width else 'our width'}, {device} {dtype}{' compiled' if compile else ''}"
          f"{', ckpt ' + ckpt if ckpt else ', random init'}")
    results = []
    for rule in [s for s in samplers.split(",") if s]:
        options = {**({"sampler": "adaptive"} if rule == "adaptive" else {"unmask": rule}), **sample_options}
        run = lambda: sample.generate(model_fn, sample_batch, sample_steps, length, mask_id, pad_id, device=device,
                                      model_type=mt, alpha=alpha, beta=beta, **prompt_options, **options)
        torch.manual_seed(seed)
        with torch.no_grad():
            run()  # untimed: compilation, allocator
            sync(device_type)
            calls[0], total, lens = 0, 0.0, []
            clock = time.perf_counter if device_type == "cuda" else time.process_time
            for _ in range(sample_rounds):
                t0 = clock()
                out = run()
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
    configure(globals(), sys.argv[1:])
    check_choices(globals(), dict(mode=("train", "sample"), dtype=("float32", "bfloat16"), head_at=("read", "masks")))
    check_device(device)
    res = bench_train() if mode == "train" else bench_sample()
    if out_json:
        with open(out_json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    run(main)
