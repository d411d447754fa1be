# The README's demo: a small maze FlexMDM trained on 2 CPU cores in about 7 minutes.
# Data: python prepare_maze.py --m=5 --n=5 --K=2 --num_pairs=2000 --out_dir=data/maze_cpu
# (11x11 grid, 64 free cells, 17772 training paths of 2..28 cells). The model is tiny (0.3M
# parameters) because the learning of g, not of f, is the bottleneck: the held-out success rate is
# near 0 until about 2000 iterations and then climbs (RESULTS.md has the curve).
dataset = "maze_cpu"
out_dir = "out/maze_cpu"
model_type = "flexmdm"
n_layer = 4
n_head = 4
n_embd = 64
cond_dim = 64
dropout = 0.0
batch_size = 64
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
