#!/usr/bin/env bash
# The README's demo, about 7 minutes on 2 CPU cores: a 0.34M-parameter FlexMDM plans paths through an
# 11x11 maze with 5 subgoals (start, 3 interior cells, goal), trained for 300 s of CPU time on one thread.
#   1. prepare_maze.py  the maze and its paths            -> data/maze_cpu
#   2. train.py         config/maze_cpu.py                 -> out/maze_cpu/ckpt.pt
#   3. sample.py        500 paths for held-out subgoal sets -> out/maze_cpu/samples.jsonl
#   4. evaluate.py      the success rate, three solved and three failed samples -> out/maze_cpu/mazes.png
# Nothing is overwritten: a second run stops at step 1 with one line naming data/maze_cpu (delete it and
# out/maze_cpu first). Stopped with Ctrl-C, training saves its checkpoint and says how to resume it.
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
python prepare_maze.py --m=5 --n=5 --K=5 --num_pairs=2000 --out_dir=data/maze_cpu
python train.py config/maze_cpu.py
python sample.py --out_dir=out/maze_cpu --num_samples=500
python evaluate.py --task=maze --samples=out/maze_cpu/samples.jsonl --data_dir=data/maze_cpu --png=out/maze_cpu/mazes.png
