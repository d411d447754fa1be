"""
The sampler's own length error: sampler.generate driven by the EXACT f and g of a length law p(n) whose
tokens are i.i.d. and independent of the length (interpolant.length_posterior_insertions), so every
difference between the samples' lengths and p(n) is the sampler's (tau-leaping discretisation and the
max_len cap), none the model's. Prints a table of length TV (exact and bins of 32), W1, the mean and the
p10 / p50 / p90 against p(n)'s per law and step count, writes it as JSON and draws W1 against steps as a PNG:

    python scripts/length_oracle.py                         # the laws below, steps 16,64,256,1024
    python scripts/length_oracle.py --laws=wikitext128 --steps=64, --grid_power=2.0

Laws (--laws, comma-separated): a prepared dataset name under data/ (its validation lengths, max_len
from its meta.json, e.g. wikitext128), or lognormal: an OpenWebText-like law, log-normal with median
lognormal_median and log-sd lognormal_sigma, discretised to 1..1024 (max_len 1024).
The floor columns are what the same number of exact draws from p(n) would score (mean of 20 draws).
Every setting and each law's data are checked before any sampling; the .json and .png are refused when they
exist, unless --overwrite=True (and then only files of ours), and written whole or not at all.
"""
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import InputError, check_ranges, configure, run  # noqa: E402
from data import atomic_write, check_output, load_data  # noqa: E402
from interpolant import Schedule, length_posterior_insertions  # noqa: E402
from sampler import SamplerConfig, generate  # noqa: E402

laws = "wikitext128,wikitext128drop,lognormal"
steps = (16, 64, 256, 1024)  # --steps=64,256 (--steps=64, for one)
num_samples = 2000
batch_size = 500
grid_power = 1.0  # the sampler's time grid t_k = (k / (N - 1)) ** grid_power
lognormal_median = 64.0
lognormal_sigma = 1.0
out = "results/length_oracle"  # .json and .png
overwrite = False  # replace an existing out.json and out.png (ours)
seed = 1337

VOCAB, PAD, MASK = 2, 2, 3  # two i.i.d. uniform data tokens; the tokens play no part in the length
BIN = 32
QUANTILES = (0.1, 0.5, 0.9)


def check_settings():
    """Every setting's range, before any work: one line naming the key, its value and the rule; then the
    outputs (data.check_output)."""
    check_ranges(globals(), dict(num_samples=">0", batch_size=">0", grid_power=">0", lognormal_median=">0",
                                 lognormal_sigma=">0", seed=">=0"))
    if not all(laws.split(",")):
        raise InputError(f"laws={laws!r} must name one or more laws, comma-separated (a dataset under data/, or lognormal)")
    if not steps or not all(isinstance(n, int) and n >= 2 for n in steps):
        raise InputError(f"steps={steps!r} must be a tuple of step counts >= 2, e.g. --steps=64,256 (--steps=64, for one)")
    if not out:
        raise InputError("out='' must name the results' path without its extension, e.g. results/length_oracle")
    for path in (out + ".json", out + ".png"):
        check_output(path, overwrite, "out")


def data_law(name):
    """p(n) of a prepared dataset's validation lengths, n = 0..max_len."""
    meta, splits = load_data(os.path.join("data", name))
    lengths = np.diff(splits["val"][1])
    return torch.tensor(np.bincount(lengths, minlength=meta["max_len"] + 1) / len(lengths))


def lognormal_law(max_len=1024):
    """p(n) proportional to the log-normal probability of [n - 1/2, n + 1/2), n = 1..max_len."""
    edges = torch.arange(max_len + 1, dtype=torch.float64) + 0.5
    cdf = 0.5 * (1 + torch.erf((edges.log() - math.log(lognormal_median)) / (lognormal_sigma * math.sqrt(2))))
    probs = torch.cat([torch.zeros(1, dtype=torch.float64), cdf[1:] - cdf[:-1]])
    return probs / probs.sum()


def oracle(probs, alpha):
    """model_fn with the exact f (uniform over the VOCAB tokens) and g (every gap E[n - m | m] / (m + 1))."""
    def model_fn(x, t, fixed, closed):
        m = (x != PAD).sum(1)
        g = (length_posterior_insertions(probs, m, alpha(t)) / (m + 1)).float()
        return (lambda where: torch.zeros(int(where.sum()), VOCAB + 2)), g[:, None].expand(-1, x.shape[1] + 1)
    return model_fn


