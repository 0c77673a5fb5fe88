"""CPU offload of a frozen module (``--offload-vae``): its weights live in CPU memory and each of its
top-level parts moves to the device only while it runs.

The VAE is needed now and then during training (encoding Seg-Mix composites, decoding validation
images), not at every step; keeping it off the device saves its weights (and, for SDXL's float32
VAE, a few hundred MB) at the cost of a host-to-device copy per call. Each child module with
weights gets a forward pre-hook (move it, and its tensor inputs, to the device) and a forward hook
(move it back). On a CPU run the device *is* the CPU and nothing moves.
"""

from __future__ import annotations

import torch


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def offload_to_cpu(module: torch.nn.Module, device: torch.device) -> list:
    """Keep ``module`` in CPU memory, running each of its children on ``device``; returns the hook
    handles (``handle.remove()`` undoes it; the module stays on the CPU)."""
    module.to("cpu")
    handles = []
    for child in module.children():
        if next(child.parameters(), None) is None:
            continue

        def before(mod, args, kwargs):
            mod.to(device)
            return _to(args, device), {k: _to(v, device) for k, v in kwargs.items()}

        def after(mod, args, kwargs, output):
            mod.to("cpu")
            return output

        handles.append(child.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(child.register_forward_hook(after, with_kwargs=True))
    return handles


__all__ = ["offload_to_cpu"]
