"""
What widens the spread of a text FlexMDM's sampled lengths (RESULTS.md): one checkpoint sampled with the vanilla
sampler at 64 steps (the baseline, the length tables' setting) and with one setting changed at a time (256
steps, the power-2 time grid, f's temperature, the exact unmasking rule, argmax at the last step, the early
stop), 200 samples each; sample.py and evaluate.py --task=length run as processes, and their length metrics (W1,
mean, p10, p50, p90 against the data's) go into one markdown table. The sampler's own share, with the exact f
and g of the data's length law, is scripts/length_oracle.py's.

    python scripts/length_spread.py --run_dir=out/seeds/wikitext128drop/flex_s1     # -> RUN_DIR/spread.md
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import InputError, check_ranges, configure, run  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from data import atomic_write, check_output  # noqa: E402

run_dir = ""  # a run directory holding ckpt.pt (a text FlexMDM); its samples and the table go there
samples = 200
seed = 1
overwrite = False  # replace the table (each variant's samples file is made once: delete it to redo it)
# -----------------------------------------------------------------------------

BASE = ["--steps=64"]
VARIANTS = {"baseline (64 steps)": [], "256 steps": ["--steps=256"], "power-2 time grid": ["--grid_power=2.0"],
            "temperature 0.8": ["--temperature=0.8"], "exact unmasking rule": ["--unmask=exact"],
            "argmax at the last step": ["--final=argmax"], "early stop 0.01": ["--early_stop=0.01"]}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measured(name, args, data_dir):
    """The length metrics of the variant's samples (made and evaluated once, then read back)."""
    path = os.path.join(run_dir, "spread_" + "".join(c if c.isalnum() else "_" for c in name) + ".jsonl")
    if not os.path.exists(path + ".length.json"):
        for script, extra in (("sample.py", [f"--out_dir={run_dir}", f"--num_samples={samples}", f"--seed={seed}",
                                             f"--samples_file={path}", "--progress=False", "--overwrite=True", *BASE, *args]),
                              ("evaluate.py", ["--task=length", f"--samples={path}", f"--data_dir={data_dir}",
                                               "--overwrite=True"])):
            proc = subprocess.run([sys.executable, os.path.join(REPO, script), *extra], capture_output=True, text=True)
            if proc.returncode:
                raise InputError(f"{script} failed for {name!r}: {proc.stderr.strip().splitlines()[-1]}")
    return json.load(open(path + ".length.json"))["length"]


def main():
    configure(globals(), sys.argv[1:])
    check_ranges(globals(), dict(samples=">0", seed=">=0"))
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"), hint="give --run_dir=a run directory of a text FlexMDM")
    out = os.path.join(run_dir, "spread.md")
    check_output(out, overwrite)
    data_dir = os.path.join("data", ckpt["config"]["dataset"])
    lines = ["| sampler | W1 | mean | p10 | p50 | p90 |", "| --- | --- | --- | --- | --- | --- |"]
    for name, args in VARIANTS.items():
        m = measured(name, args, data_dir)
        s = m["samples"]
        lines.append(f"| {name} | {m['wasserstein1']:.1f} | {s['mean']:.1f} | {s['p10']:.0f} | {s['p50']:.0f} | {s['p90']:.0f} |")
    d = m["data"]
    lines.append(f"| the data ({data_dir}, val) | | {d['mean']:.1f} | {d['p10']:.0f} | {d['p50']:.0f} | {d['p90']:.0f} |")
    atomic_write(out, lambda f: f.write("\n".join(lines) + "\n"))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main, interrupted="the table was not written (finished variants' samples are kept); run the command again")
