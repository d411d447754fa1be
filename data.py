"""
What this repo keeps on disk, one home for each piece (checkpoints are checkpoint.py's):

- A prepared dataset, nanoGPT-style: flat token streams that np.memmap reads without loading.
  In a directory, for split in train, val:
    {split}.bin  the tokens of all sequences, concatenated (uint16; uint32 for a vocabulary over 2^16)
    {split}.idx  int64 start offsets, one more than the sequences (0 first, the .bin's length last)
    {split}.fix  uint8, one per token, 1 where the token is fixed (maze subgoals); only some datasets
    meta.json    vocab_size, pad_id, mask_id (sep_id), max_len, tokenizer ("maze", "gpt2"), what
                 the prepare script was asked, num_sequences per split, and "files": each file's bytes
                 and SHA-256 (record_files; datasets prepared before that record load without it)
  The vocabulary is the data's tokens, then pad_id, then mask_id (and sep_id, which ends the maze MDM's
  prompt). prepare_maze.py and prepare_owt.py write it (SplitWriter, in a directory made by atomic_dir);
  train.py, sample.py and evaluate.py read it (load_data), checked against the record at every start.
- The GPT-2 BPE (tiktoken "gpt2"), read from tiktoken's cache: offline, TIKTOKEN_CACHE_DIR must name
  a cache that holds it.
- Samples and metrics: JSON lines / JSON, written whole or not at all (atomic_write).
"""
import contextlib
import hashlib
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
    the new one, whole. A failed write (a full disk, no permission) removes the temporary file and is one
    line naming path. Returns path."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = e
        while cause is not None and not isinstance(cause, OSError):  # torch.save's zip writer raises its own error
            cause = cause.__context__                                  # on top of the OSError of the write
        if cause is not None:
            kept = "the file there is as it was" if os.path.exists(path) else "nothing was written"
            raise InputError(f"could not write {path} ({cause.strerror or cause}): {kept}") from None
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
    existing out_dir is refused, or with overwrite replaced once the new one is complete, and only when it
    is a dataset of ours (dataset_dir_problem): never a directory holding anything else."""
    out_dir = os.path.normpath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise InputError(f"{out_dir} already exists: give --overwrite=True to replace it, or another --out_dir")
    if os.path.exists(out_dir) and (problem := dataset_dir_problem(out_dir)):
        raise InputError(f"{out_dir} is not replaced: {problem}; give another --out_dir")
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, no permission: one line, and nothing left behind
            raise InputError(f"could not write {out_dir} ({e.strerror or e}): nothing was written") from None
        raise
    if os.path.exists(out_dir):  # overwrite: the old one goes only now
        os.rename(out_dir, tmp + ".old")
        os.rename(tmp, out_dir)
        shutil.rmtree(tmp + ".old")
    else:
        os.rename(tmp, out_dir)


DATASET_FILES = {f"{split}.{ext}" for split in ("train", "val") for ext in ("bin", "idx", "fix")} | {"meta.json", "lengths.png"}


def dataset_dir_problem(path):
    """Why the existing path is not a dataset directory that a prepare script wrote (None if it is one): the
    working directory or a folder above it, a file, anything in it besides the dataset's own files, or a
    meta.json that is not a dataset's."""
    here = os.path.realpath(os.getcwd())
    if here == os.path.realpath(path) or here.startswith(os.path.realpath(path) + os.sep):
        return "it is the working directory or a folder above it"
    if not os.path.isdir(path):
        return "it is a file, not a dataset directory"
    foreign = sorted(set(os.listdir(path)) - DATASET_FILES)
    if foreign:
        return f"it holds {foreign[0]!r}, which is not a file of a prepared dataset"
    try:
        read_meta(path)
    except InputError:
        return "its meta.json is not a prepared dataset's"
    return None


def output_problem(path):
    """Why the existing file at path is not an output of this repo (None if it is one), by its content: a PNG,
    a JSON object (a metrics file), JSON lines whose first line is an object (a samples file), or a markdown
    table (the experiments' tables)."""
    if os.path.isdir(path):
        return "it is a directory"
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        first = f.readline()
    if head == b"\x89PNG\r\n\x1a\n" or first.startswith(b"| "):
        return None
    for text in (first, open(path, "rb").read() if first.strip() == b"{" else b""):
        with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
            if isinstance(json.loads(text), dict):
                return None
    return "it is not a samples, metrics, table or PNG file of this repo"


