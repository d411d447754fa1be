"""
Sample from a trained FlexMDM (or the MDM baseline) and write the samples as JSON lines:

    python sample.py --out_dir=out/maze_cpu                        # EMA weights of out_dir/ckpt.pt
    python sample.py --out_dir=out/wikitext --num_samples=256 --steps=256 --sampler=adaptive
    python sample.py --out_dir=out/wikitext --target_len=100 --early_stop=0.01 --samples_file=out/wikitext/len100.jsonl
    torchrun --standalone --nproc_per_node=8 sample.py --out_dir=out/owt --num_samples=1024   # the same samples, 8 GPUs

One line per sample: {"tokens", "length"}, plus "subgoals" for a maze model and "text" for a GPT-2 BPE one.
The sampler settings below are sampler.SamplerConfig's fields of the same names (their meaning is there):
a field added there is set from here by a global of its name, nothing else.

A maze model samples paths through the held-out subgoal sets of its dataset (data/<dataset>, val split:
distinct sets in file order, cycled), and never generates SEP. An existing samples file is never replaced
unless --overwrite=True. Batch i (samples i * batch_size onwards) draws from its own random stream seeded
from (seed, i), so the samples depend on seed and batch_size only: under torchrun the batches go
round-robin to the processes (one GPU each) and rank 0 gathers them and writes the file that one process
would write (on the same kind of device).
"""
import os
import sys

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import check_choices, check_device, check_ranges, configure, init_distributed, pick, run

import numpy as np
import torch
import torch.distributed as dist

from checkpoint import load_model
from data import check_output, decode, gpt2, maze_prompts, write_jsonl
from interpolant import schedules
from model import autocast
from sampler import SamplerConfig, generate

# -----------------------------------------------------------------------------
out_dir = "out"  # the run directory holding ckpt.pt
ckpt_file = ""  # default: out_dir/ckpt.pt (another checkpoint of the run: train.py's keep_at copies)
samples_file = ""  # default: out_dir/samples.jsonl
overwrite = False  # replace an existing samples_file
num_samples = 64
seed = 1337
use_ema = True
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
# the sampler: sampler.SamplerConfig's fields of these names
batch_size = 64  # the unit of work: one random stream per batch; the samples depend on seed and batch_size
steps = 256  # model calls per sample
grid_power = 1.0  # the calls at t_k = (k / (N - 1))^grid_power; 1 = the paper's uniform grid
sampler = "vanilla"  # vanilla | adaptive
unmask = "poisson"  # vanilla unmasking rule: poisson (paper) | exact
confidence = "top_prob"  # adaptive: top_prob | margin | entropy | position
gamma1 = 0.0  # adaptive sliding window: the leftmost min(floor(gamma1 * K), gamma2) masks; 0 = off
gamma2 = 64
temperature = 1.0  # 0 = argmax
final = "draw"  # last step: draw the remaining masks from f, or take the argmax
early_stop = 0.0  # FlexMDM: a row without masks stops once its expected future insertions are below this; 0 = off
min_len = 0  # FlexMDM length control (prompt included): every sample at least this long; 0 = off
target_len = 0  # FlexMDM: every sample exactly this long (conditioned on the length); 0 = off
progress = True  # a progress bar (steps, samples/s) on a terminal (rank 0's)
# -----------------------------------------------------------------------------


def gather_samples(samples, world):
    """Under torchrun: rank 0 gets every sample, each from the process that made it (generate returns None
    for the others' samples), in sample order; the other ranks get None. gather_object pickles the
    token lists, small next to the model, and needs no shared file system."""
    if world == 1:
        return samples
    parts = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(samples, parts, dst=0)
    return [next(s for s in copies if s is not None) for copies in zip(*parts)] if parts is not None else None


def check_settings(path, ckpt_path):
    """The script's own settings, before any work (the sampler's are SamplerConfig's), and its output: never
    the checkpoint it reads, never a file of another kind, an existing one only with --overwrite=True."""
    check_device(device)
    check_choices(globals(), dict(dtype=("float32", "bfloat16")))
    check_ranges(globals(), dict(num_samples=">0", batch_size=">=0", seed=">=0"))
    check_output(path, overwrite, "samples_file", inputs=(ckpt_path,))


def main():
    configure(globals(), sys.argv[1:])
    path, ckpt_path = samples_file or os.path.join(out_dir, "samples.jsonl"), ckpt_file or os.path.join(out_dir, "ckpt.pt")
    check_settings(path, ckpt_path)
    ddp, rank, _, world, dev = init_distributed(device)
    model, ckpt = load_model(ckpt_path, dev, use_ema)
    meta, model_type = ckpt["meta"], ckpt["model_args"]["model_type"]
    enc = gpt2() if meta.get("tokenizer") == "gpt2" else None  # before the work: a missing BPE fails now
    subgoals = None
    if meta.get("tokenizer") == "maze":
        subgoals = maze_prompts(os.path.join("data", ckpt["config"]["dataset"]), num_samples, meta)
    prompts = [s + [meta["sep_id"]] for s in subgoals] if subgoals and model_type == "mdm" else subgoals
    alpha, beta = schedules(ckpt["config"])
    cfg = pick(SamplerConfig, globals(), max_len=model.cfg.max_len, mask_id=meta["mask_id"], pad_id=meta["pad_id"],
               model_type=model_type, alpha=alpha, beta=beta, device=dev, progress=progress and rank == 0,
               banned=(meta["sep_id"],) if "sep_id" in meta else ())  # SEP only ever ends a prompt
    with autocast(dev, dtype if "cuda" in dev else "float32"):  # on a CPU sample.py has always run in float32
        seqs = generate(model.sampler_fn(alpha if model_type == "flexmdm" else beta),  # conditioned as in training
                        num_samples, cfg, prompts=prompts, seed=seed, rank=rank, world=world)
    seqs = gather_samples(seqs, world)
    if ddp:
        dist.destroy_process_group()
    if rank != 0:
        return
    records = []
    for b, seq in enumerate(seqs):
        seq = seq[len(prompts[b]):] if prompts is not None and model_type == "mdm" else seq
        records.append({"tokens": seq, "length": len(seq)} | ({"subgoals": subgoals[b]} if subgoals else {})
                       | ({"text": decode(enc, seq)} if enc else {}))
    write_jsonl(path, records)
    lengths = [r["length"] for r in records]
    print(f"wrote {len(records)} samples to {path} ({world} process(es); length mean {np.mean(lengths):.1f}, "
          f"min {min(lengths)}, max {max(lengths)})")


if __name__ == "__main__":
    run(main, interrupted="no samples were written; run the command again")
