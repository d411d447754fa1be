"""
Train a FlexMDM (or the padded MDM baseline) on a prepared dataset. One process:
    python train.py config/maze_cpu.py --max_iters=200
DDP on one node (gloo on CPU, nccl on CUDA):
    torchrun --standalone --nproc_per_node=8 train.py config/owt.py
Continue a stopped run: the same command with --init_from=resume (out_dir holds ckpt.pt).
Settings are the globals below, overridden by config files then --key=value (configurator.py).

Resuming (--init_from=resume) continues the run of out_dir/ckpt.pt on the same data with the same network:
a setting of the model (n_layer, n_head, n_embd, cond_dim, dropout, model_type, fixed_embedding,
insert_head, insert_scale), of the schedules (alpha_schedule, beta_schedule, schedule_exponent) or the
dataset that differs from the checkpoint's is refused, naming it. Everything else may change on resume:
the budget and its schedule (max_iters, max_seconds, warmup_iters, lr_decay_iters, learning_rate, min_lr),
the batch, the loss weighting (time_weighting, prior_weight, prior_time), evaluation, logging, saving and
the system settings.

Checkpoints (out_dir/ckpt.pt: weights, EMA, optimiser, RNG states, iteration, time spent) are written at
every eval_interval, every save_interval iterations, every save_seconds of wall time, at the end, and
when SIGINT (Ctrl-C) or SIGTERM stops the run; each write replaces the previous one atomically. A run
stopped by a signal finishes its iteration, saves, prints one line naming the resume command and exits
with status 130 (SIGINT) or 143 (SIGTERM), so a following `&&` does not run; under torchrun every rank
stops at the same iteration. Resumed with an iteration budget, a run ends bit for bit as the uncut run.
"""
import math
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_device, check_ranges, configure, init_distributed, pick, run

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import load_checkpoint, save_checkpoint
from data import LengthTilt, check_same_data, get_batch, keep_spans, load_data, max_prompt_len
from interpolant import LossConfig, batch_loss, behind_times
from model import DiT, ModelConfig, autocast, network

# -----------------------------------------------------------------------------
# I/O
out_dir = "out"
init_from = "scratch"  # scratch (refused if out_dir holds ckpt.pt) | resume
eval_interval = 500  # evaluate and checkpoint every eval_interval iterations
save_interval = 0  # > 0: also checkpoint every save_interval iterations
save_seconds = 600.0  # > 0: also checkpoint once this many wall seconds have passed since the last checkpoint
keep_at = ()  # budget points (seconds of training steps with max_seconds, else iterations) where a copy of the
    # checkpoint is kept as ckpt_<point>.pt: a compute curve from one run
eval_iters = 20
log_interval = 10
wandb_log = False
wandb_project = "flexmdm"
wandb_run_name = "run"
# data
dataset = "maze_k2"  # data/<dataset>/{train,val}.{bin,idx[,fix]} + meta.json
batch_size = 64  # sequences per micro-step and process
gradient_accumulation_steps = 1  # total over all processes, as in nanoGPT
packing = False  # FlexMDM: pack the x_t of a batch into rows of pack_tokens with no padding
pack_tokens = 2048
verify_data = False  # also check every byte of the data against the SHA-256 in its meta.json (reads it all once)
# model
model_type = "flexmdm"  # flexmdm | mdm
n_layer = 8
n_head = 8
n_embd = 256
cond_dim = 128
dropout = 0.1
alpha_schedule = "linear"  # insertion schedule: linear | poly | cosine
beta_schedule = "linear"  # unmasking schedule
schedule_exponent = 2.0  # for poly schedules
time_weighting = "elbo"  # elbo: eq. 7 | flat: same minimisers, less gradient noise (interpolant.time_weight)
insert_head = "linear"  # FlexMDM's g head: linear | mlp (model.py)
insert_scale = 1.0  # g = insert_scale * softplus(head) (the published code: max_len)
prior_weight = 0.0  # > 0: also train g at every sequence's x_0, the length prior (flexmdm_loss); 0: the paper's loss
prior_time = 0.0  # > 0: those extra rows at t = prior_time * u^2 instead of t = 0 (the early states, flexmdm_loss)
behind_weight = 0.0  # > 0: also train g on states behind their time, where a sampler that fell behind goes
    # (interpolant.behind_times: the same minimiser); 0: the paper's loss
behind_lag = 0.5  # those states drawn at s = u t, u ~ U[behind_lag, 1)
infill_prob = 0.0  # > 0: with this probability a training sequence keeps one random span free, its other tokens
    # fixed (data.keep_spans: the span-trained infilling models of paper F.3)
