"""
Does --compile=True make the README demo train faster per CPU-second? train.py config/maze_cpu.py runs
for a fixed number of iterations, eager and compiled (inductor's cache cold, then warm), interleaved
over rounds (the order alternates), one thread each. Other jobs share the machine's cores: CPU time,
not wall time, is what this counts, and interleaving spreads any drift in their load over all variants.

    OMP_NUM_THREADS=1 python scripts/compile_bench.py --rounds=3 --iters=300

Per run, a global optimizer-step hook records the main process's CPU time after every step, and the
parent reads the CPU time of the whole process tree (gcc and inductor's compile workers included)
from its rusage. Reported: steady ms/iter (CPU per iteration over the second half of the run, all of
the loop included), fixed CPU (tree total minus iters x steady: start-up, data, the two evaluations,
compiling), compile CPU (fixed minus eager's in the same round), and the iterations that fit a budget
of 300 CPU-s once compiling is paid: (300 - compile) / steady. Needs data/maze_cpu (README).
"""
import json
import os
import resource
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("eager", "compiled, cold cache", "compiled, warm cache")
BUDGET = 300.0


def child(out_json, argv):
    """Run train.py (argv) in this process, recording the process CPU time after each optimizer step."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    steps = []
    sys.path.insert(0, ROOT)
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: steps.append(time.process_time()))
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    with open(out_json, "w") as f:
        json.dump({"steps": steps, "torch": torch.__version__}, f)


def tree_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(variant, iters, cache_dir, work):
    out_dir, out_json = tempfile.mkdtemp(dir=work), os.path.join(work, "steps.json")
    args = [sys.executable, os.path.abspath(__file__), f"--child={out_json}", "train.py", "config/maze_cpu.py",
            f"--max_iters={iters}", "--max_seconds=0.0", "--eval_interval=1000000", "--log_interval=1000000",
            f"--compile={variant != 'eager'}", f"--out_dir={out_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=cache_dir)
    before, wall = tree_cpu(), time.time()
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    total, wall = tree_cpu() - before, time.time() - wall
    with open(out_json) as f:
        steps = json.load(f)["steps"]
    assert len(steps) == iters, (variant, len(steps))
    half = iters // 2
    steady = (steps[-1] - steps[half]) / (iters - 1 - half)
    return {"variant": variant, "steady_ms": 1000 * steady, "tree_cpu_s": total, "fixed_s": total - iters * steady,
            "main_cpu_at_last_step_s": steps[-1], "wall_s": wall}


def main():
    if len(sys.argv) > 1 and sys.argv[1].startswith("--child="):
        return child(sys.argv[1].partition("=")[2], sys.argv[2:])
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    rounds, iters = int(opts.get("rounds", 3)), int(opts.get("iters", 300))
    work = tempfile.mkdtemp(prefix="compile_bench_")
    results = []
    for r in range(rounds):
        cache = os.path.join(work, f"inductor_cache_{r}")  # cold for the first compiled run, warm for the second
        order = VARIANTS if r % 2 == 0 else VARIANTS[1:] + VARIANTS[:1]
        for variant in order:
            res = dict(run(variant, iters, cache, work), round=r)
            results.append(res)
            print(json.dumps(res), flush=True)
    shutil.rmtree(work)
    eager = {res["round"]: res for res in results if res["variant"] == "eager"}
    print(f"\n{rounds} rounds of {iters} iterations; median (min-max) over rounds\n")
    print("| variant | steady CPU ms/iter | fixed CPU s | compile CPU s | iterations in 300 CPU-s | vs eager |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant in VARIANTS:
        rows = [res for res in results if res["variant"] == variant]
        compile_s = [res["fixed_s"] - eager[res["round"]]["fixed_s"] for res in rows]
        fits = [max(0.0, BUDGET - c) / (res["steady_ms"] / 1000) for res, c in zip(rows, compile_s)]
        ratio = [f / (BUDGET / (eager[res["round"]]["steady_ms"] / 1000)) for res, f in zip(rows, fits)]

        def cell(xs, fmt):
            return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"
        print(f"| {variant} | {cell([res['steady_ms'] for res in rows], '.1f')} | {cell([res['fixed_s'] for res in rows], '.1f')} "
              f"| {cell(compile_s, '.1f')} | {cell(fits, '.0f')} | {cell(ratio, '.3f')} |")


if __name__ == "__main__":
    main()
