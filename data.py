"""
What this repo keeps on disk, one home for each piece (checkpoints are checkpoint.py's):

- A prepared dataset, nanoGPT-style: flat token streams that np.memmap reads without loading.
  In a directory, for split in train, val:
    {split}.bin  the tokens of all sequences, concatenated (uint16; uint32 for a vocabulary over 2^16)
    {split}.idx  int64 start offsets, one more than the sequences (0 first, the .bin's length last)
    {split}.fix  uint8, one per token, 1 where the token is fixed (maze subgoals); only some datasets
    meta.json    vocab_size, pad_id, mask_id (sep_id), max_len, tokenizer ("maze", "gpt2"), what
                 the prepare script was asked, and a record of each file (data_files below)
  The vocabulary is the data's tokens, then pad_id, then mask_id (and sep_id, which ends the maze MDM's
  prompt). prepare_maze.py and prepare_owt.py write it (SplitWriter, in a directory made by atomic_dir);
  train.py, sample.py and evaluate.py read it (load_data), checked against the record at every start.
- The GPT-2 BPE (tiktoken "gpt2"), read from tiktoken's cache: offline, TIKTOKEN_CACHE_DIR must name
  a cache that holds it.
- Samples and metrics: JSON lines / JSON, written whole or not at all (atomic_write).
"""
import contextlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from configurator import InputError

GPT2_VOCAB = 50257  # ids 0..50256 (50256 = <|endoftext|>); our pad and mask follow
SPLITS = ("train", "val")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


# ----------------------------------------------------------------------------------------------
# Atomic writes: a file or a directory appears whole, or not at all

