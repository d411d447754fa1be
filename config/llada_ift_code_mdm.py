# The LLaDA baseline for code infilling: LLaDA-8B-Base with the same LoRA, the plain MDM loss and the
# same epochs. The middle is padded with EOS to infill_middle_tokens (64) and the pads predicted; at
# evaluation the MDM fills prefix + 64 masks + suffix and the pads are dropped.
exec(open("config/llada_ift_code.py").read())
model_type = "mdm"
init_from = "base"
out_dir = "out-llada-ift-code-mdm"
gamma1 = 0.0
