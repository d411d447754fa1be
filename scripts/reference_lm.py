"""
A small reference causal LM for the generative perplexity of text samples (evaluate.py --ref_model=DIR), for
when the paper's GPT-2 large cannot be loaded: a GPT-2 config from transformers (4 layers, width 256, 8.7M
parameters besides its 12.9M-parameter embedding), trained from scratch on the train split of a prepared
GPT-2-BPE dataset, its paragraphs joined by <|endoftext|> (GPT-2's BOS, which evaluate.py puts in front of
every sample) into one stream cut into windows. Saved with transformers' save_pretrained and a GPT-2
tokenizer made offline from the BPE files in tiktoken's cache, so evaluate.py loads it by its path. Prints and
writes (OUT/reference.json) its perplexity on the dataset's validation stream. Its budget is a number of steps, not
of seconds, so the same command gives the same judge on any machine and under any load.

    python scripts/reference_lm.py --dataset=wikitext512 --out_dir=out/ref_lm     # ~15 CPU-minutes
"""
import hashlib
import json
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import InputError, check_ranges, configure, run  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data import GPT2_VOCAB, atomic_write, load_data  # noqa: E402

dataset = "wikitext512"  # data/<dataset>: a prepare_owt.py dataset (GPT-2 BPE)
out_dir = "out/ref_lm"  # the model's directory (refused if it exists)
n_layer = 4
n_head = 4
n_embd = 256
window = 256  # tokens per training sequence, cut from the stream
batch_size = 16
learning_rate = 1e-3
max_iters = 118  # training steps: what 900 CPU-s gave the judge of RESULTS.md's later cells (validation ppl 1290)
seed = 0
# -----------------------------------------------------------------------------

BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def stream(tokens, idx):
    """The split's sequences, each after an <|endoftext|>, as one int64 stream."""
    out = np.empty(len(tokens) + len(idx) - 1, dtype=np.int64)
    starts = idx[:-1] + np.arange(len(idx) - 1)
    out[starts] = GPT2_VOCAB - 1
    keep = np.ones(len(out), dtype=bool)
    keep[starts] = False
    out[keep] = tokens
    return torch.from_numpy(out)


def windows(data, rng, n):
    """n random windows of window + 1 tokens: inputs and next-token targets."""
    at = torch.from_numpy(rng.integers(0, len(data) - window - 1, size=n))
    chunk = torch.stack([data[a:a + window + 1] for a in at.tolist()])
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def perplexity(model, data, n=128):
    """exp(mean next-token NLL) over n windows spread evenly over the stream."""
    model.eval()
    starts = np.linspace(0, len(data) - window - 2, n).astype(int)
    x = torch.stack([data[a:a + window] for a in starts])
    y = torch.stack([data[a + 1:a + window + 1] for a in starts])
    nll = sum(float(torch.nn.functional.cross_entropy(model(input_ids=x[i:i + 16]).logits.flatten(0, 1),
                                                       y[i:i + 16].flatten(), reduction="sum")) for i in range(0, n, 16))
    model.train()
    return math.exp(nll / y.numel())


def save_tokenizer(path):
    """GPT-2's vocab.json and merges.txt, copied from tiktoken's cache (named by the sha1 of their URL)."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", "")
    for name, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        src = os.path.join(cache, hashlib.sha1((BPE_URL + name).encode()).hexdigest())
        if not os.path.exists(src):
            raise InputError(f"{name} of the GPT-2 BPE is not in TIKTOKEN_CACHE_DIR={cache!r}: set it to a tiktoken cache "
                             "that holds it (e.g. ../shared/tiktoken_cache)")
        shutil.copy(src, os.path.join(path, dst))


def main(argv=None):
    configure(globals(), sys.argv[1:] if argv is None else argv)
    check_ranges(globals(), dict(n_layer=">0", n_head=">0", n_embd=">0", window=">0", batch_size=">0",
                                 learning_rate=">0", max_iters=">0", seed=">=0"))
    if os.path.exists(out_dir):
        raise InputError(f"{out_dir} already exists: give another --out_dir")
    meta, splits = load_data(os.path.join("data", dataset))
    if meta["tokenizer"] != "gpt2":
        raise InputError(f"data/{dataset} is not a GPT-2 BPE dataset (tokenizer {meta['tokenizer']!r})")
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = stream(*splits["train"][:2]), stream(*splits["val"][:2])
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=1024))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    start = time.process_time()
    for step in range(max_iters):
        for group in optimizer.param_groups:  # linear warmup over 100 steps, cosine to 10 % over the budget
            group["lr"] = learning_rate * min(1, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * step / max_iters))
        x, y = windows(train, rng, batch_size)
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 10 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}, {time.process_time() - start:.0f} CPU-s")
    ppl = perplexity(model, val)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_tokenizer(tmp)
    report = dict(dataset=dataset, steps=max_iters, seed=seed, val_perplexity=ppl, n_layer=n_layer, n_head=n_head,
                  n_embd=n_embd, window=window, params=sum(p.numel() for p in model.parameters()))
    atomic_write(os.path.join(tmp, "reference.json"), lambda f: json.dump(report, f, indent=1))
    os.rename(tmp, out_dir)
    print(f"wrote {out_dir}: {max_iters} steps, validation perplexity {ppl:.1f}")


if __name__ == "__main__":
    run(main, interrupted="the model was not written; run the command again")
