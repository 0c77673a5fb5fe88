"""Speed and memory settings that only matter on CUDA, each a small decision a CPU test can check.

- :func:`decide_gradient_checkpointing`: ``auto`` turns it on for a CUDA device with less than
  :data:`CHECKPOINTING_BELOW_GIB` of memory (SDXL at 1024 px with priors needs ~35–45 GB
  without it), off elsewhere (a CPU has the memory; checkpointing only costs time there).
- :func:`adamw_implementation`: the fused (or multi-tensor) AdamW kernels on CUDA; the
  one-tensor-at-a-time loop (``foreach=False``) elsewhere, so CPU results and the bitwise resume
  stay exactly as they were.
- :func:`tf32_enabled`: TF32 matmuls and convolutions on CUDA for the run, the previous
  settings restored afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

GIB = 1024**3
#: ``gradient_checkpointing = "auto"`` is on for CUDA devices with less memory than this.
CHECKPOINTING_BELOW_GIB = 48


def _cuda_properties(device: torch.device):
    return torch.cuda.get_device_properties(device)


def decide_gradient_checkpointing(choice: str, device: torch.device,
                                  properties: Callable[[torch.device], Any] = _cuda_properties) -> tuple[bool, str]:
    """Whether to recompute UNet activations in the backward pass, and why (one line for the log).

    Args:
        choice: ``"auto"``, ``"on"`` or ``"off"`` (the config field).
        device: the training device.
        properties: returns an object with ``total_memory`` (bytes) and ``name`` for a CUDA
            device (``torch.cuda.get_device_properties``; tests pass a stand-in).
    """
    if choice in ("on", "off"):
        return choice == "on", f"gradient checkpointing {choice} (--gradient-checkpointing {choice})"
    if device.type != "cuda":
        return False, f"gradient checkpointing off (auto: {device.type} device, memory is not the limit)"
    props = properties(device)
    gib = props.total_memory / GIB
    name = getattr(props, "name", "") or str(device)
    if gib < CHECKPOINTING_BELOW_GIB:
        return True, (f"gradient checkpointing on (auto: {name} has {gib:.0f} GB < {CHECKPOINTING_BELOW_GIB} GB; "
                      "--gradient-checkpointing off trades memory for ~20-30% speed)")
    return False, f"gradient checkpointing off (auto: {name} has {gib:.0f} GB >= {CHECKPOINTING_BELOW_GIB} GB)"


def adamw_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """AdamW keyword arguments for where the parameters live.

    All parameters floating point on CUDA: ``fused=True`` (one kernel for all tensors). Anything
    else: ``foreach=False`` (the reference loop; CPU numerics and resume unchanged).
    """
    if params and all(p.device.type == "cuda" and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": False}


def _tf32_switches() -> list[tuple[Any, str, Any, Any]]:
    """(object, attribute, value when on, value when off) of the TF32 switches of this torch."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        return [(matmul, "fp32_precision", "tf32", "ieee"), (conv, "fp32_precision", "tf32", "ieee")]
    return [(matmul, "allow_tf32", True, False), (cudnn, "allow_tf32", True, False)]  # torch < 2.9


@contextlib.contextmanager
def tf32_enabled(enabled: bool, device: torch.device) -> Iterator[bool]:
    """TF32 on (or off) for CUDA matmuls/convolutions inside the block; the previous settings come
    back at the end. A no-op on other devices. Yields whether TF32 is on for the run."""
    if device.type != "cuda":
        yield False
        return
    switches = _tf32_switches()
    saved = [getattr(obj, attr) for obj, attr, _, _ in switches]
    try:
        for obj, attr, on, off in switches:
            setattr(obj, attr, on if enabled else off)
        yield enabled
    finally:
        for (obj, attr, _, _), value in zip(switches, saved):
            setattr(obj, attr, value)


__all__ = ["CHECKPOINTING_BELOW_GIB", "adamw_implementation", "decide_gradient_checkpointing",
           "tf32_enabled"]
