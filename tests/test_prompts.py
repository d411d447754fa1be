"""Prompts, infilling and the trace: sample.parse_prompt, sampler.infill on the exact oracles of
tests/test_sampler.py (FlexMDM conditioned on a fixed token between two gaps, the MDM's fixed masks per gap and
closed canvas), generate's trace replayed to its samples, sample.py's --prompt, --prompt_file and --trace on
tiny trained text models and a maze model, the maze PNG's title, and scripts/infill.py end to end."""
import importlib.util
import json
import os
from collections import Counter

import pytest
import tiktoken
import torch

import evaluate
import prepare_owt
import sample as sample_module
from configurator import InputError
from conftest import ROOT, run_train
from sampler import generate, infill, interleave
from test_text import tiny_reference  # noqa: F401 (a fixture)
from test_sampler import maze_run  # noqa: F401 (a fixture: a random-weight FlexMDM for the tiny maze)
from test_sampler import (MASK, P1, PAD, SCHEDULE_PAIRS, V, config, exact_fg, flex_oracle, gen, mdm_oracle, noise_tv,
                          run_sample, to_logits, tv_check, tv_distance)

ENC = tiktoken.get_encoding("gpt2")
WIKI = os.path.join(ROOT, "..", "shared", "data", "wikitext2_raw")
parse = sample_module.parse_prompt


# ---------------------------------------------------------------------------------------------
# Parsing

@pytest.mark.parametrize("text, pieces", [
    ("The cat [...] on the mat. [...]", ["The cat", " on the mat.", ""]),  # space before a marker stripped, after kept
    ("[...] on the mat.", ["", " on the mat."]),  # a gap at the start
    ("The cat [...]", ["The cat", ""]),  # a gap at the end
    ("The cat [...][...] on", ["The cat", " on"]),  # adjacent markers: one gap
    ("The cat [...]  [...] on", ["The cat", " on"]),  # only whitespace between them: one gap
    ("The cat sat ", ["The cat sat", ""]),  # no marker: a prefix, continued
    ("un[...]able", ["un", "able"]),  # inside a word
    ("", ["", ""]),  # empty: one gap, unconditional
    ("[...]", ["", ""]),
    ("  [...]  x  ", ["", "  x  "]),
])
def test_parse_prompt(text, pieces):
    assert parse(text) == pieces


def test_parse_prompt_other_marker_and_bad_marker():
    assert parse("a <gap> b [...] c", "<gap>") == ["a", " b [...] c"]
    with pytest.raises(InputError, match="marker"):
        parse("a  b", " ")


# ---------------------------------------------------------------------------------------------
# infill on the exact oracles

F = 1  # the fixed token between the two gaps


def product_oracle(alpha, move_gap=False):
    """model_fn for x = u F v, F the one fixed token and (u, v) ~ P1 x P1: F is exempt from the interpolant
    (appendix F.3), so u_t and v_t are the independent interpolants of u and v, and f and g are test_sampler's
    exact ones of each beside F (the gap just before F is u's last, the one just after it v's first). With
    move_gap, g of the gap before F is given to the gap after it: a wrong oracle."""
    def model_fn(x, t, fixed, closed):
        B, L = x.shape
        j, j1 = torch.arange(L)[None], torch.arange(L + 1)[None]
        pos, n = fixed.float().argmax(1)[:, None], (x != PAD).sum(1, keepdim=True)
        u = torch.where(j < pos, x, PAD)
        v = torch.where(pos + 1 + j < n, x.gather(1, (pos + 1 + j).clamp(max=L - 1)), PAD)
        (fu, gu), (fv, gv) = exact_fg(u, t, alpha), exact_fg(v, t, alpha)
        fv = fv.gather(1, (j - pos - 1).clamp(min=0)[..., None].expand(B, L, V))
        f = torch.where((j < pos)[..., None], fu, torch.where((j == pos)[..., None],
                                                              torch.nn.functional.one_hot(x, V).double(), fv))
        g = torch.where(j1 <= pos, gu, gv.gather(1, (j1 - pos - 1).clamp(min=0)))
        if move_gap:
            rows = torch.arange(B)
            g[rows, pos[:, 0] + 1] += g[rows, pos[:, 0]]
            g[rows, pos[:, 0]] = 0
        return to_logits(f), g.float()
    return model_fn