fixed_embedding = False  # add a learned vector to fixed tokens, so subgoals differ from unmasked cells (model.py)
gap_embedding = True  # with infill_prob (FlexMDM): tell the network which gaps the span leaves closed (model.py:
    # without it g spreads the span over every gap, RESULTS.md); False: the unmarked span models of RESULTS.md
# optimiser
learning_rate = 1e-4
max_iters = 10000
max_seconds = 0.0  # > 0: train for this many seconds of training steps (eval excluded) instead of max_iters
    # iterations; the LR schedule keeps its shape, with max_iters (and warmup_iters, lr_decay_iters) mapped onto the budget
budget_clock = "wall"  # wall | cpu: the process's CPU time, a fair budget for runs that share a CPU (1 thread each)
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0  # 0 disables
warmup_iters = 500
lr_decay_iters = 0  # 0 means max_iters
min_lr = 1e-5
ema_decay = 0.9999  # 0 disables
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # float32 | bfloat16
compile = False
seed = 1337
# -----------------------------------------------------------------------------


def get_lr(it, spent):
    """Linear warmup then cosine decay to min_lr (nanoGPT). With a time budget (max_seconds, on the
    budget_clock) the schedule stands where the same fraction of max_iters would be as the fraction of
    max_seconds spent."""
    if max_seconds:
        it = max_iters * spent / max_seconds
    decay_iters = lr_decay_iters or max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@contextmanager
def stop_signals():
    """Within the block, SIGINT (Ctrl-C) and SIGTERM (kill, torchrun, a cluster's preemption) do not stop
    the process: they append their number to the list yielded, which the training loop reads between
    iterations to checkpoint and stop. Further signals change nothing (torchrun forwards a Ctrl-C that
    the workers received already); kill -9 stops at once, and the last checkpoint stays whole."""
    received = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_settings():
    """Every setting's range and the relations between them, before any work: one line naming the key, its
    value and the rule. The model's and the loss's own settings are checked by ModelConfig and LossConfig."""
    check_device(device)
    check_choices(globals(), dict(dtype=("float32", "bfloat16"), budget_clock=("wall", "cpu"), init_from=("scratch", "resume")))
    check_ranges(globals(), dict(batch_size=">0", gradient_accumulation_steps=">0", pack_tokens=">0", eval_interval=">0",
                                 eval_iters=">0", log_interval=">0", save_interval=">=0", save_seconds=">=0",
                                 learning_rate=">0", min_lr=">=0", max_iters=">=0", max_seconds=">=0", warmup_iters=">=0",
                                 lr_decay_iters=">=0", weight_decay=">=0", beta1="[0,1)", beta2="[0,1)", grad_clip=">=0",
                                 ema_decay="[0,1)", seed=">=0", infill_prob="[0,1]"))
    if not isinstance(keep_at, tuple) or not all(isinstance(p, (int, float)) and p >= 0 for p in keep_at):
        raise InputError(f"keep_at={keep_at!r} must be a tuple of budget points >= 0, e.g. --keep_at=(100,200)")
    if packing and model_type == "mdm":
        raise InputError("packing=True applies to FlexMDM only: the MDM baseline pads by design")
    pick(LossConfig, globals())  # its own checks
    pick(ModelConfig, globals(), vocab_size=1, max_len=1, pad_id=0)  # ... and the model's, before the data is read
    if init_from == "scratch" and os.path.exists(os.path.join(out_dir, "ckpt.pt")):
        raise InputError(f"{os.path.join(out_dir, 'ckpt.pt')} exists: continue that run with --init_from=resume, or "
                         "start this one in another --out_dir")


RESUME_FIXED = ("n_layer", "n_head", "n_embd", "cond_dim", "dropout", "model_type", "fixed_embedding", "insert_head",
                "insert_scale", "alpha_schedule", "beta_schedule", "schedule_exponent")


