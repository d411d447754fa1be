"""
Retrofit LLaDA-8B-Base into a FlexMDM (paper section 5.2, appendix F.3), instruction-fine-tune it and
sample the benchmarks. One stage per run, chosen by config/llada_*.py (the commands, for 16 GPUs
under torchrun with FSDP or one CPU process, are in those files and in docs/llada.md):

    python retrofit_llada.py config/llada_cpu.py --base_model=DIR --stage=pretrain

LLaDA's architecture is written here (the hub's remote code is never run) and filled by tensor name
from the checkpoint's safetensors. The retrofit (model_type="flexmdm") adds, all trained in full (fp32):
- time: model.TimeEmbedding of alpha(t) (footnote 2) -> per block a shift and a scale of both RMSNorms,
  and of ln_f (adaLN without gates), zero-initialised: the token logits start exactly as LLaDA's;
- insertion head: softplus(Linear(d, 1)) on the final hidden states; gap j is read at position j, the
  last gap at an extra *slot* position (as in model.py) whose input is a learned vector (initialised to
  LLaDA's EOS embedding); no token attends to the slot, so it cannot change the token logits;
- closed gaps: a learned vector (zero at the start) added at the position of each gap the task keeps empty
  (the prompt's, the infilling prefix's and suffix's), as model.DiT's gap_embedding: told which gap is open,
  g need not spread the answer's length over every gap of the prompt;
and LoRA (peft) on q/k/v of every block and on the output head ff_out ("crucial", F.3). The baseline
(model_type="mdm") is LLaDA with the same LoRA and the plain MDM loss; pads are tokens it predicts
(LLaDA's SFT convention). Prompts, infilling prefixes and suffixes are fixed tokens. Unlike the
paper's run (F.1), the FlexMDM's attention hides padding.

Every setting is checked before any work (check_settings), and so is what the run reads and writes: a
training stage writes out_dir/ckpt.pt (every save_interval iterations and at the end, never before the
first step, each write atomic), and a new run (init_from=base or an earlier stage's ckpt.pt) refuses an
out_dir that holds another run's ckpt.pt; stage=generate writes samples_file whole at the end, refused
if it exists (unless --overwrite=True, and then only a samples file) or is one of the run's inputs.
A checkpoint (init_from=resume or an earlier stage's) holds the network it trained: a run whose
model_type, cond_dim, lora_r, lora_alpha or base model (its config.json) differs from the checkpoint's is
refused, naming each difference; init_from=resume also keeps the stage. Everything else may change on
resume or from stage to stage: the data sources and max_len (a resumed run is then no longer the uncut
one), the budget and its schedule (max_iters, epochs, learning_rate, min_lr, warmup_iters,
restart_iters), the batch (global_batch_size, micro_batch_size, the number of processes), lora_dropout,
weight_decay, grad_clip, logging and saving, generation and the system settings. Ctrl-C at any point,
while the libraries load included, is one line (exit status 130): the last checkpoint stays, and no
samples file is written.
"""
import glob
import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

# first, before torch loads: from here on Ctrl-C is one line (configurator.py)
from configurator import InputError, check_choices, check_device, check_ranges, configure, init_distributed, pick, run

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from checkpoint import load_checkpoint, save_checkpoint
from data import check_output, chunk, split_paragraphs, write_jsonl
from interpolant import LossConfig, batch_loss
from model import TimeEmbedding, autocast, modulate, rotary
from sampler import SamplerConfig, generate

# -----------------------------------------------------------------------------
stage = "pretrain"  # pretrain | ift_math | ift_code | generate | bench
model_type = "flexmdm"  # flexmdm (the retrofit) | mdm (the LLaDA baseline: same LoRA, plain MDM loss)
base_model = "GSAI-ML/LLaDA-8B-Base"  # local directory or hub id: config.json + safetensors (+ tokenizer)
tokenizer_name = ""  # transformers.AutoTokenizer path or hub id; '' = the base_model directory
init_from = "base"  # base | resume (out_dir/ckpt.pt) | the ckpt.pt of an earlier stage
out_dir = "out-llada"
log_interval = 10
save_interval = 1000
# data: hub ids, or data files (local paths, globs, hf:// URLs) of .json(l)[.gz/.zst], .parquet, .txt
owt_source = "Skylion007/openwebtext"
owt_fields = "text"  # comma-separated fields of a row, joined by a blank line
math_source = "hf://datasets/EleutherAI/proof-pile-2/*/train/*.jsonl.zst"  # its files: datasets no longer runs its script
math_fields = "text"
owt_fraction = 0.5  # pretrain: chance that a sequence comes from owt_source (paper: 50:50)
gsm8k_source = "openai/gsm8k"  # ift_math: config "main", split "train"
code_source = "OpenCoder-LLM/opc-sft-stage2"  # ift_code: rows with a "code" field
code_config = "educational_instruct"
max_len = 1024  # longest sequence: longer paragraphs are chunked, longer IFT pairs dropped
infill_max_lines = 3  # ift_code: the middle is 1..infill_max_lines whole lines of the code
infill_middle_tokens = 64  # ... of at most this many tokens; the MDM's middle width; FlexMDM: room over the longest prompt
# model
cond_dim = 512
insert_init = 1.0  # initial expected insertions per gap (softplus of the head's bias)
lora_r = 128
lora_alpha = 128
lora_dropout = 0.1
activation_checkpointing = True
# optimiser
global_batch_size = 64  # sequences per optimiser step, all processes together
micro_batch_size = 4  # sequences per forward pass and process
learning_rate = 1e-4
min_lr = 1e-5
weight_decay = 0.1
grad_clip = 1.0  # 0 disables
warmup_iters = 100
restart_iters = 10000  # period of the cosine schedule with warm restarts
max_iters = 200000
epochs = 0.0  # ift: > 0 sets max_iters = ceil(epochs * pairs / global_batch_size)
# generation (stage=generate): JSON lines for evaluate.py
task = "gsm8k"  # gsm8k | humaneval_infill
eval_source = ""  # gsm8k: '' = openai/gsm8k (main, test), or a test.jsonl; humaneval_infill: a *.jsonl.gz
samples_file = ""  # default out_dir/<task>.jsonl
overwrite = False  # replace an existing samples_file (only a samples file)
num_problems = 0  # 0 = all
samples_per_problem = 1
steps = 256
sampler = "adaptive"  # sampler.SamplerConfig's options; F.3: top-prob confidence with a sliding window
confidence = "top_prob"
gamma1 = 5.0
gamma2 = 64
temperature = 0.0
gen_batch_size = 16
# bench (stage=bench): a random LLaDA-shaped model on random tokens; step time and peak memory
bench_arch = (2048, 12, 16, 5632, 126464)  # d_model, n_layers, n_heads, mlp, vocab: ~1.1B parameters
# system
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # frozen weights and autocast
seed = 1337
# -----------------------------------------------------------------------------

