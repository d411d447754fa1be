"""bench.py times train.py's step: it accepts every setting of train.py, builds the same model and computes
the same loss from a config file that sets the options of the step (bitwise), and its train and sample modes
run on tiny shapes; bench.py and scripts/ import the library only, never a script. A mistake in a setting or an input
of bench.py or of a script with settings is one line before any work, leaving every file as it was; Ctrl-C is one
line; an existing output is refused unless --overwrite=True."""
import ast
import glob
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch

import configurator
from conftest import ROOT, run_python, start_python
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
    train_model, *_, model_args = train.build(meta, seq_len, 0, "cpu")
    assert raw.cfg == ModelConfig(**model_args)
    assert (raw.cfg.insert_head, raw.cfg.insert_scale, raw.cfg.fixed_embedding) == ("mlp", 2.0, True)
    assert all(torch.equal(p, q) for p, q in zip(raw.parameters(), train_model.parameters()))
    train_cfg = pick(LossConfig, vars(train))
    assert loss_cfg == train_cfg and (train_cfg.prior_weight, train_cfg.time_weighting) == (1.0, "flat")

    x1, lengths, fixed = get_batch(split, np.arange(8), meta, "flexmdm", seq_len)
    assert fixed.any()  # the fixed-token embedding is in play
    t = sample_times(8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)  # dropout's draws
    step = dict(batch=(x1, lengths, fixed, t), behind=None, span=None, seed=11)
    loss = bench.forward_backward(net, step, loss_cfg, meta, torch.Generator())
    torch.manual_seed(3)
    with autocast("cpu", "float32"):
        expected = batch_loss(train.network_of(train_model), x1, lengths, fixed, train_cfg, meta["mask_id"],
                              meta["pad_id"], torch.Generator().manual_seed(11), t=t)[0]
    expected.backward()
    assert torch.equal(loss, expected)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(raw.parameters(), train_model.parameters()))


def test_bench_times_the_rows_behind_their_time_and_the_spans(tmp_path):
    """behind_weight and infill_prob change what a step computes: bench.py's drawn steps carry the rows behind
    their time (drawn at s < t, their sequences length-tilted) and the span-trained rows' fixed flags, and its
    timed loss is batch_loss on exactly those rows with train.py's LossConfig."""
    config = tmp_path / "step.py"
    config.write_text("behind_weight = 1.0\nbehind_lag = 0.3\ninfill_prob = 0.5\nn_layer = 1\nn_head = 2\nn_embd = 16\n"
                      "cond_dim = 8\ndropout = 0.0\nbatch_size = 8\npacking = True\npack_tokens = 64\ndevice = 'cpu'\n"
                      "dtype = 'float32'\n")
    bench, train = fresh("bench"), fresh("train")
    configure(vars(bench), [str(config), f"--data={MAZE}"])
    configure(vars(train), [str(config)])
    meta, split, seq_len = bench.bench_data(np.random.default_rng(0))
    raw, net, loss_cfg, _, _ = bench.build(meta, seq_len)
    step = bench.draw_steps(split, meta, seq_len, np.random.default_rng(1), raw, loss_cfg)[0]
    x1, lengths, fixed, t = step["batch"]
    *rows, t_behind, s_behind = step["behind"]
    assert ((s_behind >= 0.3 * t_behind) & (s_behind <= t_behind)).all() and len(rows[0]) == 8
    data_fixed = get_batch(split, np.arange(len(split[1]) - 1), meta, "flexmdm", seq_len)[2].sum(1).max()
    assert (fixed.sum(1) > data_fixed).any()  # spans: more fixed tokens than the data's subgoals
    train_cfg = pick(LossConfig, vars(train))
    assert loss_cfg == train_cfg and (train_cfg.behind_weight, train_cfg.behind_lag) == (1.0, 0.3)
    loss = bench.forward_backward(net, step, loss_cfg, meta, torch.Generator())
    expected = batch_loss(net, x1, lengths, fixed, train_cfg, meta["mask_id"], meta["pad_id"],
                          torch.Generator().manual_seed(step["seed"]), t=t, behind=step["behind"], span=step["span"])[0]
    assert torch.equal(loss.detach(), expected.detach())
    no_behind = batch_loss(net, x1, lengths, fixed, train_cfg, meta["mask_id"], meta["pad_id"],
                           torch.Generator().manual_seed(step["seed"]), t=t)[0]
    assert not torch.equal(loss.detach(), no_behind.detach())  # the behind rows are in the timed loss


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


