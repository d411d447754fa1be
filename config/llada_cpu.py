# A tiny LLaDA retrofit on one CPU process (tests/test_llada.py runs it). base_model has no default
# here: give a small checkpoint in LLaDA's format (config.json, model.safetensors, tokenizer), e.g.
#   python retrofit_llada.py config/llada_cpu.py --base_model=PATH --stage=pretrain --max_iters=20
# or FSDP over 2 CPU processes (gloo), the global batch kept by halving the accumulation:
#   torchrun --standalone --nproc_per_node=2 retrofit_llada.py config/llada_cpu.py --base_model=PATH --stage=ift_math
# Data: the offline stand-ins of ../shared/data (README there): WebText for OpenWebText, math_text
# (one file; their "meta" fields differ) for Proof-Pile-2, GSM8K as is.
device = "cpu"
dtype = "float32"
out_dir = "out-llada-cpu"
owt_source = "../shared/data/webtext_gpt2_output/webtext.test.jsonl"
math_source = "../shared/data/math_text/math_stackexchange_33votes.jsonl"
math_fields = "input,output"
gsm8k_source = "../shared/data/gsm8k/train.jsonl"
eval_source = "../shared/data/gsm8k/test.jsonl"
max_len = 256
infill_middle_tokens = 32
cond_dim = 16
lora_r = 8
lora_alpha = 8
global_batch_size = 4
micro_batch_size = 2
warmup_iters = 2
restart_iters = 50
max_iters = 20
log_interval = 1
save_interval = 10
steps = 16
gen_batch_size = 4
activation_checkpointing = False
