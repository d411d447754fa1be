#!/usr/bin/env bash
# The length-fidelity claim with seeds (RESULTS.md): FlexMDM and the padded MDM on WikiText-2 paragraphs (long ones
# dropped, chunked to 128, and max_len 512: DATA), config/wikitext_cpu*.py, BUDGET CPU-s each on one thread, seeds SEEDS;
# SAMPLES (200) samples each with the vanilla sampler at STEPS (64 and 256) steps; length metrics and the generative
# perplexity under the reference LM REF (scripts/reference_lm.py); scripts/length_seeds.py --cell then gathers each
# cell's numbers (the validation bound, g on BEHIND_SAMPLES states that fell behind) into RESULTS/<data>/<run>.json.
#   PHASE=pilot: the FlexMDM settings PILOT (prior, behind, behind<weight>, lag<digit>) compared on seed 0 (not reported
#                with the others)
#   PHASE=claim: FlexMDM (FLEX: the setting the pilot chose, run name FLEXRUN) and the MDM, seeds 1 2 3, all three
#                datasets, and the MDM at the iterations of FlexMDM's seed 1 on the chunked data
# A finished piece is not run again (rerun to resume); a finished cell is its JSON.
#   python scripts/reference_lm.py --dataset=wikitext512 --out_dir=out/ref_lm
#   PHASE=pilot bash scripts/length_seeds.sh && PHASE=claim bash scripts/length_seeds.sh
#   python scripts/length_seeds.py --overwrite=True                     # -> results/length_seeds.md
set -euo pipefail
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
OUT=${OUT:-out/seeds}
BUDGET=${BUDGET:-600}
SAMPLES=${SAMPLES:-200}
STEPS=${STEPS:-64 256}
BEHIND_SAMPLES=${BEHIND_SAMPLES:-4096}
REF=${REF:-out/ref_lm}
RESULTS=${RESULTS:-results/seeds}
FLEX=${FLEX:---prior_weight=1.0}
PHASE=${PHASE:-claim}
PILOT=${PILOT:-prior behind}
FLEXRUN=${FLEXRUN:-flex}
SEEDS=${SEEDS:-1 2 3}
DATA=${DATA:-wikitext128drop wikitext128 wikitext512}

prepare() {  # NAME MAX_LEN LONG
    [ -f "data/$1/meta.json" ] || python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw \
        --txt_unit=line --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len="$2" --long="$3" --out_dir="data/$1"
}

cell() {  # DATA RUN SEED CONFIG [TRAIN OVERRIDES...]: train, sample at STEPS, evaluate, gather
    local data=$1 run=$2 seed=$3 config=$4 dir="$OUT/$1/$2_s$3" steps file init
    shift 4
    [ -f "$RESULTS/$data/${run}_s$seed.json" ] && return
    mkdir -p "$OUT/$data"
    if ! grep -qs "^stopped after" "$dir.train.log"; then  # not trained to the end: from scratch, or resumed
        [ -f "$dir/ckpt.pt" ] && init=resume || init=scratch
        python train.py "config/$config.py" --dataset="$data" --out_dir="$dir" --seed="$seed" --init_from="$init" \
            --max_seconds="$BUDGET" "$@" >> "$dir.train.log" 2>&1 || { echo "training $dir failed: $dir.train.log" >&2; return 1; }
    fi
    for steps in $STEPS; do
        file="$dir/s$steps.jsonl"
        [ -f "$file" ] || python sample.py --out_dir="$dir" --num_samples="$SAMPLES" --steps="$steps" --seed="$seed" \
            --samples_file="$file" --progress=False > /dev/null
        [ -f "$file.text.json" ] || python evaluate.py --task=text --samples="$file" --data_dir="data/$data" \
            --ref_model="$REF" > /dev/null
    done
    python scripts/length_seeds.py --cell="$dir" --results="$RESULTS" --behind_samples="$BEHIND_SAMPLES" > /dev/null
}

prepare wikitext128 128 chunk
prepare wikitext128drop 128 drop
prepare wikitext512 512 chunk
[ -f "$REF/reference.json" ] || { echo "no reference LM in $REF: python scripts/reference_lm.py --out_dir=$REF" >&2; exit 1; }
# The cells, the longest first within a seed: two workers (one thread each) take them in turn; the budget is CPU
# time, so sharing the cores changes nothing. A failed cell is reported and the others go on.
cells() {
    if [ "$PHASE" = pilot ]; then
        for data in $DATA; do for run in $PILOT; do case $run in
            prior) echo "$data prior 0 wikitext_cpu --prior_weight=1.0";;
            behind) echo "$data behind 0 wikitext_cpu --prior_weight=1.0 --behind_weight=1.0";;
            behind[0-9]*) echo "$data $run 0 wikitext_cpu --prior_weight=1.0 --behind_weight=${run#behind}.0";;
            lag[0-9]) echo "$data $run 0 wikitext_cpu --prior_weight=1.0 --behind_weight=1.0 --behind_lag=0.${run#lag}";;
            *) echo "PILOT: prior, behind, behind<weight> (behind4: behind_weight=4) or lag<digit> (lag2: behind_lag=0.2), not $run" >&2
               return 1;; esac
        done; done
        return
    fi
    for seed in $SEEDS; do for data in $(printf '%s\n' $DATA | sort -r); do  # wikitext512 first
        echo "$data mdm $seed wikitext_cpu_mdm"; echo "$data $FLEXRUN $seed wikitext_cpu $FLEX"; done; done
    [[ " $DATA " == *" wikitext128 "* ]] || return 0  # mdm_iters: on the chunked data, after FlexMDM's seed 1
    local first="$RESULTS/wikitext128/flex_s1.json"
    [ -f "$first" ] || { echo "mdm_iters waits for $first: run again once it is there" >&2; return 0; }
    iters=$(python -c "import json; print(json.load(open('$first'))['iterations'])")
    echo "wikitext128 mdm_iters 1 wikitext_cpu_mdm --max_seconds=0.0 --max_iters=$iters"
}
export OUT BUDGET SAMPLES STEPS BEHIND_SAMPLES REF RESULTS
export -f cell
cells | xargs -P 2 -L 1 bash -c 'set -euo pipefail; cell "$@"' cell