# ----------------------------------------------------------------------------------------------
# Mistakes: one line, refused before any work, nothing changed or added on disk

def files_under(root):
    """{relative path: bytes} of every file under root."""
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


def refused(module, argv, tmp_path, monkeypatch):
    """module.main() on argv in tmp_path: the InputError's message, after checking that every file under
    tmp_path is byte-identical and that nothing was added."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [f"{module.__name__}.py", *argv])
    before = files_under(tmp_path)
    with pytest.raises(InputError) as e:
        module.main()
    assert files_under(tmp_path) == before
    message = str(e.value)
    assert "\n" not in message
    return message


def inputs(tmp):
    """The files the mistakes read, in tmp: a results file of ours, a text file, a config file, the maze
    (and a copy with a cut train.idx), a checkpoint, one cut to 20 KB, and three foreign ones."""
    (tmp / "res.json").write_text('{"mode": "train"}')
    (tmp / "notes.txt").write_text("my notes\n")
    (tmp / "cfg.py").write_text("batch_size = 8\n")
    shutil.copytree(MAZE, tmp / "maze")
    shutil.copytree(MAZE, tmp / "cut")
    idx = (tmp / "cut" / "train.idx").read_bytes()
    (tmp / "cut" / "train.idx").write_bytes(idx[:-8])
    shutil.copy(os.path.join(ROOT, "tests", "compat", "flex", "ckpt.pt"), tmp / "ckpt.pt")
    (tmp / "torn.pt").write_bytes((tmp / "ckpt.pt").read_bytes()[:20_000])
    ckpt = torch.load(tmp / "ckpt.pt", weights_only=False)
    torch.save([1, 2], tmp / "list.pt")
    torch.save({"trainable": {}}, tmp / "llada.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "meta"}, tmp / "nometa.pt")


S = ["--mode=sample"]
BENCH_MISTAKES = [  # (id, arguments after TINY, the message; a re.Pattern where it quotes another library's words)
    ("mode", ["--mode=eval"], "mode='eval' is not one of train, sample"),
    ("dtype", ["--dtype=float16"], "dtype='float16' is not one of float32, bfloat16"),
    ("head_at", [*S, "--head_at=all"], "head_at='all' is not one of read, masks"),
    ("device", ["--device=tpu"], "device 'tpu' is not one of cpu, cuda, cuda:N, mps"),
    ("batch_size", ["--batch_size=0"], "batch_size=0 must be > 0"),
    ("pack_tokens", ["--pack_tokens=0"], "pack_tokens=0 must be > 0"),
    ("timed_steps", ["--timed_steps=0"], "timed_steps=0 must be > 0"),
    ("warmup_steps", ["--warmup_steps=-1"], "warmup_steps=-1 must be >= 0"),
    ("num_sequences", ["--num_sequences=0"], "num_sequences=0 must be > 0"),
    ("len_median", ["--len_median=0"], "len_median=0.0 must be > 0"),
    ("len_sigma", ["--len_sigma=-1"], "len_sigma=-1.0 must be >= 0"),
    ("max_len", ["--max_len=0"], "max_len=0 must be > 0"),
    ("peak_flops", ["--peak_flops=0"], "peak_flops=0.0 must be > 0"),
    ("num_threads", ["--num_threads=-1"], "num_threads=-1 must be >= 0"),
    ("sample_steps", [*S, "--sample_steps=0"], "sample_steps=0 must be > 0"),
    ("sample_batch", [*S, "--sample_batch=0"], "sample_batch=0 must be > 0"),
    ("sample_rounds", [*S, "--sample_rounds=0"], "sample_rounds=0 must be > 0"),
    ("seed", ["--seed=-1"], "seed=-1 must be >= 0"),
    ("learning_rate", ["--learning_rate=0"], "learning_rate=0.0 must be > 0"),
    ("beta1", ["--beta1=1"], "beta1=1.0 must be in [0, 1)"),
    ("beta2", ["--beta2=-0.5"], "beta2=-0.5 must be in [0, 1)"),
    ("grad_clip", ["--grad_clip=-1"], "grad_clip=-1.0 must be >= 0"),
    ("ema_decay", ["--ema_decay=1"], "ema_decay=1.0 must be in [0, 1)"),
    ("weight_decay", ["--weight_decay=-0.1"], "weight_decay=-0.1 must be >= 0"),
    ("vocab_size", ["--vocab_size=2"], "vocab_size=2 must be >= 3 (the data's tokens, then pad and mask)"),
    ("train-only", [*S, "--profile=True"], "profile is a setting of mode=train, not of mode=sample: drop it or give --mode=train"),
    ("sample-only", ["--ckpt=ckpt.pt"], "ckpt is a setting of mode=sample, not of mode=train: drop it or give --mode=sample"),
    ("loss", ["--alpha_schedule=cubic"], re.compile(r"alpha_schedule='cubic' is not one of .*")),
    ("model", ["--n_embd=30"], "n_embd=30 must be n_head=2 times an even head size (rotary positions rotate pairs of dimensions)"),
    ("model, sample", [*S, "--n_layer=0"], "n_layer=0 must be > 0"),
    ("samplers", [*S, "--samplers=poisson,greedy"], "samplers='poisson,greedy' must name one or more of poisson, exact, "
                                                   "adaptive, comma-separated"),
    ("no sampler", [*S, "--samplers=,"], "samplers=',' must name one or more of poisson, exact, adaptive, comma-separated"),
    ("sample_options", [*S, "--sample_options={'no_such_option': 1, 'steps': 2}"],
     "sample_options ['no_such_option', 'steps'] are not SamplerConfig fields that bench.py leaves open (it sets max_len, "
     "mask_id, pad_id, model_type, steps, alpha, beta, banned, device itself)"),
    ("sampler", [*S, "--sample_steps=1"], re.compile(r"need steps >= 2, temperature >= 0 .*")),
    ("out_json exists", ["--out_json=res.json"], "'res.json' already exists: pass --overwrite=True to replace it, or another --out_json"),
    ("out_json not ours", ["--out_json=notes.txt", "--overwrite=True"],
     "'notes.txt' is not replaced: it is not a samples, metrics, table or PNG file of this repo; give another --out_json"),
    ("out_json is the config", ["cfg.py", "--out_json=cfg.py", "--overwrite=True"],
     "'cfg.py' is also a file this command reads: it is not written over, or another --out_json"),
    ("out_json is the ckpt", [*S, "--ckpt=ckpt.pt", "--out_json=ckpt.pt", "--overwrite=True"],
     "'ckpt.pt' is also a file this command reads: it is not written over, or another --out_json"),
    ("out_json is in the data", ["--data=maze", "--out_json=maze/meta.json", "--overwrite=True"],
     "'maze/meta.json' is also a file this command reads: it is not written over, or another --out_json"),
    ("no data", ["--data=nosuch"], "dataset directory 'nosuch' not found: prepare it first (prepare_maze.py or prepare_owt.py)"),
    ("cut data", ["--data=cut"], re.compile(r"cut/train\.idx .*: a damaged dataset, prepare it again")),
    ("no ckpt", [*S, "--ckpt=none.pt"], "checkpoint 'none.pt' not found: train first (train.py) or fix --out_dir"),
    ("torn ckpt", [*S, "--ckpt=torn.pt"], re.compile(r"'torn\.pt' is not a readable checkpoint \(.*\)")),
    ("foreign ckpt", [*S, "--ckpt=list.pt"], "'list.pt' is not a checkpoint of this repo (a list)"),
    ("llada ckpt", [*S, "--ckpt=llada.pt"], "'llada.pt' is not a train.py checkpoint (no model_args)"),
    ("ckpt without meta", [*S, "--ckpt=nometa.pt"], "'nometa.pt' is not a train.py checkpoint (no meta)"),
]


@pytest.mark.parametrize("args, message", [row[1:] for row in BENCH_MISTAKES], ids=[row[0] for row in BENCH_MISTAKES])
def test_bench_mistakes(args, message, tmp_path, monkeypatch):
    """Each mistake is one line naming the key, the value and the rule (or the file), before any work; every
    file is as it was and nothing is added."""
    inputs(tmp_path)
    got = refused(fresh("bench"), [*TINY, "--vocab_size=64", "--max_len=32", *args], tmp_path, monkeypatch)
    assert message.fullmatch(got) if isinstance(message, re.Pattern) else got == message, got


BENCH = [os.path.join(ROOT, "bench.py"), *TINY, "--vocab_size=64", "--max_len=32", "--num_sequences=64", "--batch_size=4",
         "--pack_tokens=64", "--out_json=res.json"]


def test_bench_out_json_refused_without_overwrite(tmp_path):
    """From the command line: an existing out_json is one line `error: ...` and exit status 1, the file as it
    was; with --overwrite=True a results file of ours is replaced, whole (no temporary file left)."""
    path = tmp_path / "res.json"
    path.write_text('{"mode": "train"}')
    args = [*BENCH, "--warmup_steps=0", "--timed_steps=1"]
    proc = run_python(args, tmp_path)
    assert (proc.returncode, proc.stderr) == (1, "error: 'res.json' already exists: pass --overwrite=True to replace it, "
                                                 "or another --out_json\n")
    assert path.read_text() == '{"mode": "train"}' and os.listdir(tmp_path) == ["res.json"]
    proc = run_python([*args, "--overwrite=True"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text())["timed_steps"] == 1 and os.listdir(tmp_path) == ["res.json"]


@pytest.mark.parametrize("at", ["flexmdm:", "warmup:"], ids=["start-up", "timed steps"])
def test_bench_ctrl_c_is_one_line(at, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the steps are drawn or timed: one line
    saying that nothing was written, exit status 130, no out_json and no temporary file."""
    proc = start_python([*BENCH, "--warmup_steps=1", "--timed_steps=1000", "--packing=False"], tmp_path)
    for line in proc.stdout:
        if line.startswith(at):
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, "interrupted: no results were written (out_json is written at the end); "
                                           "run the command again\n")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# The scripts with settings: one checker each, outputs refused unless --overwrite=True, written whole

