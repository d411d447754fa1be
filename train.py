"""
Train a FlexMDM (or the padded MDM baseline) on a prepared dataset. One process:
    python train.py config/maze_cpu.py --max_iters=200
DDP on one node (gloo on CPU, nccl on CUDA):
    torchrun --standalone --nproc_per_node=8 train.py config/owt.py
Continue a stopped run: the same command with --init_from=resume (out_dir holds ckpt.pt).
Settings are the globals below, overridden by config files then --key=value (configurator.py).

Checkpoints (out_dir/ckpt.pt: weights, EMA, optimiser, RNG states, iteration, time spent) are written at
every eval_interval, every save_interval iterations, every save_seconds of wall time, at the end, and
when SIGINT (Ctrl-C) or SIGTERM stops the run; each write replaces the previous one atomically.
"""
import json
import math
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import InputError, check_choices, check_device, configure, run
from interpolant import (SCHEDULES, TIME_WEIGHTINGS, Schedule, flexmdm_interpolant, insertion_loss, mdm_interpolant,
                         num_targets, sample_times, time_weight, unmasking_loss)
from model import DiT, ModelConfig

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
fixed_embedding = False  # add a learned vector to fixed tokens, so subgoals differ from unmasked cells (model.py)
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


def load_data(data_dir):
    """meta.json and, per split, the token stream, the start offsets and the fixed flags (maze)."""
    if not os.path.isdir(data_dir):
        raise InputError(f"dataset directory {data_dir!r} not found: prepare it first (prepare_maze.py or prepare_owt.py)")
    for name in ("meta.json", "train.bin", "train.idx", "val.bin", "val.idx"):
        if not os.path.exists(os.path.join(data_dir, name)):
            raise InputError(f"missing data file {os.path.join(data_dir, name)!r}: prepare the dataset again")
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(data_dir, split)
        dtype_ = np.uint32 if meta["vocab_size"] > 2**16 else np.uint16
        fix = np.memmap(path + ".fix", dtype=np.uint8, mode="r") if os.path.exists(path + ".fix") else None
        splits[split] = (np.memmap(path + ".bin", dtype=dtype_, mode="r"), np.fromfile(path + ".idx", dtype=np.int64), fix)
        if len(splits[split][1]) < 2:
            raise InputError(f"{path}.idx holds no sequence: the {split} split is empty")
    return meta, splits


def max_prompt_len(splits):
    """The longest run of fixed tokens in one sequence (the MDM baseline's prompt, maze subgoals)."""
    lengths = [np.add.reduceat(fix.astype(np.int64), idx[:-1]) for _, idx, fix in splits.values() if fix is not None]
    return int(max(l.max() for l in lengths)) if lengths else 0


def get_batch(split_data, indices, meta, model_type, seq_len):
    """Rows of clean sequences x1 [B, seq_len] right-padded with pad, their lengths and fixed flags.
    FlexMDM: the sequence itself, fixed where the data says so. MDM: [fixed tokens, SEP] as a clean
    prompt (when the data has fixed tokens), then the sequence, then pads as ordinary tokens."""
    tokens, idx, fix = split_data
    x1 = np.full((len(indices), seq_len), meta["pad_id"], dtype=np.int64)
    fixed = np.zeros((len(indices), seq_len), dtype=bool)
    lengths = np.zeros(len(indices), dtype=np.int64)
    for row, i in enumerate(indices):
        seq = tokens[idx[i]:idx[i + 1]].astype(np.int64)
        f = fix[idx[i]:idx[i + 1]].astype(bool) if fix is not None else np.zeros(len(seq), dtype=bool)
        if model_type == "mdm" and f.any():
            seq, f = np.concatenate([seq[f], [meta["sep_id"]], seq]), np.arange(len(seq) + f.sum() + 1) <= f.sum()
        x1[row, :len(seq)], fixed[row, :len(seq)], lengths[row] = seq, f, len(seq)
    return torch.from_numpy(x1), torch.from_numpy(lengths), torch.from_numpy(fixed)


def scatter_rows(where, values, fill, shape):
    """A tensor of shape, fill except at the flat indices where [B, n] >= 0, which get values [B, n].
    The entries with where = -1 go to a spare last element that is dropped: no boolean indexing,
    whose data-dependent size would make the host wait for the device."""
    size = math.prod(shape)
    dest = torch.where(where >= 0, where, size).flatten()
    out = torch.full((size + 1,), fill, dtype=values.dtype, device=values.device)
    return out.index_put_((dest,), values.flatten())[:size].view(shape)


