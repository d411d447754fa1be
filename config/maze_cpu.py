# The README's demo: a small maze FlexMDM trained on 2 CPU cores in about 6 minutes.
# Data: python prepare_maze.py --m=5 --n=5 --K=2 --num_pairs=2000 --out_dir=data/maze_cpu
# (11x11 grid, 64 free cells, 17772 training paths of 2..28 cells). The model is tiny (0.34M
# parameters): at this budget the number of iterations matters more than the width, and learning g
# (hence the length of the path) is what takes long. Two choices buy iterations (RESULTS.md):
# packing (x_t holds about half of each path, so padded rows would be mostly padding) and the flat
# time weighting (the same minimisers as eq. 7, without its 1 / (1 - t) gradient spikes).
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
max_iters = 5000
weight_decay = 0.01
ema_decay = 0.99  # a short run: 0.999 would still average in the weights of iteration ~4000
eval_interval = 1000
eval_iters = 10
log_interval = 500
device = "cpu"
dtype = "float32"