def pair_tv(gaps):
    """TV between the (u, v) pairs of the infills and P1 x P1, and the noise bound at that sample count."""
    product = {(a, b): pa * pb for a, pa in P1.items() for b, pb in P1.items()}
    counts, n = Counter((tuple(a), tuple(b)) for a, b in gaps), len(gaps)
    tv = 0.5 * (sum(abs(counts[s] / n - p) for s, p in product.items()) + sum(c for s, c in counts.items()
                                                                            if s not in product) / n)
    return tv, noise_tv(n, product)


# With the exact oracle, 4000 samples, 256 steps, linear schedules: measured TV to P1 x P1 of 0.077-0.091 over
# three seeds (the sampling noise alone: mean ~0.045, 99.9 % quantile 0.064 over 64 outcomes; each gap's
# tau-leaping error ~0.03, as for one sequence in test_sampler). The wrong oracle: 0.90.
PRODUCT_ALLOWANCE = 0.07


def test_infill_reproduces_p1_around_a_fixed_token():
    """pieces [], [F], []: two gaps around the fixed F. F stays where it is in every sample, the gaps are
    filled independently from P1, the joint law within the oracle bound; the wrong oracle fails it."""
    alpha, beta = SCHEDULE_PAIRS["linear"]
    cfg = config(256, 10, alpha=alpha, beta=beta)
    n = 4000
    gaps = infill(product_oracle(alpha), n, cfg, [[[], [F], []]] * n, generator=gen(0))
    tv, noise = pair_tv(gaps)
    assert all(len(g) == 2 for g in gaps) and tv <= noise + PRODUCT_ALLOWANCE, (tv, noise)
    u_tv, _, _ = tv_distance([a for a, _ in gaps])
    v_tv, _, _ = tv_distance([b for _, b in gaps])
    assert max(u_tv, v_tv) <= noise_tv(n) + 0.045, (u_tv, v_tv)
    wrong = infill(product_oracle(alpha, move_gap=True), 1000, cfg, [[[], [F], []]] * 1000, generator=gen(0))
    tv, noise = pair_tv(wrong)
    assert tv > noise + PRODUCT_ALLOWANCE, tv


def test_infill_prefix_continues_as_generate():
    """A prefix (no marker): pieces [prompt], [] are generate's prompt with the end gap open; the same random
    stream gives the same samples, and the continuation follows P1."""
    alpha, beta = SCHEDULE_PAIRS["linear"]
    cfg = config(256, 7, alpha=alpha, beta=beta)
    oracle = flex_oracle(alpha, prompt_len=2)
    gaps = infill(oracle, 2000, cfg, [[[2, 0], []]] * 2000, generator=gen(1))
    same = generate(oracle, 2000, cfg, prompts=[[2, 0]] * 2000, open_gaps=[[2]] * 2000, generator=gen(1))
    assert [interleave([[2, 0], []], g) for g in gaps] == same
    tv, bound, _, _ = tv_check([g[0] for g in gaps], P1, 0.045)
    assert tv <= bound, (tv, bound)


def test_mdm_infill_masks_per_gap_and_closed_canvas():
    """The MDM: infill_len masks in each gap, the canvas closed after the last piece (fixed pads to max_len):
    the model sees exactly that, and the infill follows p1 given it (pads drawn in a gap are left out)."""
    seen = []
    oracle = mdm_oracle(5)

    def model_fn(x, t, fixed, closed):
        seen.append((x.clone(), fixed.clone()))
        return oracle(x, t, fixed, closed)
    cfg = config(64, model_type="mdm")
    gaps = infill(model_fn, 2000, cfg, [[[0], []]] * 2000, infill_len=2, generator=gen(0))
    x, fixed = seen[0]
    assert x[0].tolist() == [0, MASK, MASK, PAD, PAD] and fixed[0].tolist() == [True, False, False, True, True]
    # p1 padded to 5 with y[0] = 0 and y[3:] = pad: (0,) w.p. 0.25, (0, 0, 1) w.p. 0.75
    tv, bound, _, _ = tv_check([tuple(g[0]) for g in gaps], {(): 0.25, (0, 1): 0.75}, 0.05)
    assert tv <= bound, (tv, bound)
    calls = len(seen)
    two = infill(model_fn, 3, cfg, [[[], [1], []]] * 3, infill_len=[1, 1, 1], generator=gen(0))
    assert seen[calls][0][0].tolist() == [MASK, 1, MASK, PAD, PAD]
    assert two == [[[2], []]] * 3  # p1's only sequence of that form: (2, 1), the second gap's draw a pad, left out


