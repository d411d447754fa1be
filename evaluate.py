"""
Metrics of samples files, one section of plain functions per task, and a small CLI, e.g.
`python evaluate.py --task=maze --samples=FILE --data_dir=data/maze_k2 --png=FILE`. FILE is JSON
lines written by sample.py or retrofit_llada.py. The tasks: maze, maze_lengths, length, genppl, calibration,
text, gsm8k, humaneval_infill; `python evaluate.py --help` lists the settings. The metrics are printed and
written beside the samples as FILE.<task>.json (FILE.<task>.<split>.json, and FILE.<task>.<split>.png, for
length or text with a --data_split other than val), so no task replaces another's. An output (metrics file
or PNG) that already exists is never replaced: evaluate.py stops with one line naming it, unless
--overwrite=True (or another --png), and even then only a metrics, samples or PNG file of ours that the
command does not read. The settings, the samples and the data are checked before any work: a mistake is
one line. --task=humaneval_infill runs model-written code, so it needs --allow_code_execution=True; each
program runs in a fresh python whose destructive calls (removing, renaming or overwriting files outside its
directory, killing or starting processes, sockets) are disabled first. That is a guard against accidents,
not a sandbox: run it in a container, e.g. `docker run --rm --network none -v "$PWD":/w:ro -v
"$PWD/SAMPLES_DIR":/w/SAMPLES_DIR -w /w IMAGE python evaluate.py --task=humaneval_infill ...
--allow_code_execution=True` (IMAGE: python:3.11 with requirements.txt installed; the repo, with the
problems file, read-only; only the samples' directory writable; no network). The checks of a checkpoint's g (calibration, and
maze_lengths' trace) load the model and run the sampler: diagnostics.py does that, the tasks here write
what it finds.

Tasks:
  maze  success rate of subgoal-conditioned paths (paper section 5.1.2, appendix F.2). Each line
        holds at least {"tokens": [...], "subgoals": [...]}: `tokens` the generated path as token
        ids (for MDM the part after SEP, pads stripped), `subgoals` the fixed tokens g1..gK. --png
        draws three solved and three failed samples, each failure named and marked (render_maze_png),
        under a title with the success rate and the samples file it scored.
  maze_lengths  where the samples' lengths fall among the held-out lengths of their subgoals, and
        with --ckpt a re-sampled trace of the model's forecast of the insertions to come (--png draws it).
  length  length fidelity of text samples against the data (--data_dir, --data_split=val): total
        variation of the length histograms (exact lengths, and bins of 32), Wasserstein-1, mean
        and quantiles, and a PNG overlaying the histograms (--png, default FILE.<task>.png).
  genppl  generative perplexity under a reference causal LM of the samples longer than 10 tokens, and
        the mean unigram entropy. --ref_model is any hub name or local path that AutoModelForCausalLM
        loads (bf16 on CUDA), default gpt2-large; the paper's is LLaMA-2-7B
        (--ref_model=meta-llama/Llama-2-7b-hf).
  text    length and genppl together.
  gsm8k  zero-shot GSM8K accuracy (and its standard error) of retrofit_llada.py's completions: the
        answer extracted from each completion against the number after "####" in the reference.
  humaneval_infill  pass@1 of retrofit_llada.py's infilled middles: prefix + middle + suffix +
        tests (--problems FILE) run, only with --allow_code_execution=True, each by a fresh python in
        an empty temporary directory, with a timeout (--timeout), memory, CPU-time and file-size limits,
        and the destructive calls disabled before the program starts (disable_destructive_calls, as
        OpenAI's human-eval and the bigcode evaluation harness do). A guard, not a sandbox: code that
        means harm gets past it (ctypes, a C extension); run it in a container (above).
  calibration  for a FlexMDM checkpoint (--ckpt) on its data's validation split (--data_dir): the
        forecast sum_j g_j against the tokens still to insert, per t and at x_0 (the length prior), on
        states drawn too early, and along sampling trajectories (diagnostics.py); written beside the
        checkpoint as CKPT.calibration.json (ckpt.pt -> ckpt.calibration.json), --png draws three panels.
"""
import gzip
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_ranges, configure, run

import numpy as np
import torch
import torch.nn.functional as F

from data import (DATASET_FILES, SPLITS, atomic_write, check_output, decode, gpt2, load_data, read_jsonl, read_meta,
                  sequence_lengths)
from diagnostics import calibrate, insertion_trace, plot_calibration, plot_insertion_trace, pyplot, wasserstein1

# -----------------------------------------------------------------------------
task = ""  # one of TASKS (the CLI section at the end)
samples = ""  # the samples file, JSON lines
data_dir = ""  # maze, maze_lengths: the maze dataset (meta.json); length, text: the prepared text dataset
png = ""  # a figure to write; maze, maze_lengths: none by default; length, text: FILE.<task>.png by default
data_split = "val"  # length, text: the data split to compare with (train or val)
compare = ""  # length, text: more samples files (comma-separated) drawn in the PNG too
ref_model = "gpt2-large"  # genppl, text: the reference causal LM, hub name or local path
ref_batch_size = 16  # genppl, text: sequences per reference LM call
ckpt = ""  # maze_lengths, calibration: a FlexMDM ckpt.pt to trace the forecast of
steps = 256  # maze_lengths, calibration: sampler steps of the trace
temperature = 1.0  # maze_lengths, calibration: temperature of the trace
trace_samples = 200  # maze_lengths, calibration: samples in the trace
calibration_samples = 512  # calibration: held-out sequences behind each row of the table
grid_power = 1.0  # calibration: the trace's time grid (sampler.py)
problems = ""  # humaneval_infill: the benchmark's .jsonl(.gz) problems
timeout = 3.0  # humaneval_infill: seconds per program
workers = 0  # humaneval_infill: programs run at once; 0 = the CPU count
allow_code_execution = False  # humaneval_infill: True to run the model's programs on this machine (a guard, not a sandbox)
overwrite = False  # replace an existing metrics file or PNG
# -----------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Shared helpers

FIELDS = {"tokens": "ids", "subgoals": "ids", "length": "count", "text": "text", "answer": "text", "completion": "text",
          "task_id": "text"}  # what each field of a samples line holds
KINDS = {"ids": ("a list of token ids", lambda v: isinstance(v, list) and all(type(t) is int and t >= 0 for t in v)),
         "count": ("a count", lambda v: type(v) is int and v >= 0), "text": ("a string", lambda v: isinstance(v, str))}


def require_fields(rows, fields, path, writer):
    """An InputError unless there are rows and each is an object with every field, each field (and a "length"
    or "text" it has) of its kind (FIELDS); writer names what writes them."""
    if not rows:
        raise InputError(f"no samples in {path!r}")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(f"{path!r} line {number} is not a JSON object: expected lines of {writer}")
        missing = [field for field in fields if field not in row]
        if missing:
            raise InputError(f"{path!r} line {number} has no {missing[0]!r}: expected lines of {writer}")
        for field in fields + tuple(f for f in ("length", "text") if f in row and f not in fields):
            what, holds = KINDS[FIELDS[field]]
            if not holds(row[field]):
                raise InputError(f"{path!r} line {number}: {field!r} is not {what}: expected lines of {writer}")


