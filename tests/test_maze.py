"""Maze data (prepare_maze.py), the maze metric and figure (evaluate.py), the maze configs, and the insertion
trace of a maze checkpoint (diagnostics.py)."""
import json
import os
import shutil
import sys
from collections import deque

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import diagnostics  # noqa: E402
import evaluate  # noqa: E402
from configurator import InputError  # noqa: E402
import prepare_maze as pm  # noqa: E402


def ref_bfs(maze, start):
    """Independent grid BFS: dict (r, c) -> moves from start over free cells."""
    H, W = maze.shape
    dist, queue = {start: 0}, deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            q = (r + dr, c + dc)
            if 0 <= q[0] < H and 0 <= q[1] < W and maze[q] == 0 and q not in dist:
                dist[q] = dist[(r, c)] + 1
                queue.append(q)
    return dist


def valid_cells(maze, cells):
    """(r, c) list: all free and consecutive ones 4-adjacent."""
    free = all(maze[r, c] == 0 for r, c in cells)
    steps = all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(cells, cells[1:]))
    return free and steps


@pytest.fixture(scope="module")
def small():
    maze = pm.division_maze(6, 7, seed=3, extra_door_frac=0.5)
    cells, nbr = pm.maze_graph(maze)
    dist, parent = pm.bfs_all_pairs(nbr)
    return maze, cells, nbr, dist, parent


def build(tmp_path, K=4, num_pairs=60, **kw):
    out = str(tmp_path / f"maze_k{K}")
    meta = pm.main([f"--m={kw.get('m', 6)}", f"--n={kw.get('n', 6)}", f"--K={K}",
                    f"--num_pairs={num_pairs}", f"--paths_per_pair={kw.get('ppp', 5)}",
                    f"--seed={kw.get('seed', 1)}", f"--out_dir={out}"])
    return out, meta


def read_split(out, split):
    tok = np.fromfile(os.path.join(out, f"{split}.bin"), dtype=np.uint16)
    idx = np.fromfile(os.path.join(out, f"{split}.idx"), dtype=np.int64)
    fix = np.fromfile(os.path.join(out, f"{split}.fix"), dtype=np.uint8)
    return tok, idx, fix


# ---------------------------------------------------------------------------- generator

@pytest.mark.parametrize("m,n,seed", [(5, 5, 0), (6, 8, 1), (8, 5, 2025)])
def test_generator_shape_border_connected(m, n, seed):
    for frac in (0.0, 0.5):
        g = pm.division_maze(m, n, seed=seed, extra_door_frac=frac)
        assert g.shape == (2 * m + 1, 2 * n + 1) and g.dtype == np.uint8
        assert set(np.unique(g)) <= {0, 1}
        assert g[0].all() and g[-1].all() and g[:, 0].all() and g[:, -1].all()
        # every cell centre (odd, odd) is free; all free cells are connected
        assert (g[1::2, 1::2] == 0).all()
        free = list(zip(*np.nonzero(g == 0)))
        assert len(ref_bfs(g, free[0])) == len(free)


def listing1_maze(m, n, seed, extra_door_frac):
    """Appendix F.2 Listing 1 verbatim (global random state), as an independent reference."""
    import random

    def _divide(g, top, left, h, w):
        if h <= 2 or w <= 2:
            return
        horizontal = w < h
        if horizontal:
            y = random.randrange(top + 1, top + h - 1, 2)
            gap = random.randrange(left, left + w, 2)
            g[y, left:left + w] = 1
            g[y, gap] = 0
            _divide(g, top, left, y - top, w)
            _divide(g, y + 1, left, top + h - y - 1, w)
        else:
            x = random.randrange(left + 1, left + w - 1, 2)
            gap = random.randrange(top, top + h, 2)
            g[top:top + h, x] = 1
            g[gap, x] = 0
            _divide(g, top, left, h, x - left)
            _divide(g, top, x + 1, h, left + w - x - 1)

    state = random.getstate()
    random.seed(seed)
    H, W = 2 * m + 1, 2 * n + 1
    g = np.zeros((H, W), dtype=np.uint8)
    g[0, :], g[H - 1, :], g[:, 0], g[:, W - 1] = 1, 1, 1, 1
    _divide(g, 1, 1, H - 2, W - 2)
    if extra_door_frac > 0:
        candidates = []
        for r in range(1, H - 1):
            for c in range(1, W - 1):
                if g[r, c] == 1:
                    if g[r - 1, c] == 0 and g[r + 1, c] == 0:
                        candidates.append((r, c))
                    elif g[r, c - 1] == 0 and g[r, c + 1] == 0:
                        candidates.append((r, c))
        k = int(len(candidates) * extra_door_frac)
        for (r, c) in random.sample(candidates, k=k):
            g[r, c] = 0
    random.setstate(state)
    return g


@pytest.mark.parametrize("m,n,seed,frac", [(20, 20, 2025, 0.5), (20, 20, 1, 0.0), (5, 8, 3, 0.3),
                                           (7, 4, 11, 1.0)])
def test_generator_matches_listing1(m, n, seed, frac):
    assert (pm.division_maze(m, n, seed=seed, extra_door_frac=frac)
            == listing1_maze(m, n, seed, frac)).all()


def test_perfect_maze_is_a_tree():
    # recursive division without extra doors: free cells form a tree (#edges = #nodes - 1)
    g = pm.division_maze(7, 6, seed=5, extra_door_frac=0.0)
    _, nbr = pm.maze_graph(g)
    assert (nbr >= 0).sum() // 2 == len(nbr) - 1


def test_generator_extra_doors_and_seed():
    a0 = pm.division_maze(8, 8, seed=4, extra_door_frac=0.0)
    a5 = pm.division_maze(8, 8, seed=4, extra_door_frac=0.5)
    assert (a5 == 0).sum() > (a0 == 0).sum()
    assert ((a0 == 0) <= (a5 == 0)).all()  # doors only open walls
    assert (pm.division_maze(8, 8, seed=4) == a5).all()
    assert not (pm.division_maze(8, 8, seed=5) == a5).all()


