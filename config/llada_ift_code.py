# Instruction fine-tuning of the retrofitted FlexMDM for code infilling (appendix F.3: 50 epochs of
# opc-sft-stage-2's educational split, ~0.1M pairs; "training configurations are the same as pretraining").
# The paper does not say how pairs became infilling examples. Chosen: from each row's "code", a middle
# of 1-3 whole non-blank lines (<= 64 tokens) is generated, the prefix and suffix before/after it fixed.
#   torchrun --nnodes=2 --nproc_per_node=8 ... retrofit_llada.py config/llada_ift_code.py
# Then HumanEval single-line infilling (zero-shot), pass@1:
#   torchrun ... retrofit_llada.py config/llada_ift_code.py --stage=generate --init_from=out-llada-ift-code/ckpt.pt
#   python evaluate.py --task=humaneval_infill --samples=out-llada-ift-code/humaneval_infill.jsonl \
#       --problems=HumanEval-SingleLineInfilling.jsonl.gz
exec(open("config/llada_pretrain.py").read())
stage = "ift_code"
init_from = "out-llada-pretrain/ckpt.pt"
out_dir = "out-llada-ift-code"
code_source = "OpenCoder-LLM/opc-sft-stage2"
code_config = "educational_instruct"
max_len = 1024
infill_max_lines = 3
infill_middle_tokens = 64  # also the MDM baseline's fixed middle width at evaluation
epochs = 50.0  # -> max_iters = ceil(50 * rows / 64)
save_interval = 2000
task = "humaneval_infill"
eval_source = "HumanEval-SingleLineInfilling.jsonl.gz"  # from github.com/openai/human-eval-infilling (data/)
sampler = "adaptive"
confidence = "top_prob"
gamma1 = 5.0
gamma2 = 64
steps = 64  # not given; a single line is short
temperature = 0.0
