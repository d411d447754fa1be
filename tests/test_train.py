"""train.py end to end on a tiny maze: learning (FlexMDM padded and packed, the MDM baseline),
exact stop-and-resume, a 2-process gloo run, packed == padded loss and gradients, and clean
one-line errors for bad input. Runs train.main() in-process (conftest.run_train) where it can:
importing model.py costs several seconds per fresh interpreter."""
import os
import re

import pytest
import torch

import train
from configurator import InputError
from conftest import ROOT, TINY_TRAIN_ARGS, make_maze, random_dit, run_python, run_train, val_losses
from interpolant import Schedule, flexmdm_interpolant, sample_times

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def train_losses(stdout):
    return [float(v) for v in re.findall(r"^iter \d+: loss ([0-9.]+)", stdout, re.M)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


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

@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_resume_is_exact(tiny_maze, tmp_path, model_type):
    N = 8
    common = ["--dataset=tiny", *TINY_TRAIN_ARGS, f"--model_type={model_type}",
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
    args = ["--dataset=tiny", *TINY_TRAIN_ARGS, "--batch_size=16", "--max_iters=4", "--eval_interval=4",
            "--eval_iters=2", "--log_interval=1", "--warmup_iters=1", "--ema_decay=0.9",
            "--gradient_accumulation_steps=2"]
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
    meta, splits = train.load_data(os.path.join(str(tiny_maze), "data", "tiny"))
    idx = torch.randperm(len(splits["train"][1]) - 1, generator=torch.Generator().manual_seed(0))[:24].numpy()
    x1, lengths, fixed = train.get_batch(splits["train"], idx, meta, "flexmdm", meta["max_len"])
    assert fixed.any() and (fixed.sum(1) == 2).all()  # K = 2: start and goal are fixed
    t = sample_times(len(idx), generator=torch.Generator().manual_seed(1))
    t[0] = 0.0  # x_t holds only the fixed tokens
    alpha, beta = Schedule("poly", 2.0), Schedule("cosine")
    model = random_dit(meta["vocab_size"], meta["pad_id"])

    def loss_and_grads(row_tokens):
        model.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(5)
        terms = train.flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, meta["mask_id"], meta["pad_id"],
                                   row_tokens, generator=g)
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
    loss2 = train.flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, meta["mask_id"], meta["pad_id"], 0,
                               generator=torch.Generator().manual_seed(6))[0]
    assert abs(loss2.item() - padded[0].item()) > 1e-4


def test_flat_time_weighting_drops_the_rate_factors(tiny_maze):
    """At one common time t0, the flat-weighted terms are the eq. 7 terms divided by each term's own
    rate factor: w_beta(t0) for unmasking, w_alpha(t0) for insertion."""
    meta, splits = train.load_data(os.path.join(str(tiny_maze), "data", "tiny"))
    x1, lengths, fixed = train.get_batch(splits["train"], range(16), meta, "flexmdm", meta["max_len"])
    t = torch.full((16,), 0.6)
    alpha, beta = Schedule("poly", 2.0), Schedule("cosine")
    model = random_dit(meta["vocab_size"], meta["pad_id"])
    terms = {w: train.flexmdm_loss(model, x1, lengths, fixed, t, alpha, beta, meta["mask_id"], meta["pad_id"],
                                   generator=torch.Generator().manual_seed(3), weighting=w) for w in ("elbo", "flat")}
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
    run_train(["--dataset=smaller", *TINY_TRAIN_ARGS, "--max_iters=0", "--eval_iters=1", f"--out_dir={out}"], tmp_path)
    assert load(out / "ckpt.pt")["meta"]["vocab_size"] == 28
    expect_exit(["--dataset=tiny", *TINY_TRAIN_ARGS, "--init_from=resume", f"--out_dir={out}"], tiny_maze,
                "vocab_size", "52", "28")


def test_bad_input_as_a_real_process(tiny_maze):
    """The CLI itself: exit status 1, one line on stderr naming the key, no traceback."""
    proc = run_python([os.path.join(ROOT, "train.py"), "--dataset=tiny", "--max_iters=abc"], cwd=tiny_maze, timeout=120)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "Warning" not in l and "warnings.warn" not in l]
    assert len(lines) == 1 and "max_iters" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
