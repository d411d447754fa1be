"""train.py end to end on a tiny maze: learning (FlexMDM padded and packed, the MDM baseline),
exact stop-and-resume, 2-process gloo runs, packed == padded loss and gradients, compiled == eager,
clean one-line errors for bad input, and nothing lost: checkpoints on SIGINT/SIGTERM and on a
schedule, atomic writes that survive a kill -9, no scratch run over a checkpoint. Runs train.main()
in-process (conftest.run_train) where it can: importing model.py costs several seconds per fresh
interpreter."""
import os
import re
import signal
import threading
import time

import pytest
import torch

import train
from configurator import InputError
from conftest import (ROOT, TINY_TRAIN_ARGS, make_maze, random_dit, run_python, run_train, start_python,
                      val_losses)
from checkpoint import save_checkpoint
from data import get_batch, load_data
from interpolant import LossConfig, flexmdm_interpolant, flexmdm_loss, sample_times
from model import network

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def train_losses(stdout):
    return [float(v) for v in re.findall(r"^iter \d+: loss ([0-9.]+)", stdout, re.M)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def message_lines(stderr):
    """The lines of stderr meant for the user: Python's warnings (a library's deprecations) left out."""
    return [l for l in stderr.splitlines() if l.strip() and "Warning" not in l and "warnings.warn" not in l]


def wait_for_line(proc, prefix, timeout=120):
    """Read proc's stdout until a line starts with prefix; False if it ends (or timeout passes) first."""
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        return any(line.startswith(prefix) for line in proc.stdout)
    finally:
        watchdog.cancel()


# ---------------------------------------------------------------------------------------------
# Learning

@pytest.mark.parametrize("extra", [["--model_type=flexmdm"], ["--model_type=flexmdm", "--packing=True", "--pack_tokens=48"],
                                   ["--model_type=mdm"]], ids=["flexmdm", "flexmdm-packed", "mdm"])
def test_loss_goes_down(tiny_maze, tmp_path, extra):
    out = run_train(["--dataset=tiny", *TINY_TRAIN_ARGS, *extra, "--batch_size=32", "--max_iters=60",
                     "--eval_interval=60", "--eval_iters=4", "--log_interval=1", "--learning_rate=3e-3",
                     "--warmup_iters=5", "--ema_decay=0.0", f"--out_dir={tmp_path}"], tiny_maze)
    val, tr = val_losses(out), train_losses(out)
    assert len(val) == 2 and len(tr) == 60, out
    assert val[1] < 0.8 * val[0], f"validation loss did not go down: {val}\n{out}"
    first, last = sum(tr[:5]) / 5, sum(tr[-10:]) / 10
    assert last < 0.8 * first, f"training loss did not go down: {tr}"
    ckpt = load(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] == 60 and ckpt["model_args"]["model_type"] == extra[0].split("=")[1]
    assert ckpt["meta"]["vocab_size"] == 7 * 7 + 3 and ckpt["config"]["max_iters"] == 60


# ---------------------------------------------------------------------------------------------
# Stop and resume: bitwise the same as one uninterrupted run

@pytest.mark.parametrize("model_type", ["flexmdm", "mdm", "flexmdm --infill_prob=0.5", "mdm --infill_prob=0.5"])
def test_resume_is_exact(tiny_maze, tmp_path, model_type):
    N = 8
    model_type, *extra = model_type.split()  # with infill_prob: the span-trained rows draw from the data stream too
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, f"--model_type={model_type}", *extra,
              "--dropout=0.1",  # dropout draws from the torch RNG: its state must be restored too
              "--batch_size=16", "--eval_interval=4", "--eval_iters=2", "--log_interval=1", "--learning_rate=3e-3",
              "--warmup_iters=2", f"--lr_decay_iters={N}", "--ema_decay=0.9"]
    one = run_train([*common, f"--max_iters={N}", f"--out_dir={tmp_path / 'one'}"], tiny_maze)
    half = run_train([*common, f"--max_iters={N // 2}", f"--out_dir={tmp_path / 'two'}"], tiny_maze)
    assert load(tmp_path / "two" / "ckpt.pt")["iter_num"] == N // 2
    rest = run_train([*common, f"--max_iters={N}", "--init_from=resume", f"--out_dir={tmp_path / 'two'}"], tiny_maze)
    a, b = load(tmp_path / "one" / "ckpt.pt"), load(tmp_path / "two" / "ckpt.pt")
    assert a["iter_num"] == b["iter_num"] == N
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"parameter {k} differs after resume"
    assert len(a["ema"]) == len(b["ema"]) and all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))
    assert not all(torch.equal(x, y) for x, y in zip(a["ema"], a["model"].values())), "EMA is not the live model"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the training losses logged after the resume are the uninterrupted run's
    assert train_losses(half) + train_losses(rest) == train_losses(one)
    assert val_losses(one)[-1] == val_losses(rest)[-1]
    # a span-trained FlexMDM learns the closed-gap marks (model.py, gap_embedding): the spans reached the loss
    assert ("closed_emb" in a["model"]) == (model_type == "flexmdm" and bool(extra))
    assert "closed_emb" not in a["model"] or a["model"]["closed_emb"].abs().max() > 0