def script(name):
    """scripts/name.py as a new module object, its settings at their defaults."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LENGTH_JSON = {"length": {"tv_exact": 0.5, "tv_bin32": 0.25, "wasserstein1": 3.0,
                          "samples": {"mean": 9.0, "n": 64, "p10": 2.0, "p50": 8.5, "p90": 17.0},
                          "data": {"mean": 10.0, "p10": 3.0, "p50": 9.0, "p90": 18.0}}}


def script_inputs(tmp):
    """What the scripts' mistakes read, in tmp: results of ours and not (r.*, x.png), a trend directory of one run
    (trend), one run under a foreign name (odd), one with a torn metrics file (torn), one whose checkpoint is
    missing (lost), an empty one (empty), and a maze whose max_len outgrows flex_cpu_bench's rows (long)."""
    (tmp / "r.json").write_text("{}")
    (tmp / "r.md").write_text("my notes\n")
    (tmp / "x.png").write_text("not a picture\n")
    for trend, run_name, text in (("trend", "paper_chunk", json.dumps(LENGTH_JSON)), ("odd", "paper-chunk", "{}"),
                                  ("torn", "paper_chunk", json.dumps(LENGTH_JSON)[:40]), ("lost", "mdm_drop", "{}")):
        (tmp / trend / run_name).mkdir(parents=True)
        (tmp / trend / run_name / "ckpt_s64_g1.0.jsonl.length.json").write_text(text)
        if trend != "lost":
            shutil.copy(os.path.join(ROOT, "tests", "compat", "flex", "ckpt.pt"), tmp / trend / run_name / "ckpt.pt")
    (tmp / "empty").mkdir()
    shutil.copytree(MAZE, tmp / "long")
    meta = json.loads((tmp / "long" / "meta.json").read_text())
    (tmp / "long" / "meta.json").write_text(json.dumps({**meta, "max_len": 200}))


