#!/usr/bin/env bash
# The WikiText-2 length comparison of RESULTS.md (issue #12): FlexMDM and the padded MDM trained side by
# side with the same budget (300 s of CPU time on one thread each, config/wikitext_cpu*.py), 200 samples
# each with the vanilla sampler (64 steps, temperature 1), length TV / W1 against the validation split and
# one PNG with both models and the data (out/wikitext_cpu/lengths.png). About 15 minutes on 2 cores.
set -euo pipefail
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
[ -f data/wikitext128/meta.json ] || python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw \
    --txt_unit=line --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len=128 --out_dir=data/wikitext128
for run in wikitext_cpu wikitext_cpu_mdm; do
    (python train.py config/$run.py "$@" > out/$run.train.log 2>&1 &&
     python sample.py --out_dir=out/$run --num_samples=200 --steps=64 > out/$run.sample.log 2>&1) &
done
wait
python evaluate.py --task=length --samples=out/wikitext_cpu_mdm/samples.jsonl --data_dir=data/wikitext128
python evaluate.py --task=length --samples=out/wikitext_cpu/samples.jsonl --data_dir=data/wikitext128 \
    --compare=out/wikitext_cpu_mdm/samples.jsonl --png=out/wikitext_cpu/lengths.png
