"""
The tables and the PNG of scripts/length_trend.sh: length W1, TV (exact, bins of 32), mean and p10 / p50 / p90
of every run's checkpoints against the training compute they had (CPU seconds on one thread), per data set,
model and sampler setting, and the calibration of the FlexMDM runs' g. Reads
OUT/<run>/<ckpt>_s<steps>_g<grid>.jsonl.length.json (evaluate.py --task=length), the checkpoints'
iteration counts and OUT/<run>/<ckpt>.calibration.json (evaluate.py --task=calibration).

    python scripts/length_trend.py                  # -> results/length_trend.md, results/length_trend.png

The .md and .png are refused when they exist, unless --overwrite=True (and then only files of ours), and written
whole or not at all; a file under trend_dir that is not what the runs write is one line naming it.
"""
import contextlib
import glob
import io
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint  # noqa: E402
from configurator import InputError, configure, run  # noqa: E402
from data import atomic_write, check_output  # noqa: E402

trend_dir = "out/trend"
out = "results/length_trend"  # .md and .png
overwrite = False  # replace an existing out.md and out.png (ours)
DATA = {"chunk": "wikitext128: long paragraphs chunked", "drop": "wikitext128drop: long paragraphs dropped"}
MODELS = {"mdm": "MDM", "paper": "FlexMDM, paper's loss", "prior": "FlexMDM + length prior"}
TABLE_HEAD = "| data | model | CPU s | iterations | steps | grid |"  # how out.md begins


def check_settings():
    """The settings and the outputs, before any work: trend_dir must be a directory; out.md and out.png are
    refused when they exist without overwrite, and with it replaced only when they are ours (data.check_output;
    the .md by its first line)."""
    if not os.path.isdir(trend_dir):
        raise InputError(f"trend_dir={trend_dir!r} is not a directory: run scripts/length_trend.sh first")
    if not out:
        raise InputError("out='' must name the results' path without its extension, e.g. results/length_trend")
    for path in (out + ".md", out + ".png"):
        if not (path.endswith(".md") and overwrite and ours(path)):
            check_output(path, overwrite, "out")


def ours(md):
    """Whether the file md is a table of this script (its first line)."""
    if not os.path.isfile(md):
        return False
    with open(md, errors="replace") as f:
        return f.readline().startswith(TABLE_HEAD)


@contextlib.contextmanager
def ours_to_read(path):
    """Around the reading of a metrics file at path and its checkpoint: what evaluate.py and train.py did not
    write (not JSON, a key missing, an empty table) is one line naming the file."""
    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, ZeroDivisionError) as e:
        raise InputError(f"{path} or its checkpoint is not what evaluate.py and train.py write ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): evaluate that checkpoint again") from None


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_of(run_dir):
    """(model, data) of a run directory OUT/<model>_<data>, as scripts/length_trend.sh names them."""
    model, _, data = os.path.basename(run_dir).partition("_")
    if model not in MODELS or data not in DATA:
        raise InputError(f"{run_dir} is not a run of scripts/length_trend.sh (<model>_<data>, model one of "
                         f"{', '.join(MODELS)}, data one of {', '.join(DATA)})")
    return model, data


def checkpoint_of(ckpt_path, path):
    """The checkpoint that the metrics file at path was made from (checkpoint.load_checkpoint: one line)."""
    return load_checkpoint(ckpt_path, hint=f"{path} was made from it (scripts/length_trend.sh keeps both)")


def rows():
    """One dict per evaluated samples file: run, model, data, budget (CPU s), iterations, steps, grid, metrics."""
    found = []
    for path in sorted(glob.glob(os.path.join(trend_dir, "*", "*.jsonl.length.json"))):
        run_dir, name = os.path.split(path)
        match = re.fullmatch(r"(ckpt(?:_([\d.]+))?)_s(\d+)_g([\d.]+)\.jsonl\.length\.json", name)
        if not match:
            continue
        model, data = run_of(run_dir)
        ckpt = checkpoint_of(os.path.join(run_dir, match[1] + ".pt"), path)
        with ours_to_read(path):
            metrics = read_json(path)["length"]
            if any((r["model"], r["data"], r["iters"], r["steps"], r["grid"]) == (model, data, ckpt["iter_num"],
                                                                               int(match[3]), float(match[4])) for r in found):
                continue  # the keep_at copy at the end of the budget is ckpt.pt itself
            found.append({"model": model, "data": data, "budget": round(ckpt["train_seconds"]), "iters": ckpt["iter_num"],
                          "steps": int(match[3]), "grid": float(match[4]), "tv_exact": metrics["tv_exact"],
                          "tv_bin32": metrics["tv_bin32"], "w1": metrics["wasserstein1"],
                          "mean": metrics["samples"]["mean"], "data_mean": metrics["data"]["mean"],
                          "q": [metrics["samples"][k] for k in ("p10", "p50", "p90")],
                          "data_q": [metrics["data"][k] for k in ("p10", "p50", "p90")], "n": metrics["samples"]["n"]})
    return found