def test_generator_keeps_global_random_state():
    import random
    random.seed(0)
    x = random.random()
    random.seed(0)
    pm.division_maze(5, 5, seed=9)
    assert random.random() == x


# ---------------------------------------------------------------------------- BFS and paths

def test_graph_tokens_and_neighbours(small):
    maze, cells, nbr, _, _ = small
    H, W = maze.shape
    assert len(cells) == (maze == 0).sum()
    for i, t in enumerate(cells):
        r, c = divmod(int(t), W)
        assert maze[r, c] == 0
        for (dr, dc), j in zip(pm.DIRS, nbr[i]):
            rr, cc = r + dr, c + dc
            inside_free = 0 <= rr < H and 0 <= cc < W and maze[rr, cc] == 0
            assert (j >= 0) == inside_free
            if j >= 0:
                assert cells[j] == rr * W + cc


def test_bfs_distances_match_reference(small):
    maze, cells, nbr, dist, _ = small
    W = maze.shape[1]
    for s in (0, len(cells) // 2, len(cells) - 1):
        ref = ref_bfs(maze, divmod(int(cells[s]), W))
        ours = {divmod(int(cells[v]), W): int(dist[s, v]) for v in range(len(cells))}
        assert ours == ref
        d1, _ = pm.bfs(nbr, s)
        assert (d1 == dist[s]).all()
    assert (dist == dist.T).all()


def test_bfs_paths_valid_and_shortest(small):
    maze, cells, nbr, dist, parent = small
    W = maze.shape[1]
    rng = np.random.default_rng(0)
    rows = parent.tolist()
    for _ in range(50):
        s, g = (int(v) for v in rng.choice(len(cells), 2, replace=False))
        path = pm.bfs_path(rows, s, g)
        rc = [divmod(int(cells[v]), W) for v in path]
        assert path[0] == s and path[-1] == g and valid_cells(maze, rc)
        assert len(path) - 1 == ref_bfs(maze, rc[0])[rc[-1]]


def test_detour_paths(small):
    maze, cells, nbr, dist, parent = small
    W = maze.shape[1]
    rows = parent.tolist()
    rng = np.random.default_rng(1)
    n_multi = 0
    for _ in range(40):
        s, g = (int(v) for v in rng.choice(len(cells), 2, replace=False))
        paths = pm.detour_paths(rows, dist, s, g, 6, rng, detour_slack=10)
        assert 1 <= len(paths) <= 6
        assert len(paths[0]) - 1 == dist[s, g]  # shortest first
        assert len({tuple(p) for p in paths}) == len(paths)  # distinct
        for p in paths:
            rc = [divmod(int(cells[v]), W) for v in p]
            assert p[0] == s and p[-1] == g
            assert len(set(p)) == len(p)  # simple
            assert valid_cells(maze, rc)
            assert len(p) - 1 <= 2 * dist[s, g] + 10  # detour bound
        n_multi += len(paths) > 1
    assert n_multi > 20  # a maze with loops gives detours for most pairs


def test_subgoal_positions():
    rng = np.random.default_rng(0)
    for length, K in [(2, 2), (5, 5), (30, 7), (12, 12), (40, 3)]:
        for _ in range(20):
            pos = pm.subgoal_positions(length, K, rng)
            assert len(pos) == K and pos[0] == 0 and pos[-1] == length - 1
            assert (np.diff(pos) > 0).all()
    with pytest.raises(ValueError):
        pm.subgoal_positions(4, 5, rng)
    # interior positions are drawn uniformly
    counts = np.bincount(np.concatenate(
        [pm.subgoal_positions(10, 3, rng)[1:-1] for _ in range(4000)]), minlength=10)
    assert counts[0] == 0 and counts[9] == 0
    assert counts[1:9].min() > 0.8 * 500 and counts[1:9].max() < 1.2 * 500


def test_sample_pairs_distinct_unordered():
    rng = np.random.default_rng(0)
    pairs = pm.sample_pairs(30, 400, rng)
    assert pairs.shape == (400, 2) and (pairs[:, 0] != pairs[:, 1]).all()
    assert pairs.min() >= 0 and pairs.max() < 30
    assert len({frozenset(p) for p in pairs.tolist()}) == 400
    assert 0.35 < (pairs[:, 0] < pairs[:, 1]).mean() < 0.65  # both orientations
    with pytest.raises(ValueError):
        pm.sample_pairs(5, 11, rng)


# ---------------------------------------------------------------------------- files

def test_build_files_and_meta(tmp_path):
    K = 4
    out, meta = build(tmp_path, K=K)
    with open(os.path.join(out, "meta.json")) as f:
        disk = json.load(f)
    for key in ("vocab_size", "pad_id", "mask_id", "sep_id", "max_len", "tokenizer", "grid",
                "maze", "K", "num_pairs", "paths_per_pair", "seed", "extra_door_frac"):
        assert key in disk, key
    H, W = disk["grid"]
    maze = np.array(disk["maze"], dtype=np.uint8)
    assert maze.shape == (H, W) == (13, 13)
    assert (maze == pm.division_maze(6, 6, seed=1, extra_door_frac=0.5)).all()
    assert (disk["pad_id"], disk["mask_id"], disk["sep_id"], disk["vocab_size"]) == (
        H * W, H * W + 1, H * W + 2, H * W + 3)
    assert disk["tokenizer"] == "maze" and disk["K"] == K
    max_len = 0
    pairs = {}
    for split in ("train", "val"):
        tok, idx, fix = read_split(out, split)
        assert idx[0] == 0 and idx[-1] == len(tok) == len(fix) and (np.diff(idx) > 0).all()
        assert tok.max() < H * W
        pairs[split] = set()
        for a, b in zip(idx[:-1], idx[1:]):
            seq, f = tok[a:b].astype(int), fix[a:b]
            assert len(seq) >= K and f.sum() == K and f[0] == 1 and f[-1] == 1
            assert evaluate.maze_path_ok(seq, seq[f == 1], maze)
            assert len(set(seq.tolist())) == len(seq)
            pairs[split].add(frozenset((seq[0], seq[-1])))
            max_len = max(max_len, len(seq))
    assert pairs["train"] and pairs["val"]
    assert not pairs["train"] & pairs["val"]  # split by pairs (either orientation)
    assert disk["max_len"] == max_len
    assert len(pairs["train"]) + len(pairs["val"]) == 60
    assert len(pairs["val"]) == 3  # 5% of 60


def test_build_tiny_maze_takes_all_pairs(tmp_path):
    out, meta = build(tmp_path, K=2, num_pairs=10 ** 6, m=2, n=2, ppp=2)
    F = int((np.array(meta["maze"]) == 0).sum())
    assert meta["num_pairs"] == F * (F - 1) // 2 == sum(meta["num_split_pairs"].values())


def test_build_is_deterministic_and_pairs_shared_across_K(tmp_path):
    out_a, _ = build(tmp_path / "a", K=2)
    out_b, _ = build(tmp_path / "b", K=2)
    out_c, _ = build(tmp_path / "c", K=3)
    ta, ia, fa = read_split(out_a, "train")
    tb, ib, fb = read_split(out_b, "train")
    assert (ta == tb).all() and (ia == ib).all() and (fa == fb).all()
    tc, ic, fc = read_split(out_c, "train")
    paths_a = {tuple(ta[a:b]) for a, b in zip(ia[:-1], ia[1:]) if b - a >= 3}
    paths_c = {tuple(tc[a:b]) for a, b in zip(ic[:-1], ic[1:])}
    assert paths_a == paths_c


# ---------------------------------------------------------------------------- metric

@pytest.fixture
def corridor():
    # 5x7 maze, free cells: row 1 cols 1..5, plus (2,5) and (3,5), (3,4), (3,3)
    m = np.ones((5, 7), dtype=np.uint8)
    m[1, 1:6] = 0
    m[2, 5] = 0
    m[3, 3:6] = 0
    W = 7
    tok = lambda cells: [r * W + c for r, c in cells]  # noqa: E731
    path = [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 5), (3, 5), (3, 4), (3, 3)]
    return m, tok, path