def test_resume_turning_ema_on_starts_it_from_the_resumed_weights(tiny_maze, tmp_path):
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=16", "--eval_iters=1", "--learning_rate=3e-3",
              "--warmup_iters=1", "--max_iters=4", f"--out_dir={tmp_path}"]
    run_train([*common, "--ema_decay=0.0"], tiny_maze)
    assert load(tmp_path / "ckpt.pt")["ema"] is None
    run_train([*common, "--ema_decay=0.9", "--init_from=resume"], tiny_maze)  # no step left: EMA = weights
    ckpt = load(tmp_path / "ckpt.pt")
    assert all(torch.equal(e, p) for e, p in zip(ckpt["ema"], ckpt["model"].values()))


def test_resume_with_other_random_streams_ends_elsewhere(tiny_maze, tmp_path):
    """Guards test_resume_is_exact: the same resume with the checkpoint's RNG states replaced
    (torch and data streams) ends with other weights, so the bitwise equality is a real check."""
    import numpy as np
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--dropout=0.1", "--batch_size=16", "--eval_interval=4",
              "--eval_iters=1", "--learning_rate=3e-3", "--warmup_iters=2", "--lr_decay_iters=8", "--ema_decay=0.9"]
    run_train([*common, "--max_iters=8", f"--out_dir={tmp_path / 'one'}"], tiny_maze)
    run_train([*common, "--max_iters=4", f"--out_dir={tmp_path / 'two'}"], tiny_maze)
    path = tmp_path / "two" / "ckpt.pt"
    ckpt = load(path)
    ckpt["rng"][0]["torch"] = torch.Generator().manual_seed(7).get_state()
    ckpt["rng"][0]["data"] = np.random.default_rng(7).bit_generator.state
    torch.save(ckpt, path)
    run_train([*common, "--max_iters=8", "--init_from=resume", f"--out_dir={tmp_path / 'two'}"], tiny_maze)
    a, b = load(tmp_path / "one" / "ckpt.pt")["model"], load(path)["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Two processes (gloo on CPU)

def test_torchrun_two_processes(tiny_maze, tmp_path):
    # with the length prior and the rows behind their time, as config/owt.py trains
    args = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=16", "--max_iters=4", "--eval_interval=4",
            "--eval_iters=2", "--log_interval=1", "--warmup_iters=1", "--ema_decay=0.9",
            "--gradient_accumulation_steps=2", "--prior_weight=1.0", "--behind_weight=1.0"]
    try:
        proc = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "train.py"), *args, f"--out_dir={tmp_path / 'ddp'}"], cwd=tiny_maze,
                          timeout=120)
    except Exception as e:  # subprocess.TimeoutExpired: a worker hung on exit
        raise AssertionError(f"torchrun did not finish: {e}") from None
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load(tmp_path / "ddp" / "ckpt.pt")
    assert ckpt["iter_num"] == 4 and len(ckpt["rng"]) == 2
    assert "2 process(es)" in proc.stdout
    # Both ranks evaluate the same validation draws; at iteration 0 the EMA is the initial model,
    # which DDP makes the same on every rank: the reported loss is the one-process loss.
    single = run_train([*args, f"--out_dir={tmp_path / 'single'}"], tiny_maze)
    assert val_losses(proc.stdout)[0] == val_losses(single)[0], (
        "iteration-0 validation loss differs between 2 processes and 1: the ranks evaluate different EMA weights\n"
        + proc.stdout)


