# OpenWebText, FlexMDM, the paper's 175M DiT (section 5.1.1, appendix F.1).
# Data: python prepare_owt.py            (OpenWebText from the hub -> data/owt, paragraphs, max_len 1024)
# Train on 2 nodes x 8 H100 (16 GPUs), run on each node with its --node_rank:
#   torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=HOST0 --master_port=29500 \
#       train.py config/owt.py
# One node of 8: torchrun --standalone --nproc_per_node=8 train.py config/owt.py (same global batch:
# gradient_accumulation_steps is the total over all processes, so each GPU then does 2 micro-steps).
dataset = 'owt'
out_dir = 'out/owt'
model_type = 'flexmdm'
# The length prior (train.py prior_weight): the text setting. On WikiText at 300-600 CPU-s it lifts g at the empty
# state from 0.47 to 0.91-0.94 of the mean length and more than halves the chunked data's length W1 (24.7 to 10.8).
# The rows behind their time (behind_weight) help at max_len 512: length W1 21.8 +- 1.9 -> 16.2 +- 3.2 at 256 steps,
# p50 54 -> 67 (data 85), 3 seeds at 600 CPU-s (RESULTS.md); at max_len 128 they did not.
prior_weight = 1.0
behind_weight = 1.0

# model: hidden 768, 12 heads, cond 128, dropout 0.05, 12 layers (170M parameters here, the paper's "175M")
n_layer = 12
n_head = 12
n_embd = 768
cond_dim = 128
dropout = 0.05

# global batch 1024 sequences = batch_size 64 x gradient_accumulation_steps 16 (one per GPU on 16)
batch_size = 64
gradient_accumulation_steps = 16
# FlexMDM packs the x_t of a batch into rows with no padding; a row must hold one x_t of up to
# 1024 tokens plus its gap slot, and 2048 keeps the next-fit waste at the end of a row small.
packing = True
pack_tokens = 2048

# AdamW, lr 3e-4, wd 0.03, 2000 warmup steps, EMA 0.9999. Section 5.1.1 reports 500K iterations
# (appendix F.1 says "max training iteration 1M"); the decay after warmup is not given: cosine.
learning_rate = 3e-4
weight_decay = 0.03
warmup_iters = 2000
max_iters = 500000
min_lr = 3e-5
ema_decay = 0.9999

eval_interval = 5000
eval_iters = 20
log_interval = 100
dtype = 'bfloat16'
compile = True
