# A tiny text model for CPU tests and demos (seconds per iteration on one core). Data as in
# config/wikitext.py (or any prepare_owt.py output via --dataset=...):
#   python train.py config/text_cpu.py
#   python sample.py --out_dir=out/text_cpu --num_samples=8 --steps=32 --device=cpu --dtype=float32
dataset = 'wikitext'
out_dir = 'out/text_cpu'
model_type = 'flexmdm'
n_layer = 2
n_head = 2
n_embd = 64
cond_dim = 32
dropout = 0.0
batch_size = 8
packing = True
pack_tokens = 1024
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 20
max_iters = 200
weight_decay = 0.01
ema_decay = 0.99
eval_interval = 100
eval_iters = 2
log_interval = 10
device = 'cpu'
dtype = 'float32'
compile = False
