"""The LLaDA retrofit (retrofit_llada.py) and its benchmarks (evaluate.py: gsm8k, humaneval_infill) on a
tiny model in LLaDA's exact checkpoint format, built here: config.json with the real keys and small
values, model.safetensors with the real tensor names, and a tiny byte-level BPE tokenizer. Then the
mistakes a user can make (a table: one line each, before any work, nothing on disk changed) and Ctrl-C
sent to real processes."""
import contextlib
import gzip
import hashlib
import importlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_python, start_python, subprocess_env
from configurator import InputError, configure
from interpolant import batch_loss

DATA = os.path.join(ROOT, "..", "shared", "data")
GSM8K = os.path.join(DATA, "gsm8k")
HUMANEVAL = os.path.join(DATA, "human_eval_infilling")
SINGLE_LINE = os.path.join(HUMANEVAL, "HumanEval-SingleLineInfilling.jsonl.gz")

# LLaDA-8B-Base's config.json, every key, with small sizes and ids (the real ones: d_model 4096,
# 32 layers and heads, mlp 12288, vocab 126464, eos/pad 126081, mask 126336).
CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32, "embedding_dropout": 0.0,
    "embedding_size": 1024, "eos_token_id": 0, "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
    "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": 1, "max_sequence_length": 4096,
    "mlp_hidden_size": 64, "mlp_ratio": 2, "model_type": "llada", "multi_query_attention": None, "n_heads": 2,
    "n_kv_heads": 2, "n_layers": 2, "pad_token_id": 0, "precision": "amp_bf16", "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 1024, "weight_tying": False}
BLOCK_TENSORS = ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


def checkpoint_tensors(cfg, seed=0):
    """LLaDA's 3 + 9 * n_layers tensors by their checkpoint names, random, in bf16 (as published)."""
    d, m, V = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    shapes = {"model.transformer.wte.weight": (V, d), "model.transformer.ln_f.weight": (d,),
              "model.transformer.ff_out.weight": (V, d)}
    for i in range(cfg["n_layers"]):
        shapes.update({f"model.transformer.blocks.{i}.{n}.weight": s for n, s in zip(
            BLOCK_TENSORS, [(d,), (d,), (d, d), (d, d), (d, d), (d, d), (m, d), (m, d), (d, m)])})
    gen = torch.Generator().manual_seed(seed)
    return {k: (1 + 0.1 * torch.randn(s, generator=gen) if len(s) == 1 else 0.1 * torch.randn(s, generator=gen)).bfloat16()
            for k, s in shapes.items()}


def write_checkpoint(path, tensors, cfg=CONFIG, shards=1):
    """config.json + model.safetensors, or `shards` files with model.safetensors.index.json (LLaDA's layout)."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if shards == 1:
        return save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    names, weight_map = sorted(tensors), {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def write_code_rows(path, n=30):
    """opc-sft-stage-2-like rows (instruction, output, code, entry_point, testcase) from HumanEval code."""
    with gzip.open(SINGLE_LINE, "rt") as f, open(path, "w") as out:
        for _, line in zip(range(n), f):
            r = json.loads(line)
            code = r["prompt"] + r["canonical_solution"] + r["suffix"]
            out.write(json.dumps({"instruction": "Write the function.", "output": code, "code": code,
                                  "entry_point": r["entry_point"], "testcase": []}) + "\n")
    return path


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    """A tiny LLaDA-8B-Base look-alike: checkpoint + a byte-level BPE tokenizer (LLaDA's special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    path = str(tmp_path_factory.mktemp("llada"))
    with open(os.path.join(GSM8K, "train.jsonl")) as f:
        gsm8k = [line for _, line in zip(range(300), f)]
    with gzip.open(SINGLE_LINE, "rt") as f:
        code = [json.loads(line) for _, line in zip(range(50), f)]
    texts = [r["question"] + "\n" + r["answer"] for r in map(json.loads, gsm8k)]
    texts += [r["prompt"] + r["canonical_solution"] + r["suffix"] for r in code]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            mask_token="<|mdm_mask|>").save_pretrained(path)
    write_checkpoint(path, checkpoint_tensors(CONFIG))
    with open(os.path.join(path, "gsm8k_train.jsonl"), "w") as out:
        out.writelines(gsm8k[:64])  # tokenising all 7473 pairs takes seconds
    write_code_rows(os.path.join(path, "code.jsonl"))
    return path


def retrofit(llada_dir, *args):
    """retrofit_llada with fresh globals: config/llada_cpu.py, the tiny checkpoint, then args; its data
    paths made absolute (they are relative to the repo root)."""
    import retrofit_llada
    module = importlib.reload(retrofit_llada)
    with contextlib.chdir(ROOT):
        configure(vars(module), ["config/llada_cpu.py", f"--base_model={llada_dir}"])
        configure(vars(module), [f"--{k}={os.path.abspath(getattr(module, k))}" for k in ("owt_source", "math_source")])
    configure(vars(module), [*small_data(llada_dir), *args])
    return module


def small_data(llada_dir):
    return [f"--gsm8k_source={llada_dir}/gsm8k_train.jsonl", f"--code_source={llada_dir}/code.jsonl"]


def run_main(llada_dir, *args):
    """retrofit_llada.main() as `python retrofit_llada.py config/llada_cpu.py ...` in the repo root; its stdout."""
    import retrofit_llada
    module = importlib.reload(retrofit_llada)
    out, argv = io.StringIO(), sys.argv
    sys.argv = ["retrofit_llada.py", "config/llada_cpu.py", f"--base_model={llada_dir}", *small_data(llada_dir), *args]
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
            module.main()
    finally:
        sys.argv = argv
        torch.set_num_threads(1)
    return out.getvalue()


def tiny_model(R, llada_dir, model_type="flexmdm", lora=True):
    arch, s = R.read_arch(llada_dir), R.settings()
    s.model_type = model_type
    return R.build_llada(s, arch, "cpu", torch.float32, llada_dir, lora=lora), arch


