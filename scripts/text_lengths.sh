#!/usr/bin/env bash
# The WikiText-2 length comparison of RESULTS.md: FlexMDM and the padded MDM trained side by
# side with the same budget (300 s of CPU time on one thread each, config/wikitext_cpu*.py, FlexMDM with the
# paper's loss), 200 samples
# each with the vanilla sampler (64 steps, temperature 1), length TV / W1 against the validation split and
# one PNG with both models and the data (out/wikitext_cpu$TAG/lengths.png). 8.5 minutes on 2 cores.
#   bash scripts/text_lengths.sh                 # paragraphs over 128 tokens chunked (data/wikitext128)
#   LONG=drop bash scripts/text_lengths.sh       # ... left out (data/wikitext128drop, out/*_drop)
set -euo pipefail
LONG=${LONG:-chunk}
DATA=wikitext128$([ "$LONG" = drop ] && echo drop || true)
TAG=$([ "$LONG" = drop ] && echo _drop || true)
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
[ -f data/$DATA/meta.json ] || python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw \
    --txt_unit=line --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len=128 --long=$LONG --out_dir=data/$DATA
mkdir -p out
for run in wikitext_cpu wikitext_cpu_mdm; do  # a piece already done is not run again: rerun to resume
    out=out/$run$TAG
    loss=$([ $run = wikitext_cpu ] && echo --prior_weight=0.0 || true)  # the paper's loss, as this table was measured
    ( ([ -f $out/ckpt.pt ] || python train.py config/$run.py --dataset=$DATA --out_dir=$out $loss "$@" > $out.train.log 2>&1) &&
      ([ -f $out/samples.jsonl ] || python sample.py --out_dir=$out --num_samples=200 --steps=64 > $out.sample.log 2>&1) ) &
done
wait
samples=out/wikitext_cpu_mdm$TAG/samples.jsonl
[ -f $samples.length.json ] || python evaluate.py --task=length --samples=$samples --data_dir=data/$DATA
samples=out/wikitext_cpu$TAG/samples.jsonl
[ -f $samples.length.json ] || python evaluate.py --task=length --samples=$samples --data_dir=data/$DATA \
    --compare=out/wikitext_cpu_mdm$TAG/samples.jsonl --png=out/wikitext_cpu$TAG/lengths.png