SCRIPT_MISTAKES = [  # (script, arguments, the message; a re.Pattern where it quotes another library's words)
    ("length_oracle", ["--num_samples=0"], "num_samples=0 must be > 0"),
    ("length_oracle", ["--batch_size=0"], "batch_size=0 must be > 0"),
    ("length_oracle", ["--grid_power=0"], "grid_power=0.0 must be > 0"),
    ("length_oracle", ["--lognormal_median=-1"], "lognormal_median=-1.0 must be > 0"),
    ("length_oracle", ["--lognormal_sigma=0"], "lognormal_sigma=0.0 must be > 0"),
    ("length_oracle", ["--seed=-1"], "seed=-1 must be >= 0"),
    ("length_oracle", ["--laws=lognormal,"], "laws='lognormal,' must name one or more laws, comma-separated (a dataset "
                                             "under data/, or lognormal)"),
    ("length_oracle", ["--steps=(64,1)"], "steps=(64, 1) must be a tuple of step counts >= 2, e.g. --steps=64,256 "
                                          "(--steps=64, for one)"),
    ("length_oracle", ["--out="], "out='' must name the results' path without its extension, e.g. results/length_oracle"),
    ("length_oracle", ["--out=r"], "'r.json' already exists: pass --overwrite=True to replace it, or another --out"),
    ("length_oracle", ["--out=x", "--overwrite=True"],
     "'x.png' is not replaced: it is not a samples, metrics, table or PNG file of this repo; give another --out"),
    ("length_oracle", ["--laws=lognormal,nosuch", "--out=new"],
     "dataset directory 'data/nosuch' not found: prepare it first (prepare_maze.py or prepare_owt.py)"),
    ("length_trend", ["--trend_dir=nosuch"], "trend_dir='nosuch' is not a directory: run scripts/length_trend.sh first"),
    ("length_trend", ["--trend_dir=trend", "--out="],
     "out='' must name the results' path without its extension, e.g. results/length_trend"),
    ("length_trend", ["--trend_dir=trend", "--out=r"], "'r.md' already exists: pass --overwrite=True to replace it, or another --out"),
    ("length_trend", ["--trend_dir=trend", "--out=r", "--overwrite=True"],
     "'r.md' is not replaced: it is not a samples, metrics, table or PNG file of this repo; give another --out"),
    ("length_trend", ["--trend_dir=trend", "--out=x", "--overwrite=True"],
     "'x.png' is not replaced: it is not a samples, metrics, table or PNG file of this repo; give another --out"),
    ("length_trend", ["--trend_dir=odd", "--out=new"],
     "odd/paper-chunk is not a run of scripts/length_trend.sh (<model>_<data>, model one of mdm, paper, prior, data one "
     "of chunk, drop)"),
    ("length_trend", ["--trend_dir=torn", "--out=new"],
     re.compile(r"torn/paper_chunk/ckpt_s64_g1\.0\.jsonl\.length\.json or its checkpoint is not what evaluate\.py and "
                r"train\.py write \(JSONDecodeError: .*\): evaluate that checkpoint again")),
    ("length_trend", ["--trend_dir=lost", "--out=new"],
     "checkpoint 'lost/mdm_drop/ckpt.pt' not found: lost/mdm_drop/ckpt_s64_g1.0.jsonl.length.json was made from it "
     "(scripts/length_trend.sh keeps both)"),
    ("length_trend", ["--trend_dir=empty", "--out=new"], "no evaluated samples under 'empty': run scripts/length_trend.sh first"),
    ("flex_cpu_bench", ["--rounds=0"], "rounds=0 must be > 0"),
    ("flex_cpu_bench", ["--calls=0"], "calls=0 must be > 0"),
    ("flex_cpu_bench", ["--data=nosuch"], "dataset directory 'nosuch' not found: prepare it first (prepare_maze.py or "
                                          "prepare_owt.py)"),
    ("flex_cpu_bench", ["--data=long"], "data='long' has max_len 200: a sequence and its gap slot must fit a row of 128 "
                                        "tokens (max_len <= 127)"),
    ("compile_bench", ["--rounds=0"], "rounds=0 must be > 0"),
    ("compile_bench", ["--iters=1"], "iters=1 must be >= 2 (a copy is kept at iters // 2)"),
    ("compile_bench", ["--iters=4", "--max_seconds=9.0"],
     "--max_seconds=9.0 is set by compile_bench.py for each run (use --iters=N for the length): drop it"),
]


