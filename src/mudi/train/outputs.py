"""The end products of a training run: the exported LoRA files and ``summary.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mudi.io import write_json_atomic
from mudi.train.config import TrainConfig

SUMMARY_NAME = "summary.json"


def export_lora(unet, pipe, family, cfg: TrainConfig, out: Path, text_encoders: dict | None = None) -> dict[str, Path]:
    """Write the LoRA (with the text encoders' when trained) in diffusers format and (UNet families)
    as a kohya/ComfyUI copy; return their paths."""
    from mudi.models.lora import KOHYA_WEIGHT_NAME, save_diffusers_lora, save_kohya_lora

    paths = {"lora": save_diffusers_lora(type(pipe), unet, out, component=family.denoiser_name,
                                         text_encoders=text_encoders)}
    if family.writes_kohya:
        paths["kohya"] = save_kohya_lora(unet, out / KOHYA_WEIGHT_NAME, alpha=cfg.alpha, base=cfg.base, family=family,
                                         text_encoders=text_encoders)
    return paths


def write_summary(trainer, finished: bool) -> dict[str, Any]:
    """``OUT/summary.json``: progress, set-up, cache counters (text-encoder calls, VAE encodes) and timing."""
    c, cfg = trainer.counters, trainer.cfg
    times = c.step_times[1:] or c.step_times
    summary = {
        "finished": finished,
        "step": max(c.step, c.start_step),
        "max_train_steps": cfg.max_train_steps,
        "resumed_from": c.start_step,
        "model": trainer.family.name,
        "resolution": cfg.resolution,
        "mixed_precision": trainer.precision.mode,
        "device": str(trainer.accelerator.device),
        "processes": trainer.accelerator.num_processes,
        **trainer.objective.describe(),  # prediction_type (and the flow-matching σ options)
        "gradient_checkpointing": trainer.checkpointing[0],
        "gradient_checkpointing_reason": trainer.checkpointing[1],
        "tf32": trainer.tf32,
        "optimizer": trainer.optimizer_name,
        "captions_cached": c.captions_cached,
        "latents_cached": c.latents_cached,
        "text_encoder_calls_setup": c.text_encoder_calls_setup,
        "text_encoder_calls_training": c.text_encoder_calls_training,
        "text_encoder_calls_per_step": c.text_encoder_calls_training / max(1, len(c.step_times)),
        "vae_encodes_training": c.vae_encodes_training,
        "mean_step_time_s": float(np.mean(times)) if times else None,
        "wall_time_s": round(time.time() - trainer.t_start, 3),
        "reg": cfg.reg,
        "train_text_encoder": cfg.train_text_encoder,
    }
    if cfg.reg == "dco":
        summary["dco"] = dco_summary(cfg.dco_beta, c.dco_rows)
    write_json_atomic(trainer.out / SUMMARY_NAME, summary)
    return summary


def dco_summary(beta: float, rows: list[tuple[float, float, float]]) -> dict[str, Any]:
    """The DCO terms of this invocation's steps: beta, the means and the last step's values of the
    DCO loss, the LoRA's instance MSE and the base model's (LoRA off) MSE."""
    out: dict[str, Any] = {"beta": beta, "steps": len(rows)}
    for i, name in enumerate(("loss", "loss_instance", "loss_reference")):
        values = [r[i] for r in rows]
        out[f"mean_{name}"] = float(np.mean(values)) if values else None
        out[f"last_{name}"] = values[-1] if values else None
    return out


__all__ = ["SUMMARY_NAME", "dco_summary", "export_lora", "write_summary"]
