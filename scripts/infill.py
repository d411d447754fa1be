"""
Infill quality: on the validation paragraphs of a text dataset (prepare_owt.py's val split), cut a span of 1
to 3 whole sentences and fill the gap (sampler.infill) with each checkpoint: a FlexMDM with the length it
chooses, an MDM told the span's true length and wrong ones (--mdm_scales, 1, 0.5 and 2 times by default: an
MDM has a fixed number of masks per gap, and a canvas closed after the paragraph). Per run, against the true
span: the infill's length error, and its overlap, an F1 over the longest common subsequence of token ids
(lcs_f1); for a FlexMDM also its g at the start, in the open gap and over all gaps (start_forecast). Two
floors are told the true length: random tokens, and tokens drawn from the unigram law of the data's train
split. With --ref_model (a local directory of a causal LM that transformers loads, e.g. a small one trained on
the train split; GPT-2 itself is not needed) also the generative perplexity of the infilled paragraphs, by
evaluate.py --task=genppl, beside that of the paragraphs as they are ("truth").

    python scripts/infill.py --runs=flex=out/wikitext_cpu/ckpt.pt,mdm=out/wikitext_cpu_mdm/ckpt.pt
    python scripts/infill.py --runs=flex=out/a/ckpt.pt,flex_span=out/b/ckpt.pt,mdm=out/c/ckpt.pt --ref_model=out/ref_lm

--runs: any number of LABEL=CKPT pairs, comma-separated (a label is letters, digits, _ - .). Every run must be a
text checkpoint of the same data (--data_dir, default data/<dataset> of the first run). The spans are the same
for every run (--seed, --num_paragraphs). Sentences are found on the tokens: a token whose text ends in . ! or
? followed by a token that starts with a space (or the paragraph's end); the span keeps the leading space of
its first word, as an infill brings its own (sample.py's prompts). Writes OUT.json (the settings and a row per
run, scale and floor), OUT.md (the table), and each row's infilled paragraphs as a samples file
OUT.<row>.jsonl (sample.py's lines with a prompt, plus "paragraph" and "truth"). OUT.json is written after
each row: an interrupted command, run again unchanged, goes on from the rows it has; with other settings it
is refused, as are finished results (OUT.md), unless --overwrite=True (then only files of ours are replaced).
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_device, check_ranges, configure, pick, run  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from checkpoint import load_checkpoint, load_model  # noqa: E402
from data import (GPT2_VOCAB, atomic_write, check_output, check_same_data, decode, gpt2, load_data,  # noqa: E402
                  write_jsonl)
from interpolant import schedules  # noqa: E402
from model import autocast  # noqa: E402
from sampler import SamplerConfig, gap_masks, infill, infill_prompts, initial_state, interleave  # noqa: E402

# -----------------------------------------------------------------------------
runs = ""  # LABEL=CKPT pairs, comma-separated: FlexMDM or MDM text checkpoints
data_dir = ""  # the text dataset whose val paragraphs are cut; default: data/<dataset> of the first run
num_paragraphs = 200  # paragraphs (chosen at random among those with a sentence to cut and context left)
min_sentences = 1  # the span: this many to max_sentences whole sentences
max_sentences = 3
mdm_scales = (1.0, 0.5, 2.0)  # the MDM's masks per gap: these multiples of the true span length (1, for one)
ref_model = ""  # optional: a local directory of a reference causal LM, for the generative perplexity
ref_batch_size = 16
out = "results/infill"  # OUT.json, OUT.md and OUT.<row>.jsonl
overwrite = False  # replace finished results, or results of other settings (files of ours only)
seed = 1337
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
# the sampler: sampler.SamplerConfig's fields of these names
batch_size = 64
steps = 256
sampler = "vanilla"
temperature = 1.0
progress = True
# -----------------------------------------------------------------------------
TABLE_HEAD = "| row | model | gap length | paragraphs |"  # how OUT.md begins
FLOORS = ("floor_random", "floor_unigram")


RESULT_SETTINGS = ("runs", "data_dir", "num_paragraphs", "min_sentences", "max_sentences", "mdm_scales", "ref_model",
                   "seed", "device", "dtype", "batch_size", "steps", "sampler", "temperature")


def settings():
    """The settings that decide the results (what a resumed command must share with OUT.json), as JSON has them."""
    return json.loads(json.dumps({k: globals()[k] for k in RESULT_SETTINGS}))


def parse_runs():
    """{label: checkpoint path} of --runs; a malformed pair is one line."""
    pairs = [p.partition("=") for p in runs.split(",") if p]
    bad = [label + sep + path for label, sep, path in pairs if not (sep and path and re.fullmatch(r"[\w.-]+", label))]
    if not pairs or bad or len({label for label, _, _ in pairs}) < len(pairs):
        raise InputError(f"runs={runs!r} must be LABEL=CKPT pairs, comma-separated, each label once (letters, digits, "
                         "_ - .), e.g. --runs=flex=out/a/ckpt.pt,mdm=out/b/ckpt.pt")
    return {label: path for label, _, path in pairs}


def scales():
    """The MDM's multiples of the true span length (--mdm_scales)."""
    if not mdm_scales or not all(isinstance(s, (int, float)) and s > 0 for s in mdm_scales):
        raise InputError(f"mdm_scales={mdm_scales!r} must be positive numbers, e.g. --mdm_scales=1,0.5,2 "
                         "(--mdm_scales=1, for one)")
    return [float(s) for s in mdm_scales]


