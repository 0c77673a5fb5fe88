"""Where and in which precision the trainer runs: the accelerate set-up and mixed precision.

accelerate keeps its state in a process-wide singleton whose mixed-precision setting cannot
change once set. So the :class:`~accelerate.Accelerator` is always created without mixed
precision (it still places the model and, under ``accelerate launch``, wraps it for DDP), and
mixed precision is done here: autocast around the forward pass, a gradient scaler for fp16.
Several runs with different precision can then share one Python process (notebooks, tests).
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping

import torch

from mudi.errors import MudiError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


#: Set by ``accelerate launch`` (from its flags or its config file).
LAUNCH_PRECISION_VAR = "ACCELERATE_MIXED_PRECISION"
_UNSUPPORTED_LAUNCH = (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP"),
                       ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM"))


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def check_launch_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse an ``accelerate launch`` with DeepSpeed, FSDP or Megatron-LM (read from the
    variables accelerate sets), before anything is loaded or written: mudi trains a small LoRA
    with plain data parallelism (DDP), and accelerate's ``prepare()`` would fail later on."""
    env = _env(env)
    for var, what in _UNSUPPORTED_LAUNCH:
        if str(env.get(var, "")).lower() in ("1", "true", "yes"):
            raise MudiError(
                f"`accelerate launch` with {what} ({var}={env[var]}): mudi train supports plain multi-GPU data "
                "parallelism (DDP) only; the LoRA and its optimizer state are small, every GPU holds the frozen "
                f"model anyway. Launch with `accelerate launch --multi_gpu ...` or a config without {what} "
                "(`accelerate config`).")


def resolve_mixed_precision(name: str, device: torch.device, env: Mapping[str, str] | None = None) -> str:
    """The run's mixed precision.

    ``auto`` follows ``accelerate launch`` (its ``--mixed_precision`` or config file, seen as
    ``ACCELERATE_MIXED_PRECISION``) when there is one, else fp16 on CUDA and none elsewhere. An
    explicit value that differs from accelerate's fp16/bf16 is a conflict (accelerate's ``no`` is
    its default and cannot be told from "not given": the explicit value wins). fp16 on a CPU and
    fp8 are refused.
    """
    launched = _env(env).get(LAUNCH_PRECISION_VAR)
    launched = launched.lower() if launched else None
    if launched is not None and launched not in ("no", "fp16", "bf16"):
        raise MudiError(f"`accelerate launch --mixed_precision {launched}`: mudi train supports no, fp16 and bf16; "
                        "launch with one of those.")
    if name == "auto":
        name = launched or ("fp16" if device.type == "cuda" else "no")
    elif launched not in (None, "no", name):
        raise MudiError(f"--mixed-precision {name} conflicts with `accelerate launch --mixed_precision {launched}` "
                        f"({LAUNCH_PRECISION_VAR}={launched}): give one of them, or the same value to both.")
    if name == "fp16" and device.type == "cpu":
        raise MudiError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no"
                        + (f" (it came from {LAUNCH_PRECISION_VAR})." if launched == "fp16" else "."))
    return name


def make_accelerator(device: torch.device):
    """An Accelerator for ``device`` without mixed precision (see the module docstring)."""
    from accelerate import Accelerator

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    try:
        return Accelerator(mixed_precision="no", cpu=device.type == "cpu", gradient_accumulation_steps=1)
    except ValueError as exc:  # accelerate's state was set up with other settings in this process
        raise MudiError(f"accelerate is already set up differently in this process ({exc}); "
                        "run mudi train in a fresh Python process.") from None


def _to_fp32(value):
    if torch.is_tensor(value):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    if isinstance(value, dict):  # diffusers' BaseOutput is a dict subclass
        for k in list(value.keys()):
            value[k] = _to_fp32(value[k])
        return value
    return value


def _outputs_to_fp32(module, args, output):
    return _to_fp32(output)


class Precision:
    """Mixed precision of the training step: weights dtype, autocast, loss scaling, clipping, stepping."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.dtype = _DTYPES.get(mode, torch.float32)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self, module: torch.nn.Module | None = None):
        """The autocast context of the denoiser's forward pass (a no-op without mixed precision).

        With ``module``, its half-precision outputs are also returned as float32 inside the block
        (as accelerate does for a prepared model), so code after it (a pipeline's guidance and
        scheduler step) computes in float32.
        """
        if self.mode == "no":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.dtype))
        if module is not None:
            stack.callback(module.register_forward_hook(_outputs_to_fp32).remove)
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass (of the scaled loss with fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def clip(self, optimizer, params, max_norm: float):
        """Unscale the gradients (fp16) and clip their global norm; return the norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def step(self, optimizer) -> None:
        """Optimizer step (skipped by the scaler on inf/nan gradients with fp16)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


__all__ = ["LAUNCH_PRECISION_VAR", "Precision", "check_launch_environment", "make_accelerator", "resolve_mixed_precision"]
