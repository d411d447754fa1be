"""
Time one training step of train.py at an older commit against the working tree, in one process,
alternating old and new step by step, so that the load of other jobs on a shared machine falls on
both alike. A step is what bench.py times: the loss (interpolant, packing, forward), backward, grad
clipping, fused AdamW and the EMA update. Both models start from the same weights and see the same
batches and interpolant draws; the first step's losses are printed to show they agree.

    python scripts/step_ratio.py --old=5c4d5bc --device=cpu --dtype=float32 --n_layer=2 --n_head=4 \
        --n_embd=128 --cond_dim=128 --vocab_size=1024 --max_len=256 --batch_size=32 --pack_tokens=512 \
        --num_threads=1 --packing=True --steps=40

--old is a git revision (train.py, model.py and interpolant.py are read from it); --steps the
timed steps per side (after 3 untimed ones); every other --key=value is a bench.py setting.
"""
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import bench  # noqa: E402
import train  # noqa: E402
from configurator import configure  # noqa: E402
from interpolant import Schedule, sample_times  # noqa: E402

MODULES = ("train", "model", "interpolant", "configurator")


def load_old(rev):
    """train.py of revision rev, importing that revision's model.py and interpolant.py."""
    folder = tempfile.mkdtemp()
    for name in MODULES:
        source = subprocess.run(["git", "show", f"{rev}:{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True)
        with open(os.path.join(folder, name + ".py"), "w") as f:
            f.write(source.stdout)
    current = {name: sys.modules.pop(name) for name in MODULES if name in sys.modules}
    sys.path.insert(0, folder)
    try:
        old = importlib.import_module("train")
    finally:
        sys.path.remove(folder)
        for name in MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(current)
    return old


def main():
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith(("--old=", "--steps=")))
    configure(vars(bench), [a for a in sys.argv[1:] if not a.startswith(("--old=", "--steps="))])
    b = bench
    rev, steps, warm = args.get("old", "HEAD"), int(args.get("steps", 20)), 3
    if b.num_threads:
        torch.set_num_threads(b.num_threads)
    old = load_old(rev)
    rng = np.random.default_rng(b.seed)
    meta, split = b.synthetic_data(rng) if b.data == "synthetic" else (lambda m, s: (m, s["train"]))(*train.load_data(b.data))
    row_tokens = max(b.pack_tokens, meta["max_len"] + 1) if b.packing else 0
    alpha, beta = Schedule(b.alpha_schedule, b.schedule_exponent), Schedule(b.beta_schedule, b.schedule_exponent)
    tgen = torch.Generator().manual_seed(b.seed)
    batches = [(*train.get_batch(split, rng.integers(0, len(split[1]) - 1, size=b.batch_size), meta, "flexmdm",
                                 meta["max_len"]), sample_times(b.batch_size, generator=tgen))
               for _ in range(warm + steps)]
    cfg = dict(vocab_size=meta["vocab_size"], max_len=meta["max_len"], n_layer=b.n_layer, n_head=b.n_head,
               n_embd=b.n_embd, cond_dim=b.cond_dim, dropout=b.dropout, pad_id=meta["pad_id"])
    torch.manual_seed(b.seed)
    sides = {}
    for name, mod in (("new", train), ("old", old)):
        model = mod.DiT(mod.ModelConfig(**cfg))
        if sides:
            model.load_state_dict(sides["new"]["model"].state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=b.learning_rate, betas=(b.beta1, b.beta2),
                                weight_decay=b.weight_decay, fused=True)
        sides[name] = dict(mod=mod, model=model, opt=opt, ema=[p.detach().clone() for p in model.parameters()],
                           gen=torch.Generator(), times=[], losses=[])

    def step(side, i):
        x1, lengths, fixed, t = batches[i]
        side["gen"].manual_seed(b.seed + i)
        t0 = time.perf_counter()
        loss = side["mod"].flexmdm_loss(side["model"], x1, lengths, fixed, t, alpha, beta, meta["mask_id"],
                                        meta["pad_id"], row_tokens, side["gen"])[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(side["model"].parameters(), b.grad_clip)
        side["opt"].step()
        side["opt"].zero_grad(set_to_none=True)
        torch._foreach_lerp_(side["ema"], [p.detach() for p in side["model"].parameters()], 1 - b.ema_decay)
        side["times"].append(time.perf_counter() - t0)
        side["losses"].append(loss.item())

    for i in range(warm + steps):
        for name in (("old", "new") if i % 2 else ("new", "old")):
            step(sides[name], i)
    med = {name: statistics.median(s["times"][warm:]) for name, s in sides.items()}
    print(f"old {rev}: {1000 * med['old']:.1f} ms, new: {1000 * med['new']:.1f} ms (medians of {steps} steps), "
          f"old/new {med['old'] / med['new']:.3f}; first losses {sides['old']['losses'][0]:.7f} (old) "
          f"{sides['new']['losses'][0]:.7f} (new)")


if __name__ == "__main__":
    main()
