"""
Checks of a FlexMDM checkpoint's insertion head g: they load the model and run it, on interpolant states
and through the sampler. evaluate.py's tasks calibration and maze_lengths call them and write their
metrics and figures; here they return numbers and matplotlib figures. wasserstein1, the length W1 of a
samples file against the data, is here too: evaluate.py and scripts/ measure lengths with the one function.

g_j(x_t, t) is the model's E[gap_j | x_t] (Prop. 1), so its total over the gaps of x_t, the forecast
sum_j g_j, estimates the tokens of x1 still to be inserted, n - len(x_t). Three checks, each exact for an
exact g (on the exact length oracle none shows a bias beyond its standard error: tests/test_length.py):
- x_t drawn from the interpolant (eq. 6) of held-out x1 at t (calibration_table, t from 0 to 0.9): the mean
  of forecast - (tokens to insert) is 0 at every t (the bias and its standard error, the ratio of the
  means, the per-gap Bregman divergence of eq. 7). t = 0 is the length prior: g at x_0 (empty, or the
  fixed tokens) against the data's mean length.
- states with fewer tokens than t implies (drawn at lag * t, lag = 1/2, asked at t), weighted back to time
  t: given x1, the odds of a state x at t against lag * t are ((1 - alpha(t)) / (1 - alpha(lag t)))^(tokens
  to insert) times a factor common to every x1 behind x (a present token's mask/clean odds depend on t
  only), so the weighted bias is 0 for the posterior at t: does g recover from an early shortfall as the
  posterior would?
- along the sampler's own trajectories (sampling_forecast): the forecast at each model call against the
  tokens the chain then inserts (the tau-leaping discretisation of Algorithm 1 adds its own error here:
  scripts/length_oracle.py); and against what the data's length law expects of a state that long
  (sampler_state_ratio): g where the sampler goes, with no weights.
calibrate runs the three on a checkpoint and its data's validation split; insertion_trace runs the third
on a maze checkpoint from its held-out subgoals.
"""
import numpy as np
import torch

from checkpoint import load_model
from configurator import InputError, pick
from data import check_same_data, get_batch, load_data, maze_prompts
from interpolant import (LossConfig, batch_loss, bregman, flexmdm_interpolant, length_posterior_insertions, num_targets,
                         schedules)
from model import network
from sampler import SamplerConfig, generate, time_grid

CALIBRATION_TIMES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def load_flexmdm(ckpt_path, **sampling):
    """A FlexMDM checkpoint's sampler model_fn (EMA weights, CPU), the SamplerConfig that samples it (its
    max_len, mask, pad and schedules; `sampling`: steps, temperature, grid_power, ...) and its data's meta.
    A torn file or a checkpoint of another kind is one line (checkpoint.load_checkpoint, and here)."""
    try:
        model, ckpt = load_model(ckpt_path, "cpu")
        if ckpt["model_args"]["model_type"] != "flexmdm":
            raise InputError(f"{ckpt_path!r} is not a FlexMDM checkpoint: this needs g")
        alpha, beta = schedules(ckpt["config"])
        meta = ckpt["meta"]
        cfg = SamplerConfig(max_len=model.cfg.max_len, mask_id=meta["mask_id"], pad_id=meta["pad_id"], alpha=alpha,
                            beta=beta, **sampling)
    except (KeyError, TypeError, RuntimeError) as e:  # weights, settings or a data meta that are not train.py's
        detail = (str(e).splitlines() or [""])[0]
        raise InputError(f"{ckpt_path!r} is not a checkpoint of train.py ({type(e).__name__} {detail})") from None
    return model.sampler_fn(alpha), cfg, meta


# ----------------------------------------------------------------------------------------------
# Calibration of g on interpolant states

def heldout_batch(data_dir, n, seed=0):
    """Up to n sequences of a prepared dataset's validation split, in random order: (x1 [n, L] right-padded,
    lengths [n], fixed [n, L]) as FlexMDM trains on them, and the meta dict."""
    meta, splits = load_data(data_dir)
    order = np.random.default_rng(seed).permutation(len(splits["val"][1]) - 1)[:n]
    return get_batch(splits["val"], order, meta, "flexmdm", meta["max_len"]), meta


def g_on_interpolant(model_fn, x1, lengths, fixed, t, alpha, beta, mask_id, pad_id, lag=1.0, generator=None):
    """x_t of every row of x1 drawn from the interpolant at time lag * t, the model asked at t [B]. Returns
    the forecast sum_j g_j over each row's gaps [B], the tokens still to insert [B] and the mean per-gap
    Bregman divergence phi(gap_j, g_j) [B] (float64)."""
    fb = flexmdm_interpolant(x1, lengths, lag * t, alpha, beta, mask_id, pad_id, fixed=fixed, generator=generator)
    width = max(1, int(fb.lengths.max()))
    with torch.no_grad():
        g = model_fn(fb.xt[:, :width], t, fb.fixed[:, :width], fb.closed[:, :width + 1])[1][:, : width + 1].double()
    gaps = torch.arange(width + 1)[None] <= fb.lengths[:, None]
    target = fb.gaps[:, : width + 1].double()
    phi = (bregman(target, g) * gaps).sum(1) / gaps.sum(1)
    return (g * gaps).sum(1), target.sum(1), phi


