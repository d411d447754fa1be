"""
Sample from a trained FlexMDM (or the MDM baseline) and write the samples as JSON lines:

    python sample.py --out_dir=out/maze_cpu                        # EMA weights of out_dir/ckpt.pt
    python sample.py --out_dir=out/wikitext --num_samples=256 --steps=256 --sampler=adaptive
    python sample.py --out_dir=out/wikitext --target_len=100 --early_stop=0.01 --samples_file=out/wikitext/len100.jsonl
    python sample.py --out_dir=out/wikitext --prompt="The cat [...] on the mat. [...]" --num_samples=4
    python sample.py --out_dir=out/wikitext --prompt_file=prompts.txt --num_samples=10   # line i % lines per sample
    python sample.py --out_dir=out/maze_cpu --num_samples=8 --trace=True   # + samples.jsonl.trace.txt, .trace.png
    torchrun --standalone --nproc_per_node=8 sample.py --out_dir=out/owt --num_samples=1024   # the same samples, 8 GPUs

One line per sample: {"tokens", "length"}, plus "subgoals" for a maze model and "text" for a GPT-2 BPE one;
with a prompt also "prompt" (its text), "infills" (the text each gap was filled with, in order) and
"infill_tokens" (their token ids).
The sampler settings below are sampler.SamplerConfig's fields of the same names (their meaning is there):
a field added there is set from here by a global of its name, nothing else.

Prompts (text checkpoints): in --prompt, each --marker (default [...]) is a gap that the model fills, the
text between markers is fixed (parse_prompt says how whitespace around a marker is tokenised); a prompt
without a marker is a prefix that the model continues. --prompt_file holds one prompt per line (blank lines
skipped), cycled to num_samples: sample i gets line i % lines (give --num_samples=LINES for one sample each).
A FlexMDM fills each gap with as many tokens as it chooses (insertion happens in the marked gaps only;
--target_len / --min_len count the prompt too). The MDM cannot: each gap gets --infill_len masks, and its
canvas is closed after the prompt's last text (sampler.infill), so an MDM infill is at most infill_len tokens
(the pads it draws in a gap are left out of it).

--trace=True also writes, for the first --trace_samples samples, every step of the chain beside the samples
file: SAMPLES.trace.txt (one line per step: the state, masks as _, masks inserted at that step as +, tokens
unmasked at that step in {}) and SAMPLES.trace.png (each sample's length against the step, the insertions
and unmaskings coloured).

A maze model samples paths through the held-out subgoal sets of its dataset (data/<dataset>, val split:
distinct sets in file order, cycled), and never generates SEP. An existing samples (or trace) file is never
replaced unless --overwrite=True. Batch i (samples i * batch_size onwards) draws from its own random stream
seeded from (seed, i), so the samples depend on seed and batch_size only: under torchrun the batches go
round-robin to the processes (one GPU each) and rank 0 gathers them and writes the file that one process
would write (on the same kind of device).
"""
import os
import sys

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_device, check_ranges, configure, init_distributed, pick, run

import numpy as np
import torch
import torch.distributed as dist

from checkpoint import load_model
from data import atomic_write, check_output, decode, gpt2, maze_prompts, write_jsonl
from diagnostics import pyplot
from interpolant import schedules
from model import autocast
from sampler import SamplerConfig, generate, infill, interleave

# -----------------------------------------------------------------------------
out_dir = "out"  # the run directory holding ckpt.pt
ckpt_file = ""  # default: out_dir/ckpt.pt (another checkpoint of the run: train.py's keep_at copies)
samples_file = ""  # default: out_dir/samples.jsonl
overwrite = False  # replace an existing samples_file (and its trace files)
num_samples = 64
seed = 1337
use_ema = True
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"
# prompts (text checkpoints)
prompt = ""  # fixed text, each marker a gap the model fills; no marker: a prefix it continues; "": no prompt
prompt_file = ""  # one prompt per line (blank lines skipped), cycled to num_samples
marker = "[...]"  # the gap marker in prompt and prompt_file
infill_len = 16  # the MDM with a prompt: masks per gap (an MDM cannot choose a gap's length)
# the trace
trace = False  # also write SAMPLES.trace.txt and SAMPLES.trace.png: the first trace_samples samples step by step
trace_samples = 4
# the sampler: sampler.SamplerConfig's fields of these names
batch_size = 64  # the unit of work: one random stream per batch; the samples depend on seed and batch_size
steps = 256  # model calls per sample
grid_power = 1.0  # the calls at t_k = (k / (N - 1))^grid_power; 1 = the paper's uniform grid
sampler = "vanilla"  # vanilla | adaptive
unmask = "poisson"  # vanilla unmasking rule: poisson (paper) | exact
confidence = "top_prob"  # adaptive: top_prob | margin | entropy | position
gamma1 = 0.0  # adaptive sliding window: the leftmost min(floor(gamma1 * K), gamma2) masks; 0 = off
gamma2 = 64
temperature = 1.0  # 0 = argmax
final = "draw"  # last step: draw the remaining masks from f, or take the argmax
early_stop = 0.0  # FlexMDM: a row without masks stops once its expected future insertions are below this; 0 = off
min_len = 0  # FlexMDM length control (prompt included): every sample at least this long; 0 = off
target_len = 0  # FlexMDM: every sample exactly this long (conditioned on the length); 0 = off
progress = True  # a progress bar (steps, samples/s) on a terminal (rank 0's)
# -----------------------------------------------------------------------------
TRACE_HEAD = "# sampling trace"  # how a trace text file of ours begins