def check_output(path, overwrite, setting=None, inputs=()):
    """Before any work: an InputError unless path may be written by this command (setting: the setting that
    names it, None for a path derived from another). It may not be a file the command reads (inputs); an
    existing file is refused without overwrite, and with it replaced only when it is one of ours
    (output_problem)."""
    if not path:
        return
    other = f", or another --{setting}" if setting else ""
    if any(i and os.path.abspath(i) == os.path.abspath(path) for i in inputs):
        raise InputError(f"{path!r} is also a file this command reads: it is not written over{other}")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path!r} already exists: pass --overwrite=True to replace it{other}")
    if os.path.exists(path) and (problem := output_problem(path)):
        raise InputError(f"{path!r} is not replaced: {problem}{'; give another --' + setting if setting else ''}")


def write_jsonl(path, records):
    """One JSON line per record, atomically."""
    return atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))


def read_jsonl(path):
    """The records of a JSON lines file (blank lines skipped); a missing file, a directory, a file that is not
    text and a line that is not JSON are each one line of error."""
    if not os.path.isfile(path):
        raise InputError(f"samples file {path!r} not found: run sample.py first or fix --samples")
    rows = []
    with open(path, encoding="utf-8") as f:
        try:
            for number, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
        except UnicodeDecodeError:
            raise InputError(f"{path!r} is not a text file of JSON lines") from None
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
        raise InputError(f"missing data file {path!r}: {data_dir} is not a prepared dataset (prepare it again)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}): a damaged dataset, prepare it again") from None
    missing = [k for k in ("vocab_size", "pad_id", "mask_id", "max_len", "tokenizer") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise InputError(f"{path} lacks {missing[0]!r}: not a dataset of prepare_maze.py or prepare_owt.py")
    return meta


def file_record(path):
    """{"bytes", "sha256"} of a file, for meta.json's record of a dataset's files (prepare scripts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def record_files(data_dir):
    """meta.json's "files": the record of each token, offset and flag file of a dataset being prepared."""
    return {name: file_record(os.path.join(data_dir, name)) for name in sorted(os.listdir(data_dir))
            if name.endswith((".bin", ".idx", ".fix"))}


def read_split(data_dir, split, meta, checksums=False):
    """(tokens, start offsets, fixed flags or None) of a split, memory-mapped, after the checks that cost
    little: the sizes of the files against their dtype and meta.json's record, the offsets against the
    tokens, the flags against the tokens, the lengths against max_len (and, with checksums, every byte
    against the recorded SHA-256). A damaged file is one line naming it."""
    path, record = os.path.join(data_dir, split), meta.get("files", {})
    damaged = lambda name, why: InputError(f"{os.path.join(data_dir, name)} {why}: a damaged dataset, prepare it again")
    dtypes = {"bin": token_dtype(meta["vocab_size"]), "idx": np.int64, "fix": np.uint8}
    arrays = {}
    for ext, dtype in dtypes.items():
        name = f"{split}.{ext}"
        if not os.path.exists(path + "." + ext):
            if ext == "fix" and name not in record:
                continue
            raise InputError(f"missing data file {path + '.' + ext!r}: prepare the dataset again")
        size = os.path.getsize(path + "." + ext)
        if name in record and size != record[name]["bytes"]:
            raise damaged(name, f"has {size} bytes where meta.json records {record[name]['bytes']}")
        if size % np.dtype(dtype).itemsize:
            raise damaged(name, f"has {size} bytes, not a whole number of {np.dtype(dtype).name} values")
        if checksums and name in record and file_record(path + "." + ext)["sha256"] != record[name]["sha256"]:
            raise damaged(name, "does not match the SHA-256 that meta.json records")
        arrays[ext] = np.memmap(path + "." + ext, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
    tokens, idx, fix = arrays["bin"], np.asarray(arrays["idx"]), arrays.get("fix")
    if len(idx) < 2:
        raise InputError(f"{path}.idx holds no sequence: the {split} split is empty")
    lengths = np.diff(idx)
    if idx[0] != 0 or idx[-1] != len(tokens) or (lengths < 0).any():
        raise damaged(f"{split}.idx", f"does not index {split}.bin ({len(idx) - 1} sequences ending at token {idx[-1]} "
                                      f"of {len(tokens)})")
    if fix is not None and len(fix) != len(tokens):
        raise damaged(f"{split}.fix", f"has {len(fix)} flags for the {len(tokens)} tokens of {split}.bin")
    if lengths.max() > meta["max_len"] or meta.get("num_sequences", {}).get(split, len(lengths)) != len(lengths):
        raise damaged(f"{split}.idx", f"holds {len(lengths)} sequences of up to {lengths.max()} tokens where meta.json "
                                      f"says {meta.get('num_sequences', {}).get(split, '?')} of up to {meta['max_len']}")
    return tokens, idx, fix


def load_data(data_dir, checksums=False):
    """meta.json and, per split, (tokens, start offsets, fixed flags or None), memory-mapped and checked
    (read_split)."""
    meta = read_meta(data_dir)
    return meta, {split: read_split(data_dir, split, meta, checksums) for split in SPLITS}


BOOKKEEPING = ("files", "num_sequences", "num_tokens", "num_documents", "num_paragraphs", "num_chunked_paragraphs",
               "lengths", "num_split_pairs", "cache_dir")


def check_same_data(trained, meta, data_dir):
    """An InputError naming the first setting in which the dataset in data_dir (meta) differs from the one a
    checkpoint was trained on (trained: its meta.json, which the checkpoint keeps): the maze, K, the source,
    max_len... (a source file by its name: a checkout may have moved)."""
    name = lambda key, v: os.path.basename(v) if key in ("source", "val_source") and isinstance(v, str) else v
    for key in sorted(set(trained) & set(meta) - set(BOOKKEEPING)):
        if name(key, trained[key]) != name(key, meta[key]):
            shown = ("another maze" if key == "maze" else f"{key}={meta[key]!r} where the checkpoint's data had "
                     f"{key}={trained[key]!r}")
            raise InputError(f"{data_dir} is not the data the checkpoint was trained on ({shown}): prepare it as it "
                             "was, or use that dataset")


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


class LengthTilt:
    """Draws sequences of a split with probability proportional to r^length, r per draw (interpolant.behind_times:
    the rows behind their time), exactly: a length from the split's length histogram tilted by r^length, then a
    uniformly random sequence of that length."""

    def __init__(self, idx):
        lengths = np.diff(idx)
        self.order = np.argsort(lengths, kind="stable")  # sequence indices, grouped by length
        self.sizes, self.counts = np.unique(lengths, return_counts=True)
        self.starts = np.cumsum(self.counts) - self.counts

    def draw(self, log_r, rng):
        """One sequence index per entry of log_r [B] (log r of that draw)."""
        logp = np.log(self.counts)[None] + np.asarray(log_r, dtype=np.float64)[:, None] * self.sizes[None]
        cdf = np.cumsum(np.exp(logp - logp.max(1, keepdims=True)), axis=1)
        k = (cdf < rng.random((len(cdf), 1)) * cdf[:, -1:]).sum(1)  # the tilted length, by its CDF
        return self.order[self.starts[k] + rng.integers(0, self.counts[k])]


def keep_spans(lengths, fixed, prob, rng, pads=False):
    """Infilling rows (the span-trained models, as paper F.3 trains its infilling model): each sequence, with
    probability prob, keeps one span of its tokens free and has the others fixed, present and clean at every t
    (a prefix and a suffix); with pads=True its pads too (the MDM's canvas, closed after the suffix). The span: a
    length uniform in 1..n, then a start uniform among the places it fits. Returns the new fixed flags [B, L] and
    each row's open span [B, 2] (start, end), (0, n) for the rows left whole (interpolant.flexmdm_loss), on
    fixed's device."""
    import torch
    B, L = fixed.shape
    n = lengths.cpu().numpy()
    chosen = rng.random(B) < prob
    span = rng.integers(1, n + 1)
    start = rng.integers(0, n - span + 1)
    j = np.arange(L)[None]
    outside = (j < start[:, None]) | (j >= (start + span)[:, None])
    allowed = np.ones_like(outside) if pads else j < n[:, None]
    span = np.where(chosen[:, None], np.stack([start, start + span], 1), np.stack([0 * n, n], 1))
    closed = torch.from_numpy(chosen[:, None] & outside & allowed).to(fixed.device)
    return fixed | closed, torch.from_numpy(span).to(fixed.device)


def maze_prompts(data_dir, n, trained):
    """Subgoal lists g1..gK of the held-out (val) paths, distinct, in file order, cycled to n; the data must be
    the one a checkpoint was trained on (trained: the meta.json it keeps)."""
    meta, splits = load_data(data_dir)
    check_same_data(trained, meta, data_dir)
    tokens, idx, fix = splits["val"]
    if fix is None:
        raise InputError(f"{os.path.join(data_dir, 'val.fix')!r} not found: the maze data for the held-out subgoals is missing")
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