# ---------------------------------------------------------------------------------------------
# Packed == padded: the same loss and gradients on the same draw

def test_packed_loss_equals_padded_loss(tiny_maze):
    meta, splits = load_data(os.path.join(str(tiny_maze), "data", "tiny"))
    idx = torch.randperm(len(splits["train"][1]) - 1, generator=torch.Generator().manual_seed(0))[:24].numpy()
    x1, lengths, fixed = get_batch(splits["train"], idx, meta, "flexmdm", meta["max_len"])
    assert fixed.any() and (fixed.sum(1) == 2).all()  # K = 2: start and goal are fixed
    t = sample_times(len(idx), generator=torch.Generator().manual_seed(1))
    t[0] = 0.0  # x_t holds only the fixed tokens
    cfg = LossConfig(alpha_schedule="poly", beta_schedule="cosine", schedule_exponent=2.0)
    alpha, beta = cfg.alpha, cfg.beta
    model = random_dit(meta["vocab_size"], meta["pad_id"])

    def loss_and_grads(row_tokens):
        model.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(5)
        terms = flexmdm_loss(network(model, row_tokens), x1, lengths, fixed, t, cfg, meta["mask_id"], meta["pad_id"],
                             generator=g)
        terms[0].backward()
        return torch.stack([terms[0].detach(), *terms[1:]]), [p.grad.clone() for p in model.parameters()]

    fb = flexmdm_interpolant(x1, lengths, t, alpha, beta, meta["mask_id"], meta["pad_id"], fixed=fixed,
                             generator=torch.Generator().manual_seed(5))
    assert fb.masked.any() and (fb.gaps > 0).any() and fb.lengths[0] == 2
    padded, g_pad = loss_and_grads(0)
    packed, g_pack = loss_and_grads(48)
    assert padded[1] > 0 and padded[2] > 0
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_pack, g_pad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().max() > 0 for g in g_pad)
    # a different draw gives a different loss: the equality above compares like with like
    model.zero_grad(set_to_none=True)
    loss2 = flexmdm_loss(network(model), x1, lengths, fixed, t, cfg, meta["mask_id"], meta["pad_id"],
                         generator=torch.Generator().manual_seed(6))[0]
    assert abs(loss2.item() - padded[0].item()) > 1e-4


def test_flat_time_weighting_drops_the_rate_factors(tiny_maze):
    """At one common time t0, the flat-weighted terms are the eq. 7 terms divided by each term's own
    rate factor: w_beta(t0) for unmasking, w_alpha(t0) for insertion."""
    meta, splits = load_data(os.path.join(str(tiny_maze), "data", "tiny"))
    x1, lengths, fixed = get_batch(splits["train"], range(16), meta, "flexmdm", meta["max_len"])
    t = torch.full((16,), 0.6)
    model = random_dit(meta["vocab_size"], meta["pad_id"])
    cfgs = {w: LossConfig(alpha_schedule="poly", beta_schedule="cosine", time_weighting=w) for w in ("elbo", "flat")}
    alpha, beta = cfgs["elbo"].alpha, cfgs["elbo"].beta
    terms = {w: flexmdm_loss(network(model), x1, lengths, fixed, t, cfg, meta["mask_id"], meta["pad_id"],
                             generator=torch.Generator().manual_seed(3)) for w, cfg in cfgs.items()}
    _, unmask, insert = terms["elbo"]
    assert unmask > 0 and insert > 0
    torch.testing.assert_close(terms["flat"][1], unmask / beta.rate(t[:1])[0])
    torch.testing.assert_close(terms["flat"][2], insert / alpha.rate(t[:1])[0])