def weighted_mean_and_se(values, weights):
    """sum w v / sum w and its delta-method standard error, with the effective sample size (sum w)^2 / sum w^2."""
    w = weights / weights.sum()
    mean = float((w * values).sum())
    return mean, float(((w ** 2) * (values - mean) ** 2).sum() ** 0.5), float(1 / (w ** 2).sum())


def calibration_table(model_fn, x1, lengths, fixed, alpha, beta, mask_id, pad_id, times=CALIBRATION_TIMES, lag=0.5,
                      generator=None):
    """One row per t: the mean tokens to insert ("remaining") and forecast, the bias (mean difference) with
    its standard error, their ratio, the per-gap Bregman divergence, and the same bias on states drawn at
    lag * t and weighted back to t (module docstring) with its standard error and effective sample size."""
    rows = []
    for t_value in times:
        t = torch.full((len(x1),), float(t_value))
        forecast, true, phi = g_on_interpolant(model_fn, x1, lengths, fixed, t, alpha, beta, mask_id, pad_id,
                                               generator=generator)
        diff = forecast - true
        row = {"t": t_value, "remaining": float(true.mean()), "forecast": float(forecast.mean()),
               "bias": float(diff.mean()), "bias_se": float(diff.std() / len(diff) ** 0.5),
               "ratio": float(forecast.mean() / true.mean().clamp_min(1e-12)), "bregman_per_gap": float(phi.mean())}
        if 0 < t_value and lag < 1:
            forecast, true, _ = g_on_interpolant(model_fn, x1, lengths, fixed, t, alpha, beta, mask_id, pad_id, lag,
                                                 generator)
            log_odds = torch.log((1 - alpha(t.double())) / (1 - alpha(lag * t.double())))
            log_w = true * log_odds
            w = torch.exp(log_w - log_w.max())
            bias, se, ess = weighted_mean_and_se(forecast - true, w)
            ratio = float((w * forecast).sum() / (w * true).sum().clamp_min(1e-12))
            row.update(lag_bias=bias, lag_bias_se=se, lag_ess=ess, lag_ratio=ratio)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# The forecast along the sampler's trajectories

def sampling_forecast(model_fn, n, cfg, prompts=None, generator=None):
    """Sample n sequences with the settings cfg (a SamplerConfig), recording at each model call every row's
    length and its forecast sum_j g_j. Returns (t [S], lengths [S, n], forecast [S, n], final lengths [n]).
    Row b must stay row b: one batch, and no row leaves it early (no early stop or target_len; every sample
    has an open gap)."""
    if cfg.early_stop or cfg.target_len or 0 < cfg.batch_size < n:
        raise ValueError("sampling_forecast follows every row to the last step in one batch: no early_stop, "
                         "target_len or smaller batch_size")
    times, lengths, forecast = [], [], []

    def recording(x, t, fixed, closed):
        f_at, g = model_fn(x, t, fixed, closed)
        m = (x != cfg.pad_id).sum(1)
        gaps = torch.arange(x.shape[1] + 1)[None] <= m[:, None]
        times.append(float(t[0]))
        lengths.append(m.numpy())
        forecast.append((g[:, : x.shape[1] + 1] * gaps).sum(1).double().numpy())
        return f_at, g
    samples = generate(recording, n, cfg, prompts=prompts, generator=generator)
    return np.array(times), np.stack(lengths), np.stack(forecast), np.array([len(s) for s in samples])


def sampler_state_ratio(times, lengths, forecast, data_lengths, alpha, at):
    """g on the sampler's own states (sampling_forecast's trajectories) at the recorded time nearest each t of at:
    the mean forecast sum_j g_j against the mean of E[n - m | len(x_t) = m] under the data's length law
    (interpolant.length_posterior_insertions; len(x_t) is Binomial(n, alpha(t)) whatever the tokens, so over the
    interpolant's states of each length a calibrated g averages to it, Prop. 1). Exact for i.i.d. tokens; on text
    a reference that takes the states of each length as the interpolant's. One dict per t: ratio, its delta-method
    standard error over the trajectories, the states' mean length and the interpolant's at t (E[n] alpha(t))."""
    probs = torch.tensor(np.bincount(data_lengths), dtype=torch.float64) / len(data_lengths)
    rows = []
    for t in at:
        k = int(np.abs(times - t).argmin())
        m = torch.as_tensor(lengths[k])
        a = alpha(torch.tensor(float(times[k]), dtype=torch.float64)).expand(len(m))
        expected = torch.nan_to_num(length_posterior_insertions(probs, m, a)).numpy()  # m past the data's longest: 0
        ratio = forecast[k].mean() / expected.mean()
        se = float(np.std(forecast[k] - ratio * expected) / np.sqrt(len(m)) / expected.mean())
        rows.append({"t": float(times[k]), "ratio": float(ratio), "se": se, "mean_length": float(m.double().mean()),
                     "interpolant_mean_length": float(data_lengths.mean() * a[0])})
    return rows