def parse_prompt(text, marker="[...]"):
    """The fixed pieces of a prompt, as strings, with a gap between each two: text split at each marker.
    GPT-2's BPE attaches a space to the word after it (" sat"), so the whitespace just before a marker is
    stripped and the whitespace after it kept: "The cat [...] on the mat." is "The cat", a gap, " on the
    mat.", and the infill brings its own leading space (" sat"). A marker at the start or the end gives an
    empty first or last piece (a gap there); markers with nothing but whitespace between them are one gap; a
    marker inside a word splits it ("un[...]able": "un", a gap, "able"); a prompt without a marker is a
    prefix that the model continues (its trailing whitespace stripped, a gap at its end); the empty prompt is
    one gap and nothing fixed: unconditional. Each piece is then encoded on its own (encode_ordinary)."""
    if not marker.strip():
        raise InputError(f"marker={marker!r} must be a visible string, e.g. [...]")
    parts = text.split(marker) if marker in text else [text, ""]
    parts = [p.rstrip() for p in parts[:-1]] + parts[-1:]
    return [parts[0], *(p for p in parts[1:-1] if p), parts[-1]]


def read_prompts():
    """The prompt of each sample ([] without one): --prompt for every sample, or the lines of --prompt_file
    (blank lines skipped) cycled to num_samples."""
    if prompt and prompt_file:
        raise InputError("give --prompt or --prompt_file, not both")
    if not prompt_file:
        return [prompt] * num_samples if prompt else []
    try:
        with open(prompt_file, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as e:
        raise InputError(f"could not read prompt_file {prompt_file!r} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(f"prompt_file {prompt_file!r} is not a UTF-8 text file (one prompt per line)") from None
    if not lines:
        raise InputError(f"prompt_file {prompt_file!r} holds no prompt (one per line)")
    return [lines[i % len(lines)] for i in range(num_samples)]


def gather_samples(samples, world):
    """Under torchrun: rank 0 gets every sample, each from the process that made it (generate returns None
    for the others' samples), in sample order; the other ranks get None. gather_object pickles the
    token lists, small next to the model, and needs no shared file system."""
    if world == 1:
        return samples
    parts = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(samples, parts, dst=0)
    return [next(s for s in copies if s is not None) for copies in zip(*parts)] if parts is not None else None


def trace_ours(path):
    """Whether the file at path is a trace text of this script (its first line)."""
    with open(path, errors="replace") as f:
        return f.readline().startswith(TRACE_HEAD)


def check_settings(path, ckpt_path, given, texts):
    """The script's own settings, before any work (the sampler's are SamplerConfig's), and its outputs: never
    the checkpoint it reads, never a file of another kind, an existing one only with --overwrite=True."""
    check_device(device)
    check_choices(globals(), dict(dtype=("float32", "bfloat16")))
    check_ranges(globals(), dict(num_samples=">0", batch_size=">=0", seed=">=0", infill_len=">0", trace_samples=">0"))
    if not marker.strip():
        raise InputError(f"marker={marker!r} must be a visible string, e.g. [...]")
    if "infill_len" in given and not texts:
        raise InputError("infill_len is the MDM's masks per gap of a prompt: give --prompt or --prompt_file too")
    check_output(path, overwrite, "samples_file", inputs=(ckpt_path,))
    for out in (path + ".trace.txt", path + ".trace.png") if trace else ():
        if not (out.endswith(".txt") and overwrite and os.path.isfile(out) and trace_ours(out)):
            check_output(out, overwrite, "samples_file", inputs=(ckpt_path,))


# -----------------------------------------------------------------------------
# The trace, rendered: text (one line per step) and a picture

def token_labels(meta, enc):
    """(label(token) -> str, the string between two tokens) for the trace: GPT-2 text run on, or maze cells as
    row,column spaced apart; pad as a middle dot, SEP as |."""
    special = {meta["pad_id"]: "\u00b7", meta.get("sep_id"): "|"}
    if enc is not None:
        return (lambda v: special.get(v) or decode(enc, [v]).replace("\n", "\\n")), ""
    width = meta["grid"][1]
    return (lambda v: special.get(v) or "%d,%d" % divmod(v, width)), " "


def replay(entry, mask_id):
    """The states of one traced sample (generate's trace entry), start first: (t, tokens, fixed, inserted,
    unmasked) per state, inserted and unmasked the sets of positions that changed at that step."""
    tokens, fixed = list(entry["start"]), list(entry["fixed"])
    yield 0.0, tokens, fixed, set(), set()
    for step in entry["steps"]:
        inserted, old, old_fixed = set(step["inserted"]), iter(tokens), iter(fixed)
        tokens = [mask_id if j in inserted else next(old) for j in range(len(step["tokens"]))]
        fixed = [False if j in inserted else next(old_fixed) for j in range(len(tokens))]
        for j, v in step["unmasked"]:
            tokens[j] = v
        yield step["t"], tokens, fixed, inserted, {j for j, _ in step["unmasked"]}


def trace_text(traces, labels, mask_id, pad_id, samples_path):
    """The trace as text: per sample, one line per step (the step, the time it reached, the length, the state,
    its trailing pads counted: the MDM's canvas); labels: token_labels'."""
    label, joiner = labels
    lines = [f"{TRACE_HEAD} of {samples_path} (sample.py --trace=True): one line per step: the step, the time t "
             "it reached, the length, then the state: _ a mask, + a mask inserted at this step, {x} a token "
             "unmasked at this step, \u00b7 a pad (\u00b7xN: N pads at the end)"]
    for i, entry in enumerate(traces):
        lines.append(f"\n## sample {i}")
        for k, (t, tokens, _, inserted, unmasked) in enumerate(replay(entry, mask_id)):
            n = len(tokens)
            while n and tokens[n - 1] == pad_id and n - 1 not in unmasked:  # the trailing pads, counted
                n -= 1
            shown = ["+" if j in inserted else "_" if v == mask_id else "{%s}" % label(v) if j in unmasked
                     else label(v) for j, v in enumerate(tokens[:n])]
            if n < len(tokens):
                shown.append(f"{label(pad_id)}x{len(tokens) - n}")
            lines.append(f"{k:4d} t={t:.3f} n={len(tokens):4d} | {joiner.join(shown)}")
    return "\n".join(lines) + "\n"


TRACE_COLORS = ("white", "#555555", "#c9d3df", "#4c72b0", "#55a868", "#dd8452")
TRACE_KINDS = ("", "fixed (prompt)", "mask", "token", "inserted at this step", "unmasked at this step")


def trace_figure(traces, mask_id, pad_id):
    """Per traced sample (up to 4), its state at each step as a column of coloured positions: the length
    against the step (time t on the axis), insertions and unmaskings coloured. Returns the figure."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
    traces = traces[:4]
    fig, axes = pyplot().subplots(len(traces), 1, figsize=(7, 1.9 * len(traces) + 0.5), squeeze=False)
    for i, (entry, ax) in enumerate(zip(traces, axes[:, 0])):
        states = list(replay(entry, mask_id))
        grid = np.zeros((max(1, *(len(s[1]) for s in states)), len(states)), dtype=np.int64)
        for k, (_, tokens, fixed, inserted, unmasked) in enumerate(states):
            for j, v in enumerate(tokens):
                grid[j, k] = (4 if j in inserted else 5 if j in unmasked else 1 if fixed[j] else 2 if v == mask_id
                              else 0 if v == pad_id else 3)
        ax.imshow(grid, cmap=ListedColormap(TRACE_COLORS), vmin=0, vmax=5, origin="lower", aspect="auto",
                  interpolation="nearest")
        ticks = np.linspace(0, len(states) - 1, 5).round().astype(int)
        ax.set_xticks(ticks, [f"{states[k][0]:.2f}" for k in ticks], fontsize=7)
        ax.set_ylabel("position", fontsize=8), ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"sample {i}: {len(states) - 1} steps, final length {len(states[-1][1])}", fontsize=8)
    axes[-1, 0].set_xlabel("time t (one column per step)", fontsize=8)
    fig.legend(handles=[Patch(color=c, label=k) for c, k in zip(TRACE_COLORS[1:], TRACE_KINDS[1:])], loc="lower center",
               ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (1.9 * len(traces) + 0.5), 1, 1))
    return fig


def write_trace(path, traces, labels, meta):
    """SAMPLES.trace.txt and SAMPLES.trace.png beside the samples file, each whole or not at all."""
    text = trace_text(traces, labels, meta["mask_id"], meta["pad_id"], path)
    atomic_write(path + ".trace.txt", lambda f: f.write(text))
    fig = trace_figure(traces, meta["mask_id"], meta["pad_id"])
    try:
        atomic_write(path + ".trace.png", lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    finally:
        pyplot().close(fig)
    print(f"wrote {path}.trace.txt and {path}.trace.png ({len(traces)} samples, step by step)")


# -----------------------------------------------------------------------------

def sample_records(seqs, prompts, subgoals, enc, model_type):
    """The lines of the samples file without a text prompt (the MDM's maze prompt cut off)."""
    records = []
    for b, seq in enumerate(seqs):
        seq = seq[len(prompts[b]):] if prompts is not None and model_type == "mdm" else seq
        records.append({"tokens": seq, "length": len(seq)} | ({"subgoals": subgoals[b]} if subgoals else {})
                       | ({"text": decode(enc, seq)} if enc else {}))
    return records


def infill_records(gaps, texts, pieces, enc):
    """The lines of the samples file with a text prompt: the whole sample, the prompt and each gap's infill."""
    records = []
    for b, filled in enumerate(gaps):
        seq = interleave(pieces[b], filled)
        records.append({"tokens": seq, "length": len(seq), "text": decode(enc, seq), "prompt": texts[b],
                        "infills": [decode(enc, g) for g in filled], "infill_tokens": filled})
    return records


def prompt_pieces(texts, enc, ckpt_path, meta):
    """Each sample's pieces of token ids (parse_prompt, each distinct prompt encoded once); text checkpoints only."""
    if texts and enc is None:
        raise InputError(f"--prompt and --prompt_file need a text checkpoint (GPT-2 BPE): {ckpt_path!r} is a "
                         f"{meta.get('tokenizer')} model")
    encoded = {s: [enc.encode_ordinary(p) for p in parse_prompt(s, marker)] for s in set(texts)}
    return [encoded[s] for s in texts]


def main():
    given = configure(globals(), sys.argv[1:])
    path, ckpt_path = samples_file or os.path.join(out_dir, "samples.jsonl"), ckpt_file or os.path.join(out_dir, "ckpt.pt")
    texts = read_prompts()
    check_settings(path, ckpt_path, given, texts)
    ddp, rank, _, world, dev = init_distributed(device)
    model, ckpt = load_model(ckpt_path, dev, use_ema)
    meta, model_type = ckpt["meta"], ckpt["model_args"]["model_type"]
    enc = gpt2() if meta.get("tokenizer") == "gpt2" else None  # before the work: a missing BPE fails now
    pieces = prompt_pieces(texts, enc, ckpt_path, meta)
    if "infill_len" in given and model_type != "mdm":
        raise InputError(f"infill_len is the MDM's masks per gap: {ckpt_path!r} is a FlexMDM, it chooses each gap's "
                         "length")
    subgoals = None
    if meta.get("tokenizer") == "maze":
        subgoals = maze_prompts(os.path.join("data", ckpt["config"]["dataset"]), num_samples, meta)
    prompts = [s + [meta["sep_id"]] for s in subgoals] if subgoals and model_type == "mdm" else subgoals
    alpha, beta = schedules(ckpt["config"])
    cfg = pick(SamplerConfig, globals(), max_len=model.cfg.max_len, mask_id=meta["mask_id"], pad_id=meta["pad_id"],
               model_type=model_type, alpha=alpha, beta=beta, device=dev, progress=progress and rank == 0,
               banned=(meta["sep_id"],) if "sep_id" in meta else ())  # SEP only ever ends a prompt
    traces = [None] * min(trace_samples, num_samples) if trace else None
    model_fn = model.sampler_fn(alpha if model_type == "flexmdm" else beta)  # conditioned as in training
    with autocast(dev, dtype if "cuda" in dev else "float32"):  # on a CPU sample.py has always run in float32
        if pieces:
            seqs = infill(model_fn, num_samples, cfg, pieces, infill_len if model_type == "mdm" else 0, seed=seed,
                          rank=rank, world=world, trace=traces)
        else:
            seqs = generate(model_fn, num_samples, cfg, prompts=prompts, seed=seed, rank=rank, world=world,
                            trace=traces)
    seqs, traces = gather_samples(seqs, world), traces and gather_samples(traces, world)
    if ddp:
        dist.destroy_process_group()
    if rank != 0:
        return
    records = (infill_records(seqs, texts, pieces, enc) if pieces else
               sample_records(seqs, prompts, subgoals, enc, model_type))
    write_jsonl(path, records)
    lengths = [r["length"] for r in records]
    print(f"wrote {len(records)} samples to {path} ({world} process(es); length mean {np.mean(lengths):.1f}, "
          f"min {min(lengths)}, max {max(lengths)})")
    if traces:
        write_trace(path, traces, token_labels(meta, enc), meta)


if __name__ == "__main__":
    run(main, interrupted="no samples were written; run the command again")
