#!/usr/bin/env bash
# RESULTS.md, length fidelity part 3, the fixes at the same budget: FlexMDM (config/wikitext_cpu.py) on WikiText-2
# paragraphs chunked to 128 and with the long ones dropped (DATA), with each setting of FIXES: the paper's loss
# (paper), the length prior (prior, the config's), the prior at early times (prior_time: prior_time=0.1) and the
# mlp g head (mlp); BUDGET CPU-s each on one thread, two side by side. Per run SAMPLES samples at 64 steps on the
# uniform and the power-2 time grid (evaluate.py --task=length) and the calibration of g (--task=calibration,
# HELDOUT held-out sequences, TRACE chains); then the table on stdout. A finished piece is not run again (rerun to
# resume). About 80 minutes on 2 cores.
#   bash scripts/length_fixes.sh
set -euo pipefail
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
OUT=${OUT:-out/fixes}
BUDGET=${BUDGET:-300}
SAMPLES=${SAMPLES:-1000}
HELDOUT=${HELDOUT:-512}
TRACE=${TRACE:-200}
DATA=${DATA:-wikitext128 wikitext128drop}
FIXES=${FIXES:-paper prior prior_time mlp}

fix() {  # DATA FIX: train, sample on both grids, evaluate the lengths, calibrate g
    local data=$1 dir=$OUT/$1/$2 flags init
    case $2 in paper) flags=--prior_weight=0.0;; prior) flags=;; prior_time) flags=--prior_time=0.1;;
               mlp) flags=--insert_head=mlp;; *) echo "FIXES: paper, prior, prior_time or mlp, not $2" >&2; return 1;; esac
    mkdir -p "$OUT/$data"
    if ! grep -qs "^stopped after" "$dir.train.log"; then  # not trained to the end: from scratch, or resumed
        [ -f "$dir/ckpt.pt" ] && init=resume || init=scratch
        python train.py config/wikitext_cpu.py --dataset="$data" --out_dir="$dir" --init_from="$init" \
            --max_seconds="$BUDGET" $flags >> "$dir.train.log" 2>&1 || { echo "training $dir failed: $dir.train.log" >&2; return 1; }
    fi
    for grid in 1.0 2.0; do
        local file="$dir/s64_g$grid.jsonl"
        [ -f "$file" ] || python sample.py --out_dir="$dir" --num_samples="$SAMPLES" --steps=64 --grid_power="$grid" \
            --samples_file="$file" --progress=False > /dev/null
        [ -f "$file.length.json" ] || python evaluate.py --task=length --samples="$file" --data_dir="data/$data" > /dev/null
    done
    [ -f "$dir/ckpt.calibration.json" ] || python evaluate.py --task=calibration --ckpt="$dir/ckpt.pt" \
        --data_dir="data/$data" --steps=64 --calibration_samples="$HELDOUT" --trace_samples="$TRACE" > /dev/null
}

for data in $DATA; do
    case $data in wikitext128) long=chunk;; wikitext128drop) long=drop;;
                  *) echo "DATA: wikitext128 or wikitext128drop, not $data" >&2; exit 1;; esac
    [ -f "data/$data/meta.json" ] || python prepare_owt.py --source=../shared/data/wikitext2_raw/wiki.test.raw --txt_unit=line \
        --val_source=../shared/data/wikitext2_raw/wiki.valid.raw --max_len=128 --long=$long --out_dir="data/$data"
done
export OUT BUDGET SAMPLES HELDOUT TRACE
export -f fix
for data in $DATA; do for fix in $FIXES; do echo "$data $fix"; done; done | xargs -P 2 -L 1 bash -c 'set -euo pipefail; fix "$@"' fix

OUT=$OUT DATA=$DATA FIXES=$FIXES python - <<'EOF'
import json, os, re
names = {"paper": "paper's loss", "prior": "prior_weight=1", "prior_time": "prior_weight=1, prior_time=0.1",
         "mlp": "prior_weight=1, insert_head=mlp"}
print("| data | run | iterations | g at x_0 / mean | trace: inserted | W1 (mean), uniform grid | p10 / p50 / p90 "
      "| W1 (mean), grid 2 | p10 / p50 / p90 |\n" + "|" + " --- |" * 9)
for data in os.environ["DATA"].split():
    for fix in os.environ["FIXES"].split():
        run = os.path.join(os.environ["OUT"], data, fix)
        iterations = re.search(r"^stopped after (\d+) iterations", open(run + ".train.log").read(), re.M).group(1)
        calibration = json.load(open(os.path.join(run, "ckpt.calibration.json")))
        cells = []
        for grid in ("1.0", "2.0"):
            length = json.load(open(os.path.join(run, f"s64_g{grid}.jsonl.length.json")))["length"]
            s = length["samples"]
            cells += [f"{length['wasserstein1']:.1f} ({s['mean']:.1f})", f"{s['p10']:.0f} / {s['p50']:.0f} / {s['p90']:.0f}"]
        print(f"| {data} | {names[fix]} | {iterations} | {calibration['table'][0]['ratio']:.2f} | "
              f"{calibration['trace']['inserted'][0]:.1f} | " + " | ".join(cells) + " |")
    d = length["data"]
    print(f"| {data} | data (validation) | | | | ({d['mean']:.1f}) | {d['p10']:.0f} / {d['p50']:.0f} / {d['p90']:.0f} | | |")
EOF
