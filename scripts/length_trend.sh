#!/usr/bin/env bash
# The length-fidelity trend of RESULTS.md: FlexMDM and the padded MDM on WikiText-2 paragraphs
# (max_len 128, long paragraphs chunked, and dropped), each trained for BUDGET s of CPU time on one thread
# (config/wikitext_cpu*.py) with copies of the checkpoint kept at 150, 300 and 600 s (train.py keep_at);
# every checkpoint sampled SAMPLES times with the vanilla sampler at 64 steps (FlexMDM also on the power-2
# time grid, and its g's calibration), the last one also at 256 steps, the lengths compared with the
# validation split (max_len 512 is RESULTS.md's seeded claim, scripts/length_seeds.sh).
# scripts/length_trend.py makes the tables and the PNG. Two jobs at a time; a finished piece is not run
# again (rerun to resume).
#   bash scripts/length_trend.sh && python scripts/length_trend.py --overwrite=True
set -euo pipefail
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
OUT=${OUT:-out/trend}
BUDGET=${BUDGET:-1200}
SAMPLES=${SAMPLES:-200}
mkdir -p "$OUT"

prepare() {  # NAME MAX_LEN LONG
    [ -f "data/$1/meta.json" ] || python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw \
        --txt_unit=line --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len="$2" --long="$3" --out_dir="data/$1"
}

train() {  # RUN CONFIG DATA SECONDS [OVERRIDES...]
    local run=$1 config=$2 data=$3 budget=$4
    shift 4
    local keep=$(for p in 150 300 600; do [ "$p" -lt "$budget" ] && printf '%s,' "$p"; done)  # the end is ckpt.pt
    [ -f "$OUT/$run/ckpt.pt" ] || python train.py "config/$config.py" --dataset="$data" --out_dir="$OUT/$run" \
        --max_seconds="$budget" --keep_at="($keep)" "$@" > "$OUT/$run.train.log" 2>&1 ||
        { echo "training $run failed: $OUT/$run.train.log" >&2; return 1; }
}

sample() {  # RUN DATA STEPS GRID_POWER CHECKPOINT...
    local run=$1 data=$2 steps=$3 grid=$4 ckpt file
    shift 4
    for ckpt in "$@"; do
        file="$OUT/$run/$(basename "$ckpt" .pt)_s${steps}_g${grid}.jsonl"
        [ -f "$file" ] || python sample.py --out_dir="$OUT/$run" --ckpt_file="$ckpt" --num_samples="$SAMPLES" \
            --steps="$steps" --grid_power="$grid" --samples_file="$file" --progress=False > /dev/null
        [ -f "$file.length.json" ] || python evaluate.py --task=length --samples="$file" --data_dir="data/$data" > /dev/null
    done
}

calibrate() {  # RUN DATA: g's calibration at every checkpoint of a FlexMDM run
    local ckpt
    for ckpt in "$OUT/$1"/ckpt*.pt; do
        [ -f "${ckpt%.pt}.calibration.json" ] || python evaluate.py --task=calibration --ckpt="$ckpt" \
            --data_dir="data/$2" --calibration_samples=256 --trace_samples=100 --steps=64 > /dev/null
    done
}

run() {  # RUN CONFIG DATA SECONDS [OVERRIDES...]: train, then sample
    train "$@"
    sample "$1" "$3" 64 1.0 "$OUT/$1"/ckpt*.pt
    sample "$1" "$3" 256 1.0 "$OUT/$1/ckpt.pt"
    if [ "$2" != wikitext_cpu_mdm ]; then
        sample "$1" "$3" 64 2.0 "$OUT/$1"/ckpt*.pt
        calibrate "$1" "$3"
    fi
}

prepare wikitext128 128 chunk
prepare wikitext128drop 128 drop
# two at a time, one thread each; the budget is CPU time, so the pairing does not change what each run gets
# paper: config/wikitext_cpu.py with the paper's loss (PAPER); prior: the same with the length prior (PRIOR)
PRIOR=${PRIOR:---prior_weight=1.0}
PAPER=--prior_weight=0.0
(set -e; run mdm_chunk wikitext_cpu_mdm wikitext128 "$BUDGET"; run mdm_drop wikitext_cpu_mdm wikitext128drop "$BUDGET";
 run prior_drop wikitext_cpu wikitext128drop "$BUDGET" $PRIOR) & first=$!
(set -e; run prior_chunk wikitext_cpu wikitext128 "$BUDGET" $PRIOR; run paper_chunk wikitext_cpu wikitext128 "$BUDGET" $PAPER) & second=$!
wait $first
wait $second