def calibration_rows():
    """Per FlexMDM checkpoint: g's forecast at x_0 (the sum of g) against the tokens to insert, and the mean
    ratio of the forecast to the truth at t >= 0.2 on interpolant states and on states drawn at t/2 (the
    table of evaluate.py --task=calibration)."""
    found = []
    for path in sorted(glob.glob(os.path.join(trend_dir, "*", "*.calibration.json"))):
        model, data = run_of(os.path.dirname(path))
        ckpt = checkpoint_of(path.replace(".calibration.json", ".pt"), path)
        with ours_to_read(path):
            rows = read_json(path)["table"]
            late = [r for r in rows if r["t"] >= 0.2]
            found.append({"model": model, "data": data, "budget": round(ckpt["train_seconds"]), "iters": ckpt["iter_num"],
                          "x0": rows[0]["forecast"] / rows[0]["remaining"],
                          "late": sum(r["ratio"] for r in late) / len(late),
                          "late_lagged": sum(r["lag_ratio"] for r in late) / len(late)})
    return found


def calibration_table(found):
    lines = ["| data | model | CPU s | iterations | g at x_0 / mean | sum g / truth, t >= 0.2 | the same, drawn at t/2 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(found, key=lambda r: (list(DATA).index(r["data"]), list(MODELS).index(r["model"]), r["budget"])):
        lines.append(f"| {r['data']} | {MODELS[r['model']]} | {r['budget']} | {r['iters']} | {r['x0']:.2f} | "
                     f"{r['late']:.2f} | {r['late_lagged']:.2f} |")
    return "\n".join(lines) + "\n"


def table(found):
    lines = [TABLE_HEAD + " TV exact | TV bins of 32 | W1 | mean (data) | p10 / p50 / p90 (data) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    quantiles = lambda q: " / ".join(f"{v:.0f}" for v in q)
    key = lambda r: (list(DATA).index(r["data"]), r["steps"], r["grid"], list(MODELS).index(r["model"]), r["budget"])
    for r in sorted(found, key=key):
        lines.append(f"| {r['data']} | {MODELS[r['model']]} | {r['budget']} | {r['iters']} | {r['steps']} | {r['grid']:g} | "
                     f"{r['tv_exact']:.3f} | {r['tv_bin32']:.3f} | {r['w1']:.1f} | {r['mean']:.1f} ({r['data_mean']:.1f}) | "
                     f"{quantiles(r['q'])} ({quantiles(r['data_q'])}) |")
    return "\n".join(lines) + "\n"


def plot(found):
    """The PNG of length W1 against training compute, per data set (bytes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datas = [d for d in DATA if any(r["data"] == d for r in found)]
    fig, axes = plt.subplots(1, len(datas), figsize=(5 * len(datas), 4), squeeze=False)
    colors = {"mdm": "tab:red", "paper": "tab:green", "prior": "tab:blue"}
    styles = {(64, 1.0): "o-", (256, 1.0): "s--", (64, 2.0): "^:"}
    for ax, data in zip(axes[0], datas):
        for model in MODELS:
            for (steps, grid), style in styles.items():
                points = sorted((r["budget"], r["w1"]) for r in found
                                if (r["data"], r["model"], r["steps"], r["grid"]) == (data, model, steps, grid))
                if points:
                    ax.plot(*zip(*points), style, color=colors[model],
                            label=f"{MODELS[model]}, {steps} steps" + (f", grid {grid:g}" if grid != 1 else ""))
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("training compute (CPU s, one thread)")
        ax.set_xticks([150, 300, 600, 1200], ["150", "300", "600", "1200"])
        ax.set_ylabel("length W1 (tokens)"), ax.set_title(DATA[data], fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    return png.getvalue()


def main():
    configure(globals(), sys.argv[1:])
    check_settings()
    found = rows()
    if not found:
        raise InputError(f"no evaluated samples under {trend_dir!r}: run scripts/length_trend.sh first")
    text, png = table(found) + "\n" + calibration_table(calibration_rows()), plot(found)
    atomic_write(out + ".md", lambda f: f.write(text))
    atomic_write(out + ".png", lambda f: f.write(png), binary=True)
    print(text)
    print(f"wrote {out}.md and {out}.png ({len(found)} rows)")


if __name__ == "__main__":
    run(main, interrupted="nothing was written (the .md and .png are written at the end); run the command again")
