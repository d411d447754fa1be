"""
Checkpoints: one file per run, written atomically and read with checks.

train.py's ckpt.pt holds model (the weights), ema (the EMA weights, a list in parameter order, or None),
optimizer, model_args (model.ModelConfig), iter_num, train_seconds, config (every setting of the run),
meta (the data's meta.json) and rng (the random streams of every process). retrofit_llada.py's holds its
trainable tensors instead (its own format, read by it).
"""
import os
import pickle
import zipfile

import torch

from configurator import InputError
from data import atomic_write


def save_checkpoint(path, state):
    """torch.save(state) to path, atomically (data.atomic_write: the previous checkpoint, or the new one,
    whole, never a torn file)."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path, hint="train first (train.py) or fix --out_dir"):
    """The dict torch.save wrote to path (on the CPU); a missing, torn or foreign file is one line."""
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path!r} not found: {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"{path!r} is not a readable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path!r} is not a checkpoint of this repo (a {type(ckpt).__name__})")
    return ckpt


def load_model(path, device, use_ema=True):
    """The DiT of a train.py checkpoint, with its EMA weights by default, in eval mode; returns (model, ckpt)."""
    from model import DiT, ModelConfig
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model_args", "model", "config", "meta") if k not in ckpt]
    if missing:
        raise InputError(f"{path!r} is not a train.py checkpoint (no {missing[0]})")
    # x changes shape at every step and FlexAttention compiles per shape: sample with the equivalent
    # dense-mask attention (tests/test_model.py checks that the two agree)
    model = DiT(ModelConfig(**{**ckpt["model_args"], "attention": "sdpa"}))
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        torch._foreach_copy_([p.detach() for p in model.parameters()], ckpt["ema"])
    return model.to(device).eval(), ckpt
