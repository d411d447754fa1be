# Instruction fine-tuning of the retrofitted FlexMDM on GSM8K train (appendix F.3: 1000 epochs,
# "training configurations are the same as pretraining"). Prompt "Question: ...\nAnswer:" fixed,
# the answer (calculator notes <<...>> removed, ending in "#### N") generated.
#   torchrun --nnodes=2 --nproc_per_node=8 ... retrofit_llada.py config/llada_ift_math.py
# Then sample GSM8K test (zero-shot) and score it:
#   torchrun ... retrofit_llada.py config/llada_ift_math.py --stage=generate --init_from=out-llada-ift-math/ckpt.pt
#   python evaluate.py --task=gsm8k --samples=out-llada-ift-math/gsm8k.jsonl
exec(open("config/llada_pretrain.py").read())
stage = "ift_math"
init_from = "out-llada-pretrain/ckpt.pt"  # the retrofit's LoRA and new modules (a fresh optimiser)
out_dir = "out-llada-ift-math"
gsm8k_source = "openai/gsm8k"
max_len = 512  # not given: every GSM8K prompt + answer fits in 512 LLaDA tokens; the MDM pads to it
epochs = 1000.0  # -> max_iters = ceil(1000 * 7473 / 64) = 116766
warmup_iters = 100
save_interval = 2000
# generation (F.3): top-probability confidence with a sliding window, gamma1 = 5, gamma2 = 64.
# Not given: steps (Figure 4 sweeps them; 256 here), temperature (0: argmax tokens, LLaDA's choice).
task = "gsm8k"
eval_source = "openai/gsm8k"  # config main, split test
sampler = "adaptive"
confidence = "top_prob"
gamma1 = 5.0
gamma2 = 64
steps = 256
temperature = 0.0