def read_samples(path, fields, writer):
    """The rows of a samples file (JSON lines), each checked by require_fields; a file that is not text is one line."""
    if os.path.isdir(path):
        raise InputError(f"{path!r} is a directory, not a samples file: fix --samples")
    try:
        rows = read_jsonl(path)
    except UnicodeDecodeError:
        raise InputError(f"{path!r} is not a text file: expected JSON lines of {writer}") from None
    require_fields(rows, fields, path, writer)
    return rows


def dataset_files(data_dir):
    """The files of a prepared dataset (data.DATASET_FILES): inputs of a task that reads it, never its outputs."""
    return [os.path.join(data_dir, name) for name in sorted(DATASET_FILES)] if data_dir else []


def output_stem(samples_path, task, data_split="val"):
    """SAMPLES.<task>, and SAMPLES.<task>.<split> for lengths compared with a split other than val:
    the task's metrics file is this + .json, its default PNG this + .png, so no task (or split)
    replaces another's."""
    split = f".{data_split}" if task in ("length", "text") and data_split != "val" else ""
    return f"{samples_path}.{task}{split}"


def refuse_existing(overwrite, inputs, **outputs):
    """Before any work, so a refused run costs nothing: an InputError naming the first output {setting: path}
    that may not be written (data.check_output: it exists and overwrite is off, it is not ours, or it is one
    of the inputs the task reads), or two outputs that are one file."""
    paths = [os.path.abspath(p) for p in outputs.values() if p]
    if len(set(paths)) < len(paths):
        raise InputError(f"two outputs of this task are the same file ({', '.join(f'--{k}={v}' for k, v in outputs.items() if v)})")
    for setting, path in outputs.items():
        check_output(path, overwrite, None if setting == "metrics" else setting, inputs)


def write_metrics(path, metrics):
    """Write metrics as JSON to path, atomically (data.atomic_write); returns path."""
    return atomic_write(path, lambda f: json.dump(metrics, f, indent=2))


def save_png(fig, filename):
    """Write a matplotlib figure as PNG, atomically (data.atomic_write), and close it; returns filename."""
    try:
        return atomic_write(filename, lambda f: fig.savefig(f, dpi=120, format="png"), binary=True)
    finally:
        pyplot().close(fig)


def rate_and_stderr(successes):
    """Mean of a 0/1 list and its binomial standard error sqrt(p (1 - p) / n)."""
    n = len(successes)
    if n == 0:
        raise ValueError("no samples to evaluate")
    p = float(np.mean(np.asarray(successes, dtype=np.float64)))
    return p, math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------------------------
# Maze (paper section 5.1.2, appendix F.2)
#
# Paths and subgoals are token ids, as in the data: bitmap cell (r, c) of an H x W maze is token
# r*W + c; any other id (pad = H*W, mask = H*W+1, sep = H*W+2, or anything out of range) is not a
# cell and makes the path fail.

def collapse_repeats(path):
    """The path with each run of one repeated cell kept once: [a, b, b, c] -> [a, b, c]."""
    return [t for i, t in enumerate(path) if i == 0 or t != path[i - 1]]


def maze_path_failure(path, subgoals, maze, collapse=False):
    """(reason, at): why a path fails, or "ok", and where. Success (the paper's two criteria): the
    path is non-empty, every token is a cell of the grid and free (0), consecutive cells are
    4-adjacent, it starts at g1 = subgoals[0], ends at gK = subgoals[-1], and contains the subgoals
    in order (as a subsequence). The checks run in that order and the first failing one is the
    reason. `at` is the first offending position in the path: the first non-cell token, the first
    wall cell, the second cell of the first jump (the step path[at-1] -> path[at]), 0 for a wrong
    start, the last position for a wrong end; for missed_subgoal it is the index in subgoals of the
    first subgoal not visited in order; None for ok, empty and bad_subgoals. collapse=True first
    merges consecutive repeated cells (a step of length 0, which the strict metric counts as a
    jump), and `at` indexes the merged path: not the paper's metric, a diagnosis of where paths fail."""
    maze = np.asarray(maze)
    H, W = maze.shape
    path = [int(t) for t in path]
    if collapse:
        path = collapse_repeats(path)
    subgoals = [int(t) for t in subgoals]
    if not path:
        return "empty", None
    if len(subgoals) < 2 or any(not 0 <= t < H * W for t in subgoals):
        return "bad_subgoals", None
    outside = [i for i, t in enumerate(path) if not 0 <= t < H * W]
    if outside:
        return "non_cell_token", outside[0]
    rc = np.array([divmod(t, W) for t in path], dtype=np.int64)
    walls = np.flatnonzero(maze[rc[:, 0], rc[:, 1]])
    if len(walls):
        return "wall", int(walls[0])
    jumps = np.flatnonzero(np.abs(np.diff(rc, axis=0)).sum(axis=1) != 1)
    if len(jumps):
        return "jump", int(jumps[0]) + 1
    if path[0] != subgoals[0]:
        return "wrong_start", 0
    if path[-1] != subgoals[-1]:
        return "wrong_end", len(path) - 1
    k = 0
    for t in path:
        if k < len(subgoals) and t == subgoals[k]:
            k += 1
    return ("ok", None) if k == len(subgoals) else ("missed_subgoal", k)


def maze_path_check(path, subgoals, maze, collapse=False):
    """Why a path fails, or "ok" (maze_path_failure's reason)."""
    return maze_path_failure(path, subgoals, maze, collapse)[0]


def maze_path_ok(path, subgoals, maze, collapse=False):
    """True iff the token path is a valid path through the subgoals in order (maze_path_check)."""
    return maze_path_check(path, subgoals, maze, collapse) == "ok"


def maze_success_rate(samples, subgoal_lists, maze):
    """(success rate, its standard error) over paired lists of token paths and subgoal lists."""
    if len(samples) != len(subgoal_lists):
        raise ValueError(f"{len(samples)} samples but {len(subgoal_lists)} subgoal lists")
    return rate_and_stderr([maze_path_ok(p, s, maze) for p, s in zip(samples, subgoal_lists)])


FAILURE_COLOR = "magenta"  # the failure marks (red is the goal's)
MARK_STYLES = {"cross": dict(marker="X", ms=11, mfc=FAILURE_COLOR, mec="white", mew=1),
               "square": dict(marker="s", ms=15, mfc="none", mec=FAILURE_COLOR, mew=2.5),
               "ring": dict(marker="o", ms=15, mfc="none", mec=FAILURE_COLOR, mew=2.5)}


