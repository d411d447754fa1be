"""
The tables of the length-fidelity claim with seeds (RESULTS.md; scripts/length_seeds.sh runs the cells).

--cell=RUN (a run directory of length_seeds.sh, with its samples and their evaluate.py metrics): gathers the
cell's numbers into results/seeds/<data>/<run>.json, a small file to commit as it lands: the iterations the
budget gave, the validation bound per token (diagnostics.validation_bound), for each sampler setting the length
metrics (W1, TV, mean and quantiles of samples and data) and the generative perplexity, and for a FlexMDM g's
forecast at the empty state against the data's mean length and on states that fell behind (drawn at lag t,
lag = 0.3, a law training never draws: it draws u ~ U[behind_lag, 1); diagnostics.behind_ratio).

Without --cell: every results/seeds/*/*.json into results/length_seeds.md, mean and standard error over the seeds
of each (data, run) cell, per dataset the floor of 200 samples (floors(): W1 and the quantile tolerance), and
the claim checked per dataset and sampler setting (verdict()).

    python scripts/length_seeds.py --cell=out/seeds/wikitext128/flex_s1
    python scripts/length_seeds.py --overwrite=True                     # -> results/length_seeds.md

--sweep=RUN,RUN...: g's behind-state ratio against how far behind the states are (drawn at lag t, lag from 1, on
time, to 0.15), and on the states the run's own sampler reaches, printed as a table: where training's rows
behind their time reach, where they do not, and where the sampler goes.
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import InputError, configure, run  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import load_checkpoint  # noqa: E402
from data import atomic_write, check_output, sequence_lengths  # noqa: E402
from diagnostics import (behind_ratio, calibration_table, heldout_batch, load_flexmdm, sampler_state_ratio,  # noqa: E402
                         sampling_forecast, validation_bound, wasserstein1)

cell = ""  # a run directory out/seeds/<data>/<run>; empty: make the table
results = "results/seeds"  # where the cells' JSON go, results/seeds/<data>/<run>.json
out = "results/length_seeds.md"  # the table
overwrite = False  # replace the table (a cell's JSON is written once: delete it to redo the cell)
behind_samples = 4096  # held-out sequences behind each behind-state ratio (all of the split if fewer)
sweep = ""  # run directories, comma-separated: print g at every lag of SWEEP_LAGS and on their own chains
# -----------------------------------------------------------------------------

BEHIND_TIMES, BEHIND_LAG, SWEEP_LAGS = (0.2, 0.4, 0.6), 0.3, (1.0, 0.75, 0.5, 0.3, 0.15)


def sampled(run_dir):
    """{setting: metrics} of every samples file of the run evaluated with --task=text (or length)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "s*.jsonl.text.json")) + glob.glob(os.path.join(run_dir, "s*.jsonl.length.json"))):
        metrics = json.load(open(path))
        length = metrics["length"]
        row = {"w1": length["wasserstein1"], "tv": length["tv_exact"], "tv32": length["tv_bin32"],
               **{f"{k}": length["samples"][k] for k in ("mean", "p10", "p50", "p90")},
               **{f"data_{k}": length["data"][k] for k in ("mean", "p10", "p50", "p90")}}
        row.update({k: metrics[k] for k in ("genppl", "unigram_entropy") if k in metrics})
        found[os.path.basename(path).split(".")[0]] = row
    return found


def g_checks(model_fn, cfg, data_dir, lags=(BEHIND_LAG,)):
    """A FlexMDM's (load_flexmdm) forecast at x_0 over the data's mean length, and its behind-state ratios at each
    time and lag."""
    (x1, lengths, fixed), _ = heldout_batch(data_dir, behind_samples)
    prior = calibration_table(model_fn, x1, lengths, fixed, cfg.alpha, cfg.beta, cfg.mask_id, cfg.pad_id, times=(0.0,))[0]
    behind = [behind_ratio(model_fn, x1, lengths, fixed, cfg.alpha, cfg.beta, cfg.mask_id, cfg.pad_id, t, lag, draws=2)
              for t in BEHIND_TIMES for lag in lags]
    return {"x0_ratio": prior["ratio"], "behind": behind}