def reference_llada(tensors, cfg, x):
    """LLaDA's forward written out from the architecture's description, on the checkpoint tensors:
    bidirectional attention, RMSNorm, RoPE on half-split pairs, SwiGLU, untied head. x [L] -> logits [L, V]."""
    w = {k.removeprefix("model.transformer."): v.float() for k, v in tensors.items()}
    d, H, eps = cfg["d_model"], cfg["n_heads"], cfg["rms_norm_eps"]
    hd, L = d // H, len(x)

    def norm(h, weight):
        return weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)

    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.arange(L).float()[:, None] * inv_freq
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(z):  # z [H, L, hd]
        rotated = torch.cat([-z[..., hd // 2:], z[..., :hd // 2]], -1)
        return z * cos + rotated * sin

    h = w["wte.weight"][x]
    for i in range(cfg["n_layers"]):
        b = {n: w[f"blocks.{i}.{n}.weight"] for n in BLOCK_TENSORS}
        a = norm(h, b["attn_norm"])
        q, k, v = ((a @ b[p].T).view(L, H, hd).transpose(0, 1) for p in ("q_proj", "k_proj", "v_proj"))
        att = torch.softmax(rope(q) @ rope(k).transpose(1, 2) / hd ** 0.5, -1) @ v
        h = h + att.transpose(0, 1).reshape(L, d) @ b["attn_out"].T
        a = norm(h, b["ff_norm"])
        h = h + (torch.nn.functional.silu(a @ b["ff_proj"].T) * (a @ b["up_proj"].T)) @ b["ff_out"].T
    return norm(h, w["ln_f.weight"]) @ w["ff_out.weight"].T


# ----------------------------------------------------------------------------------------------
# The model

def test_loader_maps_every_tensor_and_rejects_bad_checkpoints(llada_dir, tmp_path):
    R = retrofit(llada_dir)
    tensors = checkpoint_tensors(CONFIG)
    model, _ = tiny_model(R, llada_dir, lora=False)
    params = {"model." + n: p for n, p in model.named_parameters() if not R.is_new(n)}
    assert set(params) == set(tensors) and len(tensors) == 3 + 9 * CONFIG["n_layers"]
    for name, t in tensors.items():
        assert torch.equal(params[name], t.float()), name
    sharded = str(tmp_path / "sharded")  # LLaDA's own layout: shards + model.safetensors.index.json
    write_checkpoint(sharded, tensors, shards=3)
    model2, _ = tiny_model(R, sharded, lora=False)
    assert all(torch.equal(p, dict(model2.named_parameters())[n]) for n, p in model.named_parameters() if not R.is_new(n))

    missing = dict(tensors)
    del missing["model.transformer.blocks.1.k_proj.weight"]
    write_checkpoint(str(tmp_path / "missing"), missing)
    with pytest.raises(InputError, match=r"lacks tensor model\.transformer\.blocks\.1\.k_proj\.weight"):
        tiny_model(R, str(tmp_path / "missing"))
    misshaped = dict(tensors, **{"model.transformer.blocks.0.up_proj.weight": tensors["model.transformer.blocks.0.up_proj.weight"].T.contiguous()})
    write_checkpoint(str(tmp_path / "misshaped"), misshaped)
    with pytest.raises(InputError, match=r"blocks\.0\.up_proj\.weight .*shape \(32, 64\), expected \(64, 32\)"):
        tiny_model(R, str(tmp_path / "misshaped"))
    write_checkpoint(str(tmp_path / "gqa"), tensors, cfg=dict(CONFIG, n_kv_heads=1))
    with pytest.raises(InputError, match="grouped-query"):
        R.read_arch(str(tmp_path / "gqa"))


def test_retrofit_starts_as_llada(llada_dir):
    """Before any step the retrofitted model's token logits are LLaDA's (an independent reference
    forward on the checkpoint), on a padded batch, LoRA dropout active; g starts at insert_init."""
    R = retrofit(llada_dir)
    tensors = checkpoint_tensors(CONFIG)
    model, arch = tiny_model(R, llada_dir)
    model.train()
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 5])
    x = torch.randint(3, 300, (2, 9), generator=gen)
    x[1, 5:] = arch["pad_id"]
    logits, g = model(x, lengths, torch.tensor([0.3, 0.8]))
    for b in range(2):
        ref = reference_llada(tensors, CONFIG, x[b, :lengths[b]])
        torch.testing.assert_close(logits[b, :lengths[b]], ref, atol=2e-5, rtol=1e-4)
    assert g.shape == (2, 10)
    torch.testing.assert_close(g, torch.full_like(g, R.insert_init))
    mdm, _ = tiny_model(R, llada_dir, model_type="mdm")
    torch.testing.assert_close(mdm(x[:1])[0][0], reference_llada(tensors, CONFIG, x[0]), atol=2e-5, rtol=1e-4)


def test_network_is_the_losses_contract(llada_dir):
    """llada_net(model) as interpolant.batch_loss calls it: the logits at the positions asked for, and for
    FlexMDM g over the L+1 gaps of x_t's width, the forward run on x_t cut to its longest row (the columns
    past it are zero); the MDM ignores cond_time and has no g."""
    R = retrofit(llada_dir)
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(3, 300, (2, 12), generator=gen)
    lengths, t = torch.tensor([9, 5]), torch.tensor([0.3, 0.8])
    x[0, 9:], x[1, 5:] = 0, 0
    at = (torch.tensor([0, 0, 1]), torch.tensor([2, 8, 4]))
    model, _ = tiny_model(R, llada_dir)
    model.eval()
    logits, g = R.llada_net(model)(x, lengths, t, torch.zeros_like(x, dtype=torch.bool), at)
    ref_logits, ref_g = model(x[:, :9], lengths, t)
    torch.testing.assert_close(logits, ref_logits[at], atol=1e-6, rtol=1e-5)
    assert g.shape == (2, 13) and torch.equal(g[:, :10], ref_g) and not g[:, 10:].any()
    closed = torch.zeros(2, 13, dtype=torch.bool)
    closed[0, :4], closed[1, 5] = True, True  # the gaps a task keeps empty: read from closed_emb (zero at the start)
    with torch.no_grad():  # g's head starts at zero, reading nothing: randomise it too
        model.closed_emb.normal_(0, 1, generator=gen), model.insert_head.weight.normal_(0, 1, generator=gen)
    _, g = R.llada_net(model)(x, lengths, t, torch.zeros_like(x, dtype=torch.bool), at)
    _, g_marked = R.llada_net(model)(x, lengths, t, torch.zeros_like(x, dtype=torch.bool), at, closed)
    _, g_none = R.llada_net(model)(x, lengths, t, torch.zeros_like(x, dtype=torch.bool), at, closed & False)
    assert torch.equal(g_none, g) and (g_marked - g).abs().max() > 1e-4
    mdm, _ = tiny_model(R, llada_dir, model_type="mdm")
    mdm.eval()
    logits, g = R.llada_net(mdm)(x, None, t, torch.zeros_like(x, dtype=torch.bool), at)
    assert g is None
    torch.testing.assert_close(logits, mdm(x)[0][at], atol=1e-6, rtol=1e-5)


def test_lora_exactly_on_qkv_and_output_head(llada_dir):
    R = retrofit(llada_dir, "--lora_r=4", "--lora_alpha=8")
    expected = {f"transformer.blocks.{i}.{p}" for i in range(CONFIG["n_layers"]) for p in ("q_proj", "k_proj", "v_proj")}
    expected.add("transformer.ff_out")
    for model_type in ("flexmdm", "mdm"):
        model, _ = tiny_model(R, llada_dir, model_type)
        adapted = {n for n, m in model.named_modules() if hasattr(m, "lora_A")}
        assert adapted == expected
        for name in adapted:
            m = model.get_submodule(name)
            assert m.r["default"] == 4 and m.scaling["default"] == 2.0 and m.lora_dropout["default"].p == 0.1
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or R.is_new(n)}
        assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
        assert any(R.is_new(n) for n in trainable) == (model_type == "flexmdm")


