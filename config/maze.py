# Maze planning, FlexMDM, the paper's 41x41 setup (section 5.1.2, appendix F.2).
# Data: python prepare_maze.py --K=2  (-> data/maze_k2; --K=7 / --K=12 for medium / hard)
# Train: python train.py config/maze.py   (variants: config/maze_k{2,7,12}.py, maze_mdm_k*.py)
# Epoch: the K=2 train split has 141562 sequences (14250 pairs, ~9.9 paths each), so one epoch at
# batch 256 is 141562 / 256 ~ 553 iterations (K=7: 140764 -> 550, K=12: 137426 -> 537).
# The paper trains 100 epochs with 20 warmup epochs; we use the K=2 epoch for all K.
_iters_per_epoch = 553

dataset = 'maze_k2'            # data dir is data/<dataset>
model_type = 'flexmdm'
out_dir = 'out/maze_k2'

# model: hidden 256, 8 heads, cond 128, dropout 0.1, 8 layers (~8.5M params)
n_layer = 8
n_head = 8
n_embd = 256
cond_dim = 128
dropout = 0.1

# optimisation: AdamW, lr 1e-4, wd 0.01, global batch 256, EMA 0.9999
batch_size = 256
learning_rate = 1e-4
weight_decay = 0.01
ema_decay = 0.9999
warmup_iters = 20 * _iters_per_epoch   # 20 epochs = 11060
max_iters = 100 * _iters_per_epoch     # 100 epochs = 55300

eval_interval = 2 * _iters_per_epoch   # every 2 epochs
eval_iters = 20
log_interval = 50
