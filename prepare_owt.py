"""
Variable-length text data (paper section 5.1.1, appendix F.1): every document is split into
paragraphs, each paragraph is encoded with the GPT-2 BPE (tiktoken "gpt2"), and a paragraph
longer than max_len tokens is cut into consecutive chunks of max_len (the last one shorter), or
with --long=drop left out (then no sequence sits at max_len because it was cut there).

Paragraphs. The paper locates the "\\n\\n" delimiter token; but the GPT-2 BPE does not encode a
blank line one way ("a\\n\\nb" -> 198 198, "a.\\n\\n\\nb" -> 628 198, " \\n\\n" -> 220 628), so we split
the *text* on blank lines (the regex \\n\\s*\\n: two newlines with only whitespace between them,
any run of them), strip each paragraph of surrounding whitespace, drop empty ones, and only then
encode each paragraph on its own. A stored sequence never holds a blank line, and decoding the
chunks of a paragraph gives back the stripped paragraph exactly. "<|endoftext|>" inside a text is
encoded as plain text (encode_ordinary), so ids are 0..50255.

Sources, all through `datasets`:
  - default: OpenWebText from the hub ("Skylion007/openwebtext", column "text");
  - a local .txt file, folder or glob (datasets' "text" builder): --txt_unit=doc reads one
    document per file; --txt_unit=line reads one document per line (WikiText-style files with one
    paragraph per line: WikiText's " = Heading = " lines are kept, as short paragraphs);
  - local .jsonl / .json with a "text" field (datasets' "json" builder).
Validation: all of --val_source, else a --val_frac of the documents (a fixed hash of the document
index and --seed decides, the same for streaming and for num_proc maps).

Files in out_dir (default data/owt), for split in train, val:
  {split}.bin  uint16 token stream, all sequences concatenated
  {split}.idx  int64 start offsets, num_sequences+1 entries (0 first, len(.bin) last)
  meta.json    vocab_size 50259 (GPT-2's 50257 ids, pad 50257, mask 50258), max_len, tokenizer
               "gpt2", counts, the build arguments, and each file's size and SHA-256 (data.py)
  lengths.png  the histogram of sequence lengths (also printed)
The files are written into a temporary directory beside out_dir, renamed to out_dir at the end (a
failed or interrupted run leaves nothing); an existing out_dir is refused, and with --overwrite=True
replaced only if it is a dataset that a prepare script wrote, holding nothing else (data.atomic_dir).
The GPT-2 BPE comes from tiktoken's cache (data.gpt2): offline, TIKTOKEN_CACHE_DIR must name a cache that
holds it (../shared/tiktoken_cache, or one that a first online run filled).

    python prepare_owt.py                                           # OpenWebText -> data/owt
    python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw --txt_unit=line \\
        --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len=256 --out_dir=data/wikitext
"""
import glob
import json
import os
import sys

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_ranges, configure, run

import numpy as np

from data import GPT2_VOCAB, SplitWriter, atomic_dir, chunk, gpt2, record_files, split_paragraphs

# -----------------------------------------------------------------------------
source = "Skylion007/openwebtext"  # hub dataset name, or a local .txt/.jsonl file, folder or glob
val_source = ""  # validation documents (empty: a val_frac of the source's documents)
val_frac = 0.0005  # fraction of the documents for validation
txt_unit = "doc"  # text files: one document per file (doc) or per line (line, WikiText)
max_len = 1024  # longer paragraphs are chunked to this (or dropped)
long = "chunk"  # paragraphs over max_len: chunk | drop
out_dir = "data/owt"
overwrite = False  # replace an existing out_dir (only once the new one is complete)
streaming = False  # stream the source instead of downloading it
num_proc = min(8, os.cpu_count() or 1)  # tokenizing processes
seed = 2357  # seed of the val_frac document split
max_docs = 0  # only the first N documents of each source (0 = all)
cache_dir = ""  # datasets cache (empty: datasets' own)
revision = ""  # hub dataset revision (branch, tag or commit)
# -----------------------------------------------------------------------------

PAD_ID, MASK_ID = GPT2_VOCAB, GPT2_VOCAB + 1
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


# ----------------------------------------------------------------------------------------------
# Documents to sequences