# ----------------------------------------------------------------------------------------------
# A checkpoint's checks

def calibrate(ckpt, data_dir, calibration_samples=512, trace_samples=200, steps=256, temperature=1.0, grid_power=1.0):
    """The three checks of g for a FlexMDM checkpoint on its data's validation split (data_dir):
    calibration_table on calibration_samples held-out sequences, and sampling_forecast on trace_samples of
    them, from their fixed tokens (maze subgoals) or from the empty sequence. Returns (the table's rows, the
    trace, the held-out lengths [n])."""
    model_fn, cfg, meta = load_flexmdm(ckpt, steps=steps, temperature=temperature, grid_power=grid_power)
    (x1, lengths, fixed), data_meta = heldout_batch(data_dir, calibration_samples)
    check_same_data(meta, data_meta, data_dir)
    if data_meta["vocab_size"] != meta["vocab_size"] or data_meta["max_len"] > cfg.max_len:
        raise InputError(f"{data_dir!r} (vocab {data_meta['vocab_size']}, max_len {data_meta['max_len']}) is not the "
                         f"data of {ckpt!r} (vocab {meta['vocab_size']}, max_len {cfg.max_len})")
    generator = torch.Generator().manual_seed(0)
    rows = calibration_table(model_fn, x1, lengths, fixed, cfg.alpha, cfg.beta, cfg.mask_id, cfg.pad_id,
                             generator=generator)
    prompts = [x[f].tolist() for x, f in zip(x1[:trace_samples], fixed[:trace_samples])] if fixed.any() else None
    trace = sampling_forecast(model_fn, min(trace_samples, len(x1)), cfg, prompts, generator)
    return rows, trace, lengths


def insertion_trace(ckpt_path, data_dir, n, steps, temperature, seed=1337):
    """Sample a FlexMDM maze checkpoint (vanilla sampler) from n held-out subgoal sets, the prompts sample.py
    gives it, and record the forecast (sampling_forecast). Returns (t [S], lengths [S, n], forecast [S, n],
    final lengths [n], K, leap [S]: tau * w_alpha(t) of each step under the checkpoint's schedule, 0 at the
    last step, which inserts nothing), so that sum_k leap_k forecast_k is the chain's compensator, the
    insertions it expects over the whole run."""
    model_fn, cfg, meta = load_flexmdm(ckpt_path, steps=steps, temperature=temperature)
    prompts = maze_prompts(data_dir, n, meta)
    times, lengths, forecast, final = sampling_forecast(model_fn, n, cfg, prompts,
                                                        torch.Generator().manual_seed(seed))
    leap = np.array(time_grid(cfg.steps, "flexmdm", cfg.grid_power)[1]) * cfg.alpha.rate(torch.tensor(times)).numpy()
    return times, lengths, forecast, final, len(prompts[0]), leap


# ----------------------------------------------------------------------------------------------
# Figures

def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display), imported at first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_forecast(ax, times, lengths, forecast, final):
    """The mean forecast sum_j g_j at each model call against the mean tokens the sampler inserted after it."""
    ax.plot(times, forecast.mean(1), label="model: sum of g (forecast)")
    ax.plot(times, (final[None] - lengths).mean(1), label="inserted after t (sampler)")
    ax.set_xlabel("sampling time t"), ax.set_ylabel("tokens"), ax.legend(fontsize=8)