def test_metric_accepts_correct_path(corridor):
    m, tok, path = corridor
    assert evaluate.maze_path_ok(tok(path), tok([path[0], path[-1]]), m)
    assert evaluate.maze_path_ok(tok(path), tok([path[0], path[2], path[5], path[-1]]), m)
    assert evaluate.maze_path_ok(np.array(tok(path)), np.array(tok([path[0], path[-1]])), m)


def failing_path(case, path):
    """A hand-made failing (cells, subgoal cells) on the corridor maze, by the name of its failure."""
    subgoals, ends = [path[0], path[2], path[5], path[-1]], [path[0], path[-1]]
    return {
        "wall": (path[:3] + [(2, 3), (3, 3)], ends),  # shortcut (1,3)->(2,3)->(3,3) through the wall at (2,3)
        "two_walls": (path[:2] + [(2, 2), (2, 3), (3, 3)], ends),
        "jump": (path[:4] + path[5:], subgoals),
        "two_jumps": (path[:2] + path[3:6] + path[7:], ends),  # (1,2) -> (1,4), later (2,5) -> (3,4)
        "stay": (path[:3] + [path[2]] + path[3:], subgoals),
        "jump_then_wall": ([path[0], path[2], (2, 3), (3, 3)], ends),
        "missed": (path[:2], [path[0], path[2], path[1]]),  # valid, right ends, but skips the middle subgoal (1,3)
        "order": (list(path), [path[0], path[5], path[2], path[-1]]),  # g2 = (2,5) is visited, then g3 = (1,3) never again
        "start": (path[1:], ends),
        "end": (path[:-1], ends),
        "empty": ([], subgoals),
        "pad": (list(path), subgoals),
        "outside": (list(path), subgoals),
    }[case]


@pytest.mark.parametrize("case,reason", [
    ("wall", "wall"), ("jump", "jump"), ("stay", "jump"), ("missed", "missed_subgoal"),
    ("order", "missed_subgoal"), ("start", "wrong_start"), ("end", "wrong_end"),
    ("empty", "empty"), ("pad", "non_cell_token"), ("outside", "non_cell_token"),
])
def test_metric_rejects(corridor, case, reason):
    m, tok, path = corridor
    H, W = m.shape
    p, sg = failing_path(case, path)
    toks = tok(p)
    if case == "pad":
        toks = toks + [H * W]
    if case == "outside":
        toks = toks[:-1] + [-1]
    assert evaluate.maze_path_check(toks, tok(sg), m) == reason
    assert not evaluate.maze_path_ok(toks, tok(sg), m)


@pytest.mark.parametrize("case,reason,where,marks", [
    # where: the offending cell (r, c) (for missed_subgoal: the subgoal); marks: the cells a figure marks
    ("two_walls", "wall", (2, 2), [((2, 2), "cross")]),  # the first of two wall cells
    ("jump", "jump", (2, 5), [((1, 4), "cross"), ((2, 5), "cross")]),
    ("two_jumps", "jump", (1, 4), [((1, 2), "cross"), ((1, 4), "cross")]),
    ("stay", "jump", (1, 3), [((1, 3), "square")]),
    ("jump_then_wall", "wall", (2, 3), [((2, 3), "cross")]),  # the checks run in order: walls before jumps
    ("missed", "missed_subgoal", (1, 3), [((1, 3), "ring")]),
    ("order", "missed_subgoal", (1, 3), [((1, 3), "ring")]),
    ("start", "wrong_start", (1, 2), [((1, 2), "cross")]),
    ("end", "wrong_end", (3, 4), [((3, 4), "cross")]),
    ("pad", "non_cell_token", None, [((3, 3), "cross")]),  # no cell: the one before it is marked
    ("empty", "empty", None, []),
])
def test_failure_location(corridor, case, reason, where, marks):
    """maze_path_failure names the first failure and its position on hand-made paths; the figure's
    marks (maze_failure_marks) sit on the offending cells, and its title names the failure."""
    m, tok, path = corridor
    H, W = m.shape
    p, sg = failing_path(case, path)
    toks = tok(p) + ([H * W] if case == "pad" else [])
    got, at = evaluate.maze_path_failure(toks, tok(sg), m)
    assert got == reason == evaluate.maze_path_check(toks, tok(sg), m)
    if reason == "missed_subgoal":
        assert sg[at] == where
    elif where is None:
        assert at == (len(p) if case == "pad" else None)
    else:
        assert divmod(toks[at], W) == where
    title, drawn = evaluate.maze_failure_marks(got, at, toks, tok(sg))
    assert [(divmod(t, W), kind) for t, kind in drawn] == marks
    words = {"jump": "repeat" if case == "stay" else "jump", "wall": "wall", "missed_subgoal": "missed subgoal g3"
             if case == "order" else "missed subgoal g2", "wrong_start": "wrong start", "wrong_end": "wrong end",
             "non_cell_token": "non-cell token", "empty": "empty"}
    assert words[reason] in title
    assert ("repeat" in title) == (case == "stay")


