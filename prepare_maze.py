"""
The maze planning data of the paper (section 5.1.2, appendix F.2, Listing 1).

One fixed maze from Listing 1's recursive-division generator (41x41 bitmap for m = n = 20 cells,
extra_door_frac = 0.5: half of the walls that separate two passages are punched open, which makes
loops). 0 = free, 1 = wall. We draw `num_pairs` distinct start-goal pairs of free bitmap cells
(distinct as unordered pairs: if (s, g) is drawn, (g, s) is not, so the reverse of a training path
can never be a validation pair), and for each pair up to `paths_per_pair` distinct simple paths
(no cell twice; a move goes to one of the 4 neighbours): the BFS shortest path, then controlled
detours s -> w -> g through random waypoints w with d(s, w) + d(w, g) <= 2 d(s, g) + detour_slack
(moves; default slack 10), keeping only simple, new paths, at most 5 * paths_per_pair waypoint
tries per pair. For each path, K-2 subgoals are drawn uniformly without replacement among its
interior positions (kept in path order); g1 = start and gK = goal. Paths with fewer than K cells are
skipped. Pairs (never paths) are split 95/5 into train/val. Pairs and paths come from one random
stream and subgoals from another, so the K = 2, 7, 12 datasets of one seed share pairs and paths.

Tokens: bitmap cell (r, c) is token r*W + c; pad = H*W, mask = H*W+1, sep = H*W+2,
vocab_size = H*W+3. Files in out_dir (default data/maze_k{K}), for split in train, val:
  {split}.bin  uint16 token stream, all paths concatenated (no separators)
  {split}.idx  int64 start offsets, num_sequences+1 entries (0 first, len(.bin) last)
  {split}.fix  uint8, one per token: 1 where the token is a subgoal (fixed), K per path,
               always including the first and the last position of the path
  meta.json    vocab and special ids, max_len (longest path), tokenizer "maze", grid [H, W],
               the maze itself, the build arguments, and each file's size and SHA-256 (data.py).
The files are written into a temporary directory beside out_dir, renamed to out_dir at the end (a
failed or interrupted run leaves nothing); an existing out_dir is refused, and with --overwrite=True
replaced only if it is a dataset that a prepare script wrote, holding nothing else (data.atomic_dir).
FlexMDM trains on a path with its fixed tokens exempt from the interpolant. The MDM baseline's
sequence `g1..gK [SEP] path [PAD]...` is NOT stored: the training loader derives it from the same
files (the fixed tokens, in order, are the prompt; its length is K + 1 + max_len).

    python prepare_maze.py --K=12            # 41x41, 15000 pairs -> data/maze_k12
"""
import json
import os
import random
import sys
from collections import deque

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_ranges, configure, run

import numpy as np
from tqdm import tqdm

from data import SplitWriter, atomic_dir, record_files

# -----------------------------------------------------------------------------
m = 20  # maze rows in cells (bitmap 2m+1)
n = 20  # maze columns in cells (bitmap 2n+1)
K = 2  # subgoals per path, the start and the goal included
num_pairs = 15000  # start-goal pairs (all of them when the maze has fewer)
paths_per_pair = 10
seed = 2025
extra_door_frac = 0.5
detour_slack = 10  # detour bound: d(s,w) + d(w,g) <= 2 d(s,g) + detour_slack (moves)
out_dir = ""  # default data/maze_k{K}
overwrite = False  # replace an existing out_dir (only once the new one is complete)
# -----------------------------------------------------------------------------

DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


# ----------------------------------------------------------------------------------------------
# The generator (Listing 1). Same random calls in the same order as the paper's code, from a
# private random.Random(seed) (equal to random.seed(seed) + module functions, without touching
# the global stream), so the same seed gives the paper's maze.

def _divide(g, top, left, h, w, rng):
    if h <= 2 or w <= 2:
        return
    if w < h:  # split the longer dimension with a horizontal wall
        y = rng.randrange(top + 1, top + h - 1, 2)
        gap = rng.randrange(left, left + w, 2)
        g[y, left:left + w] = 1
        g[y, gap] = 0
        _divide(g, top, left, y - top, w, rng)
        _divide(g, y + 1, left, top + h - y - 1, w, rng)
    else:
        x = rng.randrange(left + 1, left + w - 1, 2)
        gap = rng.randrange(top, top + h, 2)
        g[top:top + h, x] = 1
        g[gap, x] = 0
        _divide(g, top, left, h, x - left, rng)
        _divide(g, top, x + 1, h, left + w - x - 1, rng)


