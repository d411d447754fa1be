# Timing of the retrofit on a random LLaDA-shaped model of ~1.1B parameters (d 2048, 12 layers,
# 16 heads, SwiGLU 5632, LLaDA's vocabulary 126464) on one GPU, random tokens of max_len:
#   python retrofit_llada.py config/llada_bench.py
# prints the step time and torch.cuda.max_memory_allocated (for BENCHMARKS.md).
stage = "bench"
out_dir = "out-llada-bench"
bench_arch = (2048, 12, 16, 5632, 126464)  # d_model, n_layers, n_heads, mlp, vocab
max_len = 1024
global_batch_size = 4
micro_batch_size = 4
max_iters = 20
warmup_iters = 0
activation_checkpointing = True
