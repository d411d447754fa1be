"""
Metrics for generated samples, one section of plain functions per task, and a small CLI:

    python evaluate.py --task=maze --samples=FILE --data_dir=data/maze_k2 [--png=FILE]

FILE is JSON lines written by sample.py. The metrics are printed and written beside the samples
as FILE.metrics.json.

Tasks:
  maze  success rate of subgoal-conditioned paths (paper section 5.1.2, appendix F.2). Each line
        holds at least {"tokens": [...], "subgoals": [...]}: `tokens` the generated path as token
        ids (for MDM the part after SEP, pads stripped), `subgoals` the fixed tokens g1..gK.
"""
import argparse
import json
import math
import os

import numpy as np


# ----------------------------------------------------------------------------------------------
# Shared helpers

def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_meta(data_dir):
    with open(os.path.join(data_dir, "meta.json")) as f:
        return json.load(f)


def write_metrics(samples_path, metrics):
    """Write metrics as JSON beside the samples (SAMPLES.metrics.json); returns that path."""
    out = samples_path + ".metrics.json"
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    return out


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

def maze_path_check(path, subgoals, maze):
    """Why a path fails, or "ok". Success (the paper's two criteria): the path is non-empty,
    every token is a cell of the grid and free (0), consecutive cells are 4-adjacent, it starts
    at g1 = subgoals[0], ends at gK = subgoals[-1], and contains the subgoals in order (as a
    subsequence)."""
    maze = np.asarray(maze)
    H, W = maze.shape
    path = [int(t) for t in path]
    subgoals = [int(t) for t in subgoals]
    if not path:
        return "empty"
    if len(subgoals) < 2 or any(not 0 <= t < H * W for t in subgoals):
        return "bad_subgoals"
    if any(not 0 <= t < H * W for t in path):
        return "non_cell_token"
    rc = np.array([divmod(t, W) for t in path], dtype=np.int64)
    if maze[rc[:, 0], rc[:, 1]].any():
        return "wall"
    if len(path) > 1 and (np.abs(np.diff(rc, axis=0)).sum(axis=1) != 1).any():
        return "jump"
    if path[0] != subgoals[0]:
        return "wrong_start"
    if path[-1] != subgoals[-1]:
        return "wrong_end"
    k = 0
    for t in path:
        if k < len(subgoals) and t == subgoals[k]:
            k += 1
    return "ok" if k == len(subgoals) else "missed_subgoal"


def maze_path_ok(path, subgoals, maze):
    """True iff the token path is a valid path through the subgoals in order (maze_path_check)."""
    return maze_path_check(path, subgoals, maze) == "ok"


def maze_success_rate(samples, subgoal_lists, maze):
    """(success rate, its standard error) over paired lists of token paths and subgoal lists."""
    if len(samples) != len(subgoal_lists):
        raise ValueError(f"{len(samples)} samples but {len(subgoal_lists)} subgoal lists")
    return rate_and_stderr([maze_path_ok(p, s, maze) for p, s in zip(samples, subgoal_lists)])


def render_maze_png(maze, paths, subgoal_lists, filename, max_panels=4):
    """PNG of the maze with up to max_panels paths, one panel each: walls black, the path as a
    line, subgoals numbered in order (g1 green, gK red). Non-cell tokens are left out of the
    drawing. Returns filename."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maze = np.asarray(maze)
    H, W = maze.shape
    paths, subgoal_lists = list(paths)[:max_panels], list(subgoal_lists)[:max_panels]
    n = max(1, len(paths))
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4 * H / W + 0.4), squeeze=False)

    def cells(tokens):
        rc = [divmod(int(t), W) for t in tokens if 0 <= int(t) < H * W]
        return np.array(rc, dtype=float).reshape(-1, 2)

    for i, ax in enumerate(axes[0]):
        ax.imshow(maze, cmap="gray_r", vmin=0, vmax=1.5, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        if i >= len(paths):
            continue
        rc = cells(paths[i])
        if len(rc):
            ax.plot(rc[:, 1], rc[:, 0], "-", color="tab:blue", lw=1.5)
        sg = cells(subgoal_lists[i])
        for j, (r, c) in enumerate(sg):
            color = "tab:green" if j == 0 else "tab:red" if j == len(sg) - 1 else "tab:orange"
            ax.plot(c, r, "o", color=color, ms=6)
            ax.annotate(str(j + 1), (c, r), color="k", fontsize=6, ha="center", va="center")
        ok = maze_path_ok(paths[i], subgoal_lists[i], maze)
        ax.set_title(f"{'ok' if ok else 'fail'}: {len(paths[i])} cells, K={len(sg)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)
    return filename


def evaluate_maze(args):
    """CLI task: success rate of the samples file against the maze in data_dir/meta.json."""
    meta = load_meta(args.data_dir)
    maze = np.asarray(meta["maze"], dtype=np.uint8)
    rows = read_jsonl(args.samples)
    paths = [r["tokens"] for r in rows]
    subgoals = [r["subgoals"] for r in rows]
    reasons = [maze_path_check(p, s, maze) for p, s in zip(paths, subgoals)]
    rate, se = rate_and_stderr([r == "ok" for r in reasons])
    metrics = {
        "task": "maze", "samples": args.samples, "data_dir": args.data_dir, "n": len(rows),
        "K": meta.get("K"), "success_rate": rate, "stderr": se,
        "outcomes": {r: reasons.count(r) for r in sorted(set(reasons))},
        "mean_path_len": float(np.mean([len(p) for p in paths])),
    }
    print(f"maze success rate: {100 * rate:.1f}% +- {100 * se:.1f}% (n={len(rows)}), "
          f"outcomes {metrics['outcomes']}")
    if args.png:
        render_maze_png(maze, paths, subgoals, args.png)
        metrics["png"] = args.png
    print(f"wrote {write_metrics(args.samples, metrics)}")
    return metrics


# ----------------------------------------------------------------------------------------------
# CLI

TASKS = {"maze": evaluate_maze}


def build_parser():
    p = argparse.ArgumentParser(description="Metrics for generated samples.")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--samples", required=True, help="JSON lines written by sample.py")
    p.add_argument("--data_dir", default=None, help="dataset directory with meta.json")
    p.add_argument("--png", default=None, help="optional figure to write")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.task == "maze" and not args.data_dir:
        raise SystemExit("error: --task=maze needs --data_dir (for meta.json's maze)")
    return TASKS[args.task](args)


if __name__ == "__main__":
    main()