@pytest.mark.parametrize("name, args, message", SCRIPT_MISTAKES, ids=[f"{r[0]}: {' '.join(r[1])}" for r in SCRIPT_MISTAKES])
def test_script_mistakes(name, args, message, tmp_path, monkeypatch):
    """Each mistake is one line, before any work; every file is as it was and nothing is added."""
    script_inputs(tmp_path)
    got = refused(script(name), args, tmp_path, monkeypatch)
    assert message.fullmatch(got) if isinstance(message, re.Pattern) else got == message, got


def test_script_outputs_are_refused_then_replaced_with_overwrite(tmp_path, monkeypatch):
    """length_oracle.py and length_trend.py write their results whole; run again, they are refused until
    --overwrite=True, which replaces them."""
    script_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    runs = {"length_oracle": (["--laws=lognormal", "--steps=(4,)", "--num_samples=20", "--batch_size=20", "--out=o/lo"],
                              ("o/lo.json", "o/lo.png")),
            "length_trend": (["--trend_dir=trend", "--out=o/lt"], ("o/lt.md", "o/lt.png"))}
    for name, (args, outputs) in runs.items():
        monkeypatch.setattr("sys.argv", [name, *args])
        script(name).main()
        written = {path: (tmp_path / path).read_bytes() for path in outputs}
        assert written[outputs[1]].startswith(b"\x89PNG")
        assert refused(script(name), args, tmp_path, monkeypatch).startswith(f"'{outputs[0]}' already exists")
        monkeypatch.setattr("sys.argv", [name, *args, "--overwrite=True"])
        script(name).main()
    assert sorted(os.listdir(tmp_path / "o")) == ["lo.json", "lo.png", "lt.md", "lt.png"]
    table = (tmp_path / "o" / "lt.md").read_text()
    assert table.startswith("| data | model | CPU s | iterations | steps | grid |")
    assert "| 3.0 | 9.0 (10.0) | 2 / 8 / 17 (3 / 9 / 18) |" in table  # W1, mean, the quantiles beside the data's


def test_length_oracle_ctrl_c_is_one_line(tmp_path):
    """Ctrl-C between the step counts of scripts/length_oracle.py: one line, exit status 130, nothing written."""
    proc = start_python([os.path.join(ROOT, "scripts", "length_oracle.py"), "--laws=lognormal", "--steps=(4,100000)",
                         "--out=r/lo"], tmp_path)
    for line in proc.stdout:
        if "steps     4:" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, "interrupted: nothing was written (the .json and .png are written at the end); "
                                           "run the command again\n")
    assert os.listdir(tmp_path) == []