NEW_MODULES = ("time_emb", "ada", "ada_out", "slot_emb", "closed_emb", "insert_head")
LORA_TARGETS = r"transformer\.(blocks\.\d+\.(q_proj|k_proj|v_proj)|ff_out)"  # peft: a full match of the module name
CHOICES = dict(stage=("pretrain", "ift_math", "ift_code", "generate", "bench"), model_type=("flexmdm", "mdm"),
               task=("gsm8k", "humaneval_infill"), dtype=("float32", "bfloat16"))


def settings():
    """The settings above as they stand (after configure): one object, s.stage, s.max_len, ..., that main
    passes to the functions below."""
    return SimpleNamespace(**{k: v for k, v in globals().items()
                              if k.islower() and not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple))})


TRAINING = ("pretrain", "ift_math", "ift_code")
RANGES = dict(log_interval=">0", save_interval=">0", max_len=">0", infill_max_lines=">0", infill_middle_tokens=">0",
              cond_dim=">0", insert_init=">0", lora_r=">0", lora_alpha=">0", lora_dropout="[0,1)", owt_fraction="[0,1]",
              global_batch_size=">0", micro_batch_size=">0", learning_rate=">0", min_lr=">=0", weight_decay=">=0",
              grad_clip=">=0", warmup_iters=">=0", restart_iters=">0", max_iters=">=0", epochs=">=0", num_problems=">=0",
              samples_per_problem=">0", gen_batch_size=">0", seed=">=0")


def check_settings(s, world):
    """Every setting's range and the relations between them, before any work (the model, the data, the
    process group): one line naming the key, its value and the rule. The sampler's settings are checked by
    sampler.SamplerConfig, built here as generation will build it; the checkpoint read by read_start, the
    outputs by check_outputs."""
    check_choices(vars(s), CHOICES)
    check_device(s.device)
    check_ranges(vars(s), RANGES)
    if s.global_batch_size % (s.micro_batch_size * world):
        raise InputError(f"global_batch_size={s.global_batch_size} must be a multiple of micro_batch_size x processes "
                         f"= {s.micro_batch_size} x {world}")
    if s.min_lr > s.learning_rate:
        raise InputError(f"min_lr={s.min_lr!r} must be <= learning_rate={s.learning_rate!r} (the cosine goes down to it)")
    if s.model_type == "mdm" and s.stage in ("pretrain", "bench"):
        raise InputError(f"stage={s.stage} is for the FlexMDM retrofit; the MDM baseline is LLaDA-Base itself (ift stages, generate)")
    if s.stage == "bench" and s.init_from != "base":
        raise InputError(f"init_from={s.init_from!r} must be 'base' for stage=bench (it times a random model)")
    arch = s.bench_arch
    if len(arch) != 5 or not all(isinstance(v, int) and v > 0 for v in arch) or arch[0] % (2 * arch[2]) or arch[4] < 3:
        raise InputError(f"bench_arch={arch!r} must be 5 integers > 0 (d_model, n_layers, n_heads, mlp, vocab), d_model a "
                         "multiple of 2 x n_heads and vocab >= 3")
    if s.stage == "ift_code" and s.infill_middle_tokens >= s.max_len:
        raise InputError(f"infill_middle_tokens={s.infill_middle_tokens} must be < max_len={s.max_len} (prefix, middle "
                         "and suffix fit max_len)")
    if s.stage == "generate" and s.task == "humaneval_infill" and not s.eval_source:
        raise InputError("eval_source='' must name the problems for task=humaneval_infill: "
                         "--eval_source=PATH/HumanEval-SingleLineInfilling.jsonl.gz")
    loss = loss_config(s.model_type)  # the ids are the base model's, the device this process's: stand-ins here
    pick(SamplerConfig, vars(s), mask_id=0, pad_id=0, alpha=loss.alpha, beta=loss.beta, device="cpu")


def start_path(s):
    """The checkpoint a run starts from: out_dir/ckpt.pt (init_from=resume), init_from, or None (base)."""
    return None if s.init_from == "base" else os.path.join(s.out_dir, "ckpt.pt") if s.init_from == "resume" else s.init_from


def samples_path(s):
    return s.samples_file or os.path.join(s.out_dir, f"{s.task}.jsonl")


def check_outputs(s):
    """What the run will write may be written (module docstring): stage=generate's samples file (data.check_output),
    and a training stage's out_dir/ckpt.pt, which only init_from=resume may replace."""
    if s.stage == "generate":
        check_output(samples_path(s), s.overwrite, "samples_file", inputs=(s.eval_source, start_path(s)))
    ckpt = os.path.join(s.out_dir, "ckpt.pt")
    if s.stage in TRAINING and s.init_from != "resume" and os.path.exists(ckpt):
        raise InputError(f"{ckpt} exists: continue that run with --init_from=resume, or start this one in another --out_dir")