@pytest.mark.parametrize("model_type, pieces, infill_len, message", [
    ("flexmdm", [[[0], []]], 3, "infill_len=3 is the MDM's"),
    ("mdm", [[[0], []]], 0, "at least one mask per gap"),
    ("mdm", [[[0, 1, 2], []]], 3, "the MDM needs 1 to 5"),
    ("flexmdm", [[[0], [], [1]]], 0, "none empty but the first and the last"),
    ("flexmdm", [[[0]]], 0, "two or more token lists"),
    ("flexmdm", [[[MASK], []]], 0, "without mask_id"),
    ("mdm", [[[0], []]], [1, 2], "2 infill_len values for 1 samples"),
])
def test_infill_mistakes_are_one_line(model_type, pieces, infill_len, message):
    with pytest.raises(InputError, match=message):
        infill(mdm_oracle(5), 1, config(8, model_type=model_type), pieces, infill_len)


# ---------------------------------------------------------------------------------------------
# The trace

def replayed(entry):
    """The states of a traced sample: its start, then each step's insertions (masks at the recorded positions of
    the new state, the other tokens in order) and unmaskings applied."""
    states, x = [], list(entry["start"])
    for step in entry["steps"]:
        new, old = set(step["inserted"]), iter(x)
        x = [MASK if j in new else next(old) for j in range(len(x) + len(new))]
        assert next(old, None) is None
        for j, v in step["unmasked"]:
            assert x[j] == MASK and v != MASK
            x[j] = v
        states.append(x)
    return states


@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_trace_replays_to_the_samples(model_type):
    """generate(..., trace=[None] * 5) over batches of 2: the samples are those without the trace, and every
    traced sample's steps, applied one by one from its start, give each recorded state and the sample."""
    alpha, beta = SCHEDULE_PAIRS["linear"]
    if model_type == "flexmdm":
        oracle, cfg, prompts = flex_oracle(alpha, prompt_len=1), config(32, 6, alpha=alpha, beta=beta, batch_size=2), \
            [[b % 3] for b in range(7)]
        options = dict(prompts=prompts, open_gaps=[[1]] * 7)
    else:
        oracle, cfg, options = mdm_oracle(5), config(16, model_type="mdm", batch_size=2), {}
    trace = [None] * 5
    samples = generate(oracle, 7, cfg, seed=3, trace=trace, **options)
    assert samples == generate(oracle, 7, cfg, seed=3, **options)
    for i, entry in enumerate(trace):
        states = replayed(entry)
        assert [s["tokens"] for s in entry["steps"]] == states
        final = states[-1] if states else entry["start"]
        assert (final == samples[i] if model_type == "flexmdm" else final[:len(samples[i])] == samples[i]), i
        assert all(0 < s["t"] <= 1 for s in entry["steps"]) and len(entry["steps"]) <= cfg.steps
        assert any(s["inserted"] for s in entry["steps"]) == (model_type == "flexmdm" and len(samples[i]) > 1)
    assert entry["fixed"] == ([True] if model_type == "flexmdm" else [False] * 5)


def test_trace_must_be_a_list():
    with pytest.raises(InputError, match="trace must be a list"):
        generate(mdm_oracle(5), 2, config(4, model_type="mdm"), trace=3)


# ---------------------------------------------------------------------------------------------
# sample.py on tiny trained text models

