"""Shared test setup: the repo on sys.path, offline tokenizer cache, one CPU thread, and fixtures
for a tiny maze dataset and for running train.py (in-process, or as a subprocess). The tests never touch
the network: the real data they read (WikiText-2, WebText, GSM8K, ...) are the small public files of
../shared/data beside the repo."""
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Offline: tiktoken reads the GPT-2 BPE from the shared cache, never from the network, and
# the Hugging Face libraries may not download either. A missing cache stops the run here, by name:
# tiktoken would otherwise go and fetch it.
os.environ["TIKTOKEN_CACHE_DIR"] = os.path.abspath(os.path.join(ROOT, "..", "shared", "tiktoken_cache"))
if not os.path.isdir(os.environ["TIKTOKEN_CACHE_DIR"]) or len(os.listdir(os.environ["TIKTOKEN_CACHE_DIR"])) < 2:
    pytest.exit(f"the offline GPT-2 BPE cache {os.environ['TIKTOKEN_CACHE_DIR']} is missing: tests need ../shared beside the repo")
for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[flag] = "1"
# The test machines have 2 cores shared by several people: one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)

# A tiny model for train.py runs: seconds on one CPU thread.
TINY_TRAIN_ARGS = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--cond_dim=16", "--dropout=0.0",
                   "--device=cpu", "--dtype=float32", "--compile=False", "--wandb_log=False"]


def val_losses(stdout):
    """The validation losses that train.py printed, in order."""
    return [float(v) for v in re.findall(r"^iter \d+: val loss ([0-9.]+)", stdout, re.M)]


def random_dit(vocab_size, pad_id, seed=0, **cfg):
    """A 2-layer DiT with every weight random: the zero-initialised adaLN and heads would hide
    layout mistakes and leave loss terms that depend on no parameter."""
    from model import DiT, ModelConfig
    torch.manual_seed(seed)
    model = DiT(ModelConfig(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, cond_dim=16, dropout=0.0,
                            pad_id=pad_id, **cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def off_and_on(option, vocab_size, pad_id, **cfg):
    """The DiT built with a boolean option off and on, torch seeded alike: the same initial weights bitwise
    (asserted: an option's vector must draw no RNG), then both randomised alike, so that the zero-initialised
    adaLN and heads do not hide what the option changes."""
    from model import DiT, ModelConfig
    models = []
    for on in (False, True):
        torch.manual_seed(0)
        models.append(DiT(ModelConfig(vocab_size=vocab_size, max_len=32, n_layer=2, n_head=2, n_embd=32, cond_dim=16,
                                      pad_id=pad_id, **{option: on}, **cfg)))
    off, on = models
    on_params = dict(on.named_parameters())
    with torch.no_grad():
        for name, p in off.named_parameters():
            assert torch.equal(p, on_params[name]), name
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
            on_params[name].copy_(p)
    return off, on


def subprocess_env():
    """Environment for a child python: the repo importable, one thread, offline tokenizer cache."""
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_python(args, cwd, timeout=300):
    """`python *args` in cwd; returns the CompletedProcess (text, stdout and stderr captured)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_python(args, cwd):
    """`python -u *args` in cwd, running on: a Popen with text stdout and stderr piped. It gets a
    session of its own, so that a test can signal its whole process group, as Ctrl-C in a terminal does."""
    return subprocess.Popen([sys.executable, "-u", *args], cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def make_maze(root, name, m=3, n=3, K=2, num_pairs=200):
    """prepare_maze.py's CLI into root/data/<name>; returns the meta dict."""
    import json
    out = os.path.join(str(root), "data", name)
    proc = run_python([os.path.join(ROOT, "prepare_maze.py"), f"--m={m}", f"--n={n}", f"--K={K}",
                       f"--num_pairs={num_pairs}", f"--out_dir={out}"], cwd=str(root), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(out, "meta.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def tiny_maze(tmp_path_factory):
    """A directory D with D/data/tiny: a 7x7 maze (3x3 cells), K=2, 200 start-goal pairs.
    train.py reads data/<dataset> relative to its working directory: run it in D with --dataset=tiny."""
    root = tmp_path_factory.mktemp("maze")
    make_maze(root, "tiny")
    return root


def run_train(args, cwd):
    """train.main() in this process, as `python train.py *args` run in cwd would: the module is
    reloaded first so that every run starts from train.py's defaults. Returns the captured stdout.
    A bad input surfaces as configurator.InputError (pytest.raises it)."""
    import train
    train = importlib.reload(train)
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["train.py", *args]
    try:
        with contextlib.chdir(str(cwd)), contextlib.redirect_stdout(out):
            train.main()
    finally:
        sys.argv = argv
        torch.set_num_threads(1)
    return out.getvalue()