def division_maze(m, n, seed=2025, extra_door_frac=0.5):
    """Listing 1: an (2m+1) x (2n+1) uint8 bitmap, 0 = free, 1 = wall, m x n cells.
    extra_door_frac = 0 gives a perfect maze (a tree); > 0 opens that fraction of the walls
    separating two passages (loops)."""
    rng = random.Random(seed)
    H, W = 2 * m + 1, 2 * n + 1
    g = np.zeros((H, W), dtype=np.uint8)
    g[0, :], g[H - 1, :], g[:, 0], g[:, W - 1] = 1, 1, 1, 1
    _divide(g, 1, 1, H - 2, W - 2, rng)
    if extra_door_frac > 0:
        # interior walls with free cells on both sides (vertically or horizontally), row-major
        # order as in the listing's double loop
        inner, free = g[1:-1, 1:-1] == 1, g == 0
        vert = free[:-2, 1:-1] & free[2:, 1:-1]
        horiz = free[1:-1, :-2] & free[1:-1, 2:]
        candidates = [(int(r) + 1, int(c) + 1) for r, c in np.argwhere(inner & (vert | horiz))]
        k = int(len(candidates) * extra_door_frac)
        for r, c in rng.sample(candidates, k=k):
            g[r, c] = 0
    return g


# ----------------------------------------------------------------------------------------------
# Graph of free cells and breadth-first search

def maze_graph(maze):
    """Free cells as nodes 0..F-1 (row-major). Returns (cells, nbr): cells[i] = token r*W + c of
    node i, nbr[i, d] = node one step in direction DIRS[d] from i, or -1 (wall / outside)."""
    maze = np.asarray(maze)
    H, W = maze.shape
    free = maze == 0
    node = np.full((H + 2, W + 2), -1, dtype=np.int64)  # padded by one so outside = -1
    rr, cc = np.nonzero(free)
    node[rr + 1, cc + 1] = np.arange(len(rr))
    nbr = np.stack([node[rr + 1 + dr, cc + 1 + dc] for dr, dc in DIRS], axis=1)
    return (rr * W + cc).astype(np.int64), nbr


def bfs(nbr, source):
    """Single-source BFS on the node graph: (dist, parent), int64 [F], -1 where unreachable;
    parent[v] = the first neighbour of v (DIRS order) one step closer to source."""
    F = len(nbr)
    dist = np.full(F, -1, dtype=np.int64)
    dist[source] = 0
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in nbr[u]:
            if v >= 0 and dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist, _parents(nbr, dist[None])[0]


def bfs_all_pairs(nbr):
    """BFS from every node at once (vectorised frontiers). dist[s, v] = moves from s to v (-1 if
    unreachable); parent[s, v] = predecessor of v on the BFS tree of s (first neighbour in DIRS
    order one step closer to s), parent[s, s] = -1."""
    F = len(nbr)
    dist = np.full((F, F), -1, dtype=np.int32)
    np.fill_diagonal(dist, 0)
    reached = np.eye(F, dtype=bool)
    frontier = reached.copy()
    step = 0
    while frontier.any():
        step += 1
        new = np.zeros_like(frontier)
        for d in range(nbr.shape[1]):
            ok = nbr[:, d] >= 0
            new[:, ok] |= frontier[:, nbr[ok, d]]
        new &= ~reached
        dist[new] = step
        reached |= new
        frontier = new
    return dist, _parents(nbr, dist)


def _parents(nbr, dist):
    parent = np.full(dist.shape, -1, dtype=np.int32)
    for d in range(nbr.shape[1]):
        ok = nbr[:, d] >= 0
        u = nbr[ok, d]
        hit = (dist[:, u] == dist[:, ok] - 1) & (dist[:, ok] > 0) & (parent[:, ok] < 0)
        sub = parent[:, ok]
        sub[hit] = np.broadcast_to(u, hit.shape)[hit]
        parent[:, ok] = sub
    return parent