def next_fit(span, row_tokens):
    """Next-fit of sequences of span[i] <= row_tokens positions into rows, in order, as tensor ops:
    returns each sequence's row and column. A row opened at sequence i holds i..nxt(i)-1, as many
    as fit; the rows open at 0, nxt(0), nxt(nxt(0)), ... This orbit is found by pointer doubling:
    after k rounds `opens` holds its first 2^k members and `jump` is nxt applied 2^k times."""
    B = span.shape[0]
    ends = torch.cumsum(span, 0)
    begins = ends - span
    nxt = torch.searchsorted(ends, begins + row_tokens, right=True)  # first k with ends[k] > begins[i] + T
    jump = torch.cat([nxt, nxt.new_full((1,), B)])  # B: past the last sequence, a fixed point
    opens = torch.zeros(B + 1, dtype=torch.long, device=span.device)
    opens[0] = 1
    for _ in range((B - 1).bit_length()):  # 2^k >= B >= the number of rows
        opens = opens.index_add(0, jump, opens).clamp_max_(1)
        jump = jump[jump]
    opens = opens[:B]
    first = torch.cummax(opens * torch.arange(B, device=span.device), 0).values  # the row's first sequence
    return torch.cumsum(opens, 0) - 1, begins - begins[first]


def pack(xt, lengths, slot_id, pad_id, row_tokens):
    """Pack the FlexMDM states x_t [B, L] (each followed by its gap slot) into rows of row_tokens,
    next-fit, with no padding between sequences. Returns tokens, seq_ids, positions [R, row_tokens]
    and where [B, L+1]: the flat index in the rows of (sequence b, position j), -1 past the slot.
    One host sync: the row count R."""
    B, L = xt.shape
    row, col = next_fit(lengths + 1, row_tokens)
    shape = (int(row[-1]) + 1, row_tokens)
    j = torch.arange(L + 1, device=xt.device)
    where = torch.where(j <= lengths[:, None], (row * row_tokens + col)[:, None] + j, -1)
    seq_tokens = torch.cat([xt, torch.full_like(xt[:, :1], pad_id)], dim=1)
    seq_tokens = torch.where(j == lengths[:, None], slot_id, seq_tokens)
    seq_ids = torch.arange(B, device=xt.device)[:, None].expand(B, L + 1)
    return (scatter_rows(where, seq_tokens, pad_id, shape), scatter_rows(where, seq_ids, -1, shape),
            scatter_rows(where, j.expand(B, -1), 0, shape), where)


def flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, mask_id, pad_id, row_tokens=0, generator=None,
                 weighting="elbo", prior_weight=0.0, prior_time=0.0):
    """Eq. 7 for one batch, summed over sequences and divided by the number of x1 tokens that the
    interpolant acts on (non-fixed). row_tokens > 0 runs the network on the packed layout; the
    loss is the same function of the parameters either way. weighting: see interpolant.time_weight.
    prior_weight > 0 adds, with that weight, the insertion term of every sequence again at an early time
    t = prior_time * u^2, u ~ U[0, 1): with prior_time = 0 its x_0 (empty, or its fixed tokens), the length
    prior g(x_0, 0) = E[gaps | x_0] where sampling starts, which the interpolant reaches only with
    probability (1 - alpha(t))^n; with prior_time > 0 the early states where the length is decided. Each
    (x_t, t) is its own regression problem, so the minimisers stay those of eq. 7; packed, it costs one
    position per sequence plus its few early tokens (README "The length prior"). Returns the (loss,
    unmask, insert) terms."""
    raw = model.module if hasattr(model, "module") else model
    n = num_targets(lengths, fixed)
    weight_alpha = time_weight(alpha, t, weighting)
    rows = len(x1)
    if prior_weight:  # the same sequences again at an early time, the insertion term only
        early = prior_time * torch.rand(t.shape, device=t.device, generator=generator) ** 2 if prior_time else 0 * t
        x1, lengths, fixed = (torch.cat([z, z]) for z in (x1, lengths, fixed))
        t = torch.cat([t, early])
        weight_alpha = torch.cat([weight_alpha, torch.full_like(weight_alpha, prior_weight)])
    fb = flexmdm_interpolant(x1, lengths, t, alpha, beta, mask_id, pad_id, fixed=fixed, generator=generator)
    if row_tokens:
        tokens, seq_ids, positions, where = pack(fb.xt, fb.lengths, raw.slot_id, pad_id, row_tokens)
    else:
        tokens, seq_ids, positions = raw.padded_layout(fb.xt)
        where = torch.arange(tokens.numel(), device=x1.device).view(tokens.shape)
        where = torch.where(seq_ids >= 0, where, -1)
    B, L = fb.xt.shape
    fixed_rows = None
    if raw.fixed_emb is not None:  # the fixed flags of x_t, in the rows' layout
        fixed_rows = scatter_rows(where[:, :L], fb.fixed, False, tokens.shape)
    h = model(tokens, seq_ids, positions, alpha(t), raw.attention_mask(seq_ids), fixed_rows).flatten(0, 1)
    b, j = fb.masked[:rows].nonzero(as_tuple=True)  # the one host sync of the loss: the number of masks
    unmask = unmasking_loss(raw.unmask_head(h[where[b, j]]), fb.targets[b, j], time_weight(beta, t, weighting)[b])
    # g at every position of the rows (a cheap head), read at each gap slot; where = -1 weighs 0
    gap = where >= 0
    g = torch.where(gap, raw.insertion_rates(h)[where.clamp_min(0)], 0.0)
    insert = insertion_loss(g, fb.gaps, torch.where(gap, weight_alpha[:, None], 0.0))
    return (unmask + insert) / n, unmask.detach() / n, insert.detach() / n