# ----------------------------------------------------------------------------------------------
# Training

@pytest.mark.parametrize("stage,model_type", [("pretrain", "flexmdm"), ("ift_math", "flexmdm"), ("ift_math", "mdm"),
                                              ("ift_code", "flexmdm"), ("ift_code", "mdm")])
def test_steps_lower_the_loss_on_a_repeated_batch(llada_dir, stage, model_type):
    R = retrofit(llada_dir, f"--stage={stage}", f"--model_type={model_type}", "--learning_rate=1e-2", "--weight_decay=0.0")
    model, arch = tiny_model(R, llada_dir, model_type)
    tok, s = R.load_tokenizer(llada_dir, arch), R.settings()
    rng = __import__("numpy").random.default_rng(0)
    batch = R.make_batch(s, [R.draw_example(s, R.stage_data(s, tok, 0, 1, 0), tok, rng, arch) for _ in range(4)], arch, "cpu")
    x1, lengths, fixed, span = batch
    real = torch.arange(x1.shape[1])[None] < lengths[:, None]
    assert (fixed & real).any() == (stage != "pretrain") and (fixed & real).sum() < real.sum()
    inside = (torch.arange(x1.shape[1])[None] >= span[:, :1]) & (torch.arange(x1.shape[1])[None] < span[:, 1:])
    if model_type == "flexmdm":  # the span is the free run (the answer, the middle, or all); the MDM has no gaps
        assert torch.equal(inside & real, ~fixed & real)

    def loss(train):
        model.train(train)
        return batch_loss(R.llada_net(model), x1, lengths, fixed, R.loss_config(model_type), arch["mask_id"], arch["pad_id"],
                          torch.Generator().manual_seed(0), span=span)[0]

    optimizer = R.make_optimizer(model, s.learning_rate, s.weight_decay)
    with torch.no_grad():
        before = loss(False).item()
    for _ in range(8):
        optimizer.zero_grad()
        loss(True).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss(False).item()
    assert after < 0.8 * before, (before, after)


def test_stages_end_to_end_then_evaluate(llada_dir, tmp_path):
    """pretrain -> resume -> ift_math -> generate GSM8K and HumanEval-infill -> evaluate.py, in-process."""
    import evaluate
    pre, ift = str(tmp_path / "pre"), str(tmp_path / "ift")
    out = run_main(llada_dir, "--stage=pretrain", "--max_iters=2", f"--out_dir={pre}")
    assert "iter 2: loss" in out and os.path.exists(os.path.join(pre, "ckpt.pt"))
    out = run_main(llada_dir, "--stage=pretrain", "--max_iters=3", "--init_from=resume", f"--out_dir={pre}")
    assert "iter 3: loss" in out and "iter 1: loss" not in out
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a checkpoint of retrofit_llada.py"):
        run_main(llada_dir, "--stage=ift_math", f"--init_from={tmp_path / 'foreign.pt'}", f"--out_dir={ift}")
    out = run_main(llada_dir, "--stage=ift_math", "--max_iters=2", f"--init_from={pre}/ckpt.pt", f"--out_dir={ift}")
    assert "iter 2: loss" in out
    with pytest.raises(InputError, match="does not match"):
        run_main(llada_dir, "--stage=ift_math", "--model_type=mdm", f"--init_from={pre}/ckpt.pt", f"--out_dir={ift}")

    run_main(llada_dir, "--stage=generate", f"--init_from={ift}/ckpt.pt", f"--out_dir={ift}", "--num_problems=3", "--steps=4")
    rows = evaluate.read_jsonl(os.path.join(ift, "gsm8k.jsonl"))
    assert len(rows) == 3 and all({"question", "answer", "completion", "tokens"} <= set(r) for r in rows)
    metrics = evaluate.main(["--task=gsm8k", f"--samples={ift}/gsm8k.jsonl"])
    assert metrics["n"] == 3 and 0 <= metrics["accuracy"] <= 1

    run_main(llada_dir, "--stage=generate", "--task=humaneval_infill", f"--eval_source={SINGLE_LINE}",
             f"--init_from={ift}/ckpt.pt", f"--out_dir={ift}", "--num_problems=2", "--steps=4")
    metrics = evaluate.main(["--task=humaneval_infill", f"--samples={ift}/humaneval_infill.jsonl", f"--problems={SINGLE_LINE}",
                             "--allow_code_execution=True"])
    assert metrics["n"] == 2 and sum(metrics["outcomes"].values()) == 2