def lag_sweep(run_dirs):
    """The behind-state ratio of each run at each lag of SWEEP_LAGS, and g on the states of 200 of its own 64-step
    chains (diagnostics.sampler_state_ratio) with their mean length, each cell at the times BEHIND_TIMES; as a
    table, with the largest standard error of each column."""
    lines = ["| run | training's s / t | " + " | ".join(f"lag {lag}" for lag in SWEEP_LAGS) +
             " | the sampler's states | their mean length (interpolant's) |", "|" + " --- |" * (4 + len(SWEEP_LAGS))]
    worst = np.zeros(len(SWEEP_LAGS) + 1)
    for run_dir in run_dirs:
        ckpt_path = os.path.join(run_dir, "ckpt.pt")
        config = load_checkpoint(ckpt_path)["config"]
        trained = f"U[{config['behind_lag']}, 1)" if config.get("behind_weight") else "-"
        data_dir = os.path.join("data", config["dataset"])
        model_fn, cfg, _ = load_flexmdm(ckpt_path, steps=64)
        behind = g_checks(model_fn, cfg, data_dir, SWEEP_LAGS)["behind"]  # t-major: every lag at the first t, ...
        trace = sampling_forecast(model_fn, 200, cfg, generator=torch.Generator().manual_seed(0))
        chains = sampler_state_ratio(*trace[:3], sequence_lengths(data_dir), cfg.alpha, BEHIND_TIMES)
        columns = [behind[i::len(SWEEP_LAGS)] for i in range(len(SWEEP_LAGS))] + [chains]
        worst = np.maximum(worst, [max(r["se"] for r in column) for column in columns])
        cells = [" / ".join(f"{r['ratio']:.2f}" for r in column) for column in columns]
        lengths = " / ".join(f"{r['mean_length']:.1f} ({r['interpolant_mean_length']:.1f})" for r in chains)
        lines.append(f"| {run_dir} | {trained} | " + " | ".join(cells) + f" | {lengths} |")
    lines.append("| largest standard error | | " + " | ".join(f"{se:.2f}" for se in worst) + " | |")
    print("\n".join(lines))


def gather(run_dir):
    data = os.path.basename(os.path.dirname(os.path.normpath(run_dir)))
    path = os.path.join(results, data, os.path.basename(os.path.normpath(run_dir)) + ".json")
    if os.path.exists(path):
        raise InputError(f"{path} exists: the cell is done (delete it to redo it)")
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    ckpt = load_checkpoint(ckpt_path)
    data_dir = os.path.join("data", ckpt["config"]["dataset"])
    record = {"run": run_dir, "data": ckpt["config"]["dataset"], "model_type": ckpt["model_args"]["model_type"],
              "seed": ckpt["config"]["seed"], "iterations": ckpt["iter_num"], "train_seconds": ckpt["train_seconds"],
              "settings": {k: ckpt["config"][k] for k in ("prior_weight", "behind_weight", "behind_lag", "max_seconds",
                                                        "max_iters") if k in ckpt["config"]},
              "bound": validation_bound(ckpt_path, data_dir), "samples": sampled(run_dir)}
    if record["model_type"] == "flexmdm":
        record["g"] = g_checks(*load_flexmdm(ckpt_path)[:2], data_dir)
    atomic_write(path, lambda f: json.dump(record, f, indent=1))
    print(f"wrote {path}")


def stats(values):
    """Mean and standard error over the seeds (nan with one seed)."""
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), (values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan)