def atomic_write(path, write, binary=False):
    """Call write(f) on a temporary file beside path, force it to disk, rename it over path, then force
    the directory entry to disk: a crash, a kill -9 or a power cut at any moment leaves the old file or
    the new one, whole. A failed write removes the temporary file. Returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


@contextlib.contextmanager
def atomic_dir(out_dir, overwrite=False):
    """A new temporary directory beside out_dir to write into. When the block completes it is renamed
    to out_dir; when it raises (or is interrupted) it is removed, and out_dir is left as it was. An
    existing out_dir is refused, or with overwrite replaced, only once the new one is complete."""
    out_dir = os.path.normpath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise InputError(f"{out_dir} already exists: give --overwrite=True to replace it, or another --out_dir")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir} is a file, not a dataset directory: give another --out_dir")
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out_dir):  # overwrite: the old one goes only now
        os.rename(out_dir, tmp + ".old")
        os.rename(tmp, out_dir)
        shutil.rmtree(tmp + ".old")
    else:
        os.rename(tmp, out_dir)


def write_jsonl(path, records):
    """One JSON line per record, atomically."""
    return atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))


def read_jsonl(path):
    """The records of a JSON lines file (blank lines skipped); a line that is not JSON is one line of error."""
    if not os.path.exists(path):
        raise InputError(f"samples file {path!r} not found: run sample.py first or fix --samples")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path!r} line {number} is not JSON ({e.msg})") from None
    return rows


# ----------------------------------------------------------------------------------------------
# Prepared datasets

def token_dtype(vocab_size):
    return np.uint32 if vocab_size > 2**16 else np.uint16


class SplitWriter:
    """Appends sequences to {split}.bin, their offsets to {split}.idx and, with fixed=True, their fixed
    flags to {split}.fix."""

    def __init__(self, out_dir, split, vocab_size, fixed=False):
        self.dtype = token_dtype(vocab_size)
        self.files = {ext: open(os.path.join(out_dir, f"{split}.{ext}"), "wb") for ext in ("bin", "idx") + ("fix",) * fixed}
        np.zeros(1, dtype=np.int64).tofile(self.files["idx"])
        self.offset, self.sequences = 0, 0

    def add(self, tokens, lengths, fix=None):
        """tokens: the flat tokens of len(lengths) sequences; fix: their flags (with fixed=True)."""
        np.asarray(tokens).astype(self.dtype).tofile(self.files["bin"])
        (self.offset + np.cumsum(lengths, dtype=np.int64)).tofile(self.files["idx"])
        if "fix" in self.files:
            np.asarray(fix).astype(np.uint8).tofile(self.files["fix"])
        self.offset += int(np.sum(lengths, dtype=np.int64))
        self.sequences += len(lengths)

    def close(self):
        for f in self.files.values():
            f.close()


def read_meta(data_dir):
    """meta.json of a prepared dataset, checked for the keys every reader needs."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isdir(data_dir):
        raise InputError(f"dataset directory {data_dir!r} not found: prepare it first (prepare_maze.py or prepare_owt.py)")
    if not os.path.exists(path):
        raise InputError(f"missing data file {path!r}: prepare the dataset again")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}): a damaged dataset, prepare it again") from None
    missing = [k for k in ("vocab_size", "pad_id", "mask_id", "max_len", "tokenizer") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise InputError(f"{path} lacks {missing[0]!r}: not a dataset of prepare_maze.py or prepare_owt.py")
    return meta


def load_data(data_dir):
    """meta.json and, per split, (tokens, start offsets, fixed flags or None), memory-mapped."""
    meta = read_meta(data_dir)
    for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
        if not os.path.exists(os.path.join(data_dir, name)):
            raise InputError(f"missing data file {os.path.join(data_dir, name)!r}: prepare the dataset again")
    splits = {}
    for split in SPLITS:
        path = os.path.join(data_dir, split)
        fix = np.memmap(path + ".fix", dtype=np.uint8, mode="r") if os.path.exists(path + ".fix") else None
        splits[split] = (np.memmap(path + ".bin", dtype=token_dtype(meta["vocab_size"]), mode="r"),
                         np.fromfile(path + ".idx", dtype=np.int64), fix)
        if len(splits[split][1]) < 2:
            raise InputError(f"{path}.idx holds no sequence: the {split} split is empty")
    return meta, splits


def sequence_lengths(data_dir, split="val"):
    """The lengths of a prepared split's sequences."""
    return np.diff(load_data(data_dir)[1][split][1])


def max_prompt_len(splits):
    """The longest run of fixed tokens in one sequence (the MDM baseline's prompt, maze subgoals)."""
    lengths = [np.add.reduceat(fix.astype(np.int64), idx[:-1]) for _, idx, fix in splits.values() if fix is not None]
    return int(max(l.max() for l in lengths)) if lengths else 0


def get_batch(split_data, indices, meta, model_type, seq_len):
    """Rows of clean sequences x1 [B, seq_len] right-padded with pad, their lengths and fixed flags.
    FlexMDM: the sequence itself, fixed where the data says so. MDM: [fixed tokens, SEP] as a clean
    prompt (when the data has fixed tokens), then the sequence, then pads as ordinary tokens."""
    import torch
    tokens, idx, fix = split_data
    x1 = np.full((len(indices), seq_len), meta["pad_id"], dtype=np.int64)
    fixed = np.zeros((len(indices), seq_len), dtype=bool)
    lengths = np.zeros(len(indices), dtype=np.int64)
    for row, i in enumerate(indices):
        seq = tokens[idx[i]:idx[i + 1]].astype(np.int64)
        f = fix[idx[i]:idx[i + 1]].astype(bool) if fix is not None else np.zeros(len(seq), dtype=bool)
        if model_type == "mdm" and f.any():
            seq, f = np.concatenate([seq[f], [meta["sep_id"]], seq]), np.arange(len(seq) + f.sum() + 1) <= f.sum()
        x1[row, :len(seq)], fixed[row, :len(seq)], lengths[row] = seq, f, len(seq)
    return torch.from_numpy(x1), torch.from_numpy(lengths), torch.from_numpy(fixed)


def maze_prompts(data_dir, n, maze):
    """Subgoal lists g1..gK of the held-out (val) paths, distinct, in file order, cycled to n."""
    meta, splits = load_data(data_dir)
    tokens, idx, fix = splits["val"]
    if fix is None:
        raise InputError(f"{os.path.join(data_dir, 'val.fix')!r} not found: the maze data for the held-out subgoals is missing")
    if meta.get("maze") != maze:
        raise InputError(f"{data_dir!r} holds another maze than the one this checkpoint was trained on")
    goals = list(dict.fromkeys(tuple(tokens[a:b][fix[a:b] == 1].tolist()) for a, b in zip(idx[:-1], idx[1:])))
    return [list(goals[i % len(goals)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Paragraphs and chunks

def split_paragraphs(text):
    """The paragraphs of a text: pieces between blank lines, stripped, empty ones dropped."""
    return [p for p in (p.strip() for p in PARAGRAPH_BREAK.split(text)) if p]


def chunk(ids, max_len):
    """Consecutive pieces of at most max_len tokens (one piece if it already fits)."""
    return [ids[i:i + max_len] for i in range(0, len(ids), max_len)]


# ----------------------------------------------------------------------------------------------
# The GPT-2 BPE

def gpt2():
    """tiktoken's GPT-2 BPE: read from tiktoken's cache (TIKTOKEN_CACHE_DIR), downloaded into it when
    it is not there yet."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no cache: say so in one line
        cache = os.environ.get("TIKTOKEN_CACHE_DIR", "unset")
        raise InputError(f"could not load the GPT-2 BPE ({type(e).__name__}; TIKTOKEN_CACHE_DIR={cache}): offline, set "
                         f"TIKTOKEN_CACHE_DIR to a tiktoken cache that holds it, e.g. ../shared/tiktoken_cache")


def decode(enc, ids):
    """The text of GPT-2 token ids; ids past the BPE (our pad and mask) are dropped."""
    return enc.decode([i for i in ids if i < enc.n_vocab])
