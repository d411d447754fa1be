"""Mistakes a user makes with train.py, sample.py, prepare_maze.py and prepare_owt.py, one row each: every
one ends in one line naming the problem (an InputError in-process; `error: ...` and exit status 1 as a real
process), and leaves every file as it was: nothing changed, nothing added. The rows run in-process on one
workspace of tiny data and checkpoints (the compatibility fixtures and a tiny text run), so the table is fast;
test_the_cli_contract runs a few of them as real processes. evaluate.py's, bench.py's and retrofit_llada.py's
mistakes are in their own test files."""
import hashlib
import importlib
import json
import os
import shutil
import sys

import pytest
import tiktoken.registry
import torch

from configurator import InputError
from conftest import ROOT, TINY_TRAIN_ARGS, run_python, run_train

WIKI = os.path.join(ROOT, "..", "shared", "data", "wikitext2_raw")
TRAIN = ["--dataset=maze", *TINY_TRAIN_ARGS, "--batch_size=4", "--max_iters=2", "--eval_iters=1", "--out_dir=out/new"]
SAMPLE = ["--out_dir=out/flex", "--num_samples=2", "--steps=4", "--device=cpu", "--dtype=float32", "--progress=False"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/maze (prepared today: meta.json records its files), data/compat_maze and out/flex (the stored
    FlexMDM checkpoint trained on it), data/text and out/text (a text FlexMDM after 2 iterations), notes.txt."""
    root = tmp_path_factory.mktemp("mistakes")
    prepare = importlib.import_module("prepare_maze")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepare.main(["--m=2", "--n=2", "--K=2", "--num_pairs=20", "--out_dir=data/maze"])
        importlib.import_module("prepare_owt").main([f"--source={WIKI}/wiki.valid.raw", "--txt_unit=line", "--max_docs=200",
                                                     "--val_frac=0.2", "--max_len=32", "--num_proc=1", "--out_dir=data/text"])
    shutil.copytree(os.path.join(ROOT, "tests", "compat", "maze"), root / "data" / "compat_maze")
    os.makedirs(root / "out" / "flex")
    shutil.copy(os.path.join(ROOT, "tests", "compat", "flex", "ckpt.pt"), root / "out" / "flex" / "ckpt.pt")
    run_train(["--dataset=text", *TINY_TRAIN_ARGS, "--n_embd=16", "--batch_size=2", "--max_iters=2", "--eval_iters=1",
               "--out_dir=out/text"], root)
    (root / "notes.txt").write_text("my notes\n")
    return root


def snapshot(root):
    """{path: sha256} of every file under root."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def call(script, args):
    """script.main() as `python script.py *args` would run it, from the script's defaults."""
    module = importlib.reload(importlib.import_module(script))
    if script.startswith("prepare_"):
        return module.main(args)
    argv, sys.argv = sys.argv, [f"{script}.py", *args]
    try:
        return module.main()
    finally:
        sys.argv = argv
        torch.set_num_threads(1)


def cut(path, keep):
    """Keep the first `keep` bytes of path (a fraction of its size when keep < 1)."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep) if keep < 1 else keep])


def edit_meta(path, change):
    meta = json.load(open(path))
    change(meta)
    json.dump(meta, open(path, "w"))


def append(path, data):
    open(path, "ab").write(data)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)


# (id, script, args, setup(root) or None: it damages the workspace and may return environment variables to set,
# what the one line must say)
ROWS = [
    # --overwrite replaces only what the script made
    ("prepare-over-a-folder-of-datasets", "prepare_maze", ["--out_dir=data", "--overwrite=True"], None, "holds"),
    ("prepare-owt-over-a-folder", "prepare_owt", [f"--source={WIKI}/wiki.valid.raw", "--txt_unit=line",
                                                  "--out_dir=data", "--overwrite=True"], None, "holds"),
    ("prepare-over-the-working-dir", "prepare_maze", ["--out_dir=.", "--overwrite=True"], None, "working directory"),
    ("prepare-over-a-file", "prepare_maze", ["--out_dir=notes.txt", "--overwrite=True"], None, "a file"),
    ("prepare-over-a-dataset-with-more", "prepare_maze", ["--out_dir=data/maze", "--overwrite=True"],
     lambda r: write(r / "data/maze/mine.txt", "mine"), "holds 'mine.txt'"),
    ("prepare-over-a-dataset", "prepare_maze", ["--out_dir=data/maze"], None, "already exists"),
    ("sample-over-its-checkpoint", "sample", [*SAMPLE, "--samples_file=out/flex/ckpt.pt", "--overwrite=True"], None,
     "also a file this command reads"),
    ("sample-over-notes", "sample", [*SAMPLE, "--samples_file=notes.txt", "--overwrite=True"], None, "not replaced"),
    ("sample-over-samples", "sample", SAMPLE, lambda r: write(r / "out/flex/samples.jsonl", '{"tokens": []}\n'),
     "already exists"),
    # config files hold settings only
    ("config-colon", "train", ["bad.py", *TRAIN], lambda r: write(r / "bad.py", "max_iters: 7\n"), "bad.py:1"),
    ("config-import", "train", ["bad.py", *TRAIN], lambda r: write(r / "bad.py", "n_layer = 1\nimport os\n"), "bad.py:2"),
    ("config-comparison", "train", ["bad.py", *TRAIN], lambda r: write(r / "bad.py", "max_iters == 7\n"), "bad.py:1"),
    ("config-syntax", "train", ["bad.py", *TRAIN], lambda r: write(r / "bad.py", "max_iters = (\n"), "bad.py:1"),
    ("config-unknown-key", "train", ["bad.py", *TRAIN], lambda r: write(r / "bad.py", "\nmax_iter = 7\n"), "bad.py:2"),
    ("config-include-loop", "train", ["bad.py", *TRAIN],
     lambda r: write(r / "bad.py", 'exec(open("bad.py").read())\n'), "includes itself"),
    # data are checked, never trusted
    ("truncated-idx", "train", TRAIN, lambda r: cut(r / "data/maze/train.idx", 0.5), "train.idx"),
    ("bin-cut-in-half", "train", ["--dataset=text", *TRAIN[1:]], lambda r: cut(r / "data/text/train.bin", 0.5), "train.bin"),
    ("empty-meta", "train", TRAIN, lambda r: write(r / "data/maze/meta.json", ""), "not valid JSON"),
    ("truncated-meta", "train", TRAIN, lambda r: cut(r / "data/maze/meta.json", 0.5), "not valid JSON"),
    ("meta-without-mask-id", "train", TRAIN, lambda r: edit_meta(r / "data/maze/meta.json", lambda m: m.pop("mask_id")),
     "lacks 'mask_id'"),
    ("empty-bin", "train", TRAIN, lambda r: cut(r / "data/maze/train.bin", 0), "train.bin"),
    ("odd-sized-bin", "train", ["--dataset=compat_maze", *TRAIN[1:]], lambda r: append(r / "data/compat_maze/train.bin", b"x"),
     "whole number"),
    ("truncated-fix", "train", ["--dataset=compat_maze", *TRAIN[1:]], lambda r: cut(r / "data/compat_maze/train.fix", 0.5),
     "flags"),
    ("idx-of-another-bin", "train", ["--dataset=compat_maze", *TRAIN[1:]],
     lambda r: shutil.copy(r / "data/compat_maze/val.idx", r / "data/compat_maze/train.idx"), "does not index"),
    ("checksum", "train", [*TRAIN, "--verify_data=True"],
     lambda r: open(r / "data/maze/train.bin", "r+b").write(b"\x07\x00"), "SHA-256"),
    ("maze-prepared-again-with-another-K", "sample", SAMPLE,
     lambda r: [shutil.rmtree(r / "data/compat_maze"), call("prepare_maze", ["--m=3", "--n=3", "--K=2", "--num_pairs=60",
                                                                             f"--out_dir={r}/data/compat_maze"])] and None,
     "K=2"),
    ("torn-checkpoint-20k", "sample", SAMPLE, lambda r: cut(r / "out/flex/ckpt.pt", 20_000), "not a readable checkpoint"),
    ("torn-checkpoint-100k", "sample", SAMPLE, lambda r: cut(r / "out/flex/ckpt.pt", 100_000), "not a readable checkpoint"),
    ("torn-checkpoint-resume", "train", ["--dataset=compat_maze", *TRAIN[1:-1], "--out_dir=out/flex", "--init_from=resume"],
     lambda r: cut(r / "out/flex/ckpt.pt", 0.5), "not a readable checkpoint"),
    ("not-a-checkpoint", "sample", SAMPLE, lambda r: torch.save([1, 2], r / "out/flex/ckpt.pt"), "not a checkpoint"),
    ("missing-bpe", "sample", ["--out_dir=out/text", *SAMPLE[1:]],
     lambda r: tiktoken.registry.ENCODINGS.clear() or {"TIKTOKEN_CACHE_DIR": str(r / "nothing")}, "GPT-2 BPE"),
    # resume continues the checkpoint's network
    ("resume-with-other-layers", "train", ["--dataset=compat_maze", "--n_layer=4", "--out_dir=out/flex", "--init_from=resume",
                                           "--device=cpu", "--dtype=float32"], None, "n_layer=4 (the checkpoint has 1)"),
    ("resume-with-other-schedule", "train", ["--alpha_schedule=cosine", "--out_dir=out/flex", "--init_from=resume",
                                             "--device=cpu"], None, "alpha_schedule='cosine'"),
    ("resume-on-other-data", "train", ["--dataset=maze", "--out_dir=out/flex", "--init_from=resume", "--device=cpu"], None,
     "vocab_size"),
    ("scratch-over-a-run", "train", ["--dataset=compat_maze", "--out_dir=out/flex", "--device=cpu"], None, "exists"),
    ("wandb-without-login", "train", [*TRAIN, "--wandb_log=True"], lambda r: {"WANDB_MODE": "online", "WANDB_API_KEY": ""},
     "wandb could not start"),
]

# One row per rule of train.py's checker (and ModelConfig's, LossConfig's) and sample.py's (and SamplerConfig's).
TRAIN_RULES = ["batch_size=0", "gradient_accumulation_steps=0", "pack_tokens=0", "eval_interval=0", "eval_iters=0",
               "log_interval=0", "save_interval=-1", "save_seconds=-1.0", "learning_rate=0.0", "min_lr=-1.0",
               "max_iters=-1", "max_seconds=-1.0", "warmup_iters=-1", "lr_decay_iters=-1", "weight_decay=-0.1",
               "beta1=1.0", "beta2=1.5", "grad_clip=-1.0", "ema_decay=1.0", "seed=-1", "keep_at=(-1,)", "dtype='float16'",
               "budget_clock='gpu'", "init_from='latest'", "device='tpu'", "n_layer=0", "n_head=0", "n_embd=0", "cond_dim=0",
               "dropout=1.0", "insert_scale=0.0", "model_type='ar'", "insert_head='conv'", "schedule_exponent=0.0",
               "alpha_schedule='exp'", "time_weighting='uniform'", "prior_weight=-1.0", "prior_time=-0.5"]
SAMPLE_RULES = ["num_samples=0", "batch_size=-1", "seed=-1", "dtype='float16'", "steps=1", "temperature=-1.0",
                "grid_power=0.0", "early_stop=-1.0", "min_len=-1", "target_len=99", "gamma1=-1.0", "gamma2=0",
                "sampler='greedy'", "unmask='maybe'", "confidence='vibes'", "final='best'"]
MAZE_RULES = ["m=0", "n=0", "K=1", "num_pairs=0", "paths_per_pair=0", "seed=-1", "extra_door_frac=1.5", "detour_slack=-1"]
OWT_RULES = ["num_proc=0", "seed=-1", "max_docs=-1", "max_len=0", "long='keep'", "txt_unit='page'", "val_frac=0.0"]
RELATIONS = [("train", "--n_embd=30 --n_head=4", "n_embd=30"), ("train", "--n_embd=12 --n_head=4", "even"),
             ("train", "--model_type=mdm --packing=True", "packing"), ("train", "--model_type=mdm --prior_weight=1.0",
                                                                       "prior_weight"),
             ("sample", "--min_len=5 --target_len=4", "min_len 5 > target_len 4")]
for key_value in TRAIN_RULES:
    ROWS.append((f"train-{key_value}", "train", [*TRAIN, f"--{key_value}"], None, key_value.split("=")[0]))
for key_value in SAMPLE_RULES:
    ROWS.append((f"sample-{key_value}", "sample", [*SAMPLE, f"--{key_value}"], None, key_value.split("=")[0]))
for key_value in MAZE_RULES:
    ROWS.append((f"prepare-{key_value}", "prepare_maze", [f"--{key_value}", "--out_dir=data/new"], None, key_value.split("=")[0]))
for key_value in OWT_RULES:
    ROWS.append((f"prepare-owt-{key_value}", "prepare_owt", [f"--source={WIKI}/wiki.valid.raw", f"--{key_value}",
                                                            "--out_dir=data/new"], None, key_value.split("=")[0]))
for script, args, needle in RELATIONS:
    ROWS.append((f"{script}-{args}", script, [*(TRAIN if script == "train" else SAMPLE), *args.split()], None, needle))


@pytest.fixture(scope="module")
def untouched(workspace, tmp_path_factory):
    """One copy of the workspace for the rows that damage nothing, and its snapshot."""
    root = tmp_path_factory.mktemp("untouched") / "w"
    shutil.copytree(workspace, root)
    return root, snapshot(root)


@pytest.mark.parametrize("name,script,args,setup,needle", ROWS, ids=[row[0] for row in ROWS])
def test_a_mistake_is_one_line_and_changes_nothing(workspace, untouched, tmp_path, monkeypatch, name, script, args, setup,
                                                   needle):
    root, before = untouched
    if setup:
        root = tmp_path / "w"
        shutil.copytree(workspace, root)
        env = setup(root)
        for key, value in (env if isinstance(env, dict) else {}).items():
            monkeypatch.setenv(key, value)
        before = snapshot(root)
    monkeypatch.chdir(root)
    with pytest.raises(InputError) as error:
        call(script, args)
    message = str(error.value)
    assert needle in message and "\n" not in message, message
    assert snapshot(root) == before, f"{name}: files changed or added"


def test_the_cli_contract(workspace, tmp_path):
    """As real processes: exit status 1, one line on stderr, `error: ...`, no traceback, nothing written."""
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    cut(root / "data/maze/train.idx", 0.5)
    before = snapshot(root)
    for script, args in (("train.py", TRAIN), ("sample.py", [*SAMPLE, "--samples_file=notes.txt", "--overwrite=True"]),
                         ("prepare_maze.py", ["--out_dir=data", "--overwrite=True"])):
        proc = run_python([os.path.join(ROOT, script), *args], root, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert snapshot(root) == before


def test_wandb_logs_offline(workspace, tmp_path, monkeypatch):
    """--wandb_log=True runs offline (WANDB_MODE=offline, a real process): the run trains and wandb keeps its log
    locally."""
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    proc = run_python([os.path.join(ROOT, "train.py"), *TRAIN[:-1], "--out_dir=out/wandb", "--wandb_log=True",
                       "--log_interval=1"], root, timeout=300)
    assert proc.returncode == 0 and "iter 2: loss" in proc.stdout, proc.stdout + proc.stderr
    assert os.listdir(root / "wandb") and torch.load(root / "out/wandb/ckpt.pt", weights_only=False)["iter_num"] == 2
