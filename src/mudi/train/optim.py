"""Optimizer and learning-rate schedule of a training run (AdamW, METHOD.md §3)."""

from __future__ import annotations

import math

import torch

from mudi.errors import MudiError
from mudi.train.config import TrainConfig
from mudi.train.performance import adamw_implementation


def make_optimizer(params, cfg: TrainConfig, text_params=None):
    """AdamW over the LoRA parameters (bitsandbytes AdamW8bit with ``use_8bit_adam``): fused on
    CUDA, the reference per-tensor loop elsewhere (see :func:`~mudi.train.performance.adamw_implementation`).

    ``text_params`` (``--train-text-encoder``): the text encoders' LoRA, a second parameter group
    with ``text_encoder_lr`` (the reference trainer's separate text-encoder learning rate)."""
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
                  eps=cfg.adam_epsilon)
    if text_params:
        flat = list(params) + list(text_params)
        groups = [{"params": list(params)}, {"params": list(text_params), "lr": cfg.text_encoder_lr}]
        if cfg.use_8bit_adam:
            return make_optimizer(groups, cfg)
        return torch.optim.AdamW(groups, **adamw_implementation(flat), **kwargs)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb  # type: ignore
        except ImportError:
            raise MudiError("--use-8bit-adam needs bitsandbytes: pip install 'mudi[bnb]' (or bitsandbytes).") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    params = list(params)
    return torch.optim.AdamW(params, **adamw_implementation(params), **kwargs)


def optimizer_name(optimizer) -> str:
    """How the optimizer steps, for summary.json: ``AdamW (fused)``, ``AdamW (foreach)``, ``AdamW`` or the class name."""
    name = type(optimizer).__name__
    defaults = getattr(optimizer, "defaults", {})
    for how in ("fused", "foreach"):
        if defaults.get(how):
            return f"{name} ({how})"
    return name


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based)."""
    warm = cfg.lr_warmup_steps
    if cfg.lr_scheduler == "constant":
        return 1.0
    if step < warm:
        return (step + 1) / warm
    if cfg.lr_scheduler == "constant_with_warmup":
        return 1.0
    frac = (step - warm) / max(1, cfg.max_train_steps - warm)
    if cfg.lr_scheduler == "linear":
        return max(0.0, 1.0 - frac)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))  # cosine


def set_learning_rate(optimizer, step: int, cfg: TrainConfig) -> float:
    """Set the learning rates of optimizer step ``step`` (the UNet group's, then the text encoders'
    group scaled alike); return the UNet's."""
    factor = lr_factor(step, cfg)
    lr = cfg.learning_rate * factor
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr if i == 0 else cfg.text_encoder_lr * factor
    return lr


__all__ = ["lr_factor", "make_optimizer", "optimizer_name", "set_learning_rate"]