def resume_checkpoint(given):
    """The checkpoint that --init_from=resume continues. The run takes its network and schedules (RESUME_FIXED)
    and its dataset from it: one of these given another value is refused, naming each (module docstring)."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path, hint="--init_from=resume needs the run's checkpoint")
    if not {"model", "optimizer", "model_args", "config", "meta", "rng", "iter_num"} <= set(ckpt):
        raise InputError(f"{path} is not a checkpoint of train.py (a key is missing)")
    saved = {**ckpt["config"], **ckpt["model_args"]}
    changed = [f"{k}={globals()[k]!r} (the checkpoint has {saved[k]!r})" for k in RESUME_FIXED
               if k in given and k in saved and globals()[k] != saved[k]]
    if changed:
        raise InputError(f"--init_from=resume continues {path} with its network, but this run sets {', '.join(changed)}: "
                         "drop those settings, or start a new run in another --out_dir")
    for k in RESUME_FIXED + ("dataset",):
        if k in saved and k not in given:
            globals()[k] = saved[k]
    return ckpt


def check_resume(ckpt, meta, data_dir, world):
    """The checkpoint continues this run: the same data and processes."""
    path = os.path.join(out_dir, "ckpt.pt")
    for key in ("vocab_size", "pad_id", "mask_id", "tokenizer"):
        if meta.get(key) != ckpt["meta"].get(key):
            raise InputError(f"{key} of the data ({meta.get(key)!r}) does not match the checkpoint {path} ({ckpt['meta'].get(key)!r})")
    check_same_data(ckpt["meta"], meta, data_dir)
    if len(ckpt["rng"]) != world:
        raise InputError(f"{path} was written by {len(ckpt['rng'])} process(es), this run has {world}")


def draw_batch(split_data, rng, meta, seq_len, dev, indices=None):
    """batch_size sequences of a split, drawn with rng (or those of indices), on dev: (x1, lengths, fixed) and the
    x1 token count."""
    indices = rng.integers(0, len(split_data[1]) - 1, size=batch_size) if indices is None else indices
    x1, lengths, fixed = get_batch(split_data, indices, meta, model_type, seq_len)
    return tuple(z.to(dev, non_blocking=True) for z in (x1, lengths, fixed)), int(lengths.sum())  # counted on the host


def unwrap(model):
    """The DiT inside DDP and torch.compile's wrappers."""
    model = model.module if isinstance(model, DDP) else model
    return getattr(model, "_orig_mod", model)


def network_of(model):
    """The network as the losses call it: packed rows of max(pack_tokens, max_len + 1) with packing=True."""
    seq_len = unwrap(model).cfg.max_len
    return network(model, max(pack_tokens, seq_len + 1) if packing else 0)


@torch.no_grad()
def evaluate(model, ema, val, meta, dev):
    """Validation loss (eq. 7, whatever the training weighting and prior_weight) on a fixed set of batches and
    draws, with the EMA weights; touches no training random stream. Returns [loss, unmask, insert]."""
    raw, net, loss_cfg = unwrap(model), network_of(model), pick(LossConfig, globals()).eq7()
    model.eval()
    live = [p.detach().clone() for p in raw.parameters()]
    if ema_decay:
        torch._foreach_copy_(list(raw.parameters()), ema)
    generator, rng = torch.Generator(device=dev).manual_seed(seed), np.random.default_rng(seed)
    terms = []
    for _ in range(eval_iters):
        batch, _ = draw_batch(val, rng, meta, raw.cfg.max_len, dev)
        with autocast(dev, dtype):
            terms.append(torch.stack(batch_loss(net, *batch, loss_cfg, meta["mask_id"], meta["pad_id"], generator)))
    torch._foreach_copy_(list(raw.parameters()), live)
    model.train()
    terms = torch.stack(terms).mean(0)
    if dist.is_initialized():
        dist.all_reduce(terms, op=dist.ReduceOp.AVG)
    return terms.tolist()


def save(path, raw, optimizer, ema, data_rng, record, dev):
    """The checkpoint: weights, EMA, optimizer, the random streams of every process (gathered to rank 0,
    which writes), and record (model_args, config, meta, iter_num, train_seconds)."""
    rng = {"torch": torch.get_rng_state(), "data": data_rng.bit_generator.state,
           "cuda": torch.cuda.get_rng_state() if dev.startswith("cuda") else None}
    states = [rng]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, rng)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(path, {"model": raw.state_dict(), "ema": [e.cpu() for e in ema] if ema_decay else None,
                               "optimizer": optimizer.state_dict(), **record, "rng": states})


def build(meta, seq_len, rank, dev, ckpt=None):
    """The model, optimizer, EMA and data stream of a new run, or of the checkpoint it resumes. Returns
    (model, optimizer, ema, data_rng, iter_num, spent, model_args)."""
    model_args = ckpt["model_args"] if ckpt else asdict(pick(ModelConfig, globals(), vocab_size=meta["vocab_size"],
                                                              max_len=seq_len, pad_id=meta["pad_id"],
                                                              gap_embedding=gap_embedding and infill_prob > 0))
    torch.manual_seed(seed)  # the same initial model on every rank; per-rank streams after it
    data_rng = np.random.default_rng(seed + rank)
    model = DiT(ModelConfig(**model_args)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2), weight_decay=weight_decay,
                                  fused=True)
    torch.manual_seed(seed + rank)
    if ckpt is None:
        return model, optimizer, [p.detach().clone() for p in model.parameters()], data_rng, 0, 0.0, model_args
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"][rank]["torch"])
    if dev.startswith("cuda"):
        torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
    data_rng.bit_generator.state = ckpt["rng"][rank]["data"]
    # the EMA goes on; a checkpoint saved without EMA starts it from the resumed weights
    ema = [e.to(dev) for e in ckpt["ema"]] if ckpt["ema"] is not None else [p.detach().clone() for p in model.parameters()]
    if rank == 0:
        print(f"resuming from {os.path.join(out_dir, 'ckpt.pt')}: iteration {ckpt['iter_num']}, {ckpt.get('train_seconds', 0.0):.1f} s of "
              "training steps spent")
    return model, optimizer, ema, data_rng, ckpt["iter_num"], ckpt.get("train_seconds", 0.0), model_args


