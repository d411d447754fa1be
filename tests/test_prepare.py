"""prepare_maze.py and prepare_owt.py as scripts: the configurator settings, atomic output
directories (a failed or interrupted run leaves nothing, an existing out_dir is refused unless
--overwrite=True), the length histogram's bins, the tokenizer's offline error."""
import json
import os

import numpy as np
import pytest

import prepare_maze
import prepare_owt
from configurator import InputError
from conftest import ROOT, run_python

WIKI = os.path.join(ROOT, "..", "shared", "data", "wikitext2_raw")
MAZE_ARGS = ["--m=3", "--n=2", "--K=3", "--num_pairs=30", "--paths_per_pair=3", "--seed=5", "--extra_door_frac=0.25",
             "--detour_slack=4"]


def owt_args(tmp_path, out, val_source):
    return [f"--source={os.path.join(WIKI, 'wiki.test.raw')}", "--txt_unit=line", f"--val_source={val_source}",
            "--max_len=16", "--long=drop", f"--out_dir={out}", "--num_proc=1", "--max_docs=40",
            f"--cache_dir={tmp_path / 'hf_cache'}"]


def test_maze_settings_reach_build_and_defaults_stay(tmp_path):
    meta = prepare_maze.main(MAZE_ARGS + [f"--out_dir={tmp_path / 'm'}"])
    assert {k: meta[k] for k in ("m", "n", "K", "paths_per_pair", "seed", "extra_door_frac", "detour_slack")} == dict(
        m=3, n=2, K=3, paths_per_pair=3, seed=5, extra_door_frac=0.25, detour_slack=4)
    assert meta["grid"] == [7, 5] and sum(meta["num_split_pairs"].values()) == 30
    assert (np.array(meta["maze"]) == prepare_maze.division_maze(3, 2, seed=5, extra_door_frac=0.25)).all()
    assert (prepare_maze.m, prepare_maze.K, prepare_maze.out_dir) == (20, 2, "")  # a run leaves the defaults alone
    with pytest.raises(InputError, match="unknown config key 'num_pair'"):  # argparse took abbreviations
        prepare_maze.main(["--num_pair=30"])
    with pytest.raises(InputError, match="K must be at least 2"):
        prepare_maze.main(["--K=1", f"--out_dir={tmp_path / 'k1'}"])


def test_owt_settings_reach_build(tmp_path):
    val = os.path.join(WIKI, "wiki.valid.raw")
    meta = prepare_owt.main(owt_args(tmp_path, tmp_path / "w", val))
    assert (meta["max_len"], meta["long"], meta["txt_unit"], meta["val_source"], meta["max_docs"]) == (16, "drop", "line", val, 40)
    assert meta["num_documents"] == {"train": 40, "val": 40} and meta["num_chunked_paragraphs"]["train"] > 0
    assert meta["lengths"]["train"]["max"] <= 16 and meta["revision"] is None
    assert prepare_owt.val_source == "" and prepare_owt.max_len == 1024


def test_help_and_existing_out_dir_cli(tmp_path):
    proc = run_python([os.path.join(ROOT, "prepare_maze.py"), "--help"], tmp_path)
    assert proc.returncode == 0 and "--overwrite=False" in proc.stdout and "--K=2" in proc.stdout
    (tmp_path / "data" / "maze").mkdir(parents=True)
    proc = run_python([os.path.join(ROOT, "prepare_maze.py"), *MAZE_ARGS, "--out_dir=data/maze"], tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "error: data/maze already exists: give --overwrite=True to replace it, or another --out_dir\n"


def test_maze_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C after the train files were written: neither out_dir nor the temporary directory stays."""
    write_split = prepare_maze.write_split

    def interrupt_at_val(out_dir, split, tokens, fixes, vocab_size):
        write_split(out_dir, split, tokens, fixes, vocab_size)
        assert os.listdir(out_dir)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_maze, "write_split", interrupt_at_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_maze.main(MAZE_ARGS + [f"--out_dir={tmp_path / 'data' / 'maze'}"])
    assert os.listdir(tmp_path / "data") == []


def test_owt_failed_run_leaves_nothing(tmp_path):
    """An empty val split is found after train.bin is written: the run leaves no files behind."""
    (tmp_path / "blank.txt").write_text("\n \n\n")
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError, match="the val split is empty"):
        prepare_owt.main(owt_args(tmp_path, tmp_path / "data" / "w", tmp_path / "blank.txt"))
    assert os.listdir(tmp_path / "data") == []


def test_existing_out_dir_refused_then_overwritten(tmp_path):
    out = tmp_path / "maze"
    prepare_maze.main(MAZE_ARGS + ["--seed=3", f"--out_dir={out}"])
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(InputError, match=f"{out} already exists: give --overwrite=True"):
        prepare_maze.main(MAZE_ARGS + [f"--out_dir={out}"])
    with pytest.raises(InputError, match="no path"):  # a failing overwrite keeps the old directory
        prepare_maze.main(MAZE_ARGS + ["--K=40", f"--out_dir={out}", "--overwrite=True"])
    assert os.listdir(tmp_path) == ["maze"] and {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    meta = prepare_maze.main(MAZE_ARGS + [f"--out_dir={out}", "--overwrite=True"])
    assert os.listdir(tmp_path) == ["maze"]
    assert sorted(os.listdir(out)) == sorted(["meta.json"] + [f"{s}.{e}" for s in ("train", "val") for e in ("bin", "idx", "fix")])
    with open(out / "meta.json") as f:
        assert json.load(f) == meta
    with pytest.raises(InputError, match="already exists"):
        prepare_owt.main(owt_args(tmp_path, out, os.path.join(WIKI, "wiki.valid.raw")))


@pytest.mark.parametrize("max_len", [1, 2, 4, 15, 16, 17, 100, 1024])
def test_histogram_bins_partition_lengths(max_len):
    counts = np.random.default_rng(max_len).integers(0, 50, size=max_len + 1)
    binned = prepare_owt.histogram_bins(counts)
    assert len(binned) == min(16, max_len)
    assert [first for first, _, _ in binned] == [1] + [last + 1 for _, last, _ in binned[:-1]]
    assert binned[-1][1] == max_len and all(first <= last for first, last, _ in binned)
    assert [c for _, _, c in binned] == [counts[first:last + 1].sum() for first, last, _ in binned]
    widths = [last - first + 1 for first, last, _ in binned]
    assert max(widths) - min(widths) <= 1


def test_histogram_printed_at_max_len_4(capsys):
    prepare_owt.print_histogram(np.array([0, 6, 20, 31, 41]))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["1-1", "6"], ["2-2", "20"], ["3-3", "31"], ["4-4", "41"]]
    assert lines[3].endswith("#" * 50)


def test_gpt2_offline_error_names_the_cache(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nowhere")
    with pytest.raises(InputError) as e:
        prepare_owt.gpt2()
    assert "\n" not in str(e.value) and "ConnectionError" in str(e.value)
    assert "TIKTOKEN_CACHE_DIR=/nowhere" in str(e.value) and "set TIKTOKEN_CACHE_DIR to a tiktoken cache" in str(e.value)