def mdm_loss(model, x1, lengths, fixed, t, beta, mask_id, generator=None, weighting="elbo"):
    """The MDM loss: w_beta(t) * cross-entropy at the masked positions (pads included: they are the
    MDM's tokens), divided like flexmdm_loss by the non-fixed x1 tokens, so the two compare."""
    raw = model.module if hasattr(model, "module") else model
    xt, masked = mdm_interpolant(x1, t, beta, mask_id, fixed=fixed, generator=generator)
    tokens, seq_ids, positions = raw.padded_layout(xt)
    h = model(tokens, seq_ids, positions, beta(t), raw.attention_mask(seq_ids), fixed)
    b, j = masked.nonzero(as_tuple=True)  # one host sync: the number of masks
    unmask = unmasking_loss(raw.unmask_head(h[b, j]), x1[b, j], time_weight(beta, t, weighting)[b])
    n = num_targets(lengths, fixed)
    return unmask / n, unmask.detach() / n, torch.zeros((), device=x1.device)


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


def save_checkpoint(path, state):
    """Write a temporary file, force it to disk, rename it over path, then force the directory entry to
    disk: a crash, a kill -9 or a power cut at any moment leaves the previous checkpoint or the new one,
    whole, never a torn file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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


def check_meta(meta, ckpt_meta, path):
    for key in ("vocab_size", "pad_id", "mask_id", "tokenizer"):
        if meta.get(key) != ckpt_meta.get(key):
            raise InputError(f"{key} of the data ({meta.get(key)!r}) does not match the checkpoint {path} ({ckpt_meta.get(key)!r})")


def init_distributed(device):
    """Under torchrun, join the process group (nccl on CUDA, gloo on CPU) and take this process's
    GPU. Returns (ddp, rank, local_rank, world, device of this process)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return False, 0, 0, 1, device
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, local_rank, world = dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()
    dev = f"cuda:{local_rank}" if device.startswith("cuda") else device
    if device.startswith("cuda"):
        torch.cuda.set_device(dev)
    return True, rank, local_rank, world, dev


