# LLaDA-8B-Base -> FlexMDM, the transfer stage (paper section 5.2, appendix F.3), 16 H100s (2 x 8):
#   torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK --master_addr=$HOST0 --master_port=29500 \
#       retrofit_llada.py config/llada_pretrain.py
# Paper: time embedding via adaLN + a scalar insertion head, LoRA r=128 alpha=128 dropout 0.1 on
# q/k/v and the output head (~400M trainable with cond_dim 512: LoRA 117M, adaLN 273M); OpenWebText and
# Proof-Pile-2 50:50; AdamW lr 1e-4, wd 0.1, cosine with warm restarts; batch 64; 200k steps (~3 days).
stage = "pretrain"
model_type = "flexmdm"
base_model = "GSAI-ML/LLaDA-8B-Base"
out_dir = "out-llada-pretrain"
owt_source = "Skylion007/openwebtext"
math_source = "hf://datasets/EleutherAI/proof-pile-2/*/train/*.jsonl.zst"  # arxiv, open-web-math, algebraic-stack
owt_fraction = 0.5  # the 50:50 mix, by sampling each sequence's source
max_len = 1024  # paragraphs chunked to 1024 as in F.1 (the paper does not say for LLaDA)
cond_dim = 512  # not given; 512 makes the trainable count the paper's ~400M
insert_init = 1.0  # not given: one expected insertion per gap at the start
lora_r = 128
lora_alpha = 128
lora_dropout = 0.1
global_batch_size = 64  # "batch size 64": sequences per optimiser step over all 16 GPUs
micro_batch_size = 4  # 64 / 16 GPUs: no gradient accumulation
learning_rate = 1e-4
weight_decay = 0.1
# "cosine warm restart scheduler": no period, floor or warmup given. Chosen: 100 warmup steps, then
# cosine from 1e-4 to 1e-5 restarting every 10k steps (20 cycles in 200k), betas (0.9, 0.999), clip 1.0.
warmup_iters = 100
restart_iters = 10000
min_lr = 1e-5
max_iters = 200000
save_interval = 1000
log_interval = 10
activation_checkpointing = True
dtype = "bfloat16"