def encode_document(text, max_len, enc=None, long="chunk"):
    """Token sequences of one document: its paragraphs, encoded, long ones chunked (or dropped, with
    long="drop"); and how many paragraphs it had and how many of them were chunked (or dropped)."""
    enc = enc or gpt2()
    seqs, n_par, n_chunked = [], 0, 0
    for paragraph in split_paragraphs(text):
        pieces = chunk(enc.encode_ordinary(paragraph), max_len)
        seqs += pieces if long == "chunk" or len(pieces) == 1 else []
        n_par += 1
        n_chunked += len(pieces) > 1
    return seqs, n_par, n_chunked


def is_val(indices, val_frac, seed):
    """Which documents (by index) go to validation: a splitmix64 hash of (seed, index) below
    val_frac * 2^64, so the choice does not depend on batching, processes or streaming."""
    z = np.asarray(indices, dtype=np.uint64) + np.array([seed], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0 ** 53 < val_frac


def tokenize_batch(batch, indices, max_len, val_frac, seed, long="chunk"):
    """datasets map function, one row per document: flat ids of its sequences, their lengths,
    its paragraph counts and its split."""
    enc = gpt2()
    out = {"ids": [], "lens": [], "n_par": [], "n_chunked": [], "val": is_val(indices, val_frac, seed).tolist()}
    for text in batch["text"]:
        seqs, n_par, n_chunked = encode_document(text or "", max_len, enc, long)
        out["ids"].append([t for s in seqs for t in s])
        out["lens"].append([len(s) for s in seqs])
        out["n_par"].append(n_par)
        out["n_chunked"].append(n_chunked)
    return out


# ----------------------------------------------------------------------------------------------
# Sources

def resolve_local(source):
    """The local files a source names (a file, a folder's text/json files, or a glob), or None
    when it names no local path (then it is a hub dataset)."""
    if os.path.isdir(source):
        files = sorted(f for f in glob.glob(os.path.join(source, "*")) if os.path.isfile(f))
    elif os.path.isfile(source):
        files = [source]
    elif glob.has_magic(source):
        files = sorted(f for f in glob.glob(source) if os.path.isfile(f))
    else:
        return None
    if not files:
        raise InputError(f"no files found for source {source!r}")
    return files


def load_source(source, txt_unit="doc", streaming=False, num_proc=None, cache_dir=None, max_docs=0, revision=None):
    """A datasets Dataset (or IterableDataset when streaming) of documents with a "text" column."""
    import datasets
    files = resolve_local(source)
    try:
        if files is None:
            ds = datasets.load_dataset(source, split="train", streaming=streaming, cache_dir=cache_dir, revision=revision,
                                       **({} if streaming else {"num_proc": num_proc}))
        else:
            json_files = [f.endswith(JSON_SUFFIXES) for f in files]
            if any(json_files) and not all(json_files):
                raise InputError(f"source {source!r} mixes .json(l) and text files; give one kind")
            if all(json_files):
                ds = datasets.load_dataset("json", data_files=files, split="train", streaming=streaming,
                                           cache_dir=cache_dir)
            else:
                ds = datasets.load_dataset("text", data_files=files, split="train", streaming=streaming,
                                           cache_dir=cache_dir, sample_by="document" if txt_unit == "doc" else "line")
    except Exception as e:  # a missing hub dataset, no network, a broken file: one line, not a stack
        msg = str(e).splitlines()[0] if str(e) else ""
        hint = " (a dataset script: try --revision=refs/convert/parquet)" if "script" in msg or "custom code" in msg else ""
        raise InputError(f"could not load source {source!r}{hint}: {type(e).__name__}: {msg}")
    first = next(iter(ds), None)
    if first is None:
        raise InputError(f"source {source!r} has no documents")
    if "text" not in first:
        raise InputError(f"source {source!r} has no 'text' field (fields: {sorted(first)})")
    if max_docs:
        ds = ds.take(max_docs) if streaming else ds.select(range(min(max_docs, len(ds))))
    return ds


def tokenize(ds, max_len, val_frac, seed, num_proc, desc, long="chunk"):
    """ds.map(tokenize_batch); ids stored as uint16 (the map's cache is 2 bytes per token)."""
    import datasets
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value("uint16")),
                                  "lens": datasets.Sequence(datasets.Value("int32")), "n_par": datasets.Value("int32"),
                                  "n_chunked": datasets.Value("int32"), "val": datasets.Value("bool")})
    kwargs = dict(batched=True, with_indices=True, remove_columns=ds.column_names, features=features,
                  fn_kwargs=dict(max_len=max_len, val_frac=val_frac, seed=seed, long=long))
    if isinstance(ds, datasets.Dataset):  # streaming maps lazily, in this process
        kwargs.update(num_proc=num_proc if num_proc > 1 else None, desc=desc)
    return ds.map(tokenize_batch, **kwargs)


