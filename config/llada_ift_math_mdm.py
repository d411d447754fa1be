# The LLaDA baseline on GSM8K (section 5.2, footnote 4): LLaDA-8B-Base itself (no time embedding,
# no insertion head) with the same LoRA, the plain MDM loss and the same number of IFT epochs.
# Answers are padded with EOS to max_len and the pads predicted (LLaDA's SFT convention); sampling
# starts from the prompt and max_len masks. F.3 reports the best of semi-autoregressive and plain
# confidence-based sampling for the MDM; only the latter (no window) is implemented here.
exec(open("config/llada_ift_math.py").read())
model_type = "mdm"
init_from = "base"
out_dir = "out-llada-ift-math-mdm"
gamma1 = 0.0
