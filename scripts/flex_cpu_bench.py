"""
FlexAttention on CPU, forward only (torch has no FlexAttention backward on CPU, so it cannot train
there): the eager reference, the compiled kernel (model.compiled_flex_attention) and dense-mask SDPA
on the README demo's attention shape, a packed batch of data/maze_cpu (rows of 128 tokens, 4 heads
of 16). CPU time per call, the three interleaved over rounds; the compile time is reported apart (run it
with a cold inductor cache, TORCHINDUCTOR_CACHE_DIR=an empty folder, for the first-run cost).

    OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python scripts/flex_cpu_bench.py --rounds=5 --calls=20

--data=DIR takes the batch from another prepared dataset (default data/maze_cpu) whose sequences fit a row
(max_len <= 127). Settings are checked before any work; nothing is written.
"""
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configurator import InputError, check_ranges, configure, run  # noqa: E402
from data import get_batch, load_data  # noqa: E402
from interpolant import Schedule, flexmdm_interpolant, sample_times  # noqa: E402
from model import DiT, ModelConfig, compiled_flex_attention, flex_attention, pack  # noqa: E402

rounds = 5  # the three attentions interleaved, the order alternating
calls = 20  # calls per attention per round
data = "data/maze_cpu"  # a prepared dataset: the batch's sequences
ROW = 128  # tokens per packed row


def check_settings():
    """The settings' ranges and the data (data.load_data), before any work: one line naming the problem."""
    check_ranges(globals(), dict(rounds=">0", calls=">0"))
    meta, splits = load_data(data)
    if meta["max_len"] + 1 > ROW:
        raise InputError(f"data={data!r} has max_len {meta['max_len']}: a sequence and its gap slot must fit a row of "
                         f"{ROW} tokens (max_len <= {ROW - 1})")
    return meta, splits


def main():
    configure(globals(), sys.argv[1:])
    meta, splits = check_settings()
    torch.set_num_threads(1)
    n_seq = len(splits["train"][1]) - 1
    x1, lengths, fixed = get_batch(splits["train"], np.random.default_rng(0).integers(0, n_seq, 128), meta, "flexmdm",
                                   meta["max_len"])
    g = torch.Generator().manual_seed(0)
    fb = flexmdm_interpolant(x1, lengths, sample_times(128, generator=g), Schedule(), Schedule(), meta["mask_id"],
                             meta["pad_id"], fixed=fixed, generator=g)
    _, seq_ids, _, _ = pack(fb.xt, fb.lengths, meta["vocab_size"], meta["pad_id"], ROW)
    cfg = dict(vocab_size=meta["vocab_size"], n_layer=1, n_head=4, n_embd=64, pad_id=meta["pad_id"])
    block_mask = DiT(ModelConfig(**cfg, attention="flex")).attention_mask(seq_ids)
    dense = DiT(ModelConfig(**cfg, attention="sdpa")).attention_mask(seq_ids)
    q, k, v = (torch.randn(seq_ids.shape[0], 4, ROW, 16, generator=g) for _ in range(3))
    compiled = compiled_flex_attention()
    start, children = time.process_time(), os.times().children_user + os.times().children_system
    out = compiled(q, k, v, block_mask=block_mask)
    compile_s, gcc_s = time.process_time() - start, os.times().children_user + os.times().children_system - children
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    real = (seq_ids >= 0)[:, None, :, None].expand_as(ref)
    print(f"{seq_ids.shape[0]} rows of {ROW}, {int((seq_ids >= 0).sum())} real positions; compiled flex compile: "
          f"{compile_s:.1f} CPU-s in this process, {gcc_s:.1f} in its children (gcc); max |compiled flex - sdpa| at real positions "
          f"{(out - ref)[real].abs().max().item():.1e}")
    fns = {"eager flex_attention": lambda: flex_attention(q, k, v, block_mask=block_mask),
           "compiled flex": lambda: compiled(q, k, v, block_mask=block_mask),
           "sdpa, dense mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)}
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.process_time()
            for _ in range(calls):
                fns[name]()
            times[name].append(1000 * (time.process_time() - start) / calls)
    for name, ms in times.items():
        print(f"| {name} | {statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f}) |")


if __name__ == "__main__":
    run(main)
