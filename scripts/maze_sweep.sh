#!/usr/bin/env bash
# The K sweep of RESULTS.md: FlexMDM, FlexMDM + fixed_embedding and the MDM on the 11x11
# maze for K = 5, 7, 2, each run with the same budget of BUDGET seconds of CPU time on one thread
# (the three runs of one K side by side, so any other load on the machine hits them alike), then
# 500 held-out samples per run with the vanilla sampler at temperature 1 and at temperature 0.
#   bash scripts/maze_sweep.sh            # BUDGET=300 KS="5 7 2" by default; out/sweep/, data/maze_cpu_k*
# A piece already done (a checkpoint, a samples or metrics file) is not run again: rerun to resume.
set -euo pipefail
BUDGET=${BUDGET:-300}
KS=${KS:-"5 7 2"}
NUM_SAMPLES=${NUM_SAMPLES:-500}
export OMP_NUM_THREADS=1
run() {  # name config extra-args...: train with the budget, then sample at temperatures 1 and 0
    local name=$1 cfg=$2; shift 2
    local out=out/sweep/$name
    [ -f $out/ckpt.pt ] || python train.py "$cfg" --dataset=$DATA --out_dir=$out --max_seconds=$BUDGET.0 \
        --budget_clock=cpu --max_iters=5000 --eval_interval=100000 --log_interval=500 "$@" > $out.train.log 2>&1
    for temp in 1 0; do
        [ -f $out/samples_t$temp.jsonl ] || python sample.py --out_dir=$out --num_samples=$NUM_SAMPLES \
            --temperature=$temp --samples_file=$out/samples_t$temp.jsonl > $out.sample_t$temp.log 2>&1
    done
}
mkdir -p out/sweep
for K in $KS; do
    DATA=maze_cpu_k$K
    [ -f data/$DATA/meta.json ] || python prepare_maze.py --m=5 --n=5 --K=$K --num_pairs=2000 --out_dir=data/$DATA
    run flex_k$K config/maze_cpu.py &
    run flexfix_k$K config/maze_cpu.py --fixed_embedding=True &
    run mdm_k$K config/maze_cpu_mdm.py &
    wait
    for name in flex_k$K flexfix_k$K mdm_k$K; do
        for temp in 1 0; do
            samples=out/sweep/$name/samples_t$temp.jsonl
            [ -f $samples.maze.json ] || python evaluate.py --task=maze --samples=$samples --data_dir=data/$DATA | grep "success rate"
        done
    done
done
