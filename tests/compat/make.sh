#!/usr/bin/env bash
# Makes the compatibility fixtures of tests/test_compat.py: prepared data, two checkpoints and their
# samples, written by the code of commit 46c32c4 (before the library/script split) and kept as they
# came out. Rerun with today's code, it must give the same files (the test checks each), so:
#   bash tests/compat/make.sh /tmp/compat      # then compare with tests/compat/ (test_compat.py does)
# With SAMPLE_ONLY=1 it only samples, from the checkpoints already in OUT_DIR/out (the stored ones).
# Run from the repo root; OMP_NUM_THREADS=1 as in the tests.
set -euo pipefail
out=${1:?usage: make.sh OUT_DIR}
repo=$(pwd)
mkdir -p "$out" && cd "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
py() { python "$repo/$1" "${@:2}" > /dev/null; }
if [ -z "${SAMPLE_ONLY:-}" ]; then
py prepare_maze.py --m=3 --n=3 --K=3 --num_pairs=60 --out_dir=data/compat_maze
py prepare_owt.py --source="$repo/../shared/data/wikitext2_raw/wiki.valid.raw" --txt_unit=line --val_frac=0.1 \
    --max_len=64 --max_docs=400 --num_proc=1 --out_dir=data/compat_text
TINY="--dataset=compat_maze --n_layer=1 --n_head=2 --n_embd=16 --cond_dim=8 --dropout=0.1 --batch_size=16 \
  --max_iters=300 --eval_interval=100 --eval_iters=2 --log_interval=100 --warmup_iters=20 --learning_rate=3e-3 \
  --ema_decay=0.9 --save_seconds=0 --device=cpu --dtype=float32"
py train.py $TINY --out_dir=out/flex --packing=True --pack_tokens=64 --time_weighting=flat --prior_weight=1.0 \
    --prior_time=0.1 --insert_head=mlp --fixed_embedding=True
py train.py $TINY --out_dir=out/mdm --model_type=mdm
fi
S="--num_samples=24 --batch_size=8 --steps=24 --seed=7 --device=cpu --dtype=float32 --progress=False"
py sample.py --out_dir=out/flex $S --samples_file=out/flex/vanilla.jsonl
py sample.py --out_dir=out/flex $S --samples_file=out/flex/adaptive.jsonl --sampler=adaptive --confidence=margin --gamma1=2.0 --gamma2=4
py sample.py --out_dir=out/flex $S --samples_file=out/flex/options.jsonl --unmask=exact --temperature=0.7 --grid_power=2.0 --early_stop=0.05 --final=argmax
py sample.py --out_dir=out/flex $S --samples_file=out/flex/target.jsonl --target_len=7
py sample.py --out_dir=out/mdm $S --samples_file=out/mdm/vanilla.jsonl
py sample.py --out_dir=out/mdm $S --samples_file=out/mdm/adaptive.jsonl --sampler=adaptive --confidence=top_prob
