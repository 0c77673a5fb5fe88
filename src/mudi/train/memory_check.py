"""The memory estimate of a training run, printed before training and checked against the device.

:func:`check_run_memory` runs in :func:`~mudi.train.plan.prepare_run` for a local base model
(configs only, meta device) and after loading for a hub model — in both cases before anything is
written. The budget is ``--memory-budget GB`` or, on CUDA, the device's total memory; when the
estimated peak exceeds it the run stops with a MudiError listing the options that would make it
fit, each with its own estimated peak (:func:`fitting_options`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import torch

from mudi.errors import MudiError
from mudi.train.config import TrainConfig
from mudi.train.memory import GB, MemoryEstimate, MemorySettings, PipelineParts, estimate_memory


def _cuda_total(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).total_memory)


def memory_budget(cfg: TrainConfig, device: torch.device,
                  total: Callable[[torch.device], int] = _cuda_total) -> tuple[int | None, str]:
    """Bytes the run may use and where that number comes from (None: no check)."""
    if cfg.memory_budget > 0:
        return int(cfg.memory_budget * GB), f"--memory-budget {cfg.memory_budget:g}"
    if device.type == "cuda":
        return total(device), f"the memory of {device}"
    return None, ""


def run_settings(cfg: TrainConfig, device: torch.device, dtype: torch.dtype, checkpointing: bool,
                 prior: bool) -> MemorySettings:
    """The :class:`MemorySettings` of a run."""
    return MemorySettings(resolution=cfg.resolution, dtype=dtype, quantize=cfg.quantize, rank=cfg.rank,
                          targets=tuple(cfg.target_modules), batch=cfg.train_batch_size * (2 if prior else 1),
                          checkpointing=checkpointing, offload_vae=cfg.offload_vae, adam_8bit=cfg.use_8bit_adam,
                          cuda=device.type == "cuda")


def _smaller_resolution(resolution: int) -> int:
    return max(256, (resolution * 3 // 4) // 64 * 64)


def fitting_options(parts: PipelineParts, s: MemorySettings, budget: int, *,
                    batch_size: int = 1, cache: dict | None = None) -> list[tuple[str, int]]:
    """``(option(s), estimated peak)`` for each single change of the run that fits ``budget``; when
    none does, the changes added up in order until the run fits (its peak shown even if it never does)."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if s.quantize != "nf4" and s.cuda:
        changes.append(("--quantize nf4", {"quantize": "nf4"}))
    if s.quantize == "none":
        changes.append(("--quantize int8", {"quantize": "int8"}))
    if not s.checkpointing:
        changes.append(("--gradient-checkpointing on", {"checkpointing": True}))
    if not s.offload_vae:
        changes.append(("--offload-vae", {"offload_vae": True}))
    if not s.adam_8bit:
        changes.append(("--use-8bit-adam", {"adam_8bit": True}))
    if s.resolution > 256:
        smaller = _smaller_resolution(s.resolution)
        changes.append((f"--resolution {smaller}", {"resolution": smaller}))
    if s.rank > 4:
        changes.append((f"--rank {s.rank // 2}", {"rank": s.rank // 2}))
    if batch_size > 1:
        changes.append(("--batch-size 1 (with more --gradient-accumulation)", {"batch": s.batch // batch_size}))
    found = []
    for flag, change in changes:
        peak = estimate_memory(parts, dataclasses.replace(s, **change), cache=cache).peak
        if peak <= budget:
            found.append((flag, peak))
    if not found:  # no single change fits: add them up, in the order above, until the run fits
        together: dict[str, Any] = {}
        flags: list[str] = []
        for flag, change in changes:
            if "quantize" in change and "quantize" in together:
                continue
            together.update(change)
            flags.append(flag)
            peak = estimate_memory(parts, dataclasses.replace(s, **together), cache=cache).peak
            if peak <= budget:
                break
        if flags:
            found.append((" ".join(flags), peak))
    return found


def check_fits(parts: PipelineParts, s: MemorySettings, budget: int | None, source: str, *,
               batch_size: int = 1, where: str = "") -> MemoryEstimate:
    """The estimate of the run; MudiError (with the options that would fit) when it exceeds ``budget``."""
    cache: dict = {}
    estimate = estimate_memory(parts, s, cache=cache)
    if budget is None or estimate.peak <= budget:
        return estimate
    options = fitting_options(parts, s, budget, batch_size=batch_size, cache=cache)
    lines = [f"  {flag}: peak {peak / GB:.2f} GB{'' if peak <= budget else ' (still too much)'}"
             for flag, peak in options]
    raise MudiError(
        f"{where or 'the base model'}: training needs an estimated {estimate.peak / GB:.2f} GB at peak, more than "
        f"{budget / GB:.2f} GB ({source}); nothing was written.\n{estimate.table()}\n"
        "Options that would fit:\n" + ("\n".join(lines) or "  none found: use a device with more memory")
        + "\n(--memory-budget GB sets the limit; the figures are estimates, see the README's memory section.)")


def _is_main_process() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("RANK", "0") or 0) == 0


def check_run_memory(cfg: TrainConfig, device: torch.device, parts: PipelineParts, *, prior: bool) -> MemoryEstimate:
    """Estimate the run's memory, print it (main process) and stop when it does not fit."""
    from mudi.train.performance import decide_gradient_checkpointing
    from mudi.train.precision import Precision, resolve_mixed_precision

    dtype = Precision(resolve_mixed_precision(cfg.mixed_precision, device), device).dtype
    checkpointing = decide_gradient_checkpointing(cfg.gradient_checkpointing, device)[0]
    settings = run_settings(cfg, device, dtype, checkpointing, prior)
    budget, source = memory_budget(cfg, device)
    estimate = check_fits(parts, settings, budget, source, batch_size=cfg.train_batch_size, where=cfg.base)
    if _is_main_process():
        fits = f"; fits {budget / GB:.2f} GB ({source})" if budget is not None else ""
        print(f"mudi train: {estimate.table()}{fits}", file=sys.stderr)
    return estimate


__all__ = ["check_fits", "check_run_memory", "fitting_options", "memory_budget", "run_settings"]