def main():
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    given = configure(globals(), sys.argv[1:])
    check_settings()
    ckpt = resume_checkpoint(given) if init_from == "resume" else None
    config = {k: globals()[k] for k in config_keys}

    ddp, rank, local_rank, world, dev = init_distributed(device)
    if gradient_accumulation_steps % world:
        raise InputError(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by {world} processes")
    data_dir = os.path.join("data", dataset)
    meta, splits = load_data(data_dir, checksums=verify_data)
    if ckpt:
        check_resume(ckpt, meta, data_dir, world)
    prompt = max_prompt_len(splits)
    seq_len = meta["max_len"] + (prompt + 1 if model_type == "mdm" and prompt else 0)
    raw_model, optimizer, ema, data_rng, iter_num, spent, model_args = build(meta, seq_len, rank, dev, ckpt)
    if rank == 0:
        print(f"{model_type}: {raw_model.num_params() / 1e6:.2f}M parameters, max length {seq_len}, {world} process(es) on {dev}")
    model = torch.compile(raw_model) if compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if dev.startswith("cuda") else None)
    if wandb_log and rank == 0:
        start_wandb(config)
    record = dict(model_args=model_args, config=config, meta=meta)
    stop = train(model, optimizer, ema, data_rng, splits, record, iter_num, spent, dev)
    if ddp:
        del model  # DDP is freed while the process group lives
        end_ddp(raw_model)
    return 128 + stop if stop else 0  # the shell's status for a process stopped by that signal


def train(model, optimizer, ema, data_rng, splits, record, iter_num, spent, dev):
    """The training loop, from iter_num and spent seconds until the budget is spent or a stop signal comes;
    returns the signal's number, or 0. Evaluates every eval_interval and checkpoints as the module docstring
    says, from the first iteration on: a new run that stops before its first step leaves nothing."""
    raw, ddp = unwrap(model), dist.is_initialized()
    master = not ddp or dist.get_rank() == 0
    tilt = LengthTilt(splits["train"][1]) if behind_weight else None
    clock = time.process_time if budget_clock == "cpu" else time.time
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    t0, tokens_seen, last_save = time.time(), 0, time.monotonic()
    kept = {p for p in keep_at if (spent if max_seconds else iter_num) >= p}  # a resumed run passed these already
    with stop_signals() as received:
        while True:
            stop = received[0] if received else 0
            save_due = bool(save_seconds) and time.monotonic() - last_save >= save_seconds
            if ddp:  # rank 0's clocks rule, a stop signal on any rank stops all: every rank stops and saves alike
                shared = torch.tensor([spent if master else 0.0, save_due and master, stop], dtype=torch.float64, device=dev)
                dist.all_reduce(shared, op=dist.ReduceOp.MAX)
                spent, save_due, stop = shared[0].item(), bool(shared[1]), int(shared[2])
            done = spent >= max_seconds if max_seconds else iter_num >= max_iters
            if (iter_num % eval_interval == 0 or done) and not stop:
                val = evaluate(model, ema, splits["val"], record["meta"], dev)
                log(master, {"iter": iter_num, "val/loss": val[0], "val/unmask": val[1], "val/insert": val[2]},
                    f"iter {iter_num}: val loss {val[0]:.4f} (unmask {val[1]:.4f}, insert {val[2]:.4f})")
            now = dict(record, iter_num=iter_num, train_seconds=spent)
            due = iter_num % eval_interval == 0 or done or stop or save_due or (save_interval and iter_num % save_interval == 0)
            if due and iter_num > 0:
                save(ckpt_path, raw, optimizer, ema, data_rng, now, dev)
                last_save = time.monotonic()
            for point in sorted(p for p in keep_at if p not in kept and (spent if max_seconds else iter_num) >= p):
                save(os.path.join(out_dir, f"ckpt_{point:g}.pt"), raw, optimizer, ema, data_rng, now, dev)
                kept.add(point)
            if stop:
                log(master, {}, stopped_line(stop, iter_num, ckpt_path), file=sys.stderr)
                return stop
            if done:
                log(master, {}, f"stopped after {iter_num} iterations and {spent:.0f} s of training steps")
                return 0
            step_start, lr = clock(), get_lr(iter_num, spent)
            terms, n_tokens = step(model, optimizer, ema, splits["train"], data_rng, lr, record["meta"], dev, tilt)
            iter_num, spent, tokens_seen = iter_num + 1, spent + clock() - step_start, tokens_seen + n_tokens
            if iter_num % log_interval == 0:
                dt, world = time.time() - t0, dist.get_world_size() if ddp else 1
                log(master, {"iter": iter_num, "lr": lr, **{f"train/{k}": v for k, v in terms.items()}},
                    f"iter {iter_num}: loss {terms['loss']:.4f} (unmask {terms['unmask']:.4f}, insert {terms['insert']:.4f}), "
                    f"lr {lr:.2e}, {tokens_seen * world / dt:.0f} x1 tok/s, {1000 * dt / log_interval:.0f} ms/iter")
                t0, tokens_seen = time.time(), 0