def mean_se(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m, se = stats(values)
    mean = f"{m:.1f}" if abs(m) >= 10 else f"{m:.3g}"
    if np.isnan(se):  # one seed: no standard error
        return mean
    return f"{mean} +- {se:.1f}" if abs(m) >= 10 else f"{mean} +- {se:.2g}"


def floors(data, draws=1000, n=200):
    """What 200 samples of the data's own lengths give (the validation split, drawn with replacement): the
    mean W1 against the split, and the quantile tolerance of the length claim: for p10, p50 and p90 the larger
    of 10 % of the data's quantile and twice its spread over the draws."""
    lengths = sequence_lengths(os.path.join("data", data)).astype(np.float64)
    rng = np.random.default_rng(0)
    drawn = [rng.choice(lengths, n) for _ in range(draws)]
    w1 = np.mean([wasserstein1(d, lengths) for d in drawn])
    q = np.percentile(lengths, (10, 50, 90))
    spread = np.std([np.percentile(d, (10, 50, 90)) for d in drawn], axis=0)
    return w1, q, np.maximum(0.1 * q, 2 * spread)


def verdict(flex, mdm, steps, q, tol):
    """The claim of issue-level "done" for one dataset and sampler setting, from the seeded records of FlexMDM and the
    MDM: FlexMDM's mean W1 at most half the MDM's, their 2-SE intervals apart (no interval with one seed), FlexMDM's
    mean p10 / p50 / p90 each within tol of the data's q, and g's behind-state ratio at least 0.9 within one SE at every
    time. Returns the row's cells (yes / no each)."""
    (fw, fs), (mw, ms) = (stats([r["samples"][steps]["w1"] for r in rs]) for rs in (flex, mdm))
    sampled = np.array([[r["samples"][steps][k] for k in ("p10", "p50", "p90")] for r in flex]).mean(0)
    behind = [stats([r["g"]["behind"][i]["ratio"] for r in flex]) for i in range(len(BEHIND_TIMES))]
    behind_ok = all(m + (0 if np.isnan(se) else se) >= 0.9 for m, se in behind)
    yes = lambda ok: "yes" if ok else "no"
    apart = "-" if np.isnan(fs + ms) else yes(fw + 2 * fs < mw - 2 * ms)
    quantiles = " / ".join(f"{v:.0f} {yes(abs(v - d) <= e)}" for v, d, e in zip(sampled, q, tol))
    return [f"{fw:.1f} / {mw:.1f}", yes(fw <= mw / 2), apart, quantiles, yes(behind_ok)]


def table():
    check_output(out, overwrite, "out")
    cells = {}
    for path in sorted(glob.glob(os.path.join(results, "*", "*.json"))):
        record = json.load(open(path))
        name = os.path.basename(path)[:-5].rsplit("_s", 1)[0]
        cells.setdefault((record["data"], name), []).append(record)
    if not cells:
        raise InputError(f"no cell in {results}: run scripts/length_seeds.sh first")
    lines = ["| data | run | seeds | iterations | bound (nats/token) | steps | W1 | TV | mean | p10 | p50 | p90 | data p10 / p50 / p90 "
             "| genppl | g at x_0 / mean | behind ratio t = 0.2 / 0.4 / 0.6 |", "|" + " --- |" * 16]
    for (data, name), records in sorted(cells.items()):
        for steps in sorted({s for r in records for s in r["samples"]}, key=lambda s: int(s[1:])):
            rows = [r["samples"][steps] for r in records if steps in r["samples"]]
            get = lambda key: mean_se([row.get(key) for row in rows])
            behind = [mean_se([r["g"]["behind"][i]["ratio"] for r in records if "g" in r]) for i in range(len(BEHIND_TIMES))]
            lines.append(f"| {data} | {name} | {len(rows)} | {mean_se([r['iterations'] for r in records])} | "
                         f"{mean_se([r['bound']['loss'] for r in records])} | {steps[1:]} | {get('w1')} | {get('tv')} | "
                         f"{get('mean')} | {get('p10')} | {get('p50')} | {get('p90')} | "
                         f"{rows[0]['data_p10']:.0f} / {rows[0]['data_p50']:.0f} / {rows[0]['data_p90']:.0f} | {get('genppl')} | "
                         f"{mean_se([r['g']['x0_ratio'] for r in records if 'g' in r])} | {' / '.join(behind)} |")
    lines += ["", "| data | W1 of 200 draws of the data | data p10 / p50 / p90 | tolerance p10 / p50 / p90 |",
              "| --- | --- | --- | --- |"]
    floor = {data: floors(data) for data in sorted({data for data, _ in cells})}
    for data, (w1, q, tol) in floor.items():
        lines.append(f"| {data} | {w1:.1f} | {' / '.join(f'{v:.0f}' for v in q)} | {' / '.join(f'{v:.1f}' for v in tol)} |")
    lines += ["", "| data | FlexMDM | steps | W1 FlexMDM / MDM | at most half | 2-SE apart | FlexMDM p10 / p50 / p90 within "
              "tolerance | behind ratio >= 0.9 |", "|" + " --- |" * 8]
    for (data, name), flex in sorted(cells.items()):  # every FlexMDM setting of the claim (run flex*) against the MDM
        mdm, (_, q, tol) = cells.get((data, "mdm")), floor[data]
        if name.startswith("flex") and mdm:
            for steps in sorted(set(flex[0]["samples"]) & set(mdm[0]["samples"]), key=lambda s: int(s[1:])):
                lines.append(f"| {data} | {name} | {steps[1:]} | " + " | ".join(verdict(flex, mdm, steps, q, tol)) + " |")
    atomic_write(out, lambda f: f.write("\n".join(lines) + "\n"))
    print("\n".join(lines))
    print(f"wrote {out}")


def main():
    configure(globals(), sys.argv[1:])
    if sweep:
        lag_sweep(sweep.split(","))
    elif cell:
        if not os.path.exists(os.path.join(cell, "ckpt.pt")):
            raise InputError(f"{cell} holds no ckpt.pt: not a run of scripts/length_seeds.sh")
        gather(cell)
    else:
        table()


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(main, interrupted="nothing was written; run the command again")