ARCH_SETTINGS = ("model_type", "cond_dim", "lora_r", "lora_alpha")


def read_start(s):
    """The checkpoint the run starts from (start_path; None for init_from=base), read before any work and
    checked: a file of retrofit_llada.py, of this run's network (ARCH_SETTINGS; the base model is checked by
    base_model_of) and, to resume a training stage, of its stage: one line naming each difference."""
    path = start_path(s)
    if path is None:
        return None
    ck = load_checkpoint(path, hint="--init_from is base, resume (out_dir/ckpt.pt) or the ckpt.pt of an earlier stage")
    missing = [k for k in ("trainable", "model_type", "arch", "config", "optimizer", "rng", "iter_num") if k not in ck]
    if missing or not all(isinstance(ck[k], dict) for k in ("trainable", "arch", "config")):
        raise InputError(f"{path} is not a checkpoint of retrofit_llada.py ("
                         + (f"no {missing[0]!r} in it)" if missing else "its trainable, arch or config is not a dict)"))
    resume = s.init_from == "resume" and s.stage in TRAINING
    saved = dict(ck["config"], model_type=ck["model_type"])
    changed = [f"{k}={getattr(s, k)!r} (the checkpoint has {saved[k]!r})"
               for k in ARCH_SETTINGS + (("stage",) if resume else ()) if k in saved and saved[k] != getattr(s, k)]
    if changed:
        raise InputError(f"{path} does not match this run: this run has {', '.join(changed)}; give the checkpoint's values"
                         + (", or start a new run in another --out_dir" if resume else ""))
    return ck


# -----------------------------------------------------------------------------
# The LLaDA backbone and the retrofit

class RMSNorm(nn.Module):
    """LLaDA's RMSNorm: normalise in fp32, back to the input dtype, times the weight (no bias)."""

    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class Block(nn.Module):
    """A LLaDA block (LLaMA-style, bidirectional); with cond_dim > 0, adaLN shift/scale on both norms."""

    def __init__(self, arch, cond_dim):
        super().__init__()
        d, m = arch["d_model"], arch["mlp"]
        self.n_heads = arch["n_heads"]
        self.attn_norm, self.ff_norm = RMSNorm(d, arch["eps"]), RMSNorm(d, arch["eps"])
        self.q_proj, self.k_proj, self.v_proj, self.attn_out = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.ff_proj, self.up_proj, self.ff_out = nn.Linear(d, m, bias=False), nn.Linear(d, m, bias=False), nn.Linear(m, d, bias=False)
        self.ada = nn.Linear(cond_dim, 4 * d) if cond_dim else None

    def forward(self, x, rope, mask, cond):
        B, T, D = x.shape
        shift1 = scale1 = shift2 = scale2 = 0.0  # modulate(x, 0, 0) is x exactly
        if self.ada is not None:
            shift1, scale1, shift2, scale2 = self.ada(cond)[:, None].chunk(4, dim=-1)
        a = modulate(self.attn_norm(x), shift1, scale1)
        q, k, v = (p(a).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = (rotary(z.float(), *rope).to(v.dtype) for z in (q, k))  # LLaDA rotates in fp32
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, D))
        a = modulate(self.ff_norm(x), shift2, scale2)
        return x + self.ff_out(F.silu(self.ff_proj(a)) * self.up_proj(a))


class LLaDA(nn.Module):
    """Parameter names are the checkpoint's without its "model." prefix."""

    def __init__(self, arch, model_type="flexmdm", cond_dim=512):
        super().__init__()
        d, V, flex = arch["d_model"], arch["vocab"], model_type == "flexmdm"
        self.arch, self.model_type, self.grad_ckpt = arch, model_type, False
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, d), blocks=nn.ModuleList(Block(arch, cond_dim if flex else 0) for _ in range(arch["n_layers"])),
            ln_f=RMSNorm(d, arch["eps"]), ff_out=nn.Linear(d, V, bias=False)))
        if flex:
            self.time_emb, self.ada_out = TimeEmbedding(cond_dim), nn.Linear(cond_dim, 2 * d)
            self.slot_emb, self.insert_head = nn.Parameter(torch.zeros(d)), nn.Linear(d, 1)
            self.closed_emb = nn.Parameter(torch.zeros(d))

    def rope(self, T, device):
        head_dim = self.arch["d_model"] // self.arch["n_heads"]
        inv_freq = 1.0 / self.arch["rope_theta"] ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim)
        angles = torch.arange(T, device=device, dtype=torch.float)[:, None] * inv_freq
        return angles.cos(), angles.sin()

    def forward(self, x, lengths=None, cond_time=None, at=None, closed=None):
        """x [B, L]. FlexMDM: right-padded, lengths [B] real tokens, cond_time [B] = alpha(t); the slot
        sits at position lengths[b]; closed [B, L+1] bool or None: the gaps the task keeps empty. MDM: every
        position is a token (pads included), full attention.
        Returns (logits [B, L, V], or [M, V] at the positions at = (rows [M], positions [M]);
        g [B, L+1] for FlexMDM, else None)."""
        B, L = x.shape
        tr, cond, mask = self.transformer, None, None
        h = tr.wte(x)
        if self.model_type == "flexmdm":
            pos = torch.arange(L + 1, device=x.device)
            h = torch.where((pos == lengths[:, None])[..., None], self.slot_emb.to(h.dtype), torch.cat([h, h[:, :1]], 1))
            if closed is not None:
                h = h + closed[..., None] * self.closed_emb.to(h.dtype)
            # every query sees the real tokens of its row, and itself (the slot; pads nobody reads)
            eye = torch.eye(L + 1, dtype=torch.bool, device=x.device)
            mask = ((pos < lengths[:, None])[:, None, :] | eye)[:, None]
            cond = F.silu(self.time_emb(cond_time))
        rope = self.rope(h.shape[1], x.device)
        for block in tr.blocks:
            if self.grad_ckpt and self.training:
                h = checkpoint(block, h, rope, mask, cond, use_reentrant=False)
            else:
                h = block(h, rope, mask, cond)
        h, g = tr.ln_f(h), None
        if cond is not None:
            h = modulate(h, *self.ada_out(cond)[:, None].chunk(2, dim=-1))
            g = F.softplus(self.insert_head(h).squeeze(-1).float())
        h = h[:, :L]
        return tr.ff_out(h if at is None else h[at]).float(), g


