"""Text data and metrics: prepare_owt.py's paragraphs, chunks and files on local sources
through `datasets`; evaluate.py's length fidelity, generative perplexity and unigram entropy; and a
tiny WikiText-2 run through prepare -> train -> sample -> evaluate."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import tiktoken
import torch

import data
import evaluate
from configurator import InputError
import prepare_owt
from conftest import ROOT, run_python, run_train

SHARED = os.path.join(ROOT, "..", "shared")
WIKI = os.path.join(SHARED, "data", "wikitext2_raw")
WEBTEXT = os.path.join(SHARED, "data", "webtext_gpt2_output", "webtext.valid.jsonl")
ENC = tiktoken.get_encoding("gpt2")

DOCS = [
    "First paragraph, one line.\n\nSecond paragraph\nspans two lines.  \n \n\n  Third, after blank lines "
    "holding spaces.\n\n\n",
    "<|endoftext|> is plain text here; café, 日本語.\r\n\r\n" + " ".join(f"word{i}" for i in range(40)),
    "\n\n   \n\n",  # no paragraph at all
]
VAL_DOC = "A validation paragraph.\n\nAnd a second one that is somewhat longer than the first one was."


def read_split(out_dir, split):
    tokens = np.fromfile(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16)
    idx = np.fromfile(os.path.join(out_dir, f"{split}.idx"), dtype=np.int64)
    return [tokens[a:b].tolist() for a, b in zip(idx[:-1], idx[1:])], idx, len(tokens)


def prepare(tmp_path, name, **kw):
    out = str(tmp_path / name)
    meta = prepare_owt.build(out_dir=out, num_proc=1, cache_dir=str(tmp_path / "hf_cache"), **kw)
    return out, meta


def check_files(out, meta, max_len):
    """Offsets consistent with the streams, lengths within 1..max_len, meta counts match."""
    assert (meta["vocab_size"], meta["pad_id"], meta["mask_id"]) == (50259, 50257, 50258)
    assert meta["tokenizer"] == "gpt2" and meta["max_len"] == max_len
    with open(os.path.join(out, "meta.json")) as f:
        assert json.load(f) == meta
    seqs = {}
    for split in ("train", "val"):
        seqs[split], idx, n_tokens = read_split(out, split)
        assert idx[0] == 0 and idx[-1] == n_tokens
        lengths = np.diff(idx)
        assert lengths.min() >= 1 and lengths.max() <= max_len
        assert meta["num_sequences"][split] == len(lengths) and meta["num_tokens"][split] == n_tokens
    assert os.path.getsize(os.path.join(out, "lengths.png")) > 0
    return seqs


def test_split_paragraphs_and_chunk():
    assert data.split_paragraphs(DOCS[0]) == [
        "First paragraph, one line.", "Second paragraph\nspans two lines.", "Third, after blank lines holding spaces."]
    assert data.split_paragraphs(DOCS[2]) == []
    assert data.split_paragraphs(DOCS[1])[0] == "<|endoftext|> is plain text here; café, 日本語."
    ids = list(range(10))
    assert data.chunk(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert data.chunk(ids, 10) == [ids]
    seqs, n_par, n_chunked = prepare_owt.encode_document(DOCS[1], 40)
    assert n_par == 2 and n_chunked == 1 and list(map(len, seqs)) == [22, 40, 40]
    assert ENC.decode(seqs[0]) == "<|endoftext|> is plain text here; café, 日本語."  # ordinary text, not EOT
    assert 50256 not in seqs[0]
    dropped, n_par, n_dropped = prepare_owt.encode_document(DOCS[1], 40, long="drop")
    assert n_par == 2 and n_dropped == 1 and dropped == seqs[:1]  # the long paragraph is left out whole


def test_prepare_local_txt_documents(tmp_path):
    """Text files, one document each: no sequence holds a blank line, none is longer than max_len,
    the stored sequences are exactly the chunks of the paragraphs in order, and decode back."""
    src = tmp_path / "docs"
    src.mkdir()
    for i, doc in enumerate(DOCS):
        (src / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    (tmp_path / "val.txt").write_text(VAL_DOC, encoding="utf-8")
    max_len = 16
    out, meta = prepare(tmp_path, "txt", source=str(src), val_source=str(tmp_path / "val.txt"), max_len=max_len)
    seqs = check_files(out, meta, max_len)
    for split, docs in (("train", DOCS), ("val", [VAL_DOC])):
        paragraphs = [p for d in docs for p in data.split_paragraphs(d)]
        assert meta["num_documents"][split] == len(docs) and meta["num_paragraphs"][split] == len(paragraphs)
        stored = iter(seqs[split])
        for p in paragraphs:
            ids = ENC.encode_ordinary(p)
            pieces = [next(stored) for _ in range(-(-len(ids) // max_len))]
            assert ENC.decode([t for piece in pieces for t in piece]) == p
            assert all(data.PARAGRAPH_BREAK.search(ENC.decode(piece)) is None for piece in pieces)
        assert next(stored, None) is None
        assert meta["num_chunked_paragraphs"][split] == sum(len(ENC.encode_ordinary(p)) > max_len for p in paragraphs)
    assert meta["num_chunked_paragraphs"]["train"] >= 2


def test_prepare_wikitext_lines_and_webtext_jsonl(tmp_path):
    """The datasets path on the shared files: WikiText-2 one paragraph per line (headings kept),
    validation from a .jsonl with a "text" field."""
    n_lines = 120
    out, meta = prepare(tmp_path, "wiki", source=os.path.join(WIKI, "wiki.valid.raw"), txt_unit="line",
                        val_source=WEBTEXT, max_docs=n_lines, max_len=512)
    seqs = check_files(out, meta, 512)
    with open(os.path.join(WIKI, "wiki.valid.raw"), encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().split("\n")[:n_lines]]
    assert [ENC.decode(s) for s in seqs["train"]] == [line for line in lines if line]
    assert "= Homarus gammarus =" in [ENC.decode(s) for s in seqs["train"]]
    with open(WEBTEXT) as f:
        texts = [json.loads(line)["text"] for line in f][:n_lines]
    assert [ENC.decode(s) for s in seqs["val"]] == [p for t in texts for p in data.split_paragraphs(t)]


def test_prepare_val_frac_split_same_when_streaming(tmp_path):
    """--val_frac splits documents by a hash of their index: the same split with and without
    streaming, every document's paragraphs in one split."""
    kw = dict(source=WEBTEXT, val_frac=0.2, max_docs=200, max_len=64, seed=7)
    a, meta = prepare(tmp_path, "plain", **kw)
    b, _ = prepare(tmp_path, "stream", streaming=True, **kw)
    for split in ("train", "val"):
        for ext in ("bin", "idx"):
            with open(os.path.join(a, f"{split}.{ext}"), "rb") as fa, open(os.path.join(b, f"{split}.{ext}"), "rb") as fb:
                assert fa.read() == fb.read()
    val = prepare_owt.is_val(np.arange(200), 0.2, 7)
    assert meta["num_documents"] == {"train": int((~val).sum()), "val": int(val.sum())}
    assert 20 <= val.sum() <= 60