# ----------------------------------------------------------------------------------------------
# Writing

class SplitCounter(SplitWriter):
    """data.SplitWriter that also counts documents, paragraphs, chunked paragraphs and lengths."""

    def __init__(self, out_dir, split, max_len):
        super().__init__(out_dir, split, GPT2_VOCAB + 2)
        self.docs, self.paragraphs, self.chunked = 0, 0, 0
        self.counts = np.zeros(max_len + 1, dtype=np.int64)  # counts[n] = sequences of length n

    def add_document(self, ids, lens, n_par, n_chunked):
        self.add(ids, lens)
        self.counts += np.bincount(np.asarray(lens, dtype=np.int64), minlength=len(self.counts))
        self.docs += 1
        self.paragraphs += n_par
        self.chunked += n_chunked


def write_splits(splits_ds, out_dir, max_len):
    """splits_ds: list of (tokenized dataset, split name or None = per-row "val" flag)."""
    from tqdm.auto import tqdm
    writers = {s: SplitCounter(out_dir, s, max_len) for s in ("train", "val")}
    for ds, split in splits_ds:
        total = len(ds) if hasattr(ds, "__len__") else None
        bar = tqdm(total=total, desc=f"writing {split or 'train/val'}", unit="doc")
        for batch in ds.iter(batch_size=1024):
            for ids, lens, n_par, n_chunked, val in zip(batch["ids"], batch["lens"], batch["n_par"],
                                                        batch["n_chunked"], batch["val"]):
                writers[split or ("val" if val else "train")].add_document(ids, lens, n_par, n_chunked)
            bar.update(len(batch["ids"]))
        bar.close()
    for w in writers.values():
        w.close()
    return writers


# ----------------------------------------------------------------------------------------------
# Length statistics

def length_stats(counts):
    """Summary of a length histogram (counts[n] = sequences of length n)."""
    n = int(counts.sum())
    if n == 0:
        return {"n": 0}
    lengths = np.arange(len(counts))
    cdf = np.cumsum(counts) / n
    q = {f"p{int(p * 100)}": int(np.searchsorted(cdf, p)) for p in (0.1, 0.5, 0.9, 0.99)}
    return {"n": n, "mean": float((lengths * counts).sum() / n), "min": int(np.nonzero(counts)[0][0]),
            "max": int(np.nonzero(counts)[0][-1]), **q, "frac_at_max_len": float(counts[-1] / n)}