def bfs_path(parent_rows, s, g):
    """Shortest path s..g (node ids, both ends included) by walking the BFS tree of s back from g.
    parent_rows: parent matrix as nested lists (parent.tolist()) or an array."""
    row = parent_rows[s]
    path = [g]
    while path[-1] != s:
        path.append(int(row[path[-1]]))
    path.reverse()
    return path


# ----------------------------------------------------------------------------------------------
# Paths and subgoals

def detour_paths(parent_rows, dist, s, g, n_paths, rng, detour_slack=10, max_tries=None):
    """Up to n_paths distinct simple paths s..g (node ids): the BFS shortest path first, then
    detours through random waypoints w with d(s, w) + d(w, g) <= 2 d(s, g) + detour_slack,
    each BFS(s, w) + BFS(w, g), rejected if it visits a cell twice or repeats a path.
    At most max_tries (default 5 * n_paths) waypoints are tried."""
    shortest = bfs_path(parent_rows, s, g)
    paths, seen = [shortest], {tuple(shortest)}
    if n_paths <= 1:
        return paths
    max_tries = 5 * n_paths if max_tries is None else max_tries
    bound = 2 * int(dist[s, g]) + detour_slack
    total = dist[s].astype(np.int64) + dist[g]  # dist is symmetric: dist[g, w] = d(w, g)
    cands = np.nonzero((total <= bound) & (dist[s] >= 0))[0]
    cands = cands[(cands != s) & (cands != g)]
    if len(cands) == 0:
        return paths
    for w in rng.choice(cands, size=min(max_tries, len(cands)), replace=False):
        w = int(w)
        path = bfs_path(parent_rows, s, w) + bfs_path(parent_rows, w, g)[1:]
        key = tuple(path)
        if len(set(path)) != len(path) or key in seen:
            continue
        paths.append(path)
        seen.add(key)
        if len(paths) == n_paths:
            break
    return paths


def subgoal_positions(length, K, rng):
    """K positions of a path of `length` cells: 0, K-2 distinct interior positions drawn
    uniformly without replacement (sorted), and length-1. Needs length >= K >= 2."""
    if K < 2 or length < K:
        raise ValueError(f"need 2 <= K <= length, got K={K}, length={length}")
    inner = np.sort(rng.choice(length - 2, size=K - 2, replace=False)) + 1
    return np.concatenate([[0], inner, [length - 1]]).astype(np.int64)


def sample_pairs(num_nodes, num_pairs, rng):
    """num_pairs distinct unordered pairs of distinct nodes, each in a random orientation:
    int64 [num_pairs, 2] (start, goal)."""
    total = num_nodes * (num_nodes - 1) // 2
    if num_pairs > total:
        raise ValueError(f"asked for {num_pairs} pairs but the maze has only {total}")
    k = rng.choice(total, size=num_pairs, replace=False)
    i, j = np.triu_indices(num_nodes, 1)
    pairs = np.stack([i[k], j[k]], axis=1).astype(np.int64)
    flip = rng.random(num_pairs) < 0.5
    pairs[flip] = pairs[flip][:, ::-1]
    return pairs


def build_split(pairs, cells, parent_rows, dist, K, paths_per_pair, rng_paths, rng_sub,
                detour_slack=10, progress=None):
    """Token paths and fixed flags for a list of pairs: two lists of arrays (int64, uint8).
    progress: a label to show a progress bar under, or None."""
    tokens, fixes = [], []
    for s, g in tqdm(pairs, desc=progress, unit="pair", disable=progress is None, mininterval=1.0):
        for path in detour_paths(parent_rows, dist, int(s), int(g), paths_per_pair, rng_paths,
                                 detour_slack):
            if len(path) < K:
                continue
            fix = np.zeros(len(path), dtype=np.uint8)
            fix[subgoal_positions(len(path), K, rng_sub)] = 1
            tokens.append(cells[path])
            fixes.append(fix)
    return tokens, fixes


def write_split(out_dir, split, tokens, fixes, vocab_size):
    """Write {split}.bin, .idx and .fix (data.SplitWriter); returns the lengths of the sequences."""
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    writer = SplitWriter(out_dir, split, vocab_size, fixed=True)
    writer.add(np.concatenate(tokens), lengths, np.concatenate(fixes))
    writer.close()
    return lengths