def maze_failure_marks(reason, at, path, subgoals):
    """(title, marks) of a panel: the title names the outcome; marks are (token, kind) pairs, kind
    "cross" (the failing cells), "square" (a repeated cell) or "ring" (a missed subgoal)."""
    path, n, K = [int(t) for t in path], len(path), len(subgoals)
    if reason == "ok":
        return f"ok: {n} cells, K={K}", []
    if reason == "jump" and path[at - 1] == path[at]:
        return f"jump (repeat): cells {at} and {at + 1} of {n} equal", [(path[at], "square")]
    if reason == "jump":
        return f"jump: cell {at} -> {at + 1} of {n}", [(path[at - 1], "cross"), (path[at], "cross")]
    if reason == "wall":
        return f"wall: cell {at + 1} of {n}", [(path[at], "cross")]
    if reason == "wrong_start":
        return f"wrong start: cell 1 of {n} is not g1", [(path[0], "cross")]
    if reason == "wrong_end":
        return f"wrong end: cell {n} of {n} is not g{K}", [(path[-1], "cross")]
    if reason == "missed_subgoal":
        return f"missed subgoal g{at + 1} ({n} cells)", [(int(subgoals[at]), "ring")]
    if reason == "non_cell_token":  # no cell to mark: the cell before it, if any
        return f"non-cell token {path[at]} at {at + 1} of {n}", [(path[at - 1], "cross")] if at else []
    return {"empty": "empty path", "bad_subgoals": "bad subgoals"}[reason], []


def draw_maze_panel(ax, maze, path, subgoals):
    """One panel of render_maze_png: the maze, the path, its numbered subgoals, and its failure's title and marks."""
    H, W = maze.shape

    def cells(tokens):
        rc = [divmod(int(t), W) for t in tokens if 0 <= int(t) < H * W]
        return np.array(rc, dtype=float).reshape(-1, 2)

    rc = cells(path)
    if len(rc):
        ax.plot(rc[:, 1], rc[:, 0], "-", color="tab:blue", lw=1.5)
    sg = cells(subgoals)
    for j, (r, c) in enumerate(sg):
        color = "tab:green" if j == 0 else "tab:red" if j == len(sg) - 1 else "tab:orange"
        ax.plot(c, r, "o", color=color, ms=6)
        ax.annotate(str(j + 1), (c, r), color="k", fontsize=6, ha="center", va="center")
    reason, at = maze_path_failure(path, subgoals, maze)
    title, marks = maze_failure_marks(reason, at, path, subgoals)
    for token, kind in marks:
        r, c = divmod(token, W)
        ax.plot(c, r, ls="", zorder=3, **MARK_STYLES[kind])
    ax.set_title(title if reason == "ok" else "fail, " + title, fontsize=9)