@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A directory with data/wt (WikiText-2 paragraphs chunked to 64 tokens) and two tiny models trained on it
    for a few iterations: flex/ckpt.pt (FlexMDM) and mdm/ckpt.pt (the MDM)."""
    root = tmp_path_factory.mktemp("text")
    prepare_owt.build(out_dir=str(root / "data" / "wt"), source=os.path.join(WIKI, "wiki.valid.raw"), txt_unit="line",
                      val_source=os.path.join(WIKI, "wiki.test.raw"), max_docs=150, max_len=64, num_proc=1,
                      cache_dir=str(root / "hf_cache"))
    common = [os.path.join(ROOT, "config", "text_cpu.py"), "--dataset=wt", "--max_iters=4", "--eval_interval=4",
              "--eval_iters=1", "--batch_size=4", "--warmup_iters=2"]
    run_train([*common, "--out_dir=flex"], root)
    run_train([*common, "--out_dir=mdm", "--model_type=mdm", "--packing=False"], root)
    return root


CLI = ["--steps=8", "--batch_size=2", "--device=cpu", "--dtype=float32", "--progress=False"]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


PROMPT = "The cat [...] on the mat. [...]"


def test_prompt_text_kept_verbatim(text_runs):
    """--prompt on the FlexMDM: every sample is the prompt's pieces, each encoded once and unchanged, with
    each gap's infill between them (nothing inserted inside a piece); the record keeps the prompt, the text
    and each infill's text and tokens."""
    run_sample(["--out_dir=flex", f"--prompt={PROMPT}", "--num_samples=5", "--samples_file=p.jsonl", *CLI], text_runs)
    pieces = [ENC.encode_ordinary(p) for p in parse(PROMPT)]
    rows = read_lines(text_runs / "p.jsonl")
    assert len(rows) == 5 and any(r["infill_tokens"][0] for r in rows)
    for r in rows:
        assert r["prompt"] == PROMPT and len(r["infills"]) == len(r["infill_tokens"]) == 2
        assert r["tokens"] == interleave(pieces, r["infill_tokens"]) and r["length"] == len(r["tokens"])
        assert r["text"] == ENC.decode(r["tokens"]) and r["infills"] == [ENC.decode(g) for g in r["infill_tokens"]]
        assert r["text"].startswith("The cat") and " on the mat." in r["text"]


def test_prompt_file_target_len_and_the_mdm(text_runs):
    """--prompt_file: blank lines skipped, the lines cycled to num_samples; --target_len still holds. The MDM:
    --infill_len masks per gap at most (pads left out), nothing after the last piece."""
    (text_runs / "prompts.txt").write_text("[...] is a [...] city.\n\n  \nOnce upon a time\n")
    run_sample(["--out_dir=flex", "--prompt_file=prompts.txt", "--num_samples=3", "--target_len=24",
                "--samples_file=f.jsonl", *CLI], text_runs)
    rows = read_lines(text_runs / "f.jsonl")
    assert [r["prompt"] for r in rows] == ["[...] is a [...] city.", "Once upon a time", "[...] is a [...] city."]
    assert all(r["length"] == 24 for r in rows) and [len(r["infills"]) for r in rows] == [2, 1, 2]
    for r in rows:
        assert r["tokens"] == interleave([ENC.encode_ordinary(p) for p in parse(r["prompt"])], r["infill_tokens"])
    run_sample(["--out_dir=mdm", "--prompt=The cat [...] on the mat.", "--num_samples=4", "--infill_len=3",
                "--samples_file=m.jsonl", *CLI], text_runs)
    suffix = ENC.encode_ordinary(" on the mat.")
    for r in read_lines(text_runs / "m.jsonl"):
        assert len(r["infill_tokens"][0]) <= 3 and r["tokens"][-len(suffix):] == suffix
        assert r["tokens"] == ENC.encode_ordinary("The cat") + r["infill_tokens"][0] + suffix


@pytest.mark.parametrize("args, message", [
    (["--prompt=a", "--prompt_file=p.txt"], "give --prompt or --prompt_file, not both"),
    (["--prompt_file=nosuch.txt"], "could not read prompt_file 'nosuch.txt'"),
    (["--prompt=a [...]", "--marker= "], "marker=' ' must be a visible string"),
    (["--infill_len=4"], "infill_len is the MDM's masks per gap of a prompt"),
    (["--prompt=a [...]", "--infill_len=4"], "is a FlexMDM, it chooses each gap's length"),
    (["--prompt=a [...]", "--trace_samples=0"], "trace_samples=0 must be > 0"),
])
def test_prompt_mistakes_are_one_line(text_runs, args, message):
    with pytest.raises(InputError, match=message):
        run_sample(["--out_dir=flex", "--num_samples=2", "--samples_file=never.jsonl", *args, *CLI], text_runs)
    assert not (text_runs / "never.jsonl").exists()