# ---------------------------------------------------------------------------------------------
# Bad input: a one-line error naming the problem, exit status 1, no traceback

def expect_exit(args, cwd, *needles):
    with pytest.raises(InputError) as e:
        run_train(args, cwd)
    msg = str(e.value)
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_unknown_key_on_the_command_line(tiny_maze):
    expect_exit(["--dataset=tiny", "--no_such_key=3"], tiny_maze, "no_such_key")


def test_unknown_key_in_a_config_file(tiny_maze, tmp_path):
    cfg = tmp_path / "bad_config.py"
    cfg.write_text("max_iters = 10\nlearning_rat = 1e-3\n")
    expect_exit([str(cfg), "--dataset=tiny"], tiny_maze, "learning_rat", "bad_config.py")


@pytest.mark.parametrize("arg,key", [("--max_iters=abc", "max_iters"), ("--learning_rate='x'", "learning_rate"),
                                     ("--packing=1.5", "packing")])
def test_mistyped_value(tiny_maze, arg, key):
    expect_exit(["--dataset=tiny", arg], tiny_maze, key)


# ---------------------------------------------------------------------------------------------
# A wall-clock (or CPU-time) budget instead of an iteration count

def test_time_budget_stops_checkpoints_and_resumes(tiny_maze, tmp_path):
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--max_iters=1000000", "--eval_interval=1000000",
              "--eval_iters=1", "--log_interval=1000000", "--budget_clock=cpu", f"--out_dir={tmp_path}"]
    out = run_train([*common, "--max_seconds=1.5"], tiny_maze)
    first = load(tmp_path / "ckpt.pt")
    assert f"stopped after {first['iter_num']} iterations" in out and first["iter_num"] > 0
    assert 1.5 <= first["train_seconds"] < 10
    run_train([*common, "--max_seconds=3.0", "--init_from=resume"], tiny_maze)
    second = load(tmp_path / "ckpt.pt")
    assert second["iter_num"] > first["iter_num"] and 3.0 <= second["train_seconds"] < 12


def test_time_budget_maps_the_lr_schedule_onto_the_budget(monkeypatch):
    for key, value in dict(max_iters=100, warmup_iters=10, lr_decay_iters=0, learning_rate=1.0, min_lr=0.1,
                           max_seconds=0.0).items():
        monkeypatch.setattr(train, key, value)
    by_iteration = [train.get_lr(it, 0.0) for it in (0, 5, 50, 100)]
    monkeypatch.setattr(train, "max_seconds", 20.0)
    assert [train.get_lr(123, s) for s in (0.0, 1.0, 10.0, 20.0)] == by_iteration


@pytest.mark.parametrize("arg,needle", [("--time_weighting=uniform", "time_weighting"),
                                        ("--model_type=mdm --packing=True", "packing")])
def test_bad_setting_value(tiny_maze, tmp_path, arg, needle):
    expect_exit(["--dataset=tiny", *TINY_TRAIN_ARGS, *arg.split(), f"--out_dir={tmp_path}"], tiny_maze, needle)


def test_missing_config_file(tiny_maze):
    expect_exit(["config/no_such_experiment.py"], tiny_maze, "config/no_such_experiment.py")


def test_missing_dataset_directory(tmp_path):
    expect_exit(["--dataset=nowhere", *TINY_TRAIN_ARGS, f"--out_dir={tmp_path}"], tmp_path,
                os.path.join("data", "nowhere"))


@pytest.mark.parametrize("missing", ["meta.json", "train.idx", "val.bin"])
def test_incomplete_dataset_directory(tiny_maze, tmp_path, missing):
    src = os.path.join(str(tiny_maze), "data", "tiny")
    dst = tmp_path / "data" / "partial"
    dst.mkdir(parents=True)
    for f in os.listdir(src):
        if f != missing:
            os.symlink(os.path.join(src, f), dst / f)
    expect_exit(["--dataset=partial", *TINY_TRAIN_ARGS, "--max_iters=0", f"--out_dir={tmp_path / 'out'}"], tmp_path,
                missing)