def quantiles(lengths=None, probs=None):
    """p10, p50, p90: of the samples' lengths, or of the law p(n) (the least n whose CDF reaches q; the samples'
    by the same rule, numpy's inverted_cdf)."""
    if probs is not None:
        cdf = torch.cumsum(probs, 0).numpy()
        return {f"p{round(q * 100)}": int(np.searchsorted(cdf, q - 1e-12)) for q in QUANTILES}
    return {f"p{round(q * 100)}": int(np.quantile(lengths, q, method="inverted_cdf")) for q in QUANTILES}


def distances(lengths, probs):
    """Length TV (exact, and bins of BIN), W1, mean and quantiles of the samples' lengths against the law p(n)."""
    hist = np.bincount(lengths, minlength=len(probs))[: len(probs)] / len(lengths)
    p = probs.numpy()
    binned = lambda h: np.add.reduceat(h, np.arange(0, len(h), BIN))
    return {"tv_exact": 0.5 * float(np.abs(hist - p).sum()), "tv_bin32": 0.5 * float(np.abs(binned(hist) - binned(p)).sum()),
            "w1": float(np.abs(np.cumsum(hist) - np.cumsum(p)).sum()), "mean": float(np.mean(lengths)), **quantiles(lengths)}


def floor(probs, n, rng, draws=20):
    """The distances of n exact draws from p(n), averaged over draws."""
    rows = [distances(rng.choice(len(probs), size=n, p=probs.numpy()), probs) for _ in range(draws)]
    return {k: float(np.mean([r[k] for r in rows])) for k in ("tv_exact", "tv_bin32", "w1")}


def plot(results):
    """The PNG of W1 and TV against the step count, per law (bytes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for law, rows in results.items():
        n_steps = [r["steps"] for r in rows["runs"]]
        for ax, key in zip(axes, ("w1", "tv_bin32")):
            line, = ax.plot(n_steps, [r[key] for r in rows["runs"]], "o-", label=law)
            ax.axhline(rows["floor"][key], color=line.get_color(), ls=":", lw=1)
    for ax, name in zip(axes, ("length W1 (tokens)", f"length TV, bins of {BIN}")):
        ax.set_xscale("log", base=2), ax.set_yscale("log"), ax.set_xlabel("sampling steps (model calls)")
        ax.set_ylabel(name)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"exact f and g, vanilla sampler, grid power {grid_power}; dotted: {num_samples} exact draws", fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    return png.getvalue()


def main():
    configure(globals(), sys.argv[1:])
    check_settings()
    torch.set_num_threads(1)
    alpha = Schedule("linear")
    rng = np.random.default_rng(seed)
    law_probs = {law: lognormal_law() if law == "lognormal" else data_law(law) for law in laws.split(",")}  # data checked
    results = {}
    for law, probs in law_probs.items():
        max_len = len(probs) - 1
        results[law] = {"max_len": max_len, "mean": float((probs * torch.arange(len(probs))).sum()),
                        **quantiles(probs=probs), "floor": floor(probs, num_samples, rng), "runs": []}
        for n_steps in steps:
            start = time.time()
            cfg = SamplerConfig(max_len=max_len, mask_id=MASK, pad_id=PAD, steps=n_steps, alpha=alpha,
                                batch_size=batch_size, grid_power=grid_power)
            samples = generate(oracle(probs, alpha), num_samples, cfg, generator=torch.Generator().manual_seed(seed))
            row = {"steps": n_steps, **distances(np.array([len(s) for s in samples]), probs),
                   "seconds": time.time() - start}
            results[law]["runs"].append(row)
            print(f"{law:>16} (mean {results[law]['mean']:.1f}) steps {n_steps:5d}: TV {row['tv_exact']:.3f} exact, "
                  f"{row['tv_bin32']:.3f} bins of {BIN}, W1 {row['w1']:.2f}, mean {row['mean']:.1f}, p10 / p50 / p90 "
                  f"{row['p10']} / {row['p50']} / {row['p90']} ({row['seconds']:.0f} s)", flush=True)
        fl = results[law]["floor"]
        print(f"{'':>16} floor ({num_samples} exact draws): TV {fl['tv_exact']:.3f}, {fl['tv_bin32']:.3f}, "
              f"W1 {fl['w1']:.2f}; the law's p10 / p50 / p90 "
              f"{results[law]['p10']} / {results[law]['p50']} / {results[law]['p90']}")
    png = plot(results)
    settings = {"num_samples": num_samples, "grid_power": grid_power, "seed": seed,
                "lognormal": [lognormal_median, lognormal_sigma]}
    atomic_write(out + ".json", lambda f: json.dump({"settings": settings, "laws": results}, f, indent=1))
    atomic_write(out + ".png", lambda f: f.write(png), binary=True)
    print(f"wrote {out}.json and {out}.png")


if __name__ == "__main__":
    run(main, interrupted="nothing was written (the .json and .png are written at the end); run the command again")
