#!/usr/bin/env bash
# The infill table of RESULTS.md: on WikiText-2 paragraphs (max_len 512, whole paragraphs), FlexMDM and the MDM
# trained unconditionally (zero-shot: the seed-1 cells of scripts/length_seeds.sh) and span-trained (the same
# settings with --infill_prob=0.5: half the training sequences keep one random span free, the rest fixed), all at
# the same BUDGET CPU-s; scripts/infill.py cuts 1-3 sentences out of 200 validation paragraphs and fills them.
# The span-trained FlexMDM twice: without the closed-gap marks (flex_span, --gap_embedding=False, the first table)
# and with them (flex_gap, train.py's default; the second table, results/infill_gap, beside flex_span).
# A finished piece is not run again (rerun to resume).
#   bash scripts/infill.sh                    # after PHASE=claim bash scripts/length_seeds.sh
set -euo pipefail
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
OUT=${OUT:-out/seeds/wikitext512}
BUDGET=${BUDGET:-600}
FLEX=${FLEX:---prior_weight=1.0}
REF=${REF:-out/ref_lm}

train() {  # RUN CONFIG [OVERRIDES...]
    local run=$1 config=$2 init
    shift 2
    grep -qs "^stopped after" "$OUT/$run.train.log" && return  # trained to the end
    [ -f "$OUT/$run/ckpt.pt" ] && init=resume || init=scratch
    python train.py "config/$config.py" --dataset=wikitext512 --out_dir="$OUT/$run" --seed=1 --init_from="$init" \
        --max_seconds="$BUDGET" "$@" >> "$OUT/$run.train.log" 2>&1 || { echo "training $run failed: $OUT/$run.train.log" >&2; return 1; }
}

for run in flex_s1 mdm_s1; do
    [ -f "$OUT/$run/ckpt.pt" ] || { echo "no $OUT/$run/ckpt.pt: run PHASE=claim bash scripts/length_seeds.sh first" >&2; exit 1; }
done
train flex_span_s1 wikitext_cpu $FLEX --infill_prob=0.5 --gap_embedding=False & first=$!
train mdm_span_s1 wikitext_cpu_mdm --infill_prob=0.5 & second=$!
wait $first
wait $second
train flex_gap_s1 wikitext_cpu $FLEX --infill_prob=0.5
[ -f results/infill.md ] || python scripts/infill.py --runs="flex=$OUT/flex_s1/ckpt.pt,flex_span=$OUT/flex_span_s1/ckpt.pt,mdm=$OUT/mdm_s1/ckpt.pt,mdm_span=$OUT/mdm_span_s1/ckpt.pt" \
    --num_paragraphs=100 --steps=64 --ref_model="$REF" --out=results/infill  # 100 and 64: what 2 CPU cores allowed
[ -f results/infill_gap.md ] || python scripts/infill.py --runs="flex_span=$OUT/flex_span_s1/ckpt.pt,flex_gap=$OUT/flex_gap_s1/ckpt.pt" \
    --num_paragraphs=100 --steps=64 --ref_model="$REF" --out=results/infill_gap
