"""bench.py times train.py's step: it accepts every setting of train.py, builds the same model and computes
the same loss from a config file that sets the options of the step (bitwise), and its train and sample modes
run on tiny shapes; bench.py and scripts/ import the library only, never a script."""
import ast
import glob
import importlib.util
import itertools
import math
import os
import shutil

import numpy as np
import pytest
import torch

import configurator
from conftest import ROOT
from configurator import InputError, configure, pick
from data import get_batch
from interpolant import LossConfig, batch_loss, sample_times
from model import ModelConfig, autocast

MAZE = os.path.join(ROOT, "tests", "compat", "maze")  # a prepared maze: subgoals are fixed tokens
SCRIPTS = ("train", "sample", "evaluate", "bench", "prepare_maze", "prepare_owt", "retrofit_llada")
TINY = ["--device=cpu", "--dtype=float32", "--n_layer=1", "--n_head=2", "--n_embd=16", "--cond_dim=8", "--num_threads=1"]
_count = itertools.count()


def fresh(name):
    """The script name.py as a new module object: its settings at their defaults, shared with no other test."""
    spec = importlib.util.spec_from_file_location(f"{name}_under_test_{next(_count)}", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(module):
    """A script's settings: what configure lets a config file or --key=value set, with their defaults."""
    config = vars(module)
    return {k: v for k, v in config.items() if configurator._is_setting(config, k)}


def test_bench_accepts_every_setting_of_train():
    """Any train config file loads in bench.py: each setting of train.py is one of bench.py's, of the same type."""
    train, bench = settings(fresh("train")), settings(fresh("bench"))
    assert set(train) <= set(bench), sorted(set(train) - set(bench))
    assert {k: type(v) for k, v in train.items()} == {k: type(bench[k]) for k in train}


@pytest.mark.parametrize("packing", [True, False])
def test_bench_builds_trains_model_and_loss(tmp_path, packing):
    """With a config file that sets the options of the step (the length prior at early times, the MLP g head
    and its scale, the fixed-token embedding, the flat weighting), bench.py builds train.py's model (the same
    ModelConfig and initial weights) and its step's loss on a batch is interpolant.batch_loss with
    train.py's LossConfig on the same batch and seed, bitwise, gradients included."""
    config = tmp_path / "step.py"
    config.write_text("prior_weight = 1.0\nprior_time = 0.1\ninsert_head = 'mlp'\ninsert_scale = 2.0\n"
                      "fixed_embedding = True\ntime_weighting = 'flat'\nn_layer = 1\nn_head = 2\nn_embd = 16\n"
                      "cond_dim = 8\ndropout = 0.1\nbatch_size = 8\npack_tokens = 64\ndevice = 'cpu'\n"
                      f"dtype = 'float32'\npacking = {packing}\n"
                      "dataset = 'compat_maze'\nout_dir = 'out/step'\nmax_iters = 10\neval_interval = 5\n")
    bench, train = fresh("bench"), fresh("train")
    configure(vars(bench), [str(config), f"--data={MAZE}"])
    configure(vars(train), [str(config)])
    meta, split, seq_len = bench.bench_data(np.random.default_rng(0))
    assert seq_len == meta["max_len"]  # as train.py's, for a FlexMDM
    raw, net, loss_cfg, _, _ = bench.build(meta, seq_len)
    train_model, *_, model_args = train.build(meta, seq_len, 0, 1, "cpu")
    assert raw.cfg == ModelConfig(**model_args)
    assert (raw.cfg.insert_head, raw.cfg.insert_scale, raw.cfg.fixed_embedding) == ("mlp", 2.0, True)
    assert all(torch.equal(p, q) for p, q in zip(raw.parameters(), train_model.parameters()))
    train_cfg = pick(LossConfig, vars(train))
    assert loss_cfg == train_cfg and (train_cfg.prior_weight, train_cfg.time_weighting) == (1.0, "flat")

    x1, lengths, fixed = get_batch(split, np.arange(8), meta, "flexmdm", seq_len)
    assert fixed.any()  # the fixed-token embedding is in play
    t = sample_times(8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)  # dropout's draws
    loss = bench.forward_backward(net, dict(batch=(x1, lengths, fixed, t), seed=11), loss_cfg, meta, torch.Generator())
    torch.manual_seed(3)
    with autocast("cpu", "float32"):
        expected = batch_loss(train.network_of(train_model), x1, lengths, fixed, train_cfg, meta["mask_id"],
                              meta["pad_id"], torch.Generator().manual_seed(11), t=t)[0]
    expected.backward()
    assert torch.equal(loss, expected)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(raw.parameters(), train_model.parameters()))


@pytest.mark.parametrize("options", [["--prior_weight=1.0", "--prior_time=0.1", "--insert_head=mlp", "--packing=True"],
                                     ["--packing=False", "--fixed_embedding=True"],
                                     ["--model_type=mdm", "--profile=True"]], ids=["packed", "padded", "mdm"])
def test_bench_train_runs_and_reports_finite_numbers(options, capsys):
    bench = fresh("bench")
    configure(vars(bench), [*TINY, "--vocab_size=64", "--max_len=32", "--num_sequences=64", "--batch_size=8",
                            "--pack_tokens=64", "--warmup_steps=1", "--timed_steps=2", *options])
    res = bench.bench_train()
    numbers = {k: v for k, v in res.items() if isinstance(v, float)}
    assert all(math.isfinite(v) for v in numbers.values()), numbers
    assert res["step_ms_median"] > 0 and res["x1_tok_per_s"] > 0 and 0 < res["fill"] <= 1 and 0 < res["mfu"] < 1
    assert res["packing"] == ("--packing=True" in options)
    if "--profile=True" in options:
        assert "interpolant.mdm_interpolant" in capsys.readouterr().out


def test_bench_sample_runs_on_a_random_model_and_on_a_maze_checkpoint(tmp_path, monkeypatch):
    """mode=sample with the sampler's API: a random-init model, and a maze checkpoint sampling through the
    held-out subgoals of its data (data/<dataset> of the working directory), full width."""
    common = [*TINY, "--mode=sample", "--sample_batch=4", "--sample_steps=4", "--sample_rounds=1"]
    bench = fresh("bench")
    configure(vars(bench), [*common, "--vocab_size=64", "--max_len=32", "--sample_options={'temperature': 0.5}"])
    runs = bench.bench_sample()
    shutil.copytree(MAZE, tmp_path / "data" / "compat_maze")
    monkeypatch.chdir(tmp_path)
    bench = fresh("bench")
    configure(vars(bench), [*common, f"--ckpt={os.path.join(ROOT, 'tests', 'compat', 'flex', 'ckpt.pt')}",
                            "--full_width=True"])
    runs += bench.bench_sample()
    assert [r["sampler"] for r in runs] == ["poisson", "adaptive"] * 2
    assert all(r["seq_per_s"] > 0 and r["calls_per_sample_call"] == 4 and r["mean_len"] > 0 for r in runs), runs
    configure(vars(bench), ["--sample_options={'no_such_option': 1}"])
    with pytest.raises(InputError, match="no_such_option"):
        bench.bench_sample()


def test_bench_and_scripts_import_no_script():
    """bench.py and scripts/ import the library only: no script by import, and no importlib or runpy."""
    for path in [os.path.join(ROOT, "bench.py"), *glob.glob(os.path.join(ROOT, "scripts", "*.py"))]:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.split(".")[0] in SCRIPTS + ("importlib", "runpy")]
            assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"
