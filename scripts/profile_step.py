"""
torch.profiler over bench.py's timed training steps: the ops by self CPU time, then the regions
(interpolant, packing, mask, forward, losses, backward, optimizer) by total CPU time.

    python scripts/profile_step.py --device=cpu --dtype=float32 --n_layer=2 --n_head=4 --n_embd=128 \
        --cond_dim=128 --vocab_size=1024 --max_len=256 --batch_size=32 --pack_tokens=512 \
        --num_threads=1 --warmup_steps=2 --timed_steps=10 --packing=True

Arguments are bench.py's. The regions are marked by wrapping the functions, not by edits in the
code timed; profiling starts at bench's first synchronisation after the warmup.
"""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from configurator import configure  # noqa: E402


def marked(fn, name):
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    return wrapper


def main():
    configure(vars(bench), sys.argv[1:])
    regions = ["flexmdm_interpolant", "pack", "unmasking_loss", "insertion_loss", "num_targets"]
    for name in regions:
        setattr(train, name, marked(getattr(train, name), name))
    for cls, name in [(model.DiT, "attention_mask"), (model.DiT, "forward"), (model.Block, "forward")]:
        setattr(cls, name, marked(getattr(cls, name), f"{cls.__name__}.{name}"))
        regions.append(f"{cls.__name__}.{name}")
    torch.Tensor.backward = marked(torch.Tensor.backward, "backward")
    regions += ["backward", "Optimizer.step#AdamW.step"]
    prof, sync = None, bench.sync

    def start_after_warmup(device_type):
        nonlocal prof
        sync(device_type)
        if prof is None:
            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
    bench.sync = start_after_warmup
    bench.bench_train()
    prof.__exit__(None, None, None)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))
    total = sum(e.self_cpu_time_total for e in events)
    for e in sorted((e for e in events if e.key in regions), key=lambda e: -e.cpu_time_total):
        print(f"{e.key:28s} {e.cpu_time_total / 1e3:9.1f} ms total ({100 * e.cpu_time_total / total:5.1f}%), {e.count} calls")


if __name__ == "__main__":
    main()