@pytest.mark.parametrize("model_type", ["flexmdm", "mdm"])
def test_infilling_keeps_prefix_and_suffix_intact(llada_dir, model_type):
    """Insertion only between prefix and suffix: with an insertion head that asks for ~4 masks per
    gap, an insertion inside the prefix or suffix would shift or split them."""
    R = retrofit(llada_dir, "--task=humaneval_infill", f"--eval_source={SINGLE_LINE}", f"--model_type={model_type}",
                 "--gen_batch_size=3", "--steps=6", "--temperature=1.0")
    model, arch = tiny_model(R, llada_dir, model_type)
    if model_type == "flexmdm":
        with torch.no_grad():
            model.insert_head.bias.fill_(4.0)
    tok, s = R.load_tokenizer(llada_dir, arch), R.settings()
    items = R.load_problems(s, tok, arch)[:40:8]
    seqs = R.generate_sequences(s, model.eval(), items, R.sampler_config(s, arch, "cpu"), torch.Generator().manual_seed(0))
    for (_, prompt, n_pre, n_suf), seq in zip(items, seqs):
        assert seq[:n_pre] == prompt[:n_pre] and seq[len(seq) - n_suf:] == prompt[len(prompt) - n_suf:]
        middle = seq[n_pre:len(seq) - n_suf]
        assert 0 < len(middle) and arch["mask_id"] not in middle
        assert len(seq) <= max(len(p) for _, p, _, _ in items) + R.infill_middle_tokens  # the batch's length cap


# ----------------------------------------------------------------------------------------------
# Two processes: torchrun, FSDP2 on gloo

TWO_PROCESS_ARGS = ["--stage=ift_math", "--global_batch_size=8", "--save_interval=2"]  # 2 x 2 accumulated x 2 processes


def tail(text):
    return (text or "")[-3000:]


def torchrun(llada_dir, *args, timeout=240):
    """`torchrun --standalone --nproc_per_node=2 retrofit_llada.py config/llada_cpu.py ...` in the repo
    root, on CPU (gloo), one thread per process; its stdout. A run past timeout is killed with its workers."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "retrofit_llada.py",
           "config/llada_cpu.py", f"--base_model={llada_dir}", *small_data(llada_dir), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: their own session
        out, err = proc.communicate()
        raise AssertionError(f"torchrun {' '.join(args)} did not finish in {timeout} s (a hung collective?)\n"
                             f"--- stdout:\n{tail(out)}\n--- stderr:\n{tail(err)}") from None
    assert proc.returncode == 0, f"torchrun {' '.join(args)} exited with {proc.returncode}\n--- stdout:\n{tail(out)}\n--- stderr:\n{tail(err)}"
    return out


def logged_losses(stdout):
    """{iteration: (loss, unmask, insert)} as printed, strings: compared exactly."""
    return {int(i): rest for i, *rest in re.findall(r"^iter (\d+): loss (\S+) \(unmask (\S+), insert (\S+)\)", stdout, re.M)}


@pytest.fixture(scope="module")
def two_process_run(llada_dir, tmp_path_factory):
    """An uncut 2-process ift_math run of 4 iterations (a checkpoint at 2, overwritten at 4): (stdout, out_dir)."""
    out_dir = tmp_path_factory.mktemp("uncut")
    return torchrun(llada_dir, *TWO_PROCESS_ARGS, "--max_iters=4", f"--out_dir={out_dir}"), out_dir


def test_torchrun_two_processes_train_and_resume_exactly(llada_dir, two_process_run, tmp_path):
    """FSDP2 over 2 processes: the steps run, rank 0 logs them once, every trainable tensor (in both
    block units and the root) is updated and written whole; a run cut at iteration 2 and resumed is the
    uncut run: the same logged losses, tensors and Adam moments, bit for bit. Exact rather than to a
    tolerance: both runs do the same float operations on the same draws (each process restores its own
    streams), a 2-way gloo sum does not depend on the order, and the checkpoint keeps fp32 as fp32; so
    any difference, however small, is a state that was not restored."""
    out, uncut = two_process_run
    assert "2 process(es) on cpu" in out and "(2 x 2 accumulation x 2 processes)" in out, tail(out)
    losses = logged_losses(out)
    assert list(losses) == [1, 2, 3, 4] and out.count("iter 1: loss") == 1, tail(out)
    assert all(math.isfinite(float(v)) for terms in losses.values() for v in terms), tail(out)
    final = torch.load(uncut / "ckpt.pt", weights_only=False)
    assert final["iter_num"] == 4 and len(final["rng"]) == 2 and final["rng"][0]["data"] != final["rng"][1]["data"]

    cut = tmp_path / "cut"
    first = torchrun(llada_dir, *TWO_PROCESS_ARGS, "--max_iters=2", f"--out_dir={cut}")
    half = torch.load(cut / "ckpt.pt", weights_only=False)
    second = torchrun(llada_dir, *TWO_PROCESS_ARGS, "--max_iters=4", "--init_from=resume", f"--out_dir={cut}")
    assert logged_losses(first) == {i: losses[i] for i in (1, 2)}, f"{tail(first)}\nuncut:\n{tail(out)}"
    assert logged_losses(second) == {i: losses[i] for i in (3, 4)}, f"{tail(second)}\nuncut:\n{tail(out)}"
    R = retrofit(llada_dir)
    shapes = {n: p.shape for n, p in tiny_model(R, llada_dir)[0].named_parameters() if p.requires_grad}
    resumed = torch.load(cut / "ckpt.pt", weights_only=False)
    assert {n: t.shape for n, t in final["trainable"].items()} == shapes  # whole tensors, not one process's shard
    for name, t in final["trainable"].items():
        assert not torch.equal(half["trainable"][name], t), f"{name} was not updated by iterations 3 and 4"
        assert torch.equal(resumed["trainable"][name], t), (
            f"{name}: the resumed run differs from the uncut one by {(resumed['trainable'][name] - t).abs().max():.3g}")
    for name, state in final["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][name][key], value), (name, key)


def test_two_process_checkpoint_resumes_in_one_process(llada_dir, two_process_run, tmp_path):
    """The 2-process ckpt.pt resumed by 1 process: one line says the random streams start anew; the
    weights (a step at lr 1e-9 leaves them where they were loaded) and Adam's state (its step count)
    are the checkpoint's, the iteration continues, the global batch stays 8."""
    saved = torch.load(two_process_run[1] / "ckpt.pt", weights_only=False)
    torch.save(saved, tmp_path / "ckpt.pt")
    out = run_main(llada_dir, *TWO_PROCESS_ARGS, "--max_iters=5", "--init_from=resume", f"--out_dir={tmp_path}",
                   "--learning_rate=1e-9", "--min_lr=1e-10")
    assert "written by 2 process(es), this run has 1: weights, optimizer state and schedule continue; the random streams" in out
    assert "(2 x 4 accumulation x 1 processes)" in out and list(logged_losses(out)) == [5], out
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ck["iter_num"] == 5 and len(ck["rng"]) == 1
    assert all(s["step"].item() == 5 for s in ck["optimizer"]["state"].values())
    for name, t in saved["trainable"].items():
        assert (ck["trainable"][name] - t).abs().max() < 1e-7, name
    assert max(t.abs().max() for n, t in saved["trainable"].items() if "lora_B" in n) > 1e-5  # ... which are not the initial zeros