def is_new(name):
    return any(part in NEW_MODULES for part in name.split("."))


def read_arch(model_dir):
    """The architecture from LLaDA's config.json; unsupported variants stop with a clear error."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        raise InputError(f"{path!r} not found: base_model must hold LLaDA's config.json and safetensors")
    with open(path) as f:
        cfg = json.load(f)
    need = dict(weight_tying=False, include_bias=False, include_qkv_bias=False, alibi=False, rope=True,
                attention_layer_norm=False, input_emb_norm=False, scale_logits=False, block_type="llama",
                activation_type="silu", layer_norm_type="rms", multi_query_attention=False)
    for key, want in need.items():
        if cfg.get(key) is not None and cfg[key] != want:
            raise InputError(f"{path}: {key}={cfg[key]!r} is not supported (only {want!r})")
    missing = [k for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size") if not cfg.get(k)]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}")
    if (cfg.get("n_kv_heads") or cfg["n_heads"]) != cfg["n_heads"]:
        raise InputError(f"{path}: n_kv_heads != n_heads: grouped-query attention is not supported")
    eos = cfg.get("eos_token_id", 126081)
    return dict(d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], mlp=cfg["mlp_hidden_size"],
                vocab=cfg.get("embedding_size") or cfg["vocab_size"], rope_theta=float(cfg.get("rope_theta") or 10000.0),
                eps=float(cfg.get("rms_norm_eps") or 1e-5), mask_id=cfg.get("mask_token_id", 126336), eos_id=eos,
                pad_id=cfg.get("pad_token_id", eos))


def resolve_model_dir(name):
    """A local directory as is; a hub id through huggingface_hub.snapshot_download."""
    if os.path.isdir(name):
        return name
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as e:  # noqa: BLE001 (hub errors come in many types; the user needs one line)
        raise InputError(f"base_model {name!r} is neither a directory nor a downloadable hub id: {str(e).splitlines()[0]}")


def load_base_weights(model, model_dir):
    """Copy every checkpoint tensor (the shards of model.safetensors.index.json, or model.safetensors)
    into the parameter of the same name; a missing, extra or misshaped tensor is an error."""
    from safetensors import safe_open
    index, single = os.path.join(model_dir, "model.safetensors.index.json"), os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            where = {k: os.path.join(model_dir, v) for k, v in json.load(f)["weight_map"].items()}
    elif os.path.exists(single):
        with safe_open(single, "pt") as sf:
            where = {k: single for k in sf.keys()}
    else:
        raise InputError(f"no model.safetensors.index.json or model.safetensors in {model_dir!r}")
    params = {"model." + n: p for n, p in model.named_parameters() if not is_new(n)}
    missing, extra = sorted(set(params) - set(where)), sorted(set(where) - set(params))
    if missing:
        raise InputError(f"checkpoint {model_dir!r} lacks tensor {missing[0]} ({len(missing)} missing)")
    if extra:
        raise InputError(f"unexpected tensor {extra[0]} in {model_dir!r}: not a LLaDA checkpoint of this config")
    for file in sorted(set(where.values())):
        with safe_open(file, "pt") as sf, torch.no_grad():
            for name in [n for n, f in where.items() if f == file]:
                t = sf.get_tensor(name)
                if t.shape != params[name].shape:
                    raise InputError(f"tensor {name} in {file} has shape {tuple(t.shape)}, expected {tuple(params[name].shape)}")
                params[name].copy_(t)


def build_llada(s, arch, device, dtype, model_dir=None, lora=True):
    """LLaDA (+ the retrofit modules for s.model_type="flexmdm", + LoRA): frozen weights in dtype, from
    model_dir or random (std 0.02); LoRA and the new modules trainable, in fp32."""
    with torch.device("meta"):
        model = LLaDA(arch, s.model_type, s.cond_dim).to(dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_new(name):
                p.data = p.data.float()
            elif not model_dir:
                nn.init.ones_(p) if p.dim() == 1 else nn.init.normal_(p, std=0.02)
        if model_dir:
            load_base_weights(model, model_dir)
        if s.model_type == "flexmdm":  # time MLP as usual; adaLN zero (starts as LLaDA); g = insert_init; slot = EOS
            for m in model.time_emb.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            for m in [b.ada for b in model.transformer.blocks] + [model.ada_out]:
                nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
            nn.init.zeros_(model.insert_head.weight)
            model.insert_head.bias.fill_(math.log(math.expm1(s.insert_init)))
            model.slot_emb.copy_(model.transformer.wte.weight[arch["eos_id"]])
            model.closed_emb.zero_()
    if lora:
        from peft import LoraConfig, inject_adapter_in_model
        model = inject_adapter_in_model(LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                                   target_modules=LORA_TARGETS), model)
    for name, p in model.named_parameters():
        p.requires_grad_(is_new(name) or "lora_" in name)
        if p.requires_grad:
            p.data = p.data.float()
    return model


def shard(model, param_dtype):
    """FSDP2: one unit per block plus the root; compute in param_dtype, reduce gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.transformer.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def load_ckpt(model, ck, path):
    """A stage's checkpoint (read_start: its trainable tensors) into the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    shapes = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    bad = sorted(set(shapes) ^ set(ck["trainable"])) or [n for n in shapes if ck["trainable"][n].shape != shapes[n]]
    if bad:
        raise InputError(f"{path} does not match this {ck['model_type']} model: tensor {bad[0]} differs")
    set_model_state_dict(model, ck["trainable"], options=StateDictOptions(full_state_dict=True, strict=False))


# -----------------------------------------------------------------------------
# Data

def load_rows(source, config="", split="train", streaming=False):
    """Rows of a hub dataset (config, split) or of data files (a path, a glob or an hf:// URL)."""
    from datasets import load_dataset
    try:
        if os.path.isfile(source) or glob.has_magic(source) or source.startswith("hf://"):
            suffixes = source.split("/")[-1].split(".")
            kind = "text" if "txt" in suffixes else "parquet" if "parquet" in suffixes else "json"
            return load_dataset(kind, data_files=source, split="train", streaming=streaming)
        return load_dataset(source, config or None, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 (datasets raises many types; the user needs one line)
        raise InputError(f"cannot load dataset {source!r}: {(str(e) or type(e).__name__).splitlines()[0]}")


def paragraph_stream(source, fields, tok, max_len, rank, world, stream_seed):
    """Endless token lists: the paragraphs of a shuffled stream of rows (split over the processes),
    tokenised and chunked to max_len (appendix F.1). The first is read at once: a source without rows,
    text or fields is an error before the model is loaded."""
    from datasets.distributed import split_dataset_by_node
    rows = split_dataset_by_node(load_rows(source, streaming=True).shuffle(seed=stream_seed, buffer_size=10000), rank, world)

    def pieces():
        for epoch in range(10**9):
            rows.set_epoch(epoch)
            produced = False
            for row in rows:
                if not any(f in row for f in fields.split(",")):
                    raise InputError(f"rows of {source!r} have no field {fields!r} (they have {', '.join(row)})")
                paragraphs = split_paragraphs("\n\n".join(str(row[f]) for f in fields.split(",") if row.get(f)))
                for ids in (tok(paragraphs, add_special_tokens=False)["input_ids"] if paragraphs else []):
                    for piece in chunk(ids, max_len):
                        produced = True
                        yield piece
            if not produced:
                raise InputError(f"no text in {source!r}")

    stream = pieces()
    return itertools.chain([next(stream)], stream)


def gsm8k_prompt(question):
    return f"Question: {question.strip()}\nAnswer:"


def math_pairs(tok, source, max_len):
    """GSM8K train as (prompt, answer) token lists, the answer's calculator notes <<...>> removed."""
    rows = load_rows(source, "main", "train")
    prompts = tok([gsm8k_prompt(q) for q in rows["question"]], add_special_tokens=False)["input_ids"]
    answers = tok([" " + re.sub(r"<<[^>]*>>", "", a) for a in rows["answer"]], add_special_tokens=False)["input_ids"]
    pairs = [(p, a) for p, a in zip(prompts, answers) if len(p) + len(a) <= max_len]
    if not pairs:
        raise InputError(f"no GSM8K pair of {source!r} fits max_len={max_len}")
    return pairs


def infill_split(code, rng, tok, max_lines, middle_tokens, max_len):
    """An infilling example from a piece of code: (prefix, middle, suffix) token lists, the middle
    1..max_lines random whole lines, each part tokenised on its own (as the benchmark's prefix and
    suffix are); None unless the middle is non-blank and fits middle_tokens, and prefix +
    middle_tokens + suffix fits max_len."""
    lines = code.splitlines(keepends=True)
    n = int(rng.integers(1, min(max_lines, len(lines)) + 1))
    i = int(rng.integers(0, len(lines) - n + 1))
    middle = "".join(lines[i:i + n])
    pre, mid, suf = tok(["".join(lines[:i]), middle, "".join(lines[i + n:])], add_special_tokens=False)["input_ids"]
    fits = middle.strip() and len(mid) <= middle_tokens and len(pre) + middle_tokens + len(suf) <= max_len
    return (pre, mid, suf) if fits else None


def stage_data(s, tok, rank, world, iter_num):
    """What draw_example draws from: pretrain, the two paragraph streams; ift_math, the GSM8K pairs;
    ift_code, the pieces of code; bench, nothing."""
    if s.stage == "pretrain":
        return [paragraph_stream(source, fields, tok, s.max_len, rank, world, s.seed + iter_num)
                for source, fields in ((s.owt_source, s.owt_fields), (s.math_source, s.math_fields))]
    if s.stage == "ift_math":
        return math_pairs(tok, s.gsm8k_source, s.max_len)
    if s.stage == "ift_code":
        rows = load_rows(s.code_source, s.code_config)
        if "code" not in rows.column_names:
            raise InputError(f"rows of {s.code_source!r} have no 'code' field (they have {', '.join(rows.column_names)})")
        code = [c for c in rows["code"] if c and c.strip()]
        if not code:
            raise InputError(f"no code in the rows of {s.code_source!r}")
        return code
    return None


def draw_example(s, data, tok, rng, arch):
    """One training sequence of the stage: (tokens, fixed flags)."""
    if s.stage == "pretrain":
        ids = next(data[0] if rng.random() < s.owt_fraction else data[1])
        return ids, [False] * len(ids)
    if s.stage == "bench":
        return rng.integers(0, arch["vocab"] - 2, size=s.max_len).tolist(), [False] * s.max_len
    if s.stage == "ift_math":
        p, a = data[int(rng.integers(len(data)))]
        return p + a, [True] * len(p) + [False] * len(a)
    for _ in range(100):
        parts = infill_split(data[int(rng.integers(len(data)))], rng, tok, s.infill_max_lines, s.infill_middle_tokens, s.max_len)
        if parts is not None:
            break
    else:
        raise InputError(f"no infilling example from 100 rows of {s.code_source!r} fits max_len={s.max_len}")
    pre, mid, suf = parts
    if s.model_type == "mdm":  # a middle of fixed width: the MDM predicts pads where the FlexMDM inserts nothing
        mid = mid + [arch["pad_id"]] * (s.infill_middle_tokens - len(mid))
    return pre + mid + suf, [True] * len(pre) + [False] * len(mid) + [True] * len(suf)


def make_batch(s, examples, arch, dev):
    """x1 [B, W], lengths [B], fixed [B, W], span [B, 2]. FlexMDM: W = the longest example. MDM: pads are tokens;
    GSM8K answers are padded to max_len (pads to predict), other rows' padding is fixed. span: the free tokens
    of each example, one run (the answer, the middle, or the whole sequence): the gaps outside it are closed."""
    answer_pads = s.model_type == "mdm" and s.stage == "ift_math"
    width = s.max_len if answer_pads else max(len(x) for x, _ in examples)
    x1 = torch.full((len(examples), width), arch["pad_id"], dtype=torch.long)
    fixed = torch.full((len(examples), width), not answer_pads, dtype=torch.bool)
    for b, (x, f) in enumerate(examples):
        x1[b, :len(x)], fixed[b, :len(x)] = torch.tensor(x), torch.tensor(f)
    lengths = torch.tensor([width if s.model_type == "mdm" else len(x) for x, _ in examples])
    span = torch.tensor([[f.index(False), len(f) - f[::-1].index(False)] if False in f else [0, len(f)] for _, f in examples])
    return x1.to(dev), lengths.to(dev), fixed.to(dev), span.to(dev)


# -----------------------------------------------------------------------------
# The loss (eq. 7 for FlexMDM; the MDM loss for the baseline) and the optimiser

def loss_config(model_type):
    """The paper's loss for the retrofit (F.3): linear schedules, eq. 7's weighting, no prior term."""
    return LossConfig(model_type=model_type, alpha_schedule="linear", beta_schedule="linear", time_weighting="elbo")


def llada_net(model):
    """LLaDA as interpolant.batch_loss calls a network: net(xt [B, L], lengths [B] or None (the MDM),
    cond_time [B], fixed [B, L], at=(rows, positions), closed [B, L+1] or None) -> (logits at those positions,
    g [B, L+1] or None). FlexMDM: x_t cut to its longest row for the forward, g padded back to L+1 columns with
    zeros. The MDM has no time input (LLaDA's design) and ignores cond_time and closed; neither reads fixed."""
    def net(xt, lengths, cond_time, fixed, at, closed=None):
        if lengths is None:
            return model(xt, at=at)
        L = max(1, int(lengths.max()))
        logits, g = model(xt[:, :L], lengths, cond_time, at=at, closed=None if closed is None else closed[:, :L + 1])
        return logits, F.pad(g, (0, xt.shape[1] - L))
    return net


def get_lr(s, it):
    """Linear warmup, then cosine from learning_rate to min_lr, restarting every restart_iters (F.3)."""
    if it < s.warmup_iters:
        return s.learning_rate * (it + 1) / (s.warmup_iters + 1)
    ratio = ((it - s.warmup_iters) % s.restart_iters) / s.restart_iters
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (s.learning_rate - s.min_lr)


def make_optimizer(model, learning_rate, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=learning_rate)


# -----------------------------------------------------------------------------
# Training

def restore(s, model, optimizer, ck, rank, world, dev):
    """(iter_num, data_rng) to start from: 0 and a fresh stream, or with init_from=resume the checkpoint's
    iteration and optimizer state, and with as many processes as wrote it every process's own streams."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    data_rng = np.random.default_rng(s.seed + rank)
    if s.init_from != "resume":
        return 0, data_rng
    set_optimizer_state_dict(model, optimizer, ck["optimizer"], options=StateDictOptions(full_state_dict=True))
    iter_num, saved_world = ck["iter_num"], len(ck["rng"])
    if saved_world == world:  # every process continues its own streams: the run goes on as if never cut
        torch.set_rng_state(ck["rng"][rank]["torch"])
        if dev.startswith("cuda") and ck["rng"][rank]["cuda"] is not None:  # None: written on a CPU
            torch.cuda.set_rng_state(ck["rng"][rank]["cuda"])
        data_rng.bit_generator.state = ck["rng"][rank]["data"]
        return iter_num, data_rng
    # the trainable state is full tensors, but the per-process streams cannot be split or merged
    data_rng = np.random.default_rng([s.seed, rank, iter_num])  # new streams, not the start's again
    torch.manual_seed(int(data_rng.integers(2**62)))
    if rank == 0:
        print(f"{os.path.join(s.out_dir, 'ckpt.pt')} was written by {saved_world} process(es), this run has {world}: "
              f"weights, optimizer state and schedule continue; the random streams (data order, times, masks, "
              f"dropout) start anew, not as the {saved_world}-process run would have drawn them", flush=True)
    return iter_num, data_rng


def save_state(path, model, optimizer, data_rng, record, rank, world, dev):
    """The trainable tensors and the optimizer state, gathered whole (by every rank), every process's random
    streams and record (iter_num, model_type, arch, config): written by rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.tensor import DTensor
    state = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu()
             for n, p in model.named_parameters() if p.requires_grad}
    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = [{"torch": torch.get_rng_state(), "data": data_rng.bit_generator.state,
             "cuda": torch.cuda.get_rng_state() if dev.startswith("cuda") else None}] * world
    if world > 1:
        dist.all_gather_object(rngs, rngs[rank])
    if rank == 0:
        save_checkpoint(path, dict(trainable=state, optimizer=optim, iter_num=record["iter_num"], rng=rngs,
                                   model_type=record["model_type"], arch=record["arch"], config=record["config"]))


def memory(dev):
    return f", max memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.startswith("cuda") else ""


def train_loop(s, model, arch, tok, data, rank, world, dev, ck):
    """AdamW on the LoRA and new parameters, at get_lr's rate, on data (stage_data); a checkpoint of them
    (+ optimizer, rng) every save_interval and at the end, none before the first step. stage=bench: no
    checkpoint, the median step time."""
    accum = s.global_batch_size // (s.micro_batch_size * world)  # check_settings: a whole number
    optimizer = make_optimizer(model, s.learning_rate, s.weight_decay)
    iter_num, data_rng = restore(s, model, optimizer, ck, rank, world, dev)
    ift = s.stage in ("ift_math", "ift_code")
    n_iters = math.ceil(s.epochs * len(data) / s.global_batch_size) if s.epochs > 0 and ift else s.max_iters
    if rank == 0:
        print(f"{s.stage}: {n_iters} iterations of {s.global_batch_size} sequences ({s.micro_batch_size} x {accum} accumulation"
              f" x {world} processes)" + (f", {len(data)} training examples" if ift else ""))
    config = dict({k: v for k, v in vars(s).items() if isinstance(v, (int, float, bool, str))}, max_iters=n_iters)
    net, loss_cfg, step_times = llada_net(model), loss_config(s.model_type), []
    while iter_num < n_iters:
        t0, lr = time.time(), get_lr(s, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            if world > 1:
                model.set_requires_gradient_sync(micro == accum - 1)
            examples = [draw_example(s, data, tok, data_rng, arch) for _ in range(s.micro_batch_size)]
            x1, lengths, fixed, span = make_batch(s, examples, arch, dev)
            with autocast(dev, s.dtype):
                loss, unmask, insert = batch_loss(net, x1, lengths, fixed, loss_cfg, arch["mask_id"], arch["pad_id"], span=span)
            (loss / accum).backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        timed = s.stage == "bench" or iter_num % s.log_interval == 0
        if dev.startswith("cuda") and timed:  # let the CPU run ahead of the GPU on the other steps
            torch.cuda.synchronize()
        step_times.append(time.time() - t0)
        if rank == 0 and timed:
            print(f"iter {iter_num}: loss {loss.item():.4f} (unmask {unmask.item():.4f}, insert {insert.item():.4f}), "
                  f"lr {lr:.2e}, {1000 * step_times[-1]:.0f} ms/iter{memory(dev)}", flush=True)
        if s.stage != "bench" and (iter_num % s.save_interval == 0 or iter_num == n_iters):
            record = dict(iter_num=iter_num, model_type=s.model_type, arch=arch, config=config)
            save_state(os.path.join(s.out_dir, "ckpt.pt"), model, optimizer, data_rng, record, rank, world, dev)
    if rank == 0 and s.stage == "bench" and step_times:
        steady = step_times[2:] or step_times
        print(f"bench: median step {1000 * float(np.median(steady)):.0f} ms over {len(steady)} steps "
              f"({s.micro_batch_size * accum} x {s.max_len} tokens per process per step){memory(dev)}")


# -----------------------------------------------------------------------------
# Generation

def load_problems(s, tok, arch):
    """The benchmark as (record, prompt ids, prefix length, suffix length); insertion only happens
    between the prefix and the suffix (for GSM8K: after the question)."""
    source = s.eval_source or "openai/gsm8k"
    rows = load_rows(source, "main", "test") if s.task == "gsm8k" else load_rows(source)
    need = ("question", "answer") if s.task == "gsm8k" else ("task_id", "prompt", "suffix")
    if lacking := [k for k in need if k not in rows.column_names]:
        raise InputError(f"rows of {source!r} have no {lacking[0]!r} field: not the problems of task={s.task}")
    if s.task == "gsm8k":
        prompts = tok([gsm8k_prompt(q) for q in rows["question"]], add_special_tokens=False)["input_ids"]
        return [({"question": q, "answer": a}, p, len(p), 0) for q, a, p in zip(rows["question"], rows["answer"], prompts)]
    problems = []
    for row in rows:
        pre, suf = tok([row["prompt"], row["suffix"]], add_special_tokens=False)["input_ids"]
        middle = [arch["mask_id"]] * s.infill_middle_tokens if s.model_type == "mdm" else []
        problems.append(({"task_id": row["task_id"]}, pre + middle + suf, len(pre), len(suf)))
    return problems


def sampler_config(s, arch, dev):
    """The sampler's settings (sampler.SamplerConfig) from the run's (steps, sampler, confidence, gamma1,
    gamma2, temperature, max_len), with the paper's schedules."""
    loss = loss_config(s.model_type)
    return pick(SamplerConfig, vars(s), mask_id=arch["mask_id"], pad_id=arch["pad_id"], alpha=loss.alpha,
                beta=loss.beta, device=dev)


def generate_sequences(s, model, items, cfg, generator):
    """The final sequence of each (record, prompt, n_pre, n_suf) item, sampled with cfg (SamplerConfig) in
    batches of gen_batch_size prompts of similar length: insertion only happens between the prefix and the
    suffix (and next to generated tokens), which stay fixed. A GSM8K sample is at most cfg.max_len long;
    an infilling batch's at most its longest prompt + infill_middle_tokens."""

    @torch.no_grad()
    def model_fn(x, t, fixed, closed):  # the MDM returns (logits, None); it has no time input (LLaDA's design)
        with autocast(cfg.device, s.dtype):
            return model(x) if cfg.model_type == "mdm" else model(x, (x != cfg.pad_id).sum(1), cfg.alpha(t), closed=closed)

    infill_mdm = s.task == "humaneval_infill" and cfg.model_type == "mdm"  # its prompts hold the masks: one length per batch
    batches = []
    for i in sorted(range(len(items)), key=lambda i: len(items[i][1])):
        if batches and len(batches[-1]) < s.gen_batch_size and (not infill_mdm or len(items[batches[-1][0]][1]) == len(items[i][1])):
            batches[-1].append(i)
        else:
            batches.append([i])
    seqs = [None] * len(items)
    for batch in batches:
        prompts = [items[i][1] for i in batch]
        length = cfg.max_len if s.task == "gsm8k" else max(map(len, prompts)) + (0 if infill_mdm else s.infill_middle_tokens)
        out = generate(model_fn, len(batch), replace(cfg, max_len=length), prompts=prompts,
                       open_gaps=[[items[i][2]] for i in batch], generator=generator)
        for i, seq in zip(batch, out):
            seqs[i] = seq
    return seqs


def generate_stage(s, model, arch, tok, problems, rank, world, dev):
    """Samples for the benchmark (load_problems), the problems split over the processes; JSON lines in
    samples_path, written by rank 0 once all are made."""
    cfg = sampler_config(s, arch, dev)
    items = [p for p in problems[:s.num_problems or None] for _ in range(s.samples_per_problem)][rank::world]
    generator = torch.Generator(device=dev).manual_seed(s.seed + rank)
    seqs = generate_sequences(s, model, items, cfg, generator)
    middles = [[v for v in seq[n_pre:len(seq) - n_suf] if v != arch["pad_id"]] for seq, (_, _, n_pre, n_suf) in zip(seqs, items)]
    records = [dict(item[0], completion=tok.decode(m, skip_special_tokens=True), tokens=m) for item, m in zip(items, middles)]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    if rank == 0:
        path = write_jsonl(samples_path(s), records)
        print(f"wrote {len(records)} samples to {path}: python evaluate.py --task={s.task} --samples={path}"
              + (f" --problems={s.eval_source}" if s.task == "humaneval_infill" else ""))


# -----------------------------------------------------------------------------

def load_tokenizer(name, arch):
    from transformers import AutoTokenizer
    try:  # trust_remote_code=False said explicitly: never run hub code, and never ask on stdin
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer {name!r}: {str(e).splitlines()[0]}")
    if len(tok) > arch["vocab"]:
        raise InputError(f"the tokenizer {name!r} has {len(tok)} tokens, more than the model's {arch['vocab']}")
    return tok


def base_model_of(s, ck):
    """(arch, model_dir, tokenizer) of base_model, its architecture the checkpoint's (one line naming each
    difference); for stage=bench, a random LLaDA-shaped model of bench_arch: (arch, None, None)."""
    if s.stage == "bench":
        arch = dict(zip(("d_model", "n_layers", "n_heads", "mlp", "vocab"), s.bench_arch), rope_theta=500000.0, eps=1e-5)
        arch.update(mask_id=arch["vocab"] - 1, eos_id=arch["vocab"] - 2, pad_id=arch["vocab"] - 2)
        return arch, None, None
    model_dir = resolve_model_dir(s.base_model)
    arch = read_arch(model_dir)
    if ck is not None and ck["arch"] != arch:
        changed = [f"{k}={arch.get(k)!r} (the checkpoint was trained on {ck['arch'].get(k)!r})"
                   for k in sorted(set(arch) | set(ck["arch"])) if arch.get(k) != ck["arch"].get(k)]
        raise InputError(f"{start_path(s)} does not match this run: the base model {s.base_model} has {', '.join(changed)}; "
                         "give the base_model it was trained from")
    return arch, model_dir, load_tokenizer(s.tokenizer_name or model_dir, arch)


def main():
    configure(globals(), sys.argv[1:])
    s = settings()
    check_settings(s, int(os.environ.get("WORLD_SIZE", "1")))
    ck = read_start(s)
    check_outputs(s)
    ddp, rank, _, world, dev = init_distributed(s.device)
    arch, model_dir, tok = base_model_of(s, ck)
    if s.stage == "generate":
        work = load_problems(s, tok, arch)
    else:
        work = stage_data(s, tok, rank, world, ck["iter_num"] if ck and s.init_from == "resume" else 0)
    torch.manual_seed(s.seed)  # the same LoRA and new-module initialisation on every process
    ptdtype = torch.bfloat16 if s.dtype == "bfloat16" else torch.float32
    model = build_llada(s, arch, dev, ptdtype, model_dir)
    model.grad_ckpt = s.activation_checkpointing
    if rank == 0:
        count = [sum(p.numel() for n, p in model.named_parameters() if keep(n)) / 1e6 for keep in (str, is_new, lambda n: "lora_" in n)]
        print(f"LLaDA {s.model_type}: {count[0]:.1f}M parameters, trainable: new modules {count[1]:.1f}M + LoRA {count[2]:.1f}M; "
              f"{world} process(es) on {dev}", flush=True)
    if world > 1 and s.stage != "generate":  # generation splits the problems over full copies instead
        shard(model, ptdtype)
    if ck is not None:
        load_ckpt(model, ck, start_path(s))
    torch.manual_seed(s.seed + rank)  # different times, masks and dropout on every process
    if s.stage == "generate":
        generate_stage(s, model.eval(), arch, tok, work, rank, world, dev)
    else:
        train_loop(s, model.train(), arch, tok, work, rank, world, dev, ck)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main, interrupted="a training stage keeps the out_dir/ckpt.pt it last saved, if any (continue it with "
                           "--init_from=resume); a samples file is written whole once all samples are made, or not at all")