def ours(md):
    """Whether the file md is a table of this script (its first line)."""
    with open(md, errors="replace") as f:
        return f.readline().startswith(TABLE_HEAD)


def check_settings():
    """Every setting and every input before any work: the runs' checkpoints (text models of one dataset), the
    data, the reference LM's directory, the outputs. Returns ({label: model type}, data_dir, the rows OUT.json
    already has: {} unless resuming)."""
    check_device(device)
    check_choices(globals(), dict(dtype=("float32", "bfloat16")))
    check_ranges(globals(), dict(num_paragraphs=">0", min_sentences=">0", max_sentences=">0", seed=">=0",
                                 batch_size=">=0", ref_batch_size=">0"))
    if max_sentences < min_sentences or not out:
        raise InputError(f"need min_sentences <= max_sentences (got {min_sentences}, {max_sentences}) and an --out "
                         "(the results' path without extension, e.g. results/infill)")
    scales()
    if ref_model and not os.path.isdir(ref_model):
        raise InputError(f"ref_model={ref_model!r} is not a directory: a local causal LM (save_pretrained's directory)")
    kinds, directory = {}, data_dir
    for label, path in parse_runs().items():
        ck = load_checkpoint(path)
        if ck.get("meta", {}).get("tokenizer") != "gpt2" or "model_args" not in ck or "config" not in ck:
            raise InputError(f"run {label} ({path!r}) is not a text checkpoint of train.py (GPT-2 BPE)")
        directory = directory or os.path.join("data", ck["config"]["dataset"])
        check_same_data(ck["meta"], load_data(directory)[0], directory)
        kinds[label] = ck["model_args"]["model_type"]
    rows = check_outputs(row_names(kinds))
    return kinds, directory, rows


def row_names(kinds):
    """The rows, in order: the truth (with ref_model), the floors, then each run's (an MDM's one per scale)."""
    names = ["truth"] * bool(ref_model) + list(FLOORS)
    for label, kind in kinds.items():
        names += [f"{label}_x{s:g}" for s in scales()] if kind == "mdm" else [label]
    return names