def plot_calibration(rows, trace):
    """Three panels: tokens to insert and the forecast against t; their ratio (on interpolant states and on
    states drawn at lag * t); the forecast along the sampler's trajectories (plot_forecast). Returns the figure."""
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 3.8))
    t = np.array([r["t"] for r in rows])
    axes[0].plot(t, [r["remaining"] for r in rows], "o-", label="tokens to insert (data)")
    axes[0].errorbar(t, [r["forecast"] for r in rows], yerr=[2 * r["bias_se"] for r in rows], fmt="s--",
                     label="model: sum of g")
    axes[0].set_title(f"x_0: sum of g {rows[0]['forecast']:.1f}, tokens to insert {rows[0]['remaining']:.1f}",
                      fontsize=9)
    axes[1].plot(t, [r["ratio"] for r in rows], "o-", label="x_t drawn at t")
    lagged = [r for r in rows if "lag_ratio" in r]
    axes[1].plot([r["t"] for r in lagged], [r["lag_ratio"] for r in lagged], "s--", label="x_t drawn earlier, weighted")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_ylabel("sum of g / tokens to insert")
    for ax in axes[:2]:
        ax.set_xlabel("t"), ax.legend(fontsize=8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(left=0)
    plot_forecast(axes[2], *trace)
    fig.tight_layout()
    return fig


def plot_insertion_trace(times, lengths, forecast, final, sample_lengths, data_lengths):
    """Two panels: the length histograms of samples and data; the forecast over the sampling time
    (plot_forecast). Returns the figure."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    bins = np.arange(0, max(max(sample_lengths), max(data_lengths)) + 2) - 0.5
    left.hist(data_lengths, bins=bins, density=True, alpha=0.5, label="held-out data")
    left.hist(sample_lengths, bins=bins, density=True, alpha=0.5, label="samples")
    left.set_xlabel("path length (cells)"), left.legend()
    plot_forecast(right, times, lengths, forecast, final)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Numbers per checkpoint for the length-fidelity tables: g on states that fell behind, and the validation bound

def behind_ratio(model_fn, x1, lengths, fixed, alpha, beta, mask_id, pad_id, t, lag, draws=4, batch=128, seed=0):
    """g's forecast against the posterior's on states that fell behind: x_t drawn at lag * t from every held-out
    sequence (draws times over), asked at t, weighted back to time t (module docstring); the ratio of the weighted
    sums, sum w forecast / sum w remaining, with its delta-method standard error and the effective sample size."""
    generator, forecast, remaining = torch.Generator().manual_seed(seed), [], []
    for _ in range(draws):
        for a in range(0, len(x1), batch):
            rows = slice(a, a + batch)
            f, r, _ = g_on_interpolant(model_fn, x1[rows], lengths[rows], fixed[rows], torch.full((len(x1[rows]),), t),
                                       alpha, beta, mask_id, pad_id, lag, generator)
            forecast.append(f)
            remaining.append(r)
    f, r = torch.cat(forecast), torch.cat(remaining)
    log_w = r * torch.log((1 - alpha(torch.tensor(t, dtype=torch.float64))) / (1 - alpha(torch.tensor(lag * t, dtype=torch.float64))))
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    ratio = float((w * f).sum() / (w * r).sum())
    se = float(((w ** 2) * (f - ratio * r) ** 2).sum().sqrt() / (w * r).sum())
    return {"t": t, "lag": lag, "ratio": ratio, "se": se, "ess": float(1 / (w ** 2).sum()), "n": len(f)}


@torch.no_grad()
def validation_bound(ckpt_path, data_dir, draws=4, batch=32, seed=0):
    """The checkpoint's loss (eq. 7 for a FlexMDM, the MDM's for the baseline, with eq. 7's weighting) per data
    token over the whole validation split of data_dir, draws times over (a time and a state per sequence each):
    an upper bound on -log p(x) per token, in nats (the MDM's on the padded sequence, which its length
    determines). Returns {"loss", "unmask", "insert", "loss_se" (over the draws), "tokens", "draws"}."""
    model, ckpt = load_model(ckpt_path, "cpu")
    meta, splits = load_data(data_dir)
    check_same_data(ckpt["meta"], meta, data_dir)
    cfg, net = pick(LossConfig, ckpt["config"]).eq7(), network(model)
    generator, sums, tokens = torch.Generator().manual_seed(seed), torch.zeros(draws, 3, dtype=torch.float64), 0
    val = splits["val"]
    for d in range(draws):
        for a in range(0, len(val[1]) - 1, batch):
            x1, lengths, fixed = get_batch(val, range(a, min(a + batch, len(val[1]) - 1)), meta,
                                           ckpt["model_args"]["model_type"], model.cfg.max_len)
            n = float(num_targets(lengths, fixed))
            sums[d] += n * torch.stack(batch_loss(net, x1, lengths, fixed, cfg, meta["mask_id"], meta["pad_id"],
                                                  generator)).double()
            tokens += n if d == 0 else 0
    per_token = sums / tokens
    loss = per_token[:, 0]
    return {"loss": float(loss.mean()), "unmask": float(per_token[:, 1].mean()), "insert": float(per_token[:, 2].mean()),
            "loss_se": float(loss.std() / draws ** 0.5) if draws > 1 else None, "tokens": int(tokens), "draws": draws}


def wasserstein1(a, b):
    """Wasserstein-1 distance of two 1-D samples: the area between their empirical CDFs,
    integral |F_a(x) - F_b(x)| dx (in tokens for lengths)."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    x = np.concatenate([a, b])
    x.sort()
    fa = np.searchsorted(a, x[:-1], side="right") / len(a)
    fb = np.searchsorted(b, x[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(x)))