def test_failure_location_ok_and_collapsed(corridor):
    """No location for a solved path; with collapse=True the position indexes the merged path."""
    m, tok, path = corridor
    sg = tok([path[0], path[-1]])
    assert evaluate.maze_path_failure(tok(path), sg, m) == ("ok", None)
    assert evaluate.maze_path_failure(tok(path[:3] + [path[2]] + path[3:]), sg, m, collapse=True) == ("ok", None)
    # (1,1) (1,2) (1,2) (1,3) (1,4) (1,5) (3,5) ...: strict, the repeat at position 2 fails first;
    # merged, the jump (1,5) -> (3,5) at position 5 (6 in the unmerged path)
    jumpy = tok(path[:2] + [path[1]] + path[2:5] + path[6:])
    assert evaluate.maze_path_failure(jumpy, sg, m) == ("jump", 2)
    assert evaluate.maze_path_failure(jumpy, sg, m, collapse=True) == ("jump", 5)
    assert evaluate.maze_failure_marks("ok", None, tok(path), sg)[0] == f"ok: {len(path)} cells, K=2"


def test_collapsed_metric(corridor):
    """A repeated cell (a step of length 0) fails the strict metric and passes collapsed; a real
    jump, or a repeat that hides a jump, fails both."""
    m, tok, path = corridor
    sg = tok([path[0], path[5], path[-1]])
    repeated = tok(path[:3] + [path[2], path[2]] + path[3:])
    jump = tok(path[:4] + path[5:])
    assert evaluate.maze_path_check(repeated, sg, m) == "jump"
    assert evaluate.maze_path_ok(repeated, sg, m, collapse=True)
    assert evaluate.maze_path_check(jump, sg, m, collapse=True) == "jump"
    assert evaluate.maze_path_check(tok(path[:4] + [path[3]] + path[5:]), sg, m, collapse=True) == "jump"
    assert evaluate.collapse_repeats([1, 1, 2, 2, 2, 3, 1]) == [1, 2, 3, 1]


def test_length_case(corridor):
    """Cases against the data lengths of one subgoal set, and the parity rule: a path from (1, 1)
    to (3, 3) has 4 + 2k steps, so 5 + 2k cells."""
    m, tok, path = corridor
    sg = tok([path[0], path[-1]])
    lengths = [9, 11]
    W = m.shape[1]
    assert evaluate.maze_length_case(tok(path), sg, lengths, W) == ("a data length", False)
    assert evaluate.maze_length_case([0] * 10, sg, lengths, W) == ("between data lengths", True)
    assert evaluate.maze_length_case([0] * 8, sg, lengths, W) == ("shorter than all", True)
    assert evaluate.maze_length_case([0] * 13, sg, lengths, W) == ("longer than all", False)


def test_maze_lengths_cli(tmp_path, capsys):
    """held_out_lengths reads the val paths by subgoal set; the CLI counts where samples fall."""
    out, meta = build(tmp_path, K=3, num_pairs=40)
    tok, idx, fix = read_split(out, "val")
    by_goals = evaluate.held_out_lengths(out)
    assert sum(map(len, by_goals.values())) >= len(by_goals) > 0
    rows = []
    for i, (a, b) in enumerate(zip(idx[:-1], idx[1:])):
        seq, sg = tok[a:b].tolist(), tok[a:b][fix[a:b] == 1].tolist()
        assert len(seq) in by_goals[tuple(sg)]
        rows.append({"tokens": seq if i % 2 == 0 else seq + [seq[-1]] * 40, "subgoals": sg})
    samples = str(tmp_path / "samples.jsonl")
    with open(samples, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate.main(["--task=maze_lengths", f"--samples={samples}", f"--data_dir={out}"])
    n_even = sum(i % 2 == 0 for i in range(len(rows)))
    assert metrics["cases"]["a data length"] == {"n": n_even, "solved": n_even}
    assert metrics["cases"]["longer than all"] == {"n": len(rows) - n_even, "solved": 0}
    assert metrics["wrong_parity"] == 0  # 40 extra cells keep the parity
    rows[0]["subgoals"] = rows[0]["subgoals"][::-1]
    with open(samples, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="not a held-out set"):
        evaluate.main(["--task=maze_lengths", f"--samples={samples}", f"--data_dir={out}", "--overwrite=True"])


def test_success_rate(corridor):
    m, tok, path = corridor
    good, sg = tok(path), tok([path[0], path[-1]])
    bad = tok(path[:-1])
    rate, se = evaluate.maze_success_rate([good, bad, good, good], [sg] * 4, m)
    assert rate == 0.75 and se == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert evaluate.maze_success_rate([good], [sg], m) == (1.0, 0.0)
    with pytest.raises(ValueError):
        evaluate.maze_success_rate([good], [sg, sg], m)


def magenta_pixels(filename):
    """Pixels of the failure marks' colour (magenta) in a PNG."""
    import matplotlib.image
    rgb = matplotlib.image.imread(filename)[..., :3]
    return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] > 0.8)).sum())