def check_outputs(names):
    """OUT.md is refused when it exists (the results are finished) and OUT.json when it holds other settings,
    both unless --overwrite=True, and then only files of ours; a row's samples file OUT.<row>.jsonl is
    replaced only when it is a samples file. Returns the rows to keep ({} unless resuming)."""
    md, path = out + ".md", out + ".json"
    for name in names:
        check_output(f"{out}.{name}.jsonl", True, "out")
    if not (overwrite and os.path.isfile(md) and ours(md)):
        check_output(md, overwrite, "out")
    if overwrite or not os.path.exists(path):
        check_output(path, overwrite, "out")
        return {}
    try:
        with open(path) as f:
            done = json.load(f)
        assert isinstance(done["rows"], dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise InputError(f"{path!r} exists and is not an unfinished result of this script: pass --overwrite=True or "
                         "another --out") from None
    changed = [k for k, v in settings().items() if done.get("settings", {}).get(k) != v]
    if changed:
        raise InputError(f"{path!r} holds results of other settings ({changed[0]}={done['settings'].get(changed[0])!r}, "
                         f"now {settings()[changed[0]]!r}): run it unchanged to go on, or pass --overwrite=True")
    return done["rows"]


# -----------------------------------------------------------------------------
# The spans

def sentence_ends(tokens, enc):
    """The positions of the tokens that end a sentence: text ending in . ! or ?, followed by a token that
    starts with a space, or last."""
    texts = [enc.decode([int(t)]) for t in tokens]
    return [i for i, s in enumerate(texts) if s.rstrip().endswith((".", "!", "?"))
            and (i + 1 == len(texts) or texts[i + 1][:1].isspace())]


def cut_span(tokens, enc, rng):
    """(prefix, span, suffix) of a paragraph, the span k whole consecutive sentences, k uniform in min_sentences
    ..max_sentences as far as the paragraph leaves some context; None when it has no such span."""
    ends = sentence_ends(tokens, enc)
    starts = [0] + [e + 1 for e in ends[:-1]]
    units = len(ends) + (not ends or ends[-1] < len(tokens) - 1)  # a trailing unfinished sentence is context
    top = min(max_sentences, len(ends), units - 1)
    if top < min_sentences:
        return None
    k = int(rng.integers(min_sentences, top + 1))
    first = int(rng.integers(0, len(ends) - k + 1))
    a, b = starts[first], ends[first + k - 1] + 1
    return list(tokens[:a]), list(tokens[a:b]), list(tokens[b:])


def paragraph_cases(directory, enc):
    """num_paragraphs cases {"paragraph", "prefix", "span", "suffix"} from the val split, in a random order
    (seed), each paragraph's span cut at random."""
    tokens, idx, _ = load_data(directory)[1]["val"]
    rng = np.random.default_rng(seed)
    cases = []
    for i in rng.permutation(len(idx) - 1).tolist():
        cut = cut_span(tokens[idx[i]:idx[i + 1]].tolist(), enc, rng)
        if cut:
            cases.append(dict(zip(("paragraph", "prefix", "span", "suffix"), (i, *cut))))
        if len(cases) == num_paragraphs:
            break
    if not cases:
        raise InputError(f"no paragraph of {directory}'s val split has {min_sentences} whole sentence(s) to cut and "
                         "context left")
    return cases


# -----------------------------------------------------------------------------
# The scores

def lcs_len(a, b):
    """The length of the longest common subsequence of two lists (one row of the dynamic programme)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # the previous row's entry left of j
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def lcs_f1(pred, true):
    """F1 of precision LCS / len(pred) and recall LCS / len(true): 2 LCS / (len(pred) + len(true)); 1 for two
    empty lists."""
    return 2 * lcs_len(pred, true) / (len(pred) + len(true)) if pred or true else 1.0


def score(cases, fills):
    """A row's metrics: the infills' lengths against the spans' and their LCS F1 with them."""
    n = np.array([len(c["span"]) for c in cases]), np.array([len(f) for f in fills])
    err, f1 = n[1] - n[0], np.array([lcs_f1(f, c["span"]) for f, c in zip(fills, cases)])
    return {"paragraphs": len(cases), "span_len": float(n[0].mean()), "infill_len": float(n[1].mean()),
            "len_abs_err": float(np.abs(err).mean()), "len_err": float(err.mean()), "exact_len": float((err == 0).mean()),
            "f1": float(f1.mean()), "f1_se": float(f1.std() / np.sqrt(len(f1)))}


def genppl(path):
    """evaluate.py --task=genppl on a row's samples file under ref_model (a separate process: scripts never
    import scripts); its perplexity."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--task=genppl", f"--samples={path}",
                           f"--ref_model={ref_model}", f"--ref_batch_size={ref_batch_size}", "--overwrite=True"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise InputError(f"evaluate.py --task=genppl on {path} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    with open(path + ".genppl.json") as f:
        return json.load(f)["genppl"]


# -----------------------------------------------------------------------------
# The rows

@torch.no_grad()
def start_forecast(model_fn, cfg, pieces):
    """A FlexMDM's g on each case's start state (the state sampler.infill starts from: its prefix and suffix, all
    fixed, at t = 0, the other gaps marked closed), as notes: g in the open gap (the infill length it forecasts)
    and summed over every gap (what it forecasts the paragraph lacks, wherever), their means over the cases. A
    model trained without gap_embedding is not told which gap is open: where a span was cut is only seen once a
    token of it is present."""
    prompts, open_gaps = infill_prompts(pieces, cfg, 0)
    g_open, g_all, size = [], [], cfg.batch_size or len(prompts)
    for i in range(0, len(prompts), size):
        state = initial_state(prompts[i:i + size], open_gaps[i:i + size], len(prompts[i:i + size]), cfg)
        closed = gap_masks(state, state.x.shape[1])[1]
        g = model_fn(state.x, torch.zeros(len(state.x), device=cfg.device), state.fixed, closed)[1].float()
        for b, (gap,) in enumerate(open_gaps[i:i + size]):
            g_open.append(g[b, gap].item())
            g_all.append(g[b, :state.lengths[b] + 1].sum().item())
    return {"g_open": float(np.mean(g_open)), "g_all": float(np.mean(g_all))}


def fill_with(label, path, cases):
    """{row: (model, gap length, infills, notes)} of one run: a FlexMDM's one row, an MDM's one per scale (its
    masks: the scale times the span length, at least 1, at most what its canvas leaves: notes count those cut)."""
    model, ckpt = load_model(path, device)
    model_type, meta = ckpt["model_args"]["model_type"], ckpt["meta"]
    alpha, beta = schedules(ckpt["config"])
    cfg = pick(SamplerConfig, globals(), max_len=model.cfg.max_len, mask_id=meta["mask_id"], pad_id=meta["pad_id"],
               model_type=model_type, alpha=alpha, beta=beta, device=device)
    model_fn = model.sampler_fn(alpha if model_type == "flexmdm" else beta)
    pieces = [[c["prefix"], c["suffix"]] for c in cases]
    rows = {}
    with autocast(device, dtype if "cuda" in device else "float32"):
        for scale in scales() if model_type == "mdm" else [None]:
            room = [cfg.max_len - len(c["prefix"]) - len(c["suffix"]) for c in cases]
            masks = [min(max(1, round(scale * len(c["span"]))), r) for c, r in zip(cases, room)] if scale else 0
            gaps = [filled[0] for filled in infill(model_fn, len(cases), cfg, pieces, masks, seed=seed)]
            notes = {"masks": float(np.mean(masks)), "masks_cut": sum(m < round(scale * len(c["span"]))
                                                                      for m, c in zip(masks, cases))} if scale else \
                start_forecast(model_fn, cfg, pieces)
            rows[f"{label}_x{scale:g}" if scale else label] = ("MDM" if scale else "FlexMDM",
                                                               f"{scale:g} x true" if scale else "its own", gaps, notes)
    return rows


def floors(cases, directory, vocab):
    """{row: (model, gap length, infills, notes)} of the floors, told the true length: uniform random tokens, and
    draws from the unigram law of the data's train split."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(np.asarray(load_data(directory)[1]["train"][0]), minlength=vocab)[:vocab].astype(np.float64)
    return {"floor_random": ("floor", "true", [rng.integers(0, vocab, len(c["span"])).tolist() for c in cases], {}),
            "floor_unigram": ("floor", "true", [rng.choice(vocab, len(c["span"]), p=counts / counts.sum()).tolist()
                                                for c in cases], {})}


def write_row(name, made, cases, enc):
    """A row's samples file OUT.<row>.jsonl and its metrics (with the generative perplexity under ref_model);
    made: (model, gap length, infills, notes)."""
    (kind, gap, fills, notes), path, records = made, f"{out}.{name}.jsonl", []
    for c, fill in zip(cases, fills):
        seq = interleave([c["prefix"], c["suffix"]], [fill])
        records.append({"tokens": seq, "length": len(seq), "text": decode(enc, seq), "paragraph": c["paragraph"],
                        "prompt": decode(enc, c["prefix"]) + "[...]" + decode(enc, c["suffix"]),
                        "infills": [decode(enc, fill)], "infill_tokens": [fill], "truth": decode(enc, c["span"])})
    write_jsonl(path, records)
    row = {"model": kind, "gap": gap, **(score(cases, fills) if name != "truth" else {"paragraphs": len(cases)}),
           **notes}
    if ref_model:
        row["genppl"] = genppl(path)
    return row


def table(rows):
    """OUT.md: one line per row."""
    lines = [TABLE_HEAD + " span tokens | infill tokens | length error (mean abs) | signed | exact length | "
             "LCS F1 (token ids) | genppl |", "|" + " --- |" * 11]
    for name, r in rows.items():
        scored = "span_len" in r
        gap = r["gap"] + (f" ({r['masks']:.1f} masks, {r['masks_cut']} cut to the canvas)" if "masks" in r else "") + (
            f" (g at t = 0: {r['g_open']:.1f} in the gap, {r['g_all']:.1f} in all)" if "g_open" in r else "")
        cells = [name, r["model"], gap, r["paragraphs"]] + ([
            f"{r['span_len']:.1f}", f"{r['infill_len']:.1f}", f"{r['len_abs_err']:.1f}", f"{r['len_err']:+.1f}",
            f"{100 * r['exact_len']:.0f} %", f"{r['f1']:.3f} +- {r['f1_se']:.3f}"] if scored else [""] * 6) + [
            f"{r['genppl']:.1f}" if "genppl" in r else ""]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def add_rows(state, made, cases, enc):
    """Score and write the rows of made {row: (model, gap length, infills, notes)} that state["rows"] lacks,
    saving OUT.json after each."""
    for name in made:
        if name not in state["rows"]:
            state["rows"][name] = row = write_row(name, made[name], cases, enc)
            atomic_write(out + ".json", lambda f: json.dump(state, f, indent=1))
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)


def main():
    configure(globals(), sys.argv[1:])
    kinds, directory, rows = check_settings()
    enc = gpt2()
    cases = paragraph_cases(directory, enc)
    state = {"settings": settings(), "data_dir": directory, "rows": rows}
    truth = {"truth": ("data", "true", [c["span"] for c in cases], {})} if ref_model else {}
    add_rows(state, truth | floors(cases, directory, GPT2_VOCAB - 1), cases, enc)  # the ids of encode_ordinary
    for label, path in parse_runs().items():
        if not all(name in rows for name in row_names({label: kinds[label]})):
            add_rows(state, fill_with(label, path, cases), cases, enc)
    state["rows"] = {name: rows[name] for name in row_names(kinds)}  # the table's order, whatever the resumes did
    atomic_write(out + ".json", lambda f: json.dump(state, f, indent=1))
    atomic_write(out + ".md", lambda f: f.write(table(state["rows"])))
    print(f"wrote {out}.json, {out}.md and the infills as {out}.<row>.jsonl")


if __name__ == "__main__":
    run(main, interrupted="the rows done so far are in OUT.json (--out): run the same command again to go on")
