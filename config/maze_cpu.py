# The README's demo: a small maze FlexMDM trained on a CPU for a fixed budget of 300 s of CPU time on one
# thread (run it with OMP_NUM_THREADS=1; about 6 minutes in all with sampling).
# Data: python prepare_maze.py --m=5 --n=5 --K=5 --num_pairs=2000 --out_dir=data/maze_cpu
# (11x11 grid, 64 free cells, 17261 training paths of 5..25 cells, 5 subgoals each: start, 3 interior
# cells, goal). K = 5 rather than 2: placing interior subgoals is where a fixed-length MDM struggles
# (paper section 5.1.2), and where the K sweep of RESULTS.md separates the two models. The model is tiny
# (0.34M parameters): at this budget iterations matter more than width. Two choices buy iterations
# (RESULTS.md): packing (x_t holds about half of each path, so padded rows would be mostly padding) and
# the flat time weighting (the same minimisers as eq. 7, without its 1 / (1 - t) gradient spikes).
# torch.compile does not pay here: a first run spends about a third of the budget compiling, for steps
# 20 % cheaper (BENCHMARKS.md), so compile stays off.
# The MDM baseline, config/maze_cpu_mdm.py, gets the same budget.
dataset = "maze_cpu"
out_dir = "out/maze_cpu"
model_type = "flexmdm"
n_layer = 4
n_head = 4
n_embd = 64
cond_dim = 64
dropout = 0.0
batch_size = 128
packing = True
pack_tokens = 128
time_weighting = "flat"
learning_rate = 2e-3
min_lr = 1e-4
warmup_iters = 200
max_iters = 5000  # the length of the LR schedule, mapped onto the budget below
max_seconds = 300.0
budget_clock = "cpu"  # CPU time of this process: the budget does not shrink when other jobs share the cores
weight_decay = 0.01
ema_decay = 0.99  # a short run: 0.999 would still average in the weights of the first quarter
eval_interval = 1000
eval_iters = 10
log_interval = 500
device = "cpu"
dtype = "float32"