# ----------------------------------------------------------------------------------------------
# The command line

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_build_lacks_is_one_line(llada_dir):
    with pytest.raises(InputError, match=r"^device 'cuda' is not available: this torch .* use --device=cpu$"):
        run_main(llada_dir, "--device=cuda")


def test_help_as_a_process():
    proc = run_python(["retrofit_llada.py", "--help"], cwd=ROOT, timeout=120)
    assert proc.returncode == 0, tail(proc.stdout) + tail(proc.stderr)
    assert proc.stdout.startswith("Retrofit LLaDA-8B-Base into a FlexMDM"), tail(proc.stdout)
    assert "--init_from='base'" in proc.stdout and "--stage='pretrain'" in proc.stdout, tail(proc.stdout)


def test_configs_are_valid(llada_dir):
    import retrofit_llada
    for name in ("llada_pretrain", "llada_ift_math", "llada_ift_code", "llada_ift_math_mdm", "llada_ift_code_mdm",
                 "llada_bench", "llada_cpu"):
        module = importlib.reload(retrofit_llada)
        with contextlib.chdir(ROOT):
            configure(vars(module), [f"config/{name}.py"])
        assert all(getattr(module, k) in v for k, v in module.CHOICES.items()), name
        for world in dict(llada_cpu=(1, 2), llada_bench=(1,)).get(name, (1, 16)):  # as their commands run them
            module.check_settings(module.settings(), world)
    assert (module.stage, module.device) == ("pretrain", "cpu")


# ----------------------------------------------------------------------------------------------
# Benchmarks (evaluate.py)

def test_gsm8k_answer_extraction_on_real_answers():
    import evaluate
    rows = []
    for split in ("train", "test"):
        with open(os.path.join(GSM8K, f"{split}.jsonl")) as f:
            rows += [json.loads(line) for line in f]
    assert len(rows) == 8792
    golds = [evaluate.gsm8k_gold(r["answer"]) for r in rows]
    assert None not in golds and evaluate.gsm8k_gold("... #### 1,450,000") == "1450000"
    assert [evaluate.gsm8k_extract(r["answer"]) for r in rows] == golds
    said = [r["answer"].split("####")[0] + f"So the answer is ${r['answer'].split('####')[1].strip()}." for r in rows]
    assert [evaluate.gsm8k_extract(s) for s in said] == golds
    reasoning_only = sum(evaluate.gsm8k_extract(r["answer"].split("####")[0]) == g for r, g in zip(rows, golds))
    assert reasoning_only / len(rows) > 0.95  # the last number of the reasoning is nearly always the answer
    assert evaluate.gsm8k_extract("She pays $1,234.50 in total.") == "1234.5"
    assert evaluate.gsm8k_extract("The answer is -3. Check: 5 - 8 = -3") == "-3"
    assert evaluate.gsm8k_extract("#### 18.0\nand 7 more") == "18"
    assert evaluate.gsm8k_extract("no idea") is None
    rate = evaluate.rate_and_stderr([evaluate.gsm8k_extract(s) == g for s, g in zip(["#### 5", "#### 6"], ["5", "7"])])
    assert rate == pytest.approx((0.5, 0.5 / 2 ** 0.5))


def test_humaneval_infill_harness():
    import evaluate
    problems = evaluate.read_problems(SINGLE_LINE)
    assert len(problems) == 1033
    ids = list(problems)[::60]
    canonical = [{"task_id": i, "completion": problems[i]["canonical_solution"]} for i in ids]
    assert evaluate.humaneval_outcomes(problems, canonical, timeout=10) == ["passed"] * len(ids)
    first = "SingleLineInfilling/HumanEval/0/L0"  # "for idx, elem in enumerate(numbers):" -> every element meets itself
    wrong = [{"task_id": first, "completion": "    for idx, elem in enumerate(numbers[1:]):\n"}]
    assert evaluate.humaneval_outcomes(problems, wrong, timeout=10) == ["failed"]

    example = evaluate.read_problems(os.path.join(HUMANEVAL, "example_problem.jsonl"))
    loop = [{"task_id": "test/0", "completion": "    while True:\n        pass\n    return "}]
    assert evaluate.humaneval_outcomes(example, loop, timeout=1) == ["timed out"]
    samples = evaluate.read_jsonl(os.path.join(HUMANEVAL, "example_samples.jsonl"))
    outcomes = evaluate.humaneval_outcomes(example, samples, timeout=2, workers=len(samples))
    assert evaluate.pass_at_1(samples, outcomes) == pytest.approx((0.3, 0.0))
    assert outcomes.count("timed out") == 2


# ----------------------------------------------------------------------------------------------
# Mistakes: one line each, before any work, nothing on disk changed or added