def main():
    config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
    configure(globals(), sys.argv[1:])
    config = {k: globals()[k] for k in config_keys}
    check_device(device)
    if save_interval < 0 or save_seconds < 0:
        raise InputError(f"save_interval={save_interval} and save_seconds={save_seconds} must be >= 0 (0 turns each off)")
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if init_from == "scratch" and os.path.exists(ckpt_path):
        raise InputError(f"{ckpt_path} exists: continue that run with --init_from=resume, or start this one in another --out_dir")

    ddp, rank, local_rank, world, dev = init_distributed(device)
    if gradient_accumulation_steps % world:
        raise InputError(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by {world} processes")
    accum = gradient_accumulation_steps // world
    master = rank == 0
    torch.manual_seed(seed)  # the same initial model on every rank; per-rank streams after it
    data_rng = np.random.default_rng(seed + rank)
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    check_choices(globals(), dict(dtype=("float32", "bfloat16"), model_type=("flexmdm", "mdm"), alpha_schedule=SCHEDULES,
                                  beta_schedule=SCHEDULES, time_weighting=TIME_WEIGHTINGS, budget_clock=("wall", "cpu"),
                                  insert_head=("linear", "mlp")))
    clock = time.process_time if budget_clock == "cpu" else time.time
    if packing and model_type == "mdm":
        raise InputError("packing=True applies to FlexMDM only: the MDM baseline pads by design")
    if prior_time < 0 or prior_weight < 0 or (prior_weight and model_type == "mdm"):
        raise InputError(f"prior_weight={prior_weight} and prior_time={prior_time} must be >= 0, prior_weight 0 for "
                         "the MDM (it has no insertion head)")
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()

    data_dir = os.path.join("data", dataset)
    meta, splits = load_data(data_dir)
    prompt = max_prompt_len(splits)
    seq_len = meta["max_len"] + (prompt + 1 if model_type == "mdm" and prompt else 0)
    alpha = Schedule(alpha_schedule, schedule_exponent)
    beta = Schedule(beta_schedule, schedule_exponent)
    model_args = dict(vocab_size=meta["vocab_size"], max_len=seq_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      cond_dim=cond_dim, dropout=dropout, model_type=model_type, pad_id=meta["pad_id"],
                      fixed_embedding=fixed_embedding, insert_head=insert_head, insert_scale=insert_scale)

    if init_from == "resume":
        if not os.path.exists(ckpt_path):
            raise InputError(f"--init_from=resume but {ckpt_path!r} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        check_meta(meta, ckpt["meta"], ckpt_path)
        if len(ckpt["rng"]) != world:
            raise InputError(f"{ckpt_path} was written by {len(ckpt['rng'])} process(es), this run has {world}")
        model_args = ckpt["model_args"]
    elif init_from != "scratch":
        raise InputError(f"init_from must be scratch or resume, got {init_from!r}")
    raw_model = DiT(ModelConfig(**model_args)).to(dev)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=learning_rate, betas=(beta1, beta2),
                                  weight_decay=weight_decay, fused=True)
    torch.manual_seed(seed + rank)
    iter_num, spent, saved_ema = 0, 0.0, None
    if init_from == "resume":
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        saved_ema = ckpt["ema"]
        iter_num, spent = ckpt["iter_num"], ckpt.get("train_seconds", 0.0)
        torch.set_rng_state(ckpt["rng"][rank]["torch"])
        if device_type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
        data_rng.bit_generator.state = ckpt["rng"][rank]["data"]
        del ckpt
        if master:
            print(f"resuming from {ckpt_path}: iteration {iter_num}, {spent:.1f} s of training steps spent")
    # the EMA starts from the weights the run starts from (a checkpoint saved without EMA included)
    ema = [e.to(dev) for e in saved_ema] if saved_ema is not None else [p.detach().clone() for p in raw_model.parameters()]
    if master:
        os.makedirs(out_dir, exist_ok=True)
        print(f"{model_type}: {raw_model.num_params() / 1e6:.2f}M parameters, max length {seq_len}, {world} process(es) on {dev}")
    model = torch.compile(raw_model) if compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    def batch_loss(split, rng, generator=None, weighting=time_weighting, prior=prior_weight):
        indices = rng.integers(0, len(splits[split][1]) - 1, size=batch_size)
        batch = get_batch(splits[split], indices, meta, model_type, seq_len)
        n_tokens = int(batch[1].sum())  # counted on the host: no device sync
        x1, lengths, fixed = (z.to(dev, non_blocking=True) for z in batch)
        t = sample_times(batch_size, device=dev, generator=generator)
        with autocast:
            if model_type == "mdm":
                return mdm_loss(model, x1, lengths, fixed, t, beta, meta["mask_id"], generator,
                                weighting) + (n_tokens,)
            row_tokens = max(pack_tokens, seq_len + 1) if packing else 0
            return flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, meta["mask_id"], meta["pad_id"],
                                row_tokens, generator, weighting, prior, prior_time) + (n_tokens,)

    @torch.no_grad()
    def evaluate():
        """Validation loss (eq. 7, whatever the training weighting and prior_weight) on a fixed set of batches and draws,
        with EMA weights; touches no training RNG."""
        model.eval()
        live = [p.detach().clone() for p in raw_model.parameters()]
        if ema_decay:
            torch._foreach_copy_(list(raw_model.parameters()), ema)
        generator = torch.Generator(device=dev).manual_seed(seed)
        rng = np.random.default_rng(seed)
        terms = torch.stack([torch.stack(batch_loss("val", rng, generator, "elbo", 0.0)[:3]) for _ in range(eval_iters)]).mean(0)
        torch._foreach_copy_(list(raw_model.parameters()), live)
        model.train()
        if ddp:
            dist.all_reduce(terms, op=dist.ReduceOp.AVG)
        return terms.tolist()

    def checkpoint(path=ckpt_path):
        rng_state = {"torch": torch.get_rng_state(), "data": data_rng.bit_generator.state,
                     "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}
        states = [None] * world
        if ddp:
            dist.all_gather_object(states, rng_state)
        else:
            states = [rng_state]
        if master:
            save_checkpoint(path, {"model": raw_model.state_dict(), "ema": [e.cpu() for e in ema] if ema_decay else None,
                                        "optimizer": optimizer.state_dict(), "model_args": model_args, "iter_num": iter_num,
                                        "train_seconds": spent, "config": config, "meta": meta, "rng": states})

    if wandb_log and master:
        import wandb
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)

    t0, tokens_seen, last_save = time.time(), 0, time.monotonic()
    budget_used = lambda: spent if max_seconds else iter_num
    kept = {point for point in keep_at if budget_used() >= point}  # a resumed run passed these already
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
                val = evaluate()
                if master:
                    print(f"iter {iter_num}: val loss {val[0]:.4f} (unmask {val[1]:.4f}, insert {val[2]:.4f})")
                    if wandb_log:
                        wandb.log({"iter": iter_num, "val/loss": val[0], "val/unmask": val[1], "val/insert": val[2]})
            if iter_num % eval_interval == 0 or done or stop or save_due or (save_interval and iter_num % save_interval == 0):
                checkpoint()
                last_save = time.monotonic()
            for point in sorted(p for p in keep_at if p not in kept and budget_used() >= p):
                checkpoint(os.path.join(out_dir, f"ckpt_{point:g}.pt"))
                kept.add(point)
            if stop:
                if master:
                    print(f"stopped by {signal.Signals(stop).name} at iteration {iter_num}, saved in {ckpt_path}; to continue, "
                          f"run the same command with --init_from=resume --out_dir={shlex.quote(out_dir)}", file=sys.stderr)
                break
            if done:
                if master:
                    print(f"stopped after {iter_num} iterations and {spent:.0f} s of training steps")
                break
            step_start = clock()
            lr = get_lr(iter_num, spent)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(accum):
                if ddp:
                    model.require_backward_grad_sync = micro == accum - 1
                loss, unmask, insert, n_tokens = batch_loss("train", data_rng)
                (loss / accum).backward()
                tokens_seen += n_tokens
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema_decay:
                torch._foreach_lerp_(ema, [p.detach() for p in raw_model.parameters()], 1 - ema_decay)
            iter_num += 1
            spent += clock() - step_start
            if iter_num % log_interval == 0 and master:
                dt = time.time() - t0
                print(f"iter {iter_num}: loss {loss.item():.4f} (unmask {unmask.item():.4f}, insert {insert.item():.4f}), "
                      f"lr {lr:.2e}, {tokens_seen * world / dt:.0f} x1 tok/s, {1000 * dt / log_interval:.0f} ms/iter")
                if wandb_log:
                    wandb.log({"iter": iter_num, "train/loss": loss.item(), "train/unmask": unmask.item(),
                               "train/insert": insert.item(), "lr": lr})
                t0, tokens_seen = time.time(), 0
    if ddp:  # let gloo's worker threads finish and free DDP while the group lives (else exit can deadlock)
        checksum = torch.stack([p.detach().double().sum() for p in raw_model.parameters()]).sum().reshape(1)
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(sums, checksum)
        if any(not torch.equal(sums[0], s) for s in sums):
            raise InputError("the DDP processes ended with different parameters")
        dist.barrier()
        del model
        dist.destroy_process_group()
    return 128 + stop if stop else 0  # the shell's status for a process stopped by that signal


if __name__ == "__main__":
    run(lambda: sys.exit(main()))
