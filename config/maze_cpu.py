# The README's demo: a small maze FlexMDM that learns on 2 CPU cores in a few minutes.
# Data: python prepare_maze.py --m=5 --n=5 --K=2 --num_pairs=2000 --out_dir=data/maze_cpu
dataset = "maze_cpu"
out_dir = "out/maze_cpu"
model_type = "flexmdm"
n_layer = 4
n_head = 4
n_embd = 128
cond_dim = 64
dropout = 0.0
batch_size = 64
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
max_iters = 2000
weight_decay = 0.01
ema_decay = 0.999
eval_interval = 500
eval_iters = 10
log_interval = 100
device = "cpu"
dtype = "float32"