def test_resume_without_a_checkpoint(tiny_maze, tmp_path):
    expect_exit(["--dataset=tiny", *TINY_TRAIN_ARGS, "--init_from=resume", f"--out_dir={tmp_path}"], tiny_maze,
                "ckpt.pt")


def test_resume_with_a_vocabulary_that_does_not_match(tiny_maze, tmp_path):
    make_maze(tmp_path, "smaller", m=2, n=2, num_pairs=20)  # 5x5 maze: vocab 28, not 52
    out = tmp_path / "run"
    run_train(["--dataset=smaller", *TINY_TRAIN_ARGS, "--max_iters=1", "--eval_iters=1", f"--out_dir={out}"], tmp_path)
    assert load(out / "ckpt.pt")["meta"]["vocab_size"] == 28
    expect_exit(["--dataset=tiny", *TINY_TRAIN_ARGS, "--init_from=resume", f"--out_dir={out}"], tiny_maze,
                "vocab_size", "52", "28")


def test_bad_input_as_a_real_process(tiny_maze):
    """The CLI itself: exit status 1, one line on stderr naming the key, no traceback."""
    proc = run_python([os.path.join(ROOT, "train.py"), "--dataset=tiny", "--max_iters=abc"], cwd=tiny_maze, timeout=120)
    assert proc.returncode == 1
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and "max_iters" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_cuda_on_a_cpu_build(tiny_maze, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this torch build has a GPU")
    expect_exit(["--dataset=tiny", *TINY_TRAIN_ARGS, "--device=cuda", f"--out_dir={tmp_path}"], tiny_maze,
                "'cuda'", "--device=cpu")
    assert not os.listdir(tmp_path)


def test_help_as_a_real_process(tmp_path):
    proc = run_python([os.path.join(ROOT, "train.py"), "--help"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and not message_lines(proc.stderr), proc.stderr
    about = train.__doc__.strip().split("\n\n")[0]
    assert proc.stdout.startswith(about) and "--init_from=resume" in about
    for key in ("--init_from='scratch'", "--save_interval=0", "--save_seconds=600.0", "--max_seconds=0.0", "--compile=False"):
        assert f"\n  {key}\n" in proc.stdout, key


# ---------------------------------------------------------------------------------------------
# Nothing a user has is lost: no scratch run over a checkpoint, checkpoints on a schedule and on
# SIGINT/SIGTERM, writes that a kill -9 cannot tear

def test_scratch_refuses_an_out_dir_with_a_checkpoint(tiny_maze, tmp_path):
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_iters=1", f"--out_dir={tmp_path}"]
    run_train([*common, "--max_iters=2"], tiny_maze)
    path = tmp_path / "ckpt.pt"
    before = path.read_bytes()
    expect_exit([*common, "--max_iters=4"], tiny_maze, f"{path} exists", "--init_from=resume", "another --out_dir")
    assert path.read_bytes() == before
    out = run_train([*common, "--max_iters=4", "--init_from=resume"], tiny_maze)
    assert f"resuming from {path}: iteration 2, " in out and load(path)["iter_num"] == 4


def test_save_interval_and_save_seconds(tiny_maze, tmp_path, monkeypatch):
    """Checkpoints besides those of eval_interval: every save_interval iterations, and once save_seconds
    of wall time have passed since the last one (each torch.save is recorded: iteration, start time)."""
    saves, real_save = [], torch.save

    def recording_save(state, f):
        saves.append((state["iter_num"], time.monotonic()))
        real_save(state, f)
    monkeypatch.setattr(torch, "save", recording_save)
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_interval=1000000", "--eval_iters=1"]
    run_train([*common, "--max_iters=7", "--save_interval=3", "--save_seconds=0", f"--out_dir={tmp_path / 'a'}"], tiny_maze)
    assert [it for it, _ in saves] == [3, 6, 7]  # none at iteration 0: nothing has trained yet
    saves.clear()
    run_train([*common, "--max_iters=1000000", "--max_seconds=0.6", "--budget_clock=cpu", "--save_seconds=0.1",
               f"--out_dir={tmp_path / 'b'}"], tiny_maze)
    iters, starts = zip(*saves)
    # 0.6 CPU-s of steps take 0.6 wall-s or more (the cores are shared): at least 5 saves in all
    assert len(saves) >= 5 and iters[0] > 0 and list(iters) == sorted(set(iters)), saves
    assert all(b - a >= 0.1 for a, b in zip(starts, starts[1:-1])), saves  # the last one ends the run


def test_keep_at_keeps_copies_along_the_run(tiny_maze, tmp_path):
    """keep_at: a copy of the checkpoint at each budget point passed (iterations here), besides ckpt.pt;
    a resumed run keeps the points it has yet to pass, and only those."""
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_interval=1000000", "--eval_iters=1",
              "--keep_at=(2, 5)", f"--out_dir={tmp_path}"]
    run_train([*common, "--max_iters=3"], tiny_maze)
    assert load(tmp_path / "ckpt_2.pt")["iter_num"] == 2 and not (tmp_path / "ckpt_5.pt").exists()
    first = (tmp_path / "ckpt_2.pt").stat().st_mtime_ns
    run_train([*common, "--max_iters=6", "--init_from=resume"], tiny_maze)
    assert load(tmp_path / "ckpt_5.pt")["iter_num"] == 5 and load(tmp_path / "ckpt.pt")["iter_num"] == 6
    assert (tmp_path / "ckpt_2.pt").stat().st_mtime_ns == first
    a, b = load(tmp_path / "ckpt_5.pt")["model"], load(tmp_path / "ckpt.pt")["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_synced_to_disk_around_the_rename(tmp_path, monkeypatch):
    """The file's data reach the disk before the rename, and the directory entry after it: else a
    power cut could leave ckpt.pt empty or pointing at nothing."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the previous checkpoint")
    save_checkpoint(str(path), {"iter_num": 5})
    new, directory = os.stat(path).st_ino, os.stat(tmp_path).st_ino
    assert events == [("fsync", new), ("replace", new), ("fsync", directory)]
    assert load(path) == {"iter_num": 5} and os.listdir(tmp_path) == ["ckpt.pt"]


# Runs train.py with torch.save replaced: the checkpoint of iteration STOP_AT gets half its bytes
# written and flushed to the file torch.save was given, then a line on stdout, then a long sleep.
TEAR_A_CHECKPOINT = """
import io, os, runpy, sys, time
import torch
real_save = torch.save

def save(state, f, *args, **kwargs):
    if state["iter_num"] != STOP_AT:
        return real_save(state, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(state, buffer)
    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out.flush()
    os.fsync(out.fileno())
    print("half written", flush=True)
    time.sleep(600)

torch.save = save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_kill_9_while_writing_a_checkpoint_keeps_the_previous_one(tiny_maze, tmp_path):
    script = tmp_path / "tear.py"
    script.write_text(TEAR_A_CHECKPOINT.replace("STOP_AT", "4"))
    out = tmp_path / "run"
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_interval=1000000", "--eval_iters=1",
              "--save_interval=2", f"--out_dir={out}"]
    proc = start_python([str(script), os.path.join(ROOT, "train.py"), *common, "--max_iters=100"], tiny_maze)
    try:
        assert wait_for_line(proc, "half written"), proc.communicate()
    finally:
        proc.kill()  # SIGKILL, in the middle of the checkpoint of iteration 4
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(Exception):
        load(out / "ckpt.pt.tmp")  # the torn write
    assert load(out / "ckpt.pt")["iter_num"] == 2
    log = run_train([*common, "--max_iters=6", "--init_from=resume"], tiny_maze)
    assert f"resuming from {out / 'ckpt.pt'}: iteration 2, " in log and load(out / "ckpt.pt")["iter_num"] == 6


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_checkpoints_and_says_how_to_resume(tiny_maze, tmp_path, sig):
    out = tmp_path / "run"
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--eval_interval=1000000", "--eval_iters=1",
              "--log_interval=1", f"--out_dir={out}"]
    proc = start_python([os.path.join(ROOT, "train.py"), *common, "--max_iters=1000000"], tiny_maze)
    try:
        assert wait_for_line(proc, "iter 3: loss"), proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr  # the shell's convention: a following `&&` does not run
    lines = message_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    match = re.fullmatch(rf"stopped by {sig.name} at iteration (\d+), saved in {out / 'ckpt.pt'}; to continue, run the "
                         rf"same command with --init_from=resume --out_dir={out}", lines[0])
    assert match, lines[0]
    stopped_at = int(match[1])
    assert stopped_at >= 3 and load(out / "ckpt.pt")["iter_num"] == stopped_at
    log = run_train([*common, f"--max_iters={stopped_at + 2}", "--init_from=resume"], tiny_maze)
    assert f"resuming from {out / 'ckpt.pt'}: iteration {stopped_at}, " in log
    assert load(out / "ckpt.pt")["iter_num"] == stopped_at + 2


# ---------------------------------------------------------------------------------------------
# Two processes: a time budget and Ctrl-C stop every rank at the same iteration

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(ROOT, "train.py")]
DDP_ARGS = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=8", "--gradient_accumulation_steps=2",
            "--eval_interval=1000000", "--eval_iters=1", "--max_iters=1000000"]


