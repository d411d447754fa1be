"""Failing cleanly, as real processes: Ctrl-C (a real SIGINT to the process group, as a terminal sends it) at
start-up and in the middle of the work ends every script in one line and exit status 130, with nothing
partial left (train.py keeps its resume checkpoint: test_train.py); a write that fails for real (a full disk:
the file-size limit RLIMIT_FSIZE) is one line naming the path, with no temporary file left and the previous
file as it was; under torchrun a refusal is printed once. evaluate.py's, bench.py's and retrofit_llada.py's
Ctrl-C tests are in their own files."""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY_TRAIN_ARGS, make_maze, start_python, subprocess_env

WIKI = os.path.join(ROOT, "..", "shared", "data", "wikitext2_raw")
TRAIN = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_iters=1", "--log_interval=1"]


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def user_lines(stderr):
    """stderr without Python's warnings (a library's deprecations)."""
    return [l for l in stderr.splitlines() if l.strip() and "Warning" not in l and "warnings.warn" not in l]


def interrupt(args, cwd, after):
    """Run `python *args` in cwd, send SIGINT to its process group `after` seconds later; (status, stderr)."""
    proc = start_python(args, cwd)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/tiny (a 7x7 maze) and out/flex: the stored FlexMDM checkpoint with its data/compat_maze."""
    root = tmp_path_factory.mktemp("interrupts")
    make_maze(root, "tiny")
    shutil.copytree(os.path.join(ROOT, "tests", "compat", "maze"), root / "data" / "compat_maze")
    os.makedirs(root / "out" / "flex")
    shutil.copy(os.path.join(ROOT, "tests", "compat", "flex", "ckpt.pt"), root / "out" / "flex" / "ckpt.pt")
    os.makedirs(root / "text")
    for i in range(64):  # WikiText-2 64 times over: still tokenizing 4 s in on a fast idle core (8 took 2 s)
        os.symlink(os.path.join(WIKI, "wiki.test.raw"), root / "text" / f"part{i}.raw")
    return root


# (id, args, what the interrupted line says)
WORK = [
    ("train", ["train.py", *TRAIN, "--max_iters=1000000", "--out_dir=out/new"], "nothing was written"),
    ("sample", ["sample.py", "--out_dir=out/flex", "--num_samples=64", "--batch_size=8", "--steps=4000",
                "--device=cpu", "--dtype=float32"], "no samples were written"),
    ("prepare_maze", ["prepare_maze.py", "--out_dir=data/big"], "the dataset was not written"),
    ("prepare_owt", ["prepare_owt.py", "--source=text", "--txt_unit=line", "--val_frac=0.1", "--num_proc=1",
                     "--out_dir=data/text"], "the dataset was not written"),
]


@pytest.mark.parametrize("when", [0.4, 4.0], ids=["start-up", "mid-work"])
@pytest.mark.parametrize("name,args,says", WORK, ids=[w[0] for w in WORK])
def test_ctrl_c_is_one_line_and_leaves_nothing(workspace, tmp_path, name, args, says, when):
    """At 0.4 s the script is still loading torch; at 4 s it is at work (a train.py run stopped in its loop
    before its first step, sampling, preparing). Either way: one line, status 130, no new file."""
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    before = files(root)
    status, err = interrupt([os.path.join(ROOT, args[0]), *args[1:]], root, when)
    lines = [l for l in user_lines(err) if not l.startswith(("paths (", "tokenizing", "writing", "Generating", "Downloading"))]
    assert status == 130 and len(lines) == 1 and "Traceback" not in err, (lines, err)  # progress bars may come before it
    if when < 1:  # still loading torch (configurator's line), or at its first work (the script's)
        assert lines[0].startswith("interrupted: ") and ("nothing was written" in lines[0] or says in lines[0]), lines
    elif name != "train":  # train.py at work stops in its loop, with its own line (test_train.py)
        assert lines[0].startswith("interrupted: ") and says in lines[0], lines
    if name == "train" and when > 1:
        assert "stopped by SIGINT" in lines[0], lines
    new = [f for f in files(root) if f not in before]
    assert new in ([], ["out/new/ckpt.pt"]), new  # train.py at work may have saved its resume checkpoint


def limited_run(args, cwd, max_bytes):
    """`python *args` in cwd with files limited to max_bytes (RLIMIT_FSIZE): a write past it fails as on a
    full disk (Python ignores SIGXFSZ, so the write returns EFBIG)."""
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


def test_ctrl_c_while_a_script_imports_exits_without_raising(tmp_path):
    """Ctrl-C while a script imports torch ends the process at once (one line, status 130) rather than raising
    KeyboardInterrupt, which torch's import may meet in C++ code that cannot pass it on: the process aborted
    (pybind11's error_already_set, SIGABRT) in about 1 run in 60. A program that only imports the library
    (this test run) keeps its own Ctrl-C."""
    program = (f"import os, signal, sys; sys.modules['__main__'].__file__ = {os.path.join(ROOT, 'x.py')!r}\n"
               "import configurator\n"
               "try:\n    os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(5)\n"
               "except KeyboardInterrupt:\n    print('raised')\n")
    proc = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout, user_lines(proc.stderr)) == (
        130, "", ["interrupted: nothing was written; run the command again"]), proc
    import configurator  # noqa: F401
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_failed_checkpoint_write_is_one_line(workspace, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    train = [os.path.join(ROOT, "train.py"), *TRAIN, "--out_dir=out/run", "--eval_interval=2"]
    assert limited_run([*train, "--max_iters=2"], root, 1 << 30).returncode == 0
    first = (root / "out/run/ckpt.pt").read_bytes()
    proc = limited_run([*train, "--max_iters=4", "--init_from=resume"], root, len(first) // 2)
    lines = user_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: could not write out/run/ckpt.pt (File too large): the file there is as it was")
    assert os.listdir(root / "out/run") == ["ckpt.pt"] and (root / "out/run/ckpt.pt").read_bytes() == first


@pytest.mark.parametrize("args,path", [
    (["sample.py", "--out_dir=out/flex", "--num_samples=8", "--steps=8", "--device=cpu", "--dtype=float32"],
     "out/flex/samples.jsonl"),
    (["prepare_maze.py", "--m=4", "--n=4", "--num_pairs=200", "--out_dir=data/new"], "data/new")],
    ids=["sample", "prepare_maze"])
def test_a_failed_write_is_one_line(workspace, tmp_path, args, path):
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    before = files(root)
    proc = limited_run([os.path.join(ROOT, args[0]), *args[1:]], root, 100)
    lines = [l for l in user_lines(proc.stderr) if not l.startswith("paths (")]  # progress bars may come before it
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: could not write {path} (") and lines[0].endswith("): nothing was written"), lines
    assert files(root) == before and not [d for d in os.listdir(root / "data") if d.startswith(".")]


def test_a_refusal_under_torchrun_is_printed_once(workspace, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(workspace, root)
    (root / "out/flex/samples.jsonl").write_text('{"tokens": []}\n')
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "sample.py"), "--out_dir=out/flex", "--device=cpu"], cwd=root,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    refusals = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("error: ")]
    assert proc.returncode != 0 and len(refusals) == 1 and "already exists" in refusals[0], proc.stderr
    assert (root / "out/flex/samples.jsonl").read_text() == '{"tokens": []}\n'
    assert torch.load(root / "out/flex/ckpt.pt", weights_only=False)["iter_num"] == 300
