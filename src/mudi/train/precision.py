"""Where and in which precision the trainer runs: the accelerate set-up and mixed precision.

accelerate keeps its state in a process-wide singleton whose mixed-precision setting cannot
change once set. So the :class:`~accelerate.Accelerator` is always created without mixed
precision (it still places the model and, under ``accelerate launch``, wraps it for DDP), and
mixed precision is done here: autocast around the forward pass, a gradient scaler for fp16.
Several runs with different precision can then share one Python process (notebooks, tests).
"""

from __future__ import annotations

import contextlib

import torch

from mudi.errors import MudiError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_mixed_precision(name: str, device: torch.device) -> str:
    """``auto`` = fp16 on CUDA, none elsewhere; fp16 on a CPU is refused."""
    if name == "auto":
        return "fp16" if device.type == "cuda" else "no"
    if name == "fp16" and device.type == "cpu":
        raise MudiError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no.")
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


__all__ = ["Precision", "make_accelerator", "resolve_mixed_precision"]