@pytest.fixture(scope="module")
def world(llada_dir, tmp_path_factory):
    """A directory W of what a user has: W/run, a finished 2-iteration ift_math run (ckpt.pt and its samples
    gsm8k.jsonl); checkpoints torn (20 KB, half) or of another kind; a samples file, a notes file, a copy of
    the problems; W/llada_1layer, a base model of another architecture (its config.json)."""
    W = tmp_path_factory.mktemp("world")
    run_main(llada_dir, "--stage=ift_math", "--max_iters=2", f"--out_dir={W / 'run'}")
    ckpt = (W / "run" / "ckpt.pt").read_bytes()
    (W / "run" / "gsm8k.jsonl").write_text('{"question": "q", "answer": "a", "completion": "c", "tokens": []}\n')
    (W / "torn_20k.pt").write_bytes(ckpt[:20000])
    (W / "torn_half.pt").write_bytes(ckpt[:len(ckpt) // 2])
    torch.save({"model": {}, "model_args": {}, "iter_num": 3}, W / "train_py.pt")  # train.py's kind
    torch.save(torch.zeros(3), W / "tensor.pt")
    (W / "notes.txt").write_text("my notes\n")
    (W / "samples.jsonl").write_text('{"question": "q", "answer": "a", "completion": "c", "tokens": []}\n')
    with open(os.path.join(GSM8K, "test.jsonl")) as f, open(W / "problems.jsonl", "w") as out:
        out.writelines(line for _, line in zip(range(5), f))
    os.makedirs(W / "llada_1layer")
    with open(W / "llada_1layer" / "config.json", "w") as f:
        json.dump(dict(CONFIG, n_layers=1), f)
    return W


# check_settings's ranges: (key, a value outside, the rule as said)
RANGE_ROWS = [("log_interval", "0", "> 0"), ("save_interval", "0", "> 0"), ("max_len", "0", "> 0"),
              ("infill_max_lines", "0", "> 0"), ("infill_middle_tokens", "0", "> 0"), ("cond_dim", "0", "> 0"),
              ("insert_init", "0.0", "> 0"), ("lora_r", "0", "> 0"), ("lora_alpha", "0", "> 0"),
              ("lora_dropout", "1.0", "in [0, 1)"), ("owt_fraction", "1.5", "in [0, 1]"), ("owt_fraction", "-0.5", "in [0, 1]"),
              ("global_batch_size", "0", "> 0"), ("micro_batch_size", "0", "> 0"), ("learning_rate", "0.0", "> 0"),
              ("min_lr", "-1e-05", ">= 0"), ("weight_decay", "-0.1", ">= 0"), ("grad_clip", "-1.0", ">= 0"),
              ("warmup_iters", "-1", ">= 0"), ("restart_iters", "0", "> 0"), ("max_iters", "-1", ">= 0"),
              ("epochs", "-1.0", ">= 0"), ("num_problems", "-1", ">= 0"), ("samples_per_problem", "0", "> 0"),
              ("gen_batch_size", "0", "> 0"), ("seed", "-1", ">= 0")]
CKPT_HINT = "--init_from is base, resume (out_dir/ckpt.pt) or the ckpt.pt of an earlier stage"
RESUME = ("--stage=ift_math", "--init_from=resume", "--out_dir={W}/run")
NEW_RUN = "{W}/run/ckpt.pt exists: continue that run with --init_from=resume, or start this one in another --out_dir"
GEN = ("--stage=generate", "--out_dir={W}/gen", "--init_from={W}/run/ckpt.pt")
# (args, the one line expected, "..." standing for any text); {W}: the world fixture, {G}: GSM8K's test.jsonl
MISTAKES = [
    # the configurator: unknown keys, wrong types
    (("--no_such_key=1",), "unknown config key 'no_such_key' from the command line (--help lists the keys)"),
    (("--max_iters=abc",), "config key 'max_iters' from the command line must be int, got str 'abc'"),
    # choices and the device
    (("--stage=finetune",), "stage='finetune' is not one of pretrain, ift_math, ift_code, generate, bench"),
    (("--model_type=ar",), "model_type='ar' is not one of flexmdm, mdm"),
    (("--task=mbpp",), "task='mbpp' is not one of gsm8k, humaneval_infill"),
    (("--dtype=float16",), "dtype='float16' is not one of float32, bfloat16"),
    (("--device=tpu",), "device 'tpu' is not one of cpu, cuda, cuda:N, mps"),
    # ranges
    *[((f"--{key}={bad}",), f"{key}={bad} must be {rule}") for key, bad, rule in RANGE_ROWS],
    # relations
    (("--global_batch_size=5",), "global_batch_size=5 must be a multiple of micro_batch_size x processes = 2 x 1"),
    (("--learning_rate=0.001", "--min_lr=0.01"), "min_lr=0.01 must be <= learning_rate=0.001 (the cosine goes down to it)"),
    (("--model_type=mdm", "--stage=pretrain"), "stage=pretrain is for the FlexMDM retrofit; the MDM baseline is LLaDA-Base "
                                               "itself (ift stages, generate)"),
    (("--model_type=mdm", "--stage=bench"), "stage=bench is for the FlexMDM retrofit; ..."),
    (("--stage=bench", "--init_from=resume"), "init_from='resume' must be 'base' for stage=bench (it times a random model)"),
    (("--bench_arch=(64, 2, 3, 128, 1000)",), "bench_arch=(64, 2, 3, 128, 1000) must be 5 integers > 0 (d_model, n_layers, "
                                              "n_heads, mlp, vocab), d_model a multiple of 2 x n_heads and vocab >= 3"),
    (("--bench_arch=(64, 2)",), "bench_arch=(64, 2) must be 5 integers > 0 ..."),
    (("--stage=ift_code", "--infill_middle_tokens=256"), "infill_middle_tokens=256 must be < max_len=256 (prefix, middle and "
                                                         "suffix fit max_len)"),
    (("--stage=generate", "--task=humaneval_infill", "--eval_source="),
     "eval_source='' must name the problems for task=humaneval_infill: --eval_source=PATH/HumanEval-SingleLineInfilling.jsonl.gz"),
    # the sampler's settings (sampler.SamplerConfig's own checks)
    (("--steps=1",), "need steps >= 2, temperature >= 0 and grid_power > 0 (got steps=1, temperature=0.0, grid_power=1.0)"),
    (("--temperature=-1.0",), "need steps >= 2, temperature >= 0 and grid_power > 0 (got steps=16, temperature=-1.0, ...)"),
    (("--sampler=greedy",), "sampler='greedy' is not one of ..."),
    (("--confidence=best",), "confidence='best' is not one of ..."),
    # outputs: the samples file, another run's checkpoint
    ((*GEN, "--samples_file={W}/samples.jsonl"),
     "'{W}/samples.jsonl' already exists: pass --overwrite=True to replace it, or another --samples_file"),
    (("--stage=generate", "--init_from=resume", "--out_dir={W}/run"),
     "'{W}/run/gsm8k.jsonl' already exists: pass --overwrite=True to replace it, or another --samples_file"),
    ((*GEN, "--samples_file={W}/notes.txt", "--overwrite=True"),
     "'{W}/notes.txt' is not replaced: it is not a samples, metrics, table or PNG file of this repo; give another --samples_file"),
    ((*GEN, "--eval_source={W}/problems.jsonl", "--samples_file={W}/problems.jsonl", "--overwrite=True"),
     "'{W}/problems.jsonl' is also a file this command reads: it is not written over, or another --samples_file"),
    ((*GEN, "--samples_file={W}/run/ckpt.pt", "--overwrite=True"),
     "'{W}/run/ckpt.pt' is also a file this command reads: it is not written over, or another --samples_file"),
    (("--stage=ift_math", "--out_dir={W}/run"), NEW_RUN),
    (("--stage=ift_code", "--init_from={W}/run/ckpt.pt", "--out_dir={W}/run"), NEW_RUN),
    # checkpoints: missing, torn, of another kind, of another network
    (("--stage=ift_math", "--init_from={W}/nowhere.pt", "--out_dir={W}/new"), f"checkpoint '{{W}}/nowhere.pt' not found: {CKPT_HINT}"),
    (("--stage=ift_math", "--init_from=resume", "--out_dir={W}/new"), f"checkpoint '{{W}}/new/ckpt.pt' not found: {CKPT_HINT}"),
    ((*GEN[:2], "--init_from={W}/torn_20k.pt"), "'{W}/torn_20k.pt' is not a readable checkpoint (...)"),
    ((*GEN[:2], "--init_from={W}/torn_half.pt"), "'{W}/torn_half.pt' is not a readable checkpoint (...)"),
    ((*GEN[:2], "--init_from={W}/notes.txt"), "'{W}/notes.txt' is not a readable checkpoint (...)"),
    ((*GEN[:2], "--init_from={W}/tensor.pt"), "'{W}/tensor.pt' is not a checkpoint of this repo (a Tensor)"),
    ((*GEN[:2], "--init_from={W}/train_py.pt"), "{W}/train_py.pt is not a checkpoint of retrofit_llada.py (no 'trainable' in it)"),
    ((*RESUME, "--lora_r=4"), "{W}/run/ckpt.pt does not match this run: this run has lora_r=4 (the checkpoint has 8); give the "
                              "checkpoint's values, or start a new run in another --out_dir"),
    ((*RESUME, "--lora_alpha=16"), "{W}/run/ckpt.pt does not match this run: this run has lora_alpha=16 (the checkpoint has 8); ..."),
    ((*RESUME, "--cond_dim=32", "--model_type=mdm"),
     "{W}/run/ckpt.pt does not match this run: this run has model_type='mdm' (the checkpoint has 'flexmdm'), cond_dim=32 (the "
     "checkpoint has 16); give the checkpoint's values, or start a new run in another --out_dir"),
    (("--stage=ift_code", *RESUME[1:]), "{W}/run/ckpt.pt does not match this run: this run has stage='ift_code' (the checkpoint "
                                        "has 'ift_math'); ..."),
    ((*GEN, "--lora_r=4"), "{W}/run/ckpt.pt does not match this run: this run has lora_r=4 (the checkpoint has 8); give the "
                           "checkpoint's values"),
    ((*RESUME, "--base_model={W}/llada_1layer"), "{W}/run/ckpt.pt does not match this run: the base model {W}/llada_1layer has "
                                                 "n_layers=1 (the checkpoint was trained on 2); give the base_model it was trained from"),
    # inputs read before the model: the base model, the tokenizer, the data, the problems
    (("--base_model={W}/nowhere",), "base_model '{W}/nowhere' is neither a directory nor a downloadable hub id: ..."),
    (("--tokenizer_name={W}/nowhere",), "cannot load the tokenizer '{W}/nowhere': ..."),
    (("--stage=ift_math", "--gsm8k_source={W}/nowhere.jsonl", "--out_dir={W}/new"), "cannot load dataset '{W}/nowhere.jsonl': ..."),
    (("--stage=pretrain", "--owt_fields=body", "--out_dir={W}/new"), "rows of '...webtext.test.jsonl' have no field 'body' (they have ...)"),
    (("--stage=ift_code", "--code_source={G}", "--out_dir={W}/new"), "rows of '{G}' have no 'code' field (they have question, answer)"),
    ((*GEN, "--task=humaneval_infill", "--eval_source={G}"), "rows of '{G}' have no 'task_id' field: not the problems of "
                                                             "task=humaneval_infill"),
]


def fills(pattern, text):
    """text is pattern with each "..." standing for any text."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("..."))), text) is not None


def files_under(*roots):
    """{path: sha256} of every file under roots (caches and the virtual environment left out): a picture of what
    a user has on disk."""
    found = {}
    for root in roots:
        for d, dirs, names in os.walk(root):
            dirs[:] = [n for n in dirs if n not in (".git", "__pycache__", ".pytest_cache", ".venv")]
            found.update({os.path.join(d, n): hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
                          for n in names})
    return found


def test_the_mistakes_table_covers_every_range_rule():
    import retrofit_llada
    assert {key for key, _, _ in RANGE_ROWS} == set(retrofit_llada.RANGES)


@pytest.mark.parametrize("args,expected", MISTAKES, ids=[" ".join(a)[:60] for a, _ in MISTAKES])
def test_a_mistake_is_one_line_before_any_work_and_changes_nothing(llada_dir, world, args, expected):
    """Each mistake: the expected one line, raised before the model is built (its size line is not printed),
    and every file that existed before byte-identical after, nothing new."""
    names = dict(W=str(world), G=os.path.join(GSM8K, "test.jsonl"))
    before = files_under(world, llada_dir, ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(InputError) as e:
        print(run_main(llada_dir, f"--out_dir={world}/new", *(a.format(**names) for a in args)))  # a row may give another
    assert fills(expected.format(**names), str(e.value)), str(e.value)
    assert "\n" not in str(e.value) and "parameters" not in out.getvalue(), out.getvalue()
    after = files_under(world, llada_dir, ROOT)
    assert sorted(after) == sorted(before), set(after) ^ set(before)
    assert [p for p in before if after[p] != before[p]] == []


def test_overwrite_replaces_a_samples_file_of_ours(llada_dir, world, tmp_path):
    """The refusals above have their way out: --overwrite=True replaces an existing samples file, whole."""
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "q", "answer": "a", "completion": "c", "tokens": []}\n')
    run_main(llada_dir, *[a.format(W=world) for a in GEN], f"--samples_file={path}", "--overwrite=True", "--num_problems=2",
             "--steps=2")
    assert [r["question"] != "q" for r in map(json.loads, path.read_text().splitlines())] == [True, True]


def test_a_run_writes_no_checkpoint_before_its_first_step(llada_dir, tmp_path):
    out = run_main(llada_dir, "--stage=ift_math", "--max_iters=0", f"--out_dir={tmp_path / 'run'}")
    assert "ift_math: 0 iterations" in out and os.listdir(tmp_path) == []


def user_lines(stderr):
    """The lines of stderr that are ours: the libraries' warnings and progress bars (transformers on the tiny
    tokenizer's config, datasets reading a file) left out."""
    library = ("Warning", "warnings.warn", "[transformers]", " examples/s]")
    return [l for l in stderr.splitlines() if l.strip() and not any(m in l for m in library)]


def test_a_refusal_as_a_process_and_under_torchrun_is_one_line(llada_dir, world):
    """The command line itself: `error: ...` once on stderr, status 1, no traceback; under torchrun, once
    (rank 0) although both ranks refuse (torchrun's own summary of the failed workers may follow)."""
    args = ["retrofit_llada.py", "config/llada_cpu.py", f"--base_model={llada_dir}", "--stage=generate",
            f"--samples_file={world}/samples.jsonl"]
    line = f"error: '{world}/samples.jsonl' already exists: pass --overwrite=True to replace it, or another --samples_file"
    proc = run_python(args, cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and user_lines(proc.stderr) == [line], proc.stderr
    proc = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args], cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [line], tail(proc.stderr)
    assert 'retrofit_llada.py", line' not in proc.stderr, tail(proc.stderr)  # torchrun's own traceback may follow, not ours


# ----------------------------------------------------------------------------------------------
# Ctrl-C: a real SIGINT to a real process, as a terminal sends it (to the process group)

INTERRUPTED = ("interrupted: a training stage keeps the out_dir/ckpt.pt it last saved, if any (continue it with "
               "--init_from=resume); a samples file is written whole once all samples are made, or not at all")


def interrupt(llada_dir, args, ready):
    """Start `python retrofit_llada.py config/llada_cpu.py ...` in the repo root, wait until ready(proc), send
    SIGINT to its process group (as a terminal's Ctrl-C does); returns (status, stderr)."""
    proc = start_python(["retrofit_llada.py", "config/llada_cpu.py", f"--base_model={llada_dir}", *small_data(llada_dir),
                         *args], ROOT)
    try:
        was_ready = ready(proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert was_ready, tail(stderr)
    return proc.returncode, stderr


def printed(prefix):
    """ready: the process printed a line starting with prefix."""
    return lambda proc: any(line.startswith(prefix) for line in proc.stdout)


def loading_torch(proc, timeout=120):
    """ready: the process is importing torch (its library is mapped), the first seconds of every start."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        with open(f"/proc/{proc.pid}/maps") as f:
            if "libtorch" in f.read():
                return True
        time.sleep(0.01)
    return False


def test_ctrl_c_while_the_libraries_load_is_one_line(llada_dir, tmp_path):
    """Ctrl-C in the first seconds, while torch loads, before main() runs: one line (configurator's: nothing has
    been written yet), status 130, nothing written."""
    status, stderr = interrupt(llada_dir, ["--stage=ift_math", f"--out_dir={tmp_path / 'run'}"], loading_torch)
    assert status == 130 and user_lines(stderr) in ([INTERRUPTED], ["interrupted: nothing was written; run the command again"]), stderr
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_training_keeps_the_last_checkpoint(llada_dir, tmp_path):
    """Ctrl-C in the middle of a training stage (checkpoints every 2 iterations): one line, status 130;
    out_dir holds the last checkpoint, whole (no temporary file), and the run resumes from it."""
    out = tmp_path / "run"
    args = ["--stage=ift_math", "--max_iters=100000", "--save_interval=2", f"--out_dir={out}"]
    status, stderr = interrupt(llada_dir, args, printed("iter 3: loss"))
    assert status == 130 and user_lines(stderr) == [INTERRUPTED], stderr
    assert os.listdir(out) == ["ckpt.pt"]
    import retrofit_llada
    ck = retrofit_llada.load_checkpoint(str(out / "ckpt.pt"))
    assert ck["iter_num"] >= 2 and ck["iter_num"] % 2 == 0
    log = run_main(llada_dir, *args[:1], f"--max_iters={ck['iter_num'] + 1}", "--init_from=resume", *args[2:])
    assert list(logged_losses(log)) == [ck["iter_num"] + 1], log


def test_ctrl_c_while_generating_writes_no_samples(llada_dir, world, tmp_path):
    """Ctrl-C while the samples are made (all 1319 GSM8K test problems): one line, status 130, no samples
    file and nothing else written; the checkpoint read is as it was."""
    before = files_under(world, tmp_path)
    status, stderr = interrupt(llada_dir, ["--stage=generate", f"--init_from={world}/run/ckpt.pt", f"--out_dir={tmp_path}",
                                           "--steps=16"], printed("LLaDA flexmdm:"))
    assert status == 130 and user_lines(stderr) == [INTERRUPTED], stderr
    assert files_under(world, tmp_path) == before