def test_torchrun_time_budget(tiny_maze, tmp_path):
    """max_seconds under DDP: rank 0's clock stops both ranks at one iteration. (It used to crash at
    the second iteration: the broadcast tensor took the name of the clock function.)"""
    proc = run_python([*TORCHRUN, *DDP_ARGS, "--max_seconds=1.0", "--budget_clock=cpu", "--log_interval=1000000",
                       f"--out_dir={tmp_path}"], cwd=tiny_maze, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] >= 2 and len(ckpt["rng"]) == 2 and 1.0 <= ckpt["train_seconds"] < 10
    assert f"stopped after {ckpt['iter_num']} iterations" in proc.stdout


# Runs a script (argv[1:]) and prints the native threads still alive when the interpreter exits.
THREADS_AT_EXIT = """
import atexit, os, runpy, sys
def report():  # one write, so that the two ranks' lines do not interleave
    names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    os.write(1, f"threads at exit: {names}\\n".encode())
atexit.register(report)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the threads from Linux's /proc")
def test_torchrun_leaves_no_process_group_alive_at_exit(tiny_maze, tmp_path):
    """The cause of a finished torchrun run aborting at exit now and then (SIGABRT, "terminate called without an
    active exception", under CPU load): the gloo process group outlived destroy_process_group, its threads torn
    down at interpreter exit (configurator.init_distributed has the story). Deterministic: no gloo thread may be
    alive when either rank's interpreter exits."""
    wrapper = tmp_path / "threads_at_exit.py"
    wrapper.write_text(THREADS_AT_EXIT)
    proc = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper), *TORCHRUN[4:],
                       *DDP_ARGS, "--max_iters=3", f"--out_dir={tmp_path / 'out'}"], cwd=tiny_maze, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("threads at exit:") == 2 and "gloo" not in proc.stdout, proc.stdout