def test_text_trace_files_and_refusal(text_runs):
    """--trace=True writes SAMPLES.trace.txt (one line per step per traced sample) and SAMPLES.trace.png; they
    are refused when they exist (nothing written), replaced with --overwrite=True only when they are ours."""
    args = ["--out_dir=flex", "--prompt=The cat [...] on the mat.", "--num_samples=3", "--trace=True",
            "--trace_samples=2", "--samples_file=t.jsonl", *CLI]
    run_sample(args, text_runs)
    text = (text_runs / "t.jsonl.trace.txt").read_text()
    assert text.startswith(sample_module.TRACE_HEAD) and text.count("\n## sample") == 2
    steps = [line for line in text.splitlines() if "| " in line and line[:4].strip().isdigit()]
    assert len(steps) <= 2 * 9 and all("The cat" in line for line in steps)
    assert (text_runs / "t.jsonl.trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (text_runs / "t.jsonl").unlink()
    with pytest.raises(InputError, match=r"t\.jsonl\.trace\.txt' already exists: pass --overwrite=True"):
        run_sample(args, text_runs)
    assert not (text_runs / "t.jsonl").exists()
    run_sample([*args, "--overwrite=True"], text_runs)
    (text_runs / "t.jsonl.trace.txt").write_text("my notes\n")
    with pytest.raises(InputError, match="is not replaced"):
        run_sample([*args, "--overwrite=True"], text_runs)
    assert (text_runs / "t.jsonl.trace.txt").read_text() == "my notes\n"


# ---------------------------------------------------------------------------------------------
# A maze model: --prompt refused, its trace, the evaluate.py PNG's title

def test_maze_trace_prompt_refusal_and_png_title(maze_run, tmp_path, monkeypatch):  # noqa: F811
    """A maze checkpoint: --prompt is refused; --trace writes cells; evaluate.py's maze PNG is titled with the
    success rate and the samples file."""
    cwd, run_dir = maze_run
    samples = str(tmp_path / "s.jsonl")
    with pytest.raises(InputError, match="need a text checkpoint"):
        run_sample([f"--out_dir={run_dir}", "--prompt=x [...]", f"--samples_file={samples}", *CLI], cwd)
    run_sample([f"--out_dir={run_dir}", "--num_samples=3", "--trace=True", f"--samples_file={samples}", *CLI], cwd)
    lines = open(samples + ".trace.txt").read().splitlines()
    assert lines[0].startswith(sample_module.TRACE_HEAD) and any("," in line.split("| ")[-1] for line in lines[3:])
    figures = []
    monkeypatch.setattr(evaluate, "save_png", lambda fig, filename: figures.append(fig) or filename)
    m = evaluate.main(["--task=maze", f"--samples={samples}", f"--data_dir={cwd / 'data' / 'tiny'}",
                       f"--png={tmp_path / 'm.png'}"])
    title = figures[0]._suptitle.get_text()
    assert f"{100 * m['success_rate']:.1f} %" in title and samples in title and "n=3" in title


# ---------------------------------------------------------------------------------------------
# scripts/infill.py

def infill_script():
    """scripts/infill.py as a new module object, its settings at their defaults."""
    spec = importlib.util.spec_from_file_location("infill_script", os.path.join(ROOT, "scripts", "infill.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lcs_f1():
    s = infill_script()
    assert s.lcs_len([1, 2, 3, 4], [2, 4, 3]) == 2 and s.lcs_len([], [1]) == 0 and s.lcs_len([5, 5], [5]) == 1
    assert s.lcs_f1([1, 2, 3], [1, 2, 3]) == 1.0 and s.lcs_f1([], [1]) == 0.0 and s.lcs_f1([], []) == 1.0
    assert s.lcs_f1([1, 9, 2], [1, 2]) == pytest.approx(2 * 2 / 5)
    ends = s.sentence_ends(ENC.encode_ordinary("It rained . Then it stopped ! Why ?"), ENC)
    assert [ENC.decode([t]) for t in (ENC.encode_ordinary("It rained . Then it stopped ! Why ?")[i] for i in ends)] \
        == [" .", " !", " ?"]


def test_infill_script_runs_resumes_and_refuses(text_runs, monkeypatch):
    """scripts/infill.py on the tiny models: rows for the floors, the FlexMDM and the MDM at each scale, a table;
    an interrupted command goes on from OUT.json, finished results are refused without --overwrite=True."""
    monkeypatch.chdir(text_runs)
    args = ["--runs=flex=flex/ckpt.pt,mdm=mdm/ckpt.pt", "--num_paragraphs=4", "--steps=8", "--device=cpu",
            "--dtype=float32", "--progress=False", "--out=r/inf"]
    monkeypatch.setattr("sys.argv", ["infill.py", *args])
    infill_script().main()
    result = json.loads((text_runs / "r" / "inf.json").read_text())
    assert list(result["rows"]) == ["floor_random", "floor_unigram", "flex", "mdm_x1", "mdm_x0.5", "mdm_x2"]
    assert result["rows"]["mdm_x1"]["exact_len"] <= 1 and result["rows"]["floor_random"]["len_abs_err"] == 0
    flex = result["rows"]["flex"]
    assert 0 < flex["g_open"] < flex["g_all"] and "g_open" not in result["rows"]["mdm_x1"]
    assert f"{flex['g_open']:.1f} in the gap, {flex['g_all']:.1f} in all" in (text_runs / "r" / "inf.md").read_text()
    assert (text_runs / "r" / "inf.md").read_text().startswith(infill_script().TABLE_HEAD)
    rows = read_lines(text_runs / "r" / "inf.flex.jsonl")
    assert len(rows) == 4 and all(r["prompt"].replace("[...]", r["infills"][0]) == r["text"] for r in rows)
    with pytest.raises(InputError, match="inf.md' already exists"):
        infill_script().main()
    (text_runs / "r" / "inf.md").unlink()  # as if stopped before the end: only the missing rows are made again
    del result["rows"]["mdm_x2"]
    (text_runs / "r" / "inf.json").write_text(json.dumps(result))
    infill_script().main()
    assert list(json.loads((text_runs / "r" / "inf.json").read_text())["rows"]) == list(result["rows"]) + ["mdm_x2"]
    (text_runs / "r" / "inf.md").unlink()
    monkeypatch.setattr("sys.argv", ["infill.py", *args, "--seed=2"])
    with pytest.raises(InputError, match="holds results of other settings \\(seed=1337, now 2\\)"):
        infill_script().main()


def test_start_forecast_reads_g_at_the_start_state(text_runs):
    """g in the open gap and summed over all gaps of each prefix + suffix, fixed, at t = 0: batched (padded) as the
    network reads one state alone."""
    from checkpoint import load_model
    from interpolant import schedules
    from sampler import SamplerConfig
    model, ckpt = load_model(str(text_runs / "flex" / "ckpt.pt"), "cpu")
    alpha, beta = schedules(ckpt["config"])
    cfg = SamplerConfig(max_len=model.cfg.max_len, mask_id=ckpt["meta"]["mask_id"], pad_id=ckpt["meta"]["pad_id"],
                        model_type="flexmdm", alpha=alpha, beta=beta, device="cpu", batch_size=2)
    cases = [{"prefix": ENC.encode_ordinary("The cat sat."), "suffix": ENC.encode_ordinary(" Then it left the room.")},
             {"prefix": [], "suffix": ENC.encode_ordinary(" An ending.")}]
    forecast = infill_script().start_forecast(model.sampler_fn(alpha), cfg, [[c["prefix"], c["suffix"]] for c in cases])
    opened, whole = [], []
    for c in cases:
        x = torch.tensor([c["prefix"] + c["suffix"]])
        g = model.padded_states(x, torch.zeros(1), torch.ones_like(x, dtype=torch.bool))[1][0]
        opened.append(g[len(c["prefix"])].item())
        whole.append(g.sum().item())
    assert forecast["g_open"] == pytest.approx(sum(opened) / 2, rel=1e-5)
    assert forecast["g_all"] == pytest.approx(sum(whole) / 2, rel=1e-5)


def test_infill_script_genppl_under_a_reference(text_runs, tiny_reference, monkeypatch):  # noqa: F811
    """With --ref_model: a truth row, and every row's generative perplexity from evaluate.py --task=genppl."""
    monkeypatch.chdir(text_runs)
    monkeypatch.setattr("sys.argv", ["infill.py", "--runs=flex=flex/ckpt.pt", "--num_paragraphs=3", "--steps=8",
                                     "--device=cpu", "--dtype=float32", "--progress=False", "--out=g/inf",
                                     f"--ref_model={tiny_reference}", "--mdm_scales=1,"])
    infill_script().main()
    rows = json.loads((text_runs / "g" / "inf.json").read_text())["rows"]
    assert list(rows) == ["truth", "floor_random", "floor_unigram", "flex"]
    assert all(r["genppl"] > 1 for r in rows.values()) and (text_runs / "g" / "inf.flex.jsonl.genppl.json").exists()