def step(model, optimizer, ema, split, data_rng, lr, meta, dev, tilt=None):
    """One optimizer step: the loss of gradient_accumulation_steps batches (over all processes; DDP syncs the
    gradients at the last one), clipping, AdamW, the EMA. With behind_weight, each batch also gets rows behind
    their time, their sequences drawn by tilt (data.LengthTilt). Returns the last batch's terms and the x1 tokens
    seen."""
    raw, net, loss_cfg = unwrap(model), network_of(model), pick(LossConfig, globals())
    accum = gradient_accumulation_steps // (dist.get_world_size() if dist.is_initialized() else 1)
    for group in optimizer.param_groups:
        group["lr"] = lr
    tokens = 0
    for micro in range(accum):
        if dist.is_initialized():
            model.require_backward_grad_sync = micro == accum - 1
        batch, n_tokens = draw_batch(split, data_rng, meta, raw.cfg.max_len, dev)
        span = None
        if infill_prob:
            x1, lengths, fixed = batch
            fixed, span = keep_spans(lengths, fixed, infill_prob, data_rng, model_type == "mdm")
            batch = x1, lengths, fixed
        behind = None
        if tilt is not None:
            t, s, log_r = behind_times(batch_size, loss_cfg, dev)
            rows = draw_batch(split, data_rng, meta, raw.cfg.max_len, dev, tilt.draw(log_r.cpu().numpy(), data_rng))[0]
            behind = (*rows, t, s)
        with autocast(dev, dtype):
            loss, unmask, insert = batch_loss(net, *batch, loss_cfg, meta["mask_id"], meta["pad_id"], behind=behind, span=span)
        (loss / accum).backward()
        tokens += n_tokens
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema_decay:
        torch._foreach_lerp_(ema, [p.detach() for p in raw.parameters()], 1 - ema_decay)
    return dict(loss=loss.item(), unmask=unmask.item(), insert=insert.item()), tokens


def stopped_line(stop, iter_num, ckpt_path):
    """What a stop signal left behind, and how to go on."""
    name = signal.Signals(stop).name
    if iter_num == 0:
        return f"stopped by {name} before the first step: nothing was written; to start, run the same command again"
    return (f"stopped by {name} at iteration {iter_num}, saved in {ckpt_path}; to continue, run the same command with "
            f"--init_from=resume --out_dir={shlex.quote(out_dir)}")


def log(master, metrics, line, file=None):
    """On rank 0: print line, and send metrics to wandb (with wandb_log)."""
    if master:
        print(line, file=file)
        if wandb_log and metrics:
            import wandb
            wandb.log(metrics)


def start_wandb(config):
    """wandb.init, or one line on why it cannot start (not logged in, no network: WANDB_MODE=offline logs locally)."""
    import wandb
    try:
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
    except Exception as e:  # wandb raises its own errors of many kinds
        raise InputError(f"wandb_log=True but wandb could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "log in with `wandb login`, or set WANDB_MODE=offline, or drop --wandb_log") from None


def end_ddp(raw_model):
    """Check that every process ends with the same weights, then leave the process group. The gather and the
    barrier let gloo's worker threads finish and free DDP while the group lives (else exit can deadlock)."""
    checksum = torch.stack([p.detach().double().sum() for p in raw_model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, checksum)
    if any(not torch.equal(sums[0], s) for s in sums):
        raise InputError("the DDP processes ended with different parameters")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