def torchrun_worker(agent_pid, rank):
    """The pid of the torchrun agent's worker process of that rank (read from Linux's /proc)."""
    tasks = os.listdir(f"/proc/{agent_pid}/task")
    for pid in (int(c) for t in tasks for c in open(f"/proc/{agent_pid}/task/{t}/children").read().split()):
        if f"RANK={rank}".encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
            return pid
    raise AssertionError(f"no worker of rank {rank} under torchrun {agent_pid}")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-rank-1"])
def test_torchrun_stop_signal(tiny_maze, tmp_path, how):
    """ctrl-c: SIGINT to the whole process group, as a terminal sends it; torchrun forwards it to the
    workers, which had it already. sigterm-rank-1: to rank 1 alone, so only the shared stop flag can
    stop rank 0. Either way both ranks stop at one iteration and write one checkpoint together, and
    rank 0 says so."""
    proc = start_python([*TORCHRUN, *DDP_ARGS, "--max_seconds=1000.0", "--log_interval=1", f"--out_dir={tmp_path}"],
                        tiny_maze)
    try:
        assert wait_for_line(proc, "iter 3: loss"), proc.communicate()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(torchrun_worker(proc.pid, 1), signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [l for l in message_lines(stderr) if l.startswith("stopped by")]
    assert len(lines) == 1 and "KeyboardInterrupt" not in stderr and "error:" not in stderr, stderr
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    stopped_at = int(re.match(rf"stopped by {name} at iteration (\d+), ", lines[0])[1])
    ckpt = load(tmp_path / "ckpt.pt")
    assert stopped_at >= 3 and ckpt["iter_num"] == stopped_at and len(ckpt["rng"]) == 2


# ---------------------------------------------------------------------------------------------
# --compile=True (torch.compile; inductor's C++ backend on CPU) trains like eager

# Measured (this test, 2-core x86 CPU, torch 2.13): the printed losses agree to all 4 decimals and the
# weights after 4 steps to 3.0e-6 at most, padded and packed (inductor fuses and reorders float ops).
# Tolerances: losses one unit of the last printed digit either side of a rounding; weights 30x the
# measured difference, for other CPUs' vector widths.
COMPILE_LOSS_ATOL = 2e-4
COMPILE_WEIGHT_ATOL = 1e-4

def test_compile_gives_the_eager_losses(tiny_maze, tmp_path):
    """Padded and packed (whose row count changes from batch to batch: a recompile with dynamic
    shapes). Compiling is slow on CPU (inductor builds each kernel with gcc): a 1-layer model and
    4 steps keep it to about a minute."""
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--n_layer=1", "--batch_size=16", "--max_iters=4", "--eval_iters=1",
              "--log_interval=1", "--learning_rate=3e-3", "--warmup_iters=2", "--ema_decay=0.5"]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    try:
        for layout in (["--packing=False"], ["--packing=True", "--pack_tokens=48"]):
            logs, ckpts = {}, {}
            for compiled in (False, True):
                out = tmp_path / f"{layout[0]}-{compiled}"
                logs[compiled] = run_train([*common, *layout, f"--compile={compiled}", f"--out_dir={out}"], tiny_maze)
                ckpts[compiled] = load(out / "ckpt.pt")
            for losses in (train_losses, val_losses):
                eager, compiled = losses(logs[False]), losses(logs[True])
                assert len(eager) >= 2 and eager == pytest.approx(compiled, abs=COMPILE_LOSS_ATOL), (eager, compiled)
            for k, p in ckpts[False]["model"].items():
                torch.testing.assert_close(ckpts[True]["model"][k], p, atol=COMPILE_WEIGHT_ATOL, rtol=0, msg=k)
    finally:
        torch._dynamo.reset()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # dynamo did compile


TRAIN_CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "config")) if not f.startswith("llada"))


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_every_config_gives_a_loss_train_accepts(name, monkeypatch):
    """Each of train.py's config files, read as train.py reads it, gives settings LossConfig accepts: an MDM
    config that includes a FlexMDM one resets the FlexMDM-only settings (prior_weight, behind_weight)."""
    from configurator import configure, pick
    monkeypatch.chdir(ROOT)  # a config file may include another by its path from the repo root
    settings = {k: v for k, v in vars(train).items() if not k.startswith("_")}
    configure(settings, [os.path.join("config", name)])
    loss = pick(LossConfig, settings)
    assert loss.model_type == settings["model_type"] and (loss.model_type == "flexmdm" or
                                                          loss.prior_weight == loss.behind_weight == 0)