def build(m=20, n=20, K=2, num_pairs=15000, paths_per_pair=10, seed=2025, extra_door_frac=0.5,
          out_dir=None, detour_slack=10, val_frac=0.05, verbose=True, overwrite=False):
    """Build the dataset into out_dir, atomically (atomic_dir); returns the meta dict (also written
    as meta.json)."""
    if m < 1 or n < 1:
        raise InputError(f"the maze needs m, n >= 1 cells, got m={m}, n={n}")
    if (2 * m + 1) * (2 * n + 1) + 3 > 2 ** 16:  # data.py stores a vocabulary up to 2^16 as uint16
        raise InputError(f"maze too large for uint16 tokens: m={m}, n={n} gives a vocabulary over 65536")
    if K < 2:
        raise InputError(f"K must be at least 2 (the start and the goal are subgoals), got {K}")
    out_dir = out_dir or os.path.join("data", f"maze_k{K}")
    with atomic_dir(out_dir, overwrite) as tmp:
        maze = division_maze(m, n, seed=seed, extra_door_frac=extra_door_frac)
        H, W = maze.shape
        cells, nbr = maze_graph(maze)
        dist, parent = bfs_all_pairs(nbr)
        if (dist < 0).any():
            raise ValueError("maze has unreachable free cells")  # Listing 1's mazes are connected
        parent_rows = parent.tolist()
        rng_paths = np.random.default_rng([seed, 0])
        rng_sub = np.random.default_rng([seed, 1])
        available = len(cells) * (len(cells) - 1) // 2
        if num_pairs > available:  # a tiny maze: take every pair
            print(f"note: {num_pairs} pairs asked, the maze has {available}; using all of them")
            num_pairs = available
        pairs = sample_pairs(len(cells), num_pairs, rng_paths)  # already in random order
        n_val = max(1, int(round(val_frac * num_pairs))) if num_pairs >= 2 else 0
        split_pairs = {"train": pairs[n_val:], "val": pairs[:n_val]}
        lengths = {}
        for split, sp in split_pairs.items():
            tokens, fixes = build_split(sp, cells, parent_rows, dist, K, paths_per_pair, rng_paths,
                                        rng_sub, detour_slack, progress=f"paths ({split})" if verbose else None)
            if not tokens:
                raise InputError(f"the {split} split has no path (of at least K={K} cells, from {len(sp)} pairs); "
                                 f"give more --num_pairs, a larger maze or a smaller K")
            lengths[split] = write_split(tmp, split, tokens, fixes, H * W + 3)
        meta = {
            "vocab_size": H * W + 3, "pad_id": H * W, "mask_id": H * W + 1, "sep_id": H * W + 2,
            "max_len": int(max(l.max() for l in lengths.values())),
            "tokenizer": "maze", "grid": [H, W], "maze": maze.tolist(), "K": K,
            "num_pairs": num_pairs, "paths_per_pair": paths_per_pair, "seed": seed,
            "extra_door_frac": extra_door_frac, "m": m, "n": n, "detour_slack": detour_slack,
            "num_sequences": {s: int(len(l)) for s, l in lengths.items()},
            "num_split_pairs": {s: int(len(p)) for s, p in split_pairs.items()}, "files": record_files(tmp),
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
    if verbose:
        print(f"maze {H}x{W}, {len(cells)} free cells, K={K} -> {out_dir}")
        for split, l in lengths.items():
            print(f"  {split}: {len(split_pairs[split])} pairs, {len(l)} sequences, "
                  f"length min/mean/max {l.min()}/{l.mean():.1f}/{l.max()}")
    return meta


def main(argv=None):
    c = dict(globals())  # this run's settings; the module's defaults stay as they are
    configure(c, sys.argv[1:] if argv is None else argv)
    check_ranges(c, dict(m=">0", n=">0", num_pairs=">0", paths_per_pair=">0", seed=">=0", extra_door_frac="[0,1]",
                         detour_slack=">=0"))  # and build's own checks: K, the size of the vocabulary
    return build(c["m"], c["n"], c["K"], c["num_pairs"], c["paths_per_pair"], c["seed"], c["extra_door_frac"],
                 c["out_dir"], c["detour_slack"], overwrite=c["overwrite"])


if __name__ == "__main__":
    run(main, interrupted="the dataset was not written (its temporary directory is removed); run the command again")
