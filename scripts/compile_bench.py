"""
Does --compile=True make the README demo train faster per CPU-second? train.py config/maze_cpu.py runs
for a fixed number of iterations, eager and compiled (inductor's cache cold, then warm), interleaved
over rounds (the order alternates), one thread each. Other jobs share the machine's cores: CPU time,
not wall time, is what this counts, and interleaving spreads any drift in their load over all variants.

    OMP_NUM_THREADS=1 python scripts/compile_bench.py --rounds=3 --iters=300

Each run is train.py in a child process, with --budget_clock=cpu: its checkpoint's train_seconds is then
the CPU time of its training steps (train.py's budget clock), and a copy kept at half the iterations
(--keep_at) gives the same at the midpoint. The CPU time of the whole process tree (gcc and inductor's
compile workers included) is the children's rusage. Reported: steady ms/iter (step CPU per iteration
over the second half of the run), fixed CPU (tree total minus iters x steady: start-up, data, the two
evaluations, compiling), compile CPU (fixed minus eager's in the same round), and the iterations that
fit a budget of 300 CPU-s once compiling is paid: (300 - compile) / steady. Every other --key=value is
passed to train.py after the config file (e.g. --dataset=NAME), except the ones this script sets (OWN).
Needs data/maze_cpu (README). Settings are checked before any run; nothing is written outside a temporary
directory, which is removed at the end, on an error and on Ctrl-C.
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from checkpoint import load_checkpoint  # noqa: E402
from configurator import InputError, check_ranges, configure, run  # noqa: E402

rounds = 3  # each variant once per round, the order alternating
iters = 300  # training iterations per run (a copy is kept at half of them)

VARIANTS = ("eager", "compiled, cold cache", "compiled, warm cache")
BUDGET = 300.0
OWN = ("max_iters", "max_seconds", "eval_interval", "log_interval", "budget_clock", "keep_at", "compile", "out_dir")


def check_settings(extra):
    """The settings, before any run: one line naming the key, its value and the rule. extra: the arguments
    passed on to train.py, which may not set what each run sets itself (OWN)."""
    check_ranges(globals(), dict(rounds=">0"))
    if iters < 2:
        raise InputError(f"iters={iters!r} must be >= 2 (a copy is kept at iters // 2)")
    for arg in extra:
        if arg.startswith("--") and arg[2:].partition("=")[0] in OWN:
            raise InputError(f"{arg} is set by compile_bench.py for each run (use --iters=N for the length): drop it")


def tree_cpu():
    """The CPU time of this process's finished children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_run(variant, cache_dir, work, extra):
    """train.py config/maze_cpu.py for iters iterations as variant, in a child process; its times."""
    out_dir, half = tempfile.mkdtemp(dir=work), iters // 2
    args = [sys.executable, "train.py", "config/maze_cpu.py", f"--max_iters={iters}", "--max_seconds=0.0",
            "--eval_interval=1000000", "--log_interval=1000000", "--budget_clock=cpu", f"--keep_at=({half},)",
            f"--compile={variant != 'eager'}", f"--out_dir={out_dir}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCHINDUCTOR_CACHE_DIR=cache_dir)
    before, wall = tree_cpu(), time.time()
    proc = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"train.py ({variant}) stopped with status {proc.returncode}: {last}")
    total, wall = tree_cpu() - before, time.time() - wall
    end, mid = (load_checkpoint(os.path.join(out_dir, name)) for name in ("ckpt.pt", f"ckpt_{half}.pt"))
    if (end["iter_num"], mid["iter_num"]) != (iters, half):
        raise InputError(f"train.py ({variant}) kept iterations {mid['iter_num']} and {end['iter_num']}, not {half} "
                         f"and {iters}: a setting passed to it stops it early")
    steady = (end["train_seconds"] - mid["train_seconds"]) / (iters - half)
    return {"variant": variant, "steady_ms": 1000 * steady, "tree_cpu_s": total, "fixed_s": total - iters * steady,
            "step_cpu_s": end["train_seconds"], "wall_s": wall}


def main():
    ours = [a for a in sys.argv[1:] if a.startswith(("--rounds=", "--iters=")) or a in ("-h", "--help")]
    extra = [a for a in sys.argv[1:] if a not in ours]
    configure(globals(), ours)
    check_settings(extra)
    work = tempfile.mkdtemp(prefix="compile_bench_")
    results = []
    try:
        for r in range(rounds):
            cache = os.path.join(work, f"inductor_cache_{r}")  # cold for the first compiled run, warm for the second
            order = VARIANTS if r % 2 == 0 else VARIANTS[1:] + VARIANTS[:1]
            for variant in order:
                res = dict(train_run(variant, cache, work, extra), round=r)
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    run(main, interrupted="nothing was written (the runs' temporary directory is removed); the lines printed are "
                          "finished runs; run the command again")