def test_png(tmp_path, small, corridor):
    maze, cells, _, _, parent = small
    path = pm.bfs_path(parent.tolist(), 0, len(cells) - 1)
    toks = cells[path].tolist()
    fn = str(tmp_path / "maze.png")
    assert evaluate.render_maze_png(maze, [toks, toks[:3] + [10 ** 6], toks[:2] + toks[1:], [], toks[::2]],
                                    [[toks[0], toks[-1]]] * 5, fn) == fn
    with open(fn, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert w > 100 and h > 50
    assert not os.path.exists(fn + ".tmp")
    # a failure is visible: the one-panel figure of a repeated cell or of a jump has more magenta
    # than the solved path's (whose magenta is the legend's only)
    m, tok, cpath = corridor
    sg = [tok([cpath[0], cpath[-1]])]
    counts = {}
    for name, p in (("ok", cpath), ("repeat", cpath[:3] + [cpath[2]] + cpath[3:]), ("jump", cpath[:4] + cpath[5:])):
        counts[name] = magenta_pixels(evaluate.render_maze_png(m, [tok(p)], sg, str(tmp_path / f"{name}.png")))
    assert counts["repeat"] > counts["ok"] + 50 and counts["jump"] > counts["ok"] + 50


def write_rows(path, rows):
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_on_built_data(tmp_path, capsys):
    out, meta = build(tmp_path, K=3, num_pairs=40)
    maze = np.array(meta["maze"])
    tok, idx, fix = read_split(out, "val")
    rows = []
    for i, (a, b) in enumerate(zip(idx[:-1], idx[1:])):
        seq, sg = tok[a:b].tolist(), tok[a:b][fix[a:b] == 1].tolist()
        rows.append({"tokens": seq if i % 2 == 0 else seq[:-1], "subgoals": sg})
    samples = str(tmp_path / "samples.jsonl")
    write_rows(samples, rows)
    png = str(tmp_path / "s.png")
    metrics = evaluate.main(["--task=maze", f"--samples={samples}", f"--data_dir={out}",
                             f"--png={png}"])
    expect = sum(i % 2 == 0 for i in range(len(rows))) / len(rows)
    assert metrics["success_rate"] == pytest.approx(expect)
    with open(samples + ".maze.json") as f:
        assert json.load(f)["success_rate"] == pytest.approx(expect)
    assert os.path.getsize(png) > 0 and "success rate" in capsys.readouterr().out
    assert evaluate.maze_path_ok(rows[0]["tokens"], rows[0]["subgoals"], maze)


def test_cli_outputs_never_replaced(tmp_path):
    """Each task writes its own metrics file (the length task on maze samples used to replace the
    maze metrics); an existing metrics file or PNG is refused by name before any work, unless
    --overwrite=True; settings of one in-process call do not leak into the next."""
    out, meta = build(tmp_path, K=3, num_pairs=40)
    tok, idx, fix = read_split(out, "val")
    rows = [{"tokens": tok[a:b].tolist(), "subgoals": tok[a:b][fix[a:b] == 1].tolist()} for a, b in zip(idx[:-1], idx[1:])]
    samples, png = str(tmp_path / "samples.jsonl"), str(tmp_path / "mazes.png")
    write_rows(samples, rows)
    maze_args = ["--task=maze", f"--samples={samples}", f"--data_dir={out}"]
    evaluate.main(maze_args + [f"--png={png}"])
    with open(samples + ".maze.json") as f:
        maze_metrics = f.read()
    length = evaluate.main(["--task=length", f"--samples={samples}", f"--data_dir={out}"])
    assert length["length"]["png"] == samples + ".length.png" and "png" not in evaluate.main(
        ["--task=maze_lengths", f"--samples={samples}", f"--data_dir={out}"])
    for suffix in (".length.json", ".length.png", ".maze_lengths.json"):
        assert os.path.exists(samples + suffix), suffix
    with open(samples + ".maze.json") as f:
        assert f.read() == maze_metrics
    with pytest.raises(InputError, match=r"samples.jsonl.maze.json' already exists: pass --overwrite=True") as e:
        evaluate.main(maze_args)
    assert "\n" not in str(e.value)
    os.remove(samples + ".maze.json")
    with pytest.raises(InputError, match=r"mazes.png' already exists: pass --overwrite=True .*or another --png"):
        evaluate.main(maze_args + [f"--png={png}"])
    assert not os.path.exists(samples + ".maze.json")  # refused before any work
    rows[0]["tokens"] = rows[0]["tokens"][:-1]
    write_rows(samples, rows)
    metrics = evaluate.main(maze_args + [f"--png={png}", "--overwrite=True"])
    with open(samples + ".maze.json") as f:
        assert json.load(f)["success_rate"] == metrics["success_rate"] == (len(rows) - 1) / len(rows)


def test_cli_bad_input(tmp_path):
    """One-line InputErrors for bad samples files and settings; a programming error is a ValueError."""
    out, _ = build(tmp_path, K=2, num_pairs=20)
    samples = str(tmp_path / "samples.jsonl")
    args = ["--task=maze", f"--samples={samples}", f"--data_dir={out}"]
    cases = [("", "no samples in"), ('{"tokens": [1]}\n', "line 1 has no 'subgoals'"), ("{not json\n", "line 1 is not JSON")]
    for text, message in cases:
        with open(samples, "w") as f:
            f.write(text)
        with pytest.raises(InputError, match=message):
            evaluate.main(args)
    for argv, message in ((["--task=maze", "--sample=x"], "unknown config key 'sample'"),
                          (["--task=mazes", f"--samples={samples}"], "task='mazes' is not one of maze"),
                          (["--task=maze"], "--samples is required"),
                          (["--task=maze", f"--samples={samples}"], "needs --data_dir"),
                          (["--task=humaneval_infill", f"--samples={samples}"], "needs --problems"),
                          (["--task=humaneval_infill", f"--samples={samples}", "--problems=nope.jsonl",
                            "--allow_code_execution=True"], "problems file 'nope.jsonl' not found")):
        with pytest.raises(InputError, match=message):
            evaluate.main(argv)
    with pytest.raises(ValueError, match="not 'maze'"):
        evaluate.evaluate_text("maze", samples)


# ---------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name,dataset,model_type", [
    ("maze", "maze_k2", "flexmdm"), ("maze_k2", "maze_k2", "flexmdm"),
    ("maze_k7", "maze_k7", "flexmdm"), ("maze_k12", "maze_k12", "flexmdm"),
    ("maze_mdm_k2", "maze_k2", "mdm"), ("maze_mdm_k7", "maze_k7", "mdm"),
    ("maze_mdm_k12", "maze_k12", "mdm"),
])
def test_configs(monkeypatch, name, dataset, model_type):
    monkeypatch.chdir(ROOT)
    scratch = {}
    exec(compile(open(f"config/{name}.py").read(), name, "exec"), scratch)
    cfg = {k: v for k, v in scratch.items() if not k.startswith("_")}
    assert cfg["dataset"] == dataset and cfg["model_type"] == model_type
    expect_out = "out/" + (f"maze_mdm_{dataset[5:]}" if model_type == "mdm" else dataset)
    assert cfg["out_dir"] == expect_out
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["cond_dim"]) == (8, 8, 256, 128)
    assert cfg["dropout"] == 0.1 and cfg["batch_size"] == 256 and cfg["ema_decay"] == 0.9999
    assert cfg["learning_rate"] == 1e-4 and cfg["weight_decay"] == 0.01
    assert cfg["max_iters"] == 5 * cfg["warmup_iters"] > 0
    assert all(isinstance(cfg[k], int) for k in
               ("warmup_iters", "max_iters", "eval_interval", "eval_iters", "log_interval"))