def render_maze_png(maze, paths, subgoal_lists, filename, max_panels=6, cols=3, title=""):
    """PNG of the maze with up to max_panels paths, one panel each, `cols` panels a row, a title above
    them (if given) and a legend: walls black, the path as a blue line (non-cell tokens left out), subgoals numbered in
    order (start g1 green, goal gK red, the others orange). A failed panel's title names its failure
    (maze_path_failure: jump, jump (repeat), wall, missed subgoal, wrong start, wrong end, non-cell
    token, empty) and a magenta mark shows where it happens: a cross on both cells of the first jump,
    a square around a repeated cell (a jump of length 0), a cross on the first wall cell, on the first
    cell of a wrong start, on the last cell of a wrong end, on the cell before a non-cell token; a ring
    around the first missed subgoal. Returns filename."""
    from matplotlib.lines import Line2D
    maze = np.asarray(maze)
    H, W = maze.shape
    paths, subgoal_lists = list(paths)[:max_panels], list(subgoal_lists)[:max_panels]
    n = max(1, len(paths))
    rows, cols = -(-n // cols), min(n, cols)
    legend_cols = {1: 1, 2: 3}.get(cols, 4)
    legend_height = 0.15 * -(-7 // legend_cols) + 0.15  # inches below the panels, for the 7 entries
    title_height = 0.3 if title else 0.0  # inches above them
    fig_height = rows * (4 * H / W + 0.4) + legend_height + title_height
    fig, axes = pyplot().subplots(rows, cols, figsize=(4 * cols, fig_height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(maze, cmap="gray_r", vmin=0, vmax=1.5, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if i < len(paths):
            draw_maze_panel(ax, maze, paths[i], subgoal_lists[i])
    legend = [Line2D([], [], color="tab:blue", lw=1.5, label="path"),
              Line2D([], [], marker="o", ls="", color="tab:green", label="start g1"),
              Line2D([], [], marker="o", ls="", color="tab:orange", label="subgoals g2..g(K-1), in order"),
              Line2D([], [], marker="o", ls="", color="tab:red", label="goal gK"),
              Line2D([], [], ls="", label="failure: jump's two cells, wall cell, wrong start/end cell",
                     **MARK_STYLES["cross"]),
              Line2D([], [], ls="", label="repeated cell (a jump of length 0)", **MARK_STYLES["square"]),
              Line2D([], [], ls="", label="missed subgoal", **MARK_STYLES["ring"])]
    fig.legend(handles=legend, loc="lower center", ncol=legend_cols, fontsize=7, markerscale=0.7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, legend_height / fig_height, 1, 1 - title_height / fig_height))
    return save_png(fig, filename)


MAZE_SAMPLES = ("tokens", "subgoals"), "maze samples (sample.py on a maze checkpoint)"


def read_maze(data_dir):
    """The maze of a prepared maze dataset (its meta.json) and its held-out path lengths by subgoals
    (held_out_lengths, which checks every file of it); a dataset of another kind is one line."""
    meta = read_meta(data_dir)
    if "maze" not in meta:
        raise InputError(f"{data_dir!r} is not a maze dataset (its meta.json has no maze): give the --data_dir of "
                         "prepare_maze.py that the samples were drawn from")
    return np.asarray(meta["maze"], dtype=np.uint8), meta, held_out_lengths(data_dir)


def evaluate_maze(samples, data_dir, png="", overwrite=False):
    """Task maze: the success rate of the samples file against the maze in data_dir/meta.json, the
    outcomes by reason, and with png a figure of three solved and three failed samples."""
    metrics_path = output_stem(samples, "maze") + ".json"
    refuse_existing(overwrite, (samples, *dataset_files(data_dir)), metrics=metrics_path, png=png)
    maze, meta, by_goals = read_maze(data_dir)
    rows = read_samples(samples, *MAZE_SAMPLES)
    check_held_out(rows, by_goals, samples, data_dir)
    paths = [r["tokens"] for r in rows]
    subgoals = [r["subgoals"] for r in rows]
    reasons = [maze_path_check(p, s, maze) for p, s in zip(paths, subgoals)]
    ok = [r == "ok" for r in reasons]
    rate, se = rate_and_stderr(ok)
    collapsed, collapsed_se = rate_and_stderr([maze_path_ok(p, s, maze, collapse=True) for p, s in zip(paths, subgoals)])
    metrics = {
        "task": "maze", "samples": samples, "data_dir": data_dir, "n": len(rows),
        "K": meta.get("K"), "success_rate": rate, "stderr": se,
        "success_rate_collapsed": collapsed, "stderr_collapsed": collapsed_se,
        "outcomes": {r: reasons.count(r) for r in sorted(set(reasons))},
        "mean_path_len": float(np.mean([len(p) for p in paths])),
    }
    print(f"maze success rate: {100 * rate:.1f}% +- {100 * se:.1f}% (n={len(rows)}), "
          f"outcomes {metrics['outcomes']}")
    print(f"with consecutive repeated cells collapsed (not the paper's metric): {100 * collapsed:.1f}% +- "
          f"{100 * collapsed_se:.1f}%")
    if png:  # the first three solved and the first three failed samples
        shown = [i for i in range(len(ok)) if ok[i]][:3] + [i for i in range(len(ok)) if not ok[i]][:3]
        render_maze_png(maze, [paths[i] for i in shown], [subgoals[i] for i in shown], png,
                        title=f"success rate {100 * rate:.1f} % +- {100 * se:.1f} (n={len(rows)}) of {samples}")
        metrics["png"] = png
        print(f"wrote {png} (up to 3 solved and 3 failed samples)")
    print(f"wrote {write_metrics(metrics_path, metrics)}")
    return metrics


# Length diagnosis (RESULTS.md): is a failed path's length one that a path through its subgoals can
# have? A grid path from s to g has |r_s - r_g| + |c_s - c_g| + an even number of steps, so half of
# all lengths are impossible for every pair ("parity").

LENGTH_CASES = ("a data length", "between data lengths", "shorter than all", "longer than all")


def held_out_lengths(data_dir, split="val"):
    """{subgoal tuple: sorted distinct lengths of the split's paths through exactly those subgoals}."""
    tokens, idx, fix = load_data(data_dir)[1][split]
    if fix is None:
        raise InputError(f"{os.path.join(data_dir, split)}.fix not found: --data_dir must be a prepared maze dataset")
    lengths = {}
    for a, b in zip(idx[:-1], idx[1:]):
        lengths.setdefault(tuple(tokens[a:b][fix[a:b] == 1].tolist()), set()).add(int(b - a))
    return {k: sorted(v) for k, v in lengths.items()}


def check_held_out(rows, by_goals, samples, data_dir):
    """The samples were drawn for this dataset: each sample's subgoals are a held-out subgoal set of data_dir
    (sample.py takes them from its val split), else the samples are of another maze or K."""
    foreign = sum(tuple(r["subgoals"]) not in by_goals for r in rows)
    if foreign:
        raise InputError(f"{foreign} of the {len(rows)} samples in {samples!r} have subgoals that are not a held-out set "
                         f"of {data_dir!r}: samples of another maze or K? Give the --data_dir they were sampled from")


def maze_length_case(path, subgoals, data_lengths_, width):
    """(where len(path) falls among the data lengths of its subgoals: one of LENGTH_CASES, whether
    its parity is impossible for its start and goal)."""
    n = len(path)
    case = ("a data length" if n in data_lengths_ else "shorter than all" if n < data_lengths_[0]
            else "longer than all" if n > data_lengths_[-1] else "between data lengths")
    (r0, c0), (r1, c1) = divmod(int(subgoals[0]), width), divmod(int(subgoals[-1]), width)
    return case, (n - 1 - abs(r0 - r1) - abs(c0 - c1)) % 2 == 1


def trace_report(traced, rows, by_goals, png):
    """maze_lengths' trace (traced: diagnostics.insertion_trace's): the forecast at t = 0 against the tokens
    then inserted and the compensator sum over steps of tau w_alpha(t) sum_j g_j; with png, its figure."""
    times, lengths, forecast, final, K, leap = traced
    trace = {"n": len(final), "forecast_at_t0": float(forecast[0].mean()), "inserted": float((final - K).mean()),
             "compensator": float((leap[:, None] * forecast).sum(0).mean())}
    print(f"trace of {len(final)} samples: sum of g at t=0 {trace['forecast_at_t0']:.2f}, "
          f"inserted {trace['inserted']:.2f}, sum over steps of tau w(t) sum g {trace['compensator']:.2f}")
    if png:
        data = [n for r in rows for n in by_goals[tuple(r["subgoals"])]]
        fig = plot_insertion_trace(times, lengths, forecast, final, [len(r["tokens"]) for r in rows], data)
        return trace, save_png(fig, png)
    return trace, None


def evaluate_maze_lengths(samples, data_dir, png="", ckpt="", steps=256, temperature=1.0, trace_samples=200,
                          overwrite=False):
    """Task maze_lengths: where the samples' lengths fall among the lengths of the held-out paths
    through the same subgoals, and with ckpt a re-sampled trace of the model's forecast of the
    insertions to come (trace_report; drawn to png if given)."""
    metrics_path = output_stem(samples, "maze_lengths") + ".json"
    refuse_existing(overwrite, (samples, ckpt, *dataset_files(data_dir)), metrics=metrics_path, png=png)
    maze, _, by_goals = read_maze(data_dir)
    rows = read_samples(samples, *MAZE_SAMPLES)
    check_held_out(rows, by_goals, samples, data_dir)
    traced = insertion_trace(ckpt, data_dir, trace_samples, steps, temperature) if ckpt else None  # checks ckpt first
    cases = [maze_length_case(r["tokens"], r["subgoals"], by_goals[tuple(r["subgoals"])], maze.shape[1]) for r in rows]
    ok = [maze_path_ok(r["tokens"], r["subgoals"], maze) for r in rows]
    table = {c: {"n": sum(case == c for case, _ in cases),
                 "solved": sum(o for (case, _), o in zip(cases, ok) if case == c)} for c in LENGTH_CASES}
    data_mean = float(np.mean([np.mean(by_goals[tuple(r["subgoals"])]) for r in rows]))
    metrics = {"task": "maze_lengths", "samples": samples, "n": len(rows), "cases": table,
               "wrong_parity": sum(p for _, p in cases) / len(rows),
               "mean_sample_len": float(np.mean([len(r["tokens"]) for r in rows])), "mean_data_len": data_mean}
    for c in LENGTH_CASES:
        print(f"{c:>22}: {table[c]['n']:5d} samples, {table[c]['solved']:5d} solved")
    print(f"impossible parity: {100 * metrics['wrong_parity']:.1f}%; mean length {metrics['mean_sample_len']:.2f} "
          f"(held-out paths through the same subgoals: {data_mean:.2f})")
    if traced:
        metrics["trace"], figure = trace_report(traced, rows, by_goals, png)
        if figure:
            metrics["png"] = figure
    print(f"wrote {write_metrics(metrics_path, metrics)}")
    return metrics


# ----------------------------------------------------------------------------------------------
# Text (paper section 5.1.1, appendix F.1)
#
# Samples are JSON lines {"tokens": GPT-2 ids, "length": len(tokens), "text": decoded}. Lengths are
# compared with the data's sequence lengths (data.sequence_lengths of data_dir's split, default val);
# text quality is the generative perplexity under a reference causal LM and the unigram entropy of
# each sample.

LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
LENGTH_BIN = 32  # the coarse histogram for the total variation: bin k holds lengths 32k..32k+31
PPL_MIN_TOKENS = 10  # footnote 3: samples of <= 10 tokens are left out of the perplexity


def total_variation(a, b, bin_width=1):
    """Total variation distance 0.5 * sum_k |P(k) - Q(k)| between the length histograms of two
    samples, bin k holding lengths k*bin_width .. (k+1)*bin_width - 1 (bin_width 1: exact lengths)."""
    a, b = np.asarray(a, dtype=np.int64) // bin_width, np.asarray(b, dtype=np.int64) // bin_width
    n = int(max(a.max(), b.max())) + 1
    p, q = np.bincount(a, minlength=n) / len(a), np.bincount(b, minlength=n) / len(b)
    return float(0.5 * np.abs(p - q).sum())


def length_summary(lengths):
    lengths = np.asarray(lengths, dtype=np.float64)
    return {"n": int(len(lengths)), "mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max()),
            **{f"p{int(q * 100)}": float(np.quantile(lengths, q)) for q in LENGTH_QUANTILES}}


def length_metrics(sample_lengths, reference_lengths):
    """Length fidelity of samples against the data: total variation of the exact-length and of the
    width-32 histograms, Wasserstein-1, and mean / quantiles of both."""
    if len(sample_lengths) == 0 or len(reference_lengths) == 0:
        raise InputError("no lengths to compare (empty samples file or data split)")
    return {"tv_exact": total_variation(sample_lengths, reference_lengths),
            f"tv_bin{LENGTH_BIN}": total_variation(sample_lengths, reference_lengths, LENGTH_BIN),
            "wasserstein1": wasserstein1(sample_lengths, reference_lengths),
            "samples": length_summary(sample_lengths), "data": length_summary(reference_lengths)}


def plot_lengths(sample_lengths, reference_lengths, filename, labels=("samples", "data"), others=()):
    """PNG overlaying the length histograms (fraction of sequences per bin, about 64 bins) of the
    samples, the data and any other (lengths, label) pairs in `others`."""
    series = [(sample_lengths, labels[0]), (reference_lengths, labels[1]), *others]
    top = int(max(np.max(lengths) for lengths, _ in series)) + 1
    width = max(1, -(-top // 64))
    edges = np.arange(0, top + width, width)
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for lengths, label in series:
        weights = np.full(len(lengths), 1.0 / len(lengths))
        ax.hist(lengths, bins=edges, weights=weights, histtype="step", lw=1.5, label=f"{label} (n={len(lengths)})")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(f"fraction per bin of {width}")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, filename)


def unigram_entropy(token_lists):
    """Mean over (non-empty) samples of the entropy, in nats, of the sample's own token frequencies."""
    entropies = []
    for tokens in token_lists:
        if len(tokens):
            p = np.unique(np.asarray(tokens), return_counts=True)[1] / len(tokens)
            entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies)) if entropies else float("nan")


def load_reference(name, device):
    """A reference causal LM and its tokenizer (a hub name or a local path; bf16 on CUDA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load the reference model {name!r}: {str(e).splitlines()[0]}")
    return model.to(device).eval(), tokenizer


def reference_ids(texts, encode, bos_id=None, max_tokens=None):
    """Token ids of each text for the reference LM: encode(text), with bos_id in front when given
    and not already there (so that every text token is scored), cut to max_tokens (the LM's
    context). Returns (ids lists, number of texts that were cut)."""
    out, cut = [], 0
    for text in texts:
        ids = list(encode(text))
        if bos_id is not None and (not ids or ids[0] != bos_id):
            ids = [bos_id] + ids
        if max_tokens and len(ids) > max_tokens:
            ids, cut = ids[:max_tokens], cut + 1
        out.append(ids)
    return out, cut


def generative_perplexity(model, id_lists, batch_size=16, device="cpu"):
    """Token-weighted perplexity exp(sum of NLLs / number of scored tokens) of id lists under a
    causal LM; token i >= 1 of a list is scored given tokens 0..i-1 (token 0, the BOS, is only
    context). Batches are right-padded with an attention mask (sorted by length to pad little), so
    padding does not change the result. Returns {"ppl", "nll", "tokens", "sequences"}."""
    id_lists = [ids for ids in id_lists if len(ids) >= 2]
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [id_lists[i] for i in order[start:start + batch_size]]
            L = max(len(ids) for ids in batch)
            x = torch.zeros(len(batch), L, dtype=torch.long)
            mask = torch.zeros(len(batch), L, dtype=torch.long)
            for row, ids in enumerate(batch):
                x[row, :len(ids)] = torch.tensor(ids)
                mask[row, :len(ids)] = 1
            x, mask = x.to(device), mask.to(device)
            logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
            token_nll = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none")
            scored = mask[:, 1:].flatten().bool()
            nll += float(token_nll[scored].double().sum())
            count += int(scored.sum())
    if count == 0:
        raise ValueError("no id list of 2 or more tokens: nothing to score for the perplexity")
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "sequences": len(id_lists)}


def sample_lengths(rows):
    return np.array([r.get("length", len(r["tokens"])) for r in rows], dtype=np.int64)


TEXT_SAMPLES = ("tokens",), "text samples (sample.py on a text checkpoint)"


def length_report(rows, ref, data_split):
    """Length fidelity of the samples against the lengths ref of the data's split, printed."""
    metrics = length_metrics(sample_lengths(rows), ref)
    s, d = metrics["samples"], metrics["data"]
    print(f"length: TV {metrics['tv_exact']:.4f} (exact lengths), {metrics[f'tv_bin{LENGTH_BIN}']:.4f} "
          f"(bins of {LENGTH_BIN}), W1 {metrics['wasserstein1']:.2f} tokens")
    for name, st in (("samples", s), (f"data {data_split}", d)):
        print(f"  {name:>10}: n {st['n']}, mean {st['mean']:.1f}, " +
              ", ".join(f"p{int(q * 100)} {st[f'p{int(q * 100)}']:.0f}" for q in LENGTH_QUANTILES) +
              f", min {st['min']}, max {st['max']}")
    return metrics


def scoring_inputs(rows, ref_model, device, required=True):
    """What genppl_report needs, gathered before any work (a missing BPE or reference LM is one line first):
    the texts of the samples longer than PPL_MIN_TOKENS (their "text", else their tokens decoded with the
    GPT-2 BPE), and the reference LM with its tokenizer. None of them that long is an error when the perplexity
    is what was asked for (required), else an empty list: task text still reports the lengths of such samples."""
    kept = [r for r, n in zip(rows, sample_lengths(rows)) if n > PPL_MIN_TOKENS]
    if not kept and required:
        raise InputError(f"no sample has more than {PPL_MIN_TOKENS} tokens: nothing to score")
    enc = gpt2() if any("text" not in r for r in kept) else None
    texts = [r["text"] if "text" in r else decode(enc, r["tokens"]) for r in kept]
    return (texts, *load_reference(ref_model, device))


def genppl_report(rows, scoring, ref_model, ref_batch_size, device):
    """Generative perplexity of the samples longer than PPL_MIN_TOKENS under ref_model (scoring: from
    scoring_inputs), and the unigram entropy of all samples. The decoded text is re-tokenized with the
    reference tokenizer (the GPT-2 family shares our BPE, so there the ids barely change; any other LM works too)."""
    texts, model, tokenizer = scoring
    entropy = unigram_entropy([r["tokens"] for r in rows])
    if not texts:
        print(f"genppl: none, no sample has more than {PPL_MIN_TOKENS} tokens")
        return {"genppl": None, "ref_model": ref_model, "scored_samples": 0, "filtered_short": len(rows),
                "unigram_entropy": entropy}
    ids, cut = reference_ids(texts, lambda s: tokenizer(s)["input_ids"], tokenizer.bos_token_id,
                             getattr(model.config, "max_position_embeddings", None))
    ppl = generative_perplexity(model, ids, ref_batch_size, device)
    metrics = {"genppl": ppl["ppl"], "nll": ppl["nll"], "ref_model": ref_model, "scored_tokens": ppl["tokens"],
               "scored_samples": ppl["sequences"], "filtered_short": len(rows) - len(texts), "cut_to_context": cut,
               "unigram_entropy": entropy}
    print(f"genppl {metrics['genppl']:.2f} under {ref_model} ({ppl['sequences']} samples, {ppl['tokens']} tokens; "
          f"{metrics['filtered_short']} samples of <= {PPL_MIN_TOKENS} tokens left out, {cut} cut to the context)")
    print(f"unigram entropy {metrics['unigram_entropy']:.3f} nats (mean over samples)")
    return metrics


def evaluate_text(task, samples, data_dir="", png="", data_split="val", compare="", ref_model="gpt2-large",
                  ref_batch_size=16, overwrite=False):
    """Tasks length, genppl and text (both): metrics to stdout and SAMPLES.<task>[.<split>].json. Everything
    the task reads (the samples, the data, the BPE, the reference LM) is read and checked before the work."""
    if task not in ("length", "genppl", "text"):
        raise ValueError(f"evaluate_text does the tasks length, genppl and text, not {task!r}")
    lengths, genppl = task in ("length", "text"), task in ("genppl", "text")
    stem = output_stem(samples, task, data_split)
    png = (png or stem + ".png") if lengths else ""
    others = [path for path in compare.split(",") if path]
    refuse_existing(overwrite, (samples, *others, *dataset_files(data_dir)), metrics=stem + ".json", png=png)
    rows = read_samples(samples, *TEXT_SAMPLES)
    compared = [(sample_lengths(read_samples(path, *TEXT_SAMPLES)), os.path.basename(os.path.dirname(path)) or path)
                for path in others]
    ref = sequence_lengths(data_dir, data_split) if lengths else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scoring = scoring_inputs(rows, ref_model, device, required=task == "genppl") if genppl else None
    metrics = {"task": task, "samples": samples, "n": len(rows)}
    if lengths:
        metrics["length"] = length_report(rows, ref, data_split)
    if genppl:
        metrics.update(genppl_report(rows, scoring, ref_model, ref_batch_size, device))
    if lengths:
        label = os.path.basename(os.path.dirname(samples)) or "samples"
        metrics["length"]["png"] = plot_lengths(sample_lengths(rows), ref, png, (label, f"data {data_split}"), compared)
        print(f"wrote {png} (the length histograms)")
    print(f"wrote {write_metrics(stem + '.json', metrics)}")
    return metrics


# ----------------------------------------------------------------------------------------------
# Calibration of g (Prop. 1): the checks are diagnostics.py's, this task prints and writes them

def evaluate_calibration(ckpt, data_dir, png="", calibration_samples=512, trace_samples=200, steps=256,
                         temperature=1.0, grid_power=1.0, overwrite=False):
    """Task calibration: diagnostics.calibrate for a FlexMDM checkpoint on data_dir's validation split,
    printed, and written beside it as CKPT.calibration.json (ckpt.pt -> ckpt.calibration.json; and png)."""
    metrics_path = os.path.splitext(ckpt)[0] + ".calibration.json"
    refuse_existing(overwrite, (ckpt, *dataset_files(data_dir)), metrics=metrics_path, png=png)
    rows, trace, heldout = calibrate(ckpt, data_dir, calibration_samples, trace_samples, steps, temperature, grid_power)
    times, lengths, forecast, final = trace
    inserted = final[None] - lengths
    metrics = {"task": "calibration", "ckpt": ckpt, "data_dir": data_dir, "n": len(heldout), "table": rows,
               "trace": {"n": len(final), "steps": steps, "temperature": temperature, "grid_power": grid_power,
                         "t": times.tolist(), "forecast": forecast.mean(1).tolist(),
                         "inserted": inserted.mean(1).tolist(),
                         "forecast_minus_inserted_se": ((forecast - inserted).std(1) / np.sqrt(len(final))).tolist()}}
    print(f"{'t':>6} {'to insert':>10} {'sum of g':>9} {'bias':>8} {'+-':>6} {'ratio':>6} {'phi/gap':>8} "
          f"{'early-drawn ratio':>18}")
    for r in rows:
        print(f"{r['t']:6.3f} {r['remaining']:10.2f} {r['forecast']:9.2f} {r['bias']:8.2f} {r['bias_se']:6.2f} "
              f"{r['ratio']:6.3f} {r['bregman_per_gap']:8.3f} " + (f"{r['lag_ratio']:11.3f} (ess {r['lag_ess']:.0f})"
                                                                 if "lag_ratio" in r else ""))
    print(f"trace of {len(final)} samples, {steps} steps: forecast at t=0 {forecast[0].mean():.2f}, then inserted "
          f"{inserted[0].mean():.2f}; final length {final.mean():.2f} (held-out {heldout.float().mean():.2f})")
    if png:
        metrics["png"] = save_png(plot_calibration(rows, trace), png)
    print(f"wrote {write_metrics(metrics_path, metrics)}")
    return metrics


# ----------------------------------------------------------------------------------------------
# GSM8K and HumanEval-infill (paper section 5.2, appendix F.3)
#
# Samples are JSON lines written by `retrofit_llada.py --stage=generate`: GSM8K {"question",
# "answer" (the reference solution, ending in "#### N"), "completion"}; HumanEval-infill
# {"task_id", "completion" (the generated middle)}, scored against the benchmark file (--problems).

GSM8K_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def normalize_number(text):
    """A number as a canonical string ("$1,234.50" -> "1234.5", "3.0" -> "3"); None if not a number."""
    try:
        value = float(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def gsm8k_gold(answer):
    """The reference answer: the number after "####"."""
    return normalize_number(answer.split("####")[-1])


def gsm8k_extract(completion):
    """The answer a completion gives: the first number after "####" (GSM8K's format, learnt in
    IFT), else the first number after the last "answer is", else the last number; None if none."""
    for marker in ("####", "answer is"):
        at = completion.lower().rfind(marker) if marker == "answer is" else completion.find(marker)
        if at >= 0:
            found = re.search(GSM8K_NUMBER, completion[at + len(marker):])
            if found:
                return normalize_number(found.group())
    numbers = re.findall(GSM8K_NUMBER, completion)
    return normalize_number(numbers[-1]) if numbers else None


def evaluate_gsm8k(samples, overwrite=False):
    """Task gsm8k: zero-shot GSM8K accuracy of the completions, with its standard error."""
    metrics_path = output_stem(samples, "gsm8k") + ".json"
    refuse_existing(overwrite, (samples,), metrics=metrics_path)
    rows = read_samples(samples, ("answer", "completion"), "retrofit_llada.py --stage=generate --task=gsm8k")
    golds = [gsm8k_gold(r["answer"]) for r in rows]
    if None in golds:
        raise InputError(f"{samples!r} line {golds.index(None) + 1}: 'answer' ends in no '#### N': expected GSM8K's "
                         "reference solutions (retrofit_llada.py --stage=generate --task=gsm8k)")
    predicted = [gsm8k_extract(r["completion"]) for r in rows]
    acc, se = rate_and_stderr([p == g for p, g in zip(predicted, golds)])
    metrics = {"task": "gsm8k", "samples": samples, "n": len(rows), "accuracy": acc, "stderr": se,
               "no_answer": sum(p is None for p in predicted)}
    print(f"gsm8k accuracy: {100 * acc:.1f}% +- {100 * se:.1f}% (n={len(rows)}, no answer {metrics['no_answer']})")
    print(f"wrote {write_metrics(metrics_path, metrics)}")
    return metrics


PROBLEM_FIELDS = ("task_id", "prompt", "suffix", "test", "entry_point")


def read_problems(path):
    """HumanEval(-infilling) problems by task_id, from .jsonl or .jsonl.gz, each checked for PROBLEM_FIELDS."""
    if not os.path.isfile(path):
        raise InputError(f"problems file {path!r} not found: fix --problems")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            problems = [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"problems file {path!r} is not HumanEval JSON lines ({type(e).__name__}): fix --problems") from None
    for number, p in enumerate(problems, 1):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) for k in PROBLEM_FIELDS):
            raise InputError(f"problems file {path!r} line {number} is not a HumanEval-infilling problem (with "
                             f"{', '.join(PROBLEM_FIELDS)}): fix --problems")
    if not problems:
        raise InputError(f"problems file {path!r} holds no problem: fix --problems")
    return {p["task_id"]: p for p in problems}


def humaneval_program(problem, completion):
    """prefix + completion + suffix, then the tests, then check(entry_point)."""
    return (problem["prompt"] + completion + problem["suffix"] + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def disable_destructive_calls(directory):
    """Run by run_program's child before the model's program, as OpenAI's human-eval and the bigcode harness do:
    then removing, renaming, truncating, linking, re-permissioning or writing a file anywhere but in `directory`
    (a real path), killing or starting a process and opening a socket raise PermissionError. A guard against
    accidents, not a sandbox (ctypes gets past it). Self-contained: run_program ships its source to the child."""
    import _io, _posixsubprocess, _socket, builtins, io, os, posix, shutil, signal, socket, subprocess

    def refuse(name, *args):
        raise PermissionError(f"{name}{args!r} is disabled while evaluate.py runs model-written code")

    def inside(path, dir_fd=None):
        if dir_fd is not None:  # a path relative to an open directory, which Linux names in /proc
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
        return os.path.realpath(os.fsdecode(path)).startswith(directory + os.sep)

    def on_files_inside(module, name, original):  # allowed when every path it is given is inside directory
        def call(*args, **kwargs):
            paths = [a for a in (*args, *kwargs.values()) if isinstance(a, (str, bytes, os.PathLike))]
            two_dirs = kwargs.get("src_dir_fd") is not None or kwargs.get("dst_dir_fd") is not None
            if not paths or two_dirs or not all(inside(p, kwargs.get("dir_fd")) for p in paths):
                refuse(f"{module.__name__}.{name}", *args)
            return original(*args, **kwargs)
        return call

    def never(module, name, original):  # a class becomes a subclass that cannot be made: code deriving from it imports
        def call(*args, **kwargs):
            refuse(f"{module.__name__}.{name}", *args)
        return type(name, (original,), {"__init__": lambda self, *a, **k: call(*a)}) if isinstance(original, type) else call

    calls = [((os, posix), "remove unlink rmdir removedirs rename renames replace truncate link chmod lchmod chown lchown",
              on_files_inside), ((shutil,), "rmtree move chown", on_files_inside),
             ((os, posix), "ftruncate fchmod fchown chroot kill killpg fork forkpty system popen execl execle execlp execlpe "
                           "execv execve execvp execvpe spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe "
                           "posix_spawn posix_spawnp", never),
             ((signal,), "pidfd_send_signal", never), ((_posixsubprocess,), "fork_exec", never),
             ((subprocess,), "Popen call run check_call check_output getoutput getstatusoutput", never),
             ((socket, _socket), "socket SocketType socketpair fromfd fromshare create_connection create_server", never)]
    for modules, names, rule in calls:
        for module, name in ((m, n) for m in modules for n in names.split() if hasattr(m, n)):
            setattr(module, name, rule(module, name, getattr(module, name)))

    def check_write(path, writing, dir_fd=None):
        if writing and not isinstance(path, int) and not inside(path, dir_fd):
            refuse("writing", path)

    def guarded_open(file, mode="r", *args, real_open=_io.open, **kwargs):  # an opener's os.open is guarded itself
        opener = kwargs.get("opener", args[5] if len(args) > 5 else None)
        check_write(file, opener is None and any(c in mode for c in "wax+"))
        return real_open(file, mode, *args, **kwargs)

    class FileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            check_write(file, any(c in mode for c in "wax+"))
            super().__init__(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, real_open=posix.open, **kwargs):
        check_write(path, flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND), kwargs.get("dir_fd"))
        return real_open(path, flags, *args, **kwargs)
    builtins.open, io.open, _io.open, io.FileIO, _io.FileIO = guarded_open, guarded_open, guarded_open, FileIO, FileIO
    os.open = posix.open = guarded_os_open


def run_program(program, timeout=3.0, memory_gb=4.0):
    """"passed", "failed" or "timed out": the program run by a fresh isolated python in an empty
    temporary directory (also its TMPDIR), no stdin, address space, CPU time and file size limited, and
    the destructive calls disabled before the program starts (disable_destructive_calls); on timeout its
    whole process group is killed."""
    limit, seconds = int(memory_gb * 2**30), math.ceil(timeout) + 1
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # whatever the program left there
        tmp = os.path.realpath(tmp)
        # the limits and the guard are set inside the child: preexec_fn is unsafe with threads
        header = (f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
                  f"resource.setrlimit(resource.RLIMIT_CPU, ({seconds}, {seconds}))\n"
                  f"resource.setrlimit(resource.RLIMIT_FSIZE, ({2**28}, {2**28}))\n"
                  f"{inspect.getsource(disable_destructive_calls)}\n"
                  f"disable_destructive_calls({tmp!r})\ndel disable_destructive_calls\n")
        with open(os.path.join(tmp, "program.py"), "w") as f:
            f.write(header + program)
        proc = subprocess.Popen([sys.executable, "-I", "program.py"], cwd=tmp, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, TMPDIR=tmp))
        try:
            return "passed" if proc.wait(timeout=timeout) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timed out"


def humaneval_outcomes(problems, samples, timeout=3.0, workers=None):
    """run_program's outcome for every sample {"task_id", "completion"}, in order, run in parallel
    by `workers` threads (0 or None: the CPU count). Interrupted (Ctrl-C), no further program starts and
    the running ones end by their timeout."""
    unknown = [s["task_id"] for s in samples if s["task_id"] not in problems]
    if unknown:
        raise InputError(f"sample task_id {unknown[0]!r} is not in the problems file")
    programs = [humaneval_program(problems[s["task_id"]], s["completion"]) for s in samples]
    pool = ThreadPoolExecutor(workers or os.cpu_count())
    try:
        return list(pool.map(lambda p: run_program(p, timeout), programs))
    finally:
        pool.shutdown(cancel_futures=True)


def pass_at_1(samples, outcomes):
    """pass@1 = the mean over tasks of each task's fraction of passing samples, and its standard
    error over tasks (with one sample per task: the binomial one)."""
    if not samples or len(samples) != len(outcomes):
        raise ValueError(f"pass@1 needs one outcome per sample, got {len(samples)} samples and {len(outcomes)} outcomes")
    per_task = {}
    for s, outcome in zip(samples, outcomes):
        per_task.setdefault(s["task_id"], []).append(outcome == "passed")
    rates = np.array([np.mean(v) for v in per_task.values()])
    return float(rates.mean()), float(np.sqrt(((rates - rates.mean()) ** 2).mean() / len(rates)))


CODE_EXECUTION = ("--task=humaneval_infill runs the model's code on this machine: give --allow_code_execution=True "
                  "to allow it (a guard, not a sandbox: see --help for running it in a container)")


def evaluate_humaneval_infill(samples, problems, timeout=3.0, workers=0, overwrite=False, allow_code_execution=False):
    """Task humaneval_infill: HumanEval-infill pass@1 of the completions against the problems file; it runs
    them (run_program) only with allow_code_execution."""
    if not allow_code_execution:
        raise InputError(CODE_EXECUTION)
    metrics_path = output_stem(samples, "humaneval_infill") + ".json"
    refuse_existing(overwrite, (samples, problems), metrics=metrics_path)
    by_id = read_problems(problems)
    rows = read_samples(samples, ("task_id", "completion"), "retrofit_llada.py --stage=generate --task=humaneval_infill")
    outcomes = humaneval_outcomes(by_id, rows, timeout, workers)
    p1, se = pass_at_1(rows, outcomes)
    metrics = {"task": "humaneval_infill", "samples": samples, "problems": problems, "n": len(rows),
               "tasks": len({r["task_id"] for r in rows}), "pass@1": p1, "stderr": se,
               "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))}}
    print(f"humaneval_infill pass@1: {100 * p1:.1f}% +- {100 * se:.1f}% ({metrics['tasks']} tasks, {len(rows)} samples), "
          f"outcomes {metrics['outcomes']}")
    print(f"wrote {write_metrics(metrics_path, metrics)}")
    return metrics


# ----------------------------------------------------------------------------------------------
# CLI: each task is a function whose parameters are named after the settings; main passes it its own.

TASKS = {"maze": evaluate_maze, "maze_lengths": evaluate_maze_lengths, "length": evaluate_text,
         "genppl": evaluate_text, "text": evaluate_text, "gsm8k": evaluate_gsm8k,
         "humaneval_infill": evaluate_humaneval_infill, "calibration": evaluate_calibration}


NEEDS = {"maze": ("samples", "data_dir"), "maze_lengths": ("samples", "data_dir"), "length": ("samples", "data_dir"),
         "genppl": ("samples",), "text": ("samples", "data_dir"), "gsm8k": ("samples",),
         "humaneval_infill": ("samples", "problems"), "calibration": ("ckpt", "data_dir")}  # the settings each task needs
NEEDED = {"samples": "the JSON lines to evaluate (sample.py, retrofit_llada.py)",
          "data_dir": "the prepared dataset: the samples' maze, or the data to compare lengths with",
          "problems": "HumanEval-SingleLineInfilling.jsonl.gz of github.com/openai/human-eval-infilling",
          "ckpt": "a FlexMDM ckpt.pt of train.py"}


def check_settings(config):
    """Every setting's choices, range and relations, before any work: one line naming the key, its value and
    the rule, or the setting the task lacks."""
    check_choices(config, {"task": tuple(TASKS), "data_split": SPLITS})
    check_ranges(config, dict(ref_batch_size=">0", timeout=">0", workers=">=0", temperature=">=0", trace_samples=">0",
                              calibration_samples=">0", grid_power=">0"))
    if config["steps"] < 2:  # the fewest of the FlexMDM sampler that traces g (sampler.SamplerConfig)
        raise InputError(f"steps={config['steps']!r} must be >= 2")
    task = config["task"]
    for name in NEEDS[task]:
        if not config[name]:
            raise InputError(f"--samples is required: {NEEDED[name]}" if name == "samples" else
                             f"--task={task} needs --{name} ({NEEDED[name]})")
    if task == "maze_lengths" and config["png"] and not config["ckpt"]:
        raise InputError("--task=maze_lengths draws --png from the insertion trace: it needs --ckpt too")
    if task == "humaneval_infill" and not config["allow_code_execution"]:
        raise InputError(CODE_EXECUTION)


def main(argv=None):
    """Evaluate as `python evaluate.py *argv` would (argv None: sys.argv[1:]); returns the metrics.
    The settings start from the module's defaults at every call (the globals are not changed), so
    in-process calls (the tests) do not leak settings into each other."""
    config = dict(globals())
    configure(config, sys.argv[1:] if argv is None else argv)
    check_settings(config)
    evaluate_task = TASKS[config["task"]]
    return evaluate_task(**{name: config[name] for name in inspect.signature(evaluate_task).parameters})


if __name__ == "__main__":
    run(main, interrupted="no metrics were written; run the command again")