def histogram_bins(counts, bins=16):
    """A length histogram (counts[n] = sequences of length n) in min(bins, max_len) bins that split
    1..max_len into ranges of near-equal width: a list of (first length, last length, count)."""
    max_len = len(counts) - 1
    bins = min(bins, max_len)
    edges = [i * max_len // bins for i in range(bins + 1)]  # steps of at least 1, so no range is empty
    return [(a + 1, b, int(counts[a + 1:b + 1].sum())) for a, b in zip(edges[:-1], edges[1:])]


def print_histogram(counts, bins=16, width=50):
    """Text histogram of a length histogram (histogram_bins)."""
    binned = histogram_bins(counts, bins)
    top = max(1, max(c for _, _, c in binned))
    for first, last, c in binned:
        print(f"  {first:>5}-{last:<5} {c:>10} {100 * c / max(1, counts.sum()):5.1f}% {'#' * int(round(width * c / top))}")


def plot_histogram(split_counts, path):
    """PNG of the length histograms (density), one line per split; returns path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    max_len = len(next(iter(split_counts.values()))) - 1
    width = max(1, max_len // 64)
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, counts in split_counts.items():
        if counts.sum() == 0:
            continue
        padded = np.concatenate([counts[1:], np.zeros((-max_len) % width, dtype=counts.dtype)])
        binned = padded.reshape(-1, width).sum(1) / counts.sum()
        ax.stairs(binned, np.arange(len(binned) + 1) * width + 1, label=f"{split} (n={counts.sum()})")
    ax.set_xlabel("sequence length (GPT-2 tokens)")
    ax.set_ylabel(f"fraction per bin of {width}")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------

def build(source="Skylion007/openwebtext", val_source=None, val_frac=0.0005, txt_unit="doc", max_len=1024,
          out_dir="data/owt", streaming=False, num_proc=8, seed=2357, max_docs=0, cache_dir=None, revision=None,
          long="chunk", overwrite=False):
    """Prepare the dataset into out_dir, atomically (data.atomic_dir); returns the meta dict
    (also written as meta.json)."""
    val_source, cache_dir, revision = val_source or None, cache_dir or None, revision or None
    if max_len < 1 or max_len > 65535:
        raise InputError(f"max_len must be in 1..65535, got {max_len}")
    if long not in ("chunk", "drop"):
        raise InputError(f"long must be chunk or drop, got {long!r}")
    if txt_unit not in ("doc", "line"):
        raise InputError(f"txt_unit must be doc or line, got {txt_unit!r}")
    if not val_source and not 0 < val_frac < 1:
        raise InputError(f"val_frac must be in (0, 1) when there is no val_source, got {val_frac}")
    with atomic_dir(out_dir, overwrite) as tmp:
        gpt2()
        load = dict(txt_unit=txt_unit, streaming=streaming, num_proc=num_proc, cache_dir=cache_dir, max_docs=max_docs,
                    revision=revision)
        ds = load_source(source, **load)
        if val_source:
            val = load_source(val_source, **load)
            jobs = [(tokenize(ds, max_len, 0.0, seed, num_proc, "tokenizing train", long), "train"),
                    (tokenize(val, max_len, 0.0, seed, num_proc, "tokenizing val", long), "val")]
        else:
            jobs = [(tokenize(ds, max_len, val_frac, seed, num_proc, "tokenizing", long), None)]
        writers = write_splits(jobs, tmp, max_len)
        for split, w in writers.items():
            if w.offset == 0:
                raise InputError(f"the {split} split is empty (source {val_source if split == 'val' and val_source else source!r}); "
                                 f"give more documents or a larger --val_frac")
        counts = {s: w.counts for s, w in writers.items()}
        meta = {
            "vocab_size": GPT2_VOCAB + 2, "pad_id": PAD_ID, "mask_id": MASK_ID, "eot_id": GPT2_VOCAB - 1,
            "max_len": max_len, "tokenizer": "gpt2", "long": long,
            "num_sequences": {s: int(w.counts.sum()) for s, w in writers.items()},
            "num_tokens": {s: int(w.offset) for s, w in writers.items()},
            "num_documents": {s: w.docs for s, w in writers.items()},
            "num_paragraphs": {s: w.paragraphs for s, w in writers.items()},
            "num_chunked_paragraphs": {s: w.chunked for s, w in writers.items()},
            "lengths": {s: length_stats(c) for s, c in counts.items()},
            "source": source, "val_source": val_source, "val_frac": None if val_source else val_frac,
            "txt_unit": txt_unit, "seed": seed, "max_docs": max_docs, "revision": revision, "files": record_files(tmp),
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        plot_histogram(counts, os.path.join(tmp, "lengths.png"))
    print(f"{source} -> {out_dir} (max_len {max_len})")
    for split, w in writers.items():
        st = meta["lengths"][split]
        print(f"  {split}: {w.docs} documents, {w.paragraphs} paragraphs ({w.chunked} chunked), "
              f"{st['n']} sequences, {w.offset} tokens; length mean {st['mean']:.1f}, median {st['p50']}, "
              f"p90 {st['p90']}, p99 {st['p99']}, max {st['max']}, {100 * st['frac_at_max_len']:.2f}% at max_len")
    print("train length histogram:")
    print_histogram(counts["train"])
    print(f"wrote {os.path.join(out_dir, 'lengths.png')}")
    return meta


def main(argv=None):
    c = dict(globals())  # this run's settings; the module's defaults stay as they are
    configure(c, sys.argv[1:] if argv is None else argv)
    check_ranges(c, dict(num_proc=">0", seed=">=0", max_docs=">=0"))  # and build's own checks: max_len, long, val_frac
    return build(c["source"], c["val_source"], c["val_frac"], c["txt_unit"], c["max_len"], c["out_dir"], c["streaming"],
                 c["num_proc"], c["seed"], c["max_docs"], c["cache_dir"], c["revision"], c["long"], c["overwrite"])


if __name__ == "__main__":
    run(main, interrupted="the dataset was not written (its temporary directory is removed); run the command again")
