#!/usr/bin/env bash
# The torchrun tests of tests/test_train.py, N rounds in a row, each beside two busy loops (a shared CI machine):
# the measurement behind configurator.init_distributed's fix of the abort at exit (a finished run killed by
# SIGABRT, "terminate called without an active exception", in 1 of 4 loaded rounds before it).
#   bash scripts/torchrun_rounds.sh 20          # prints each failing round, then "failed rounds: F of N"
set -uo pipefail
n=${1:-20}
export OMP_NUM_THREADS=1 TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd ../shared/tiktoken_cache && pwd)}
log=$(mktemp -d)
failed=0
for i in $(seq 1 "$n"); do
    (while :; do :; done) & a=$!
    (while :; do :; done) & b=$!
    python -m pytest tests/test_train.py -q -k torchrun -p no:cacheprovider > "$log/round_$i.txt" 2>&1 || {
        failed=$((failed + 1)); echo "round $i failed: $log/round_$i.txt"; }
    kill $a $b; wait $a $b 2>/dev/null
done
echo "failed rounds: $failed of $n"