def test_prepare_bad_sources(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(InputError, match="'text'"):
        prepare(tmp_path, "bad", source=str(tmp_path / "bad.jsonl"))
    with pytest.raises(InputError, match="no files"):
        prepare(tmp_path, "none", source=str(tmp_path / "missing*.txt"))


# ----------------------------------------------------------------------------------------------
# Metrics

def test_length_metrics_hand_values(tmp_path):
    a = np.array([5, 17, 17, 40, 300])
    m = evaluate.length_metrics(a, a.copy())
    assert m["tv_exact"] == 0 and m["tv_bin32"] == 0 and m["wasserstein1"] == 0
    assert evaluate.total_variation([1, 2], [100, 101]) == 1.0
    assert evaluate.total_variation([1, 2], [100, 101], 32) == 1.0
    # exact: p = (1: .5, 2: .25, 3: .25), q = (1: .25, 2: .75) -> 0.5 (.25 + .5 + .25)
    assert evaluate.total_variation([1, 1, 2, 3], [1, 2, 2, 2]) == pytest.approx(0.5)
    assert evaluate.total_variation([1, 31], [2, 30]) == 1.0
    assert evaluate.total_variation([1, 31], [2, 30], 32) == 0.0  # all in bin 0..31
    assert evaluate.total_variation([31, 33], [32, 33], 32) == pytest.approx(0.5)  # 31 | 32..63
    # quantile coupling: the lower halves match (10 = 10), the upper halves move 20 -> 40
    assert evaluate.wasserstein1([10, 20], [10, 10, 40, 40]) == pytest.approx(10.0)
    assert evaluate.wasserstein1(a, a + 5) == pytest.approx(5.0)
    assert evaluate.wasserstein1([0, 0, 3], [1, 1, 1]) == pytest.approx((1 + 1 + 2) / 3)
    m = evaluate.length_metrics([10, 20], [10, 10, 40, 40])
    assert m["samples"]["mean"] == 15 and m["data"]["mean"] == 25 and m["data"]["p50"] == 25
    png = evaluate.plot_lengths([10, 20], [10, 10, 40, 40], str(tmp_path / "lengths.png"), others=[([5, 90], "mdm")])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unigram_entropy():
    assert evaluate.unigram_entropy([[1, 1, 2, 2]]) == pytest.approx(math.log(2))
    assert evaluate.unigram_entropy([[1, 1, 2, 2], [5, 5, 5], []]) == pytest.approx(math.log(2) / 2)
    assert evaluate.unigram_entropy([[1, 2, 3, 4]]) == pytest.approx(math.log(4))


def train_reference(data_root, out_dir, seed=0):
    """scripts/reference_lm.py on a prepared dataset data_root/data/wt, 3 steps of a 2-layer GPT-2 (width 32)."""
    from scripts import reference_lm
    cwd = os.getcwd()
    os.chdir(data_root)
    try:
        reference_lm.main(["--dataset=wt", f"--out_dir={out_dir}", "--n_layer=2", "--n_head=2", "--n_embd=32",
                           "--window=16", "--batch_size=2", "--max_iters=3", f"--seed={seed}"])
    finally:
        os.chdir(cwd)
    with open(os.path.join(out_dir, "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """The judge as scripts/reference_lm.py makes it: a small GPT-2 saved with a GPT-2 tokenizer built offline from
    the BPE files in the tiktoken cache, trained 3 steps on a tiny WikiText dataset."""
    root = tmp_path_factory.mktemp("ref")
    prepare(root / "data", "wt", source=os.path.join(WIKI, "wiki.valid.raw"), txt_unit="line",
            val_source=os.path.join(WIKI, "wiki.test.raw"), max_docs=150, max_len=64)
    path = str(root / "tiny_gpt2")
    train_reference(root, path)
    return path


def test_reference_lm_is_the_same_judge_on_a_rerun(tiny_reference, tmp_path):
    """Its budget is steps, so the same command gives the same weights and perplexity; it refuses to overwrite."""
    root = os.path.dirname(tiny_reference)
    again = train_reference(root, str(tmp_path / "again"))
    with open(os.path.join(tiny_reference, "reference.json")) as f:
        first = json.load(f)
    assert again == first and first["steps"] == 3 and math.isfinite(first["val_perplexity"])
    from transformers import GPT2LMHeadModel
    a, b = (GPT2LMHeadModel.from_pretrained(p).state_dict() for p in (tiny_reference, str(tmp_path / "again")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_reference(root, str(tmp_path / "seed1"), seed=1)
    assert other["val_perplexity"] != first["val_perplexity"]
    with pytest.raises(InputError, match="already exists"):
        train_reference(root, str(tmp_path / "again"))


def test_generative_perplexity_matches_hand_computation(tiny_reference):
    model, tokenizer = evaluate.load_reference(tiny_reference, "cpu")
    texts = ["The cat sat on the mat.", "A much longer sentence, with more words in it, to pad the others a lot.", "Hi"]
    ids, cut = evaluate.reference_ids(texts, lambda s: tokenizer(s)["input_ids"], tokenizer.bos_token_id, 128)
    assert cut == 0 and [i[1:] for i in ids] == [ENC.encode_ordinary(t) for t in texts]  # the shared BPE
    assert all(i[0] == 50256 for i in ids)  # GPT-2's BOS (= EOT) in front: every text token scored
    nll, count = 0.0, 0
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([seq])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
            nll -= logp[torch.arange(len(seq) - 1), x[0, 1:]].sum().item()
            count += len(seq) - 1
    batched = evaluate.generative_perplexity(model, ids, batch_size=3)
    single = evaluate.generative_perplexity(model, ids, batch_size=1)
    assert batched["tokens"] == single["tokens"] == count and batched["sequences"] == 3
    assert batched["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert batched["ppl"] == pytest.approx(single["ppl"], rel=1e-5)
    long_ids, cut = evaluate.reference_ids(["word " * 200], ENC.encode_ordinary, 50256, 128)
    assert cut == 1 and len(long_ids[0]) == 128


def test_genppl_task_filters_short_samples(tiny_reference, tmp_path):
    texts = ["one two three four five six seven eight nine ten eleven twelve", "too short", "x " * 30]
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for t in texts:
            tokens = ENC.encode_ordinary(t)
            f.write(json.dumps({"tokens": tokens, "length": len(tokens), "text": t}) + "\n")
    m = evaluate.main(["--task=genppl", f"--samples={samples}", f"--ref_model={tiny_reference}"])
    model, tokenizer = evaluate.load_reference(tiny_reference, "cpu")
    kept = [t for t in texts if len(ENC.encode_ordinary(t)) > 10]
    ids, _ = evaluate.reference_ids(kept, ENC.encode_ordinary, 50256, 128)
    assert m["filtered_short"] == 1 and m["scored_samples"] == 2
    assert m["genppl"] == pytest.approx(evaluate.generative_perplexity(model, ids)["ppl"], rel=1e-6)
    assert m["unigram_entropy"] == pytest.approx(evaluate.unigram_entropy([ENC.encode_ordinary(t) for t in texts]))
    with open(str(samples) + ".genppl.json") as f:
        assert json.load(f)["genppl"] == m["genppl"]


def test_text_task_reports_lengths_when_no_sample_is_long_enough_to_score(tiny_reference, tmp_path):
    """Task text on samples all of <= 10 tokens: the lengths, and no perplexity (None, nothing scored), not an
    error; task genppl, which asks only for the perplexity, is refused in one line."""
    out, _ = prepare(tmp_path / "data", "wt", source=os.path.join(WIKI, "wiki.valid.raw"), txt_unit="line",
                     val_source=os.path.join(WIKI, "wiki.test.raw"), max_docs=150, max_len=32)
    samples = tmp_path / "short.jsonl"
    with open(samples, "w") as f:
        for t in ("too short", "a few words here", ""):
            tokens = ENC.encode_ordinary(t)
            f.write(json.dumps({"tokens": tokens, "length": len(tokens), "text": t}) + "\n")
    m = evaluate.main(["--task=text", f"--samples={samples}", f"--data_dir={out}", f"--ref_model={tiny_reference}"])
    assert m["genppl"] is None and m["scored_samples"] == 0 and m["filtered_short"] == 3
    assert m["length"]["samples"]["n"] == 3 and m["length"]["samples"]["max"] == 4
    with pytest.raises(InputError, match="no sample has more than 10 tokens: nothing to score"):
        evaluate.main(["--task=genppl", f"--samples={samples}", f"--ref_model={tiny_reference}"])


# ----------------------------------------------------------------------------------------------
# End to end

def test_wikitext_prepare_train_sample_evaluate(tmp_path):
    out, meta = prepare(tmp_path / "data", "wt", source=os.path.join(WIKI, "wiki.valid.raw"), txt_unit="line",
                        val_source=os.path.join(WIKI, "wiki.test.raw"), max_docs=150, max_len=32)
    log = run_train([os.path.join(ROOT, "config", "text_cpu.py"), "--dataset=wt", "--out_dir=out", "--max_iters=4",
                     "--eval_interval=4", "--eval_iters=1", "--batch_size=4", "--warmup_iters=2"], tmp_path)
    assert "iter 4: val loss" in log
    proc = run_python([os.path.join(ROOT, "sample.py"), "--out_dir=out", "--num_samples=4", "--steps=8",
                       "--device=cpu", "--dtype=float32"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples = str(tmp_path / "out" / "samples.jsonl")
    rows = evaluate.read_jsonl(samples)
    assert len(rows) == 4 and all(len(r["tokens"]) == r["length"] <= 32 and "text" in r for r in rows)
    m = evaluate.main(["--task=length", f"--samples={samples}", f"--data_dir={out}"])
    with open(samples + ".length.json") as f:
        assert json.load(f)["length"]["tv_exact"] == m["length"]["tv_exact"]
    assert m["length"]["samples"]["n"] == 4 and m["length"]["data"]["n"] == meta["num_sequences"]["val"]
    assert 0 <= m["length"]["tv_bin32"] <= m["length"]["tv_exact"] <= 1
    assert os.path.getsize(m["length"]["png"]) > 0 and m["length"]["png"] == samples + ".length.png"
    # another split: its own metrics file and PNG, beside the val ones
    train = evaluate.main(["--task=length", f"--samples={samples}", f"--data_dir={out}", "--data_split=train"])
    assert train["length"]["data"]["n"] == meta["num_sequences"]["train"] != meta["num_sequences"]["val"]
    assert train["length"]["png"] == samples + ".length.train.png"
    with open(samples + ".length.train.json") as f:
        assert json.load(f)["length"]["data"]["n"] == meta["num_sequences"]["train"]
    with open(samples + ".length.json") as f:
        assert json.load(f)["length"]["data"]["n"] == meta["num_sequences"]["val"]