# ---------------------------------------------------------------------------- a checkpoint's g (diagnostics.py)

@pytest.fixture(scope="module")
def tiny_flexmdm(tiny_maze, tmp_path_factory):
    """(ckpt.pt of a FlexMDM briefly trained on the tiny maze, its data directory)."""
    from conftest import TINY_TRAIN_ARGS, run_train
    out = tmp_path_factory.mktemp("run")
    run_train(["--dataset=tiny", f"--out_dir={out}", "--max_iters=20", "--eval_interval=20", "--batch_size=16",
               "--learning_rate=3e-3", *TINY_TRAIN_ARGS], tiny_maze)
    return str(out / "ckpt.pt"), str(tiny_maze / "data" / "tiny")


def test_insertion_trace(tiny_flexmdm):
    """The trace on a briefly trained FlexMDM: it starts from the K subgoals at t = 0, ends at t = 1
    on the final lengths (the last step inserts nothing), and its forecasts are g's sums."""
    ckpt, data_dir = tiny_flexmdm
    times, lengths, forecast, final, K, leap = diagnostics.insertion_trace(ckpt, data_dir, 12, 16, 1.0)
    assert K == 2 and times[0] == 0.0 and times[-1] == 1.0 and len(times) == 16
    np.testing.assert_allclose(leap[:-1], (1 / 15) / (1 - times[:-1]), rtol=1e-4)  # linear: tau / (1 - t)
    assert leap[-1] == 0
    assert (lengths[0] == K).all() and np.array_equal(lengths[-1], final)
    assert (np.diff(lengths, axis=0) >= 0).all() and (forecast >= 0).all() and forecast[0].mean() > 0


def test_trace_and_calibration_tasks(tiny_flexmdm, tmp_path):
    """The tasks that call diagnostics.py, on a trained checkpoint: maze_lengths --ckpt adds the trace (the
    forecast at t = 0, the tokens inserted) and draws it; calibration writes CKPT.calibration.json, one
    table row per t with the forecast at x_0 first, the trace to t = 1 (where nothing is left to insert),
    and draws its three panels."""
    ckpt, data_dir = tiny_flexmdm
    tok, idx, fix = read_split(data_dir, "val")
    rows = [{"tokens": tok[a:b].tolist(), "subgoals": tok[a:b][fix[a:b] == 1].tolist()}
            for a, b in zip(idx[:-1], idx[1:])]
    samples, png = str(tmp_path / "samples.jsonl"), str(tmp_path / "trace.png")
    write_rows(samples, rows)
    m = evaluate.main(["--task=maze_lengths", f"--samples={samples}", f"--data_dir={data_dir}", f"--ckpt={ckpt}",
                       f"--png={png}", "--trace_samples=8", "--steps=16"])
    assert m["trace"]["n"] == 8 and m["trace"]["forecast_at_t0"] > 0 and m["trace"]["inserted"] >= 0
    assert m["png"] == png and os.path.getsize(png) > 0
    with open(samples + ".maze_lengths.json") as f:
        assert json.load(f)["trace"] == m["trace"]
    png = str(tmp_path / "calibration.png")
    m = evaluate.main(["--task=calibration", f"--ckpt={ckpt}", f"--data_dir={data_dir}", f"--png={png}",
                       "--calibration_samples=64", "--trace_samples=8", "--steps=16"])
    assert [r["t"] for r in m["table"]] == list(diagnostics.CALIBRATION_TIMES) and m["table"][0]["forecast"] > 0
    trace = m["trace"]
    assert trace["n"] == 8 and len(trace["t"]) == len(trace["forecast"]) == len(trace["inserted"]) == 16
    assert trace["t"][-1] == 1.0 and trace["inserted"][-1] == 0
    with open(os.path.splitext(ckpt)[0] + ".calibration.json") as f:
        assert json.load(f)["table"] == m["table"]
    assert m["png"] == png and os.path.getsize(png) > 0


# ---------------------------------------------------------------------------- mistakes (evaluate.py)
#
# Each row: the arguments of `python evaluate.py` ({name} stands for a path of the `mistakes` folder), and the
# one-line message that refuses them; every file there before is byte-identical after, and nothing is added.

def snapshot(*roots):
    """{path: bytes} of every file under the roots."""
    files = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    files[os.path.join(folder, name)] = f.read()
    return files


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """A folder of the inputs the rows get wrong, {name: path}: mazes a (K=3) and b (another maze), a copy of a
    with a truncated val.idx and one whose meta.json has no maze, samples of a and broken ones, text samples,
    a metrics file of ours, a notes file, HumanEval problems and completions, torn and foreign checkpoints."""
    import torch
    root = tmp_path_factory.mktemp("mistakes")
    paths = {"dir": str(root), "notes": str(root / "notes.txt"), "nothing": str(root / "no_such_file")}
    paths["a"], _ = build(root, K=3, num_pairs=40)
    paths["b"], _ = build(root / "other", K=3, num_pairs=40, m=5, n=7, seed=2)
    tok, idx, fix = read_split(paths["a"], "val")
    rows = [{"tokens": tok[i:j].tolist(), "subgoals": tok[i:j][fix[i:j] == 1].tolist(), "length": int(j - i)}
            for i, j in zip(idx[:-1], idx[1:])]
    for name, text in {"S": "".join(json.dumps(r) + "\n" for r in rows), "done": json.dumps(rows[0]) + "\n",
                       "done.maze.json": '{"task": "maze"}', "empty": "", "truncated": json.dumps(rows[0]) + "\n{\"tok",
                       "not_object": "[1, 2]\n", "not_ids": '{"tokens": "abc", "subgoals": [1, 2]}\n',
                       "T": json.dumps({"tokens": list(range(20)), "text": "twenty words " * 10}) + "\n",
                       "T_text": json.dumps({"tokens": list(range(20)), "text": 20}) + "\n",
                       "notes.txt": "my notes\n", "P": '{"task_id": "x/0", "prompt": "def f():\\n", "suffix": "", '
                       '"test": "def check(c):\\n    assert c() == 1\\n", "entry_point": "f"}\n',
                       "H": '{"task_id": "x/0", "completion": "    return 1\\n"}\n',
                       "H_unknown": '{"task_id": "y/9", "completion": "    return 1\\n"}\n',
                       "P_broken": "{not json\n", "P_fields": '{"task_id": "x/0"}\n',
                       "G": '{"answer": "three", "completion": "#### 3"}\n'}.items():
        with open(root / name, "w") as f:
            f.write(text)
        paths[name] = str(root / name)
    with open(root / "picture.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    for name, edit in (("damaged", "truncate"), ("no_maze", "meta")):
        paths[name] = str(root / name)
        shutil.copytree(paths["a"], paths[name])
        if edit == "truncate":
            with open(os.path.join(paths[name], "val.idx"), "r+b") as f:
                f.truncate(os.path.getsize(os.path.join(paths[name], "val.idx")) - 8)
        else:
            meta = json.load(open(os.path.join(paths[name], "meta.json")))
            del meta["maze"]
            with open(os.path.join(paths[name], "meta.json"), "w") as f:
                json.dump(meta, f)
    with open(root / "torn.pt", "wb") as f:
        f.write(b"PK\x03\x04" + bytes(16))
    torch.save({"model": {}}, root / "foreign.pt")
    torch.save([1, 2], root / "list.pt")
    os.makedirs(root / "folder" / "inside")
    paths.update(png=str(root / "picture.png"), torn=str(root / "torn.pt"), foreign=str(root / "foreign.pt"),
                 list=str(root / "list.pt"), folder=str(root / "folder"))
    return paths


MAZE = "--task=maze --samples={S} --data_dir={a}"
HUMANEVAL = "--task=humaneval_infill --samples={H} --problems={P} --allow_code_execution=True"
CALIBRATION = "--task=calibration --data_dir={a} --ckpt={torn}"
MISTAKES = [
    # evaluate.check_settings: one row per rule
    ("--task=mazes --samples={S}", r"^task='mazes' is not one of maze, "),
    ("--task=length --samples={S} --data_dir={a} --data_split=test", r"^data_split='test' is not one of train, val$"),
    ("--task=genppl --samples={T} --ref_batch_size=0", r"^ref_batch_size=0 must be > 0$"),
    (HUMANEVAL + " --timeout=0", r"^timeout=0.0 must be > 0$"),
    (HUMANEVAL + " --workers=-1", r"^workers=-1 must be >= 0$"),
    (CALIBRATION + " --steps=1", r"^steps=1 must be >= 2$"),
    (CALIBRATION + " --temperature=-0.5", r"^temperature=-0.5 must be >= 0$"),
    (CALIBRATION + " --trace_samples=0", r"^trace_samples=0 must be > 0$"),
    (CALIBRATION + " --calibration_samples=-3", r"^calibration_samples=-3 must be > 0$"),
    (CALIBRATION + " --grid_power=0", r"^grid_power=0.0 must be > 0$"),
    ("--task=maze", r"^--samples is required: "),
    ("--task=maze --samples={S}", r"^--task=maze needs --data_dir "),
    ("--task=length --samples={S}", r"^--task=length needs --data_dir "),
    ("--task=humaneval_infill --samples={H} --allow_code_execution=True", r"^--task=humaneval_infill needs --problems "),
    ("--task=calibration --data_dir={a}", r"^--task=calibration needs --ckpt "),
    ("--task=maze_lengths --samples={S} --data_dir={a} --png={dir}/new.png", r"draws --png .* needs --ckpt too$"),
    ("--task=humaneval_infill --samples={H} --problems={P}", r"give --allow_code_execution=True to allow it"),
    ("--task=humaneval_infill --samples={H} --problems={P} --allow_code_execution=False", r"--allow_code_execution=True"),
    ("--task=humaneval_infill --samples={H} --problems={P} --allow_code_execution=1", r"'allow_code_execution' .* must be bool"),
    (MAZE + " --sample=x", r"^unknown config key 'sample'"),
    # outputs (data.check_output)
    (MAZE + " --png={S} --overwrite=True", r"^'.*/S' is also a file this command reads: it is not written over"),
    (MAZE + " --png={notes} --overwrite=True", r"notes.txt' is not replaced: it is not a samples, metrics, table or PNG file"),
    (MAZE + " --png={a}/meta.json --overwrite=True", r"meta.json' is also a file this command reads"),
    (MAZE + " --png={S}.maze.json", r"^two outputs of this task are the same file"),
    (MAZE + " --png={folder} --overwrite=True", r"folder' is not replaced: it is a directory"),
    ("--task=maze --samples={done} --data_dir={a}", r"done.maze.json' already exists: pass --overwrite=True"),
    ("--task=calibration --data_dir={a} --ckpt={foreign} --png={foreign} --overwrite=True", r"is also a file this command reads"),
    # the data
    ("--task=maze --samples={S} --data_dir={b}", r"^\d+ of the \d+ samples in .* are not a held-out set of .*: samples of another"),
    ("--task=maze_lengths --samples={S} --data_dir={b}", r"are not a held-out set of"),
    ("--task=maze --samples={S} --data_dir={folder}", r"^missing data file .*meta.json"),
    ("--task=maze --samples={S} --data_dir={nothing}", r"^dataset directory .* not found"),
    ("--task=maze --samples={S} --data_dir={damaged}", r"val.idx has \d+ bytes where meta.json records \d+: a damaged dataset"),
    ("--task=length --samples={S} --data_dir={damaged}", r"val.idx has \d+ bytes where meta.json records"),
    ("--task=maze --samples={S} --data_dir={no_maze}", r"is not a maze dataset"),
    # the samples
    ("--task=maze --samples={empty} --data_dir={a}", r"^no samples in "),
    ("--task=maze --samples={truncated} --data_dir={a}", r"truncated' line 2 is not JSON"),
    ("--task=maze --samples={not_object} --data_dir={a}", r"line 1 is not a JSON object: expected lines of maze samples"),
    ("--task=maze --samples={not_ids} --data_dir={a}", r"line 1: 'tokens' is not a list of token ids"),
    ("--task=maze --samples={png} --data_dir={a}", r"picture.png' is not a text file"),
    ("--task=maze --samples={folder} --data_dir={a}", r"folder' is a directory, not a samples file"),
    ("--task=maze --samples={nothing} --data_dir={a}", r"^samples file .* not found"),
    ("--task=length --samples={S} --data_dir={a} --compare={nothing}", r"^samples file .*no_such_file' not found"),
    ("--task=length --samples={S} --data_dir={a} --compare={not_ids}", r"'tokens' is not a list of token ids"),
    ("--task=genppl --samples={T_text}", r"line 1: 'text' is not a string"),
    ("--task=gsm8k --samples={G}", r"line 1: 'answer' ends in no '#### N'"),
    ("--task=gsm8k --samples={S}", r"line 1 has no 'answer'"),
    ("--task=genppl --samples={T} --ref_model={nothing}", r"^could not load the reference model"),
    (HUMANEVAL.replace("{H}", "{H_unknown}"), r"task_id 'y/9' is not in the problems file"),
    (HUMANEVAL.replace("{P}", "{P_broken}"), r"P_broken' is not HumanEval JSON lines"),
    (HUMANEVAL.replace("{P}", "{P_fields}"), r"line 1 is not a HumanEval-infilling problem"),
    (HUMANEVAL.replace("{P}", "{png}"), r"is not HumanEval JSON lines"),
    # the checkpoint
    (CALIBRATION, r"torn.pt' is not a readable checkpoint"),
    (CALIBRATION.replace("{torn}", "{foreign}"), r"foreign.pt' is not a train.py checkpoint"),
    (CALIBRATION.replace("{torn}", "{list}"), r"list.pt' is not a checkpoint of this repo"),
    (CALIBRATION.replace("{torn}", "{nothing}"), r"^checkpoint .* not found"),
    ("--task=maze_lengths --samples={S} --data_dir={a} --ckpt={torn}", r"torn.pt' is not a readable checkpoint"),
]


def refused(argv, message, *roots):
    """evaluate.main(argv) stops with the one-line message, and leaves the files under roots as they were."""
    before = snapshot(*roots)
    with pytest.raises(InputError, match=message) as e:
        evaluate.main(argv)
    assert "\n" not in str(e.value)
    assert snapshot(*roots) == before


@pytest.mark.parametrize("args,message", MISTAKES, ids=[args for args, _ in MISTAKES])
def test_mistakes(mistakes, args, message):
    refused([arg.format(**mistakes) for arg in args.split()], message, mistakes["dir"])


def test_mistakes_checkpoint_of_other_data(mistakes, tiny_flexmdm):
    """A checkpoint trained on one maze, with the data (and samples) of another: refused, naming the difference."""
    ckpt, data_dir = tiny_flexmdm
    where = (mistakes["dir"], os.path.dirname(ckpt), data_dir)
    message = r"is not the data the checkpoint was trained on \(K=3 where the checkpoint.s data had K=2\)"
    refused(["--task=calibration", f"--ckpt={ckpt}", f"--data_dir={mistakes['a']}", "--overwrite=True"], message, *where)
    refused(["--task=maze_lengths", f"--samples={mistakes['S']}", f"--data_dir={mistakes['a']}", f"--ckpt={ckpt}",
             "--trace_samples=4", "--steps=4"], message, *where)


def test_mistake_cli_contract(mistakes):
    """The PNG path mistyped as the samples file, as a user runs it: one line on stderr, status 1, S intact."""
    from conftest import run_python
    before = snapshot(mistakes["dir"])
    proc = run_python([os.path.join(ROOT, "evaluate.py"), "--task=maze", f"--samples={mistakes['S']}",
                       f"--data_dir={mistakes['a']}", f"--png={mistakes['S']}", "--overwrite=True"], cwd=mistakes["dir"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "is also a file this command reads" in proc.stderr
    assert snapshot(mistakes["dir"]) == before
