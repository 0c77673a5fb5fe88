"""Activation memory of one LoRA training micro-batch, measured on the meta device.

The denoiser (any diffusers UNet or transformer, with its LoRA) runs one forward pass on the
**meta device** — shapes and dtypes only, no weights, no arithmetic — while a
``saved_tensors_hooks`` pair records every tensor autograd keeps for the backward pass
(deduplicated by storage; parameters excluded). That sum is what a training step holds at the end
of its forward pass.

CUDA behaviour is emulated where it changes what is stored (:func:`cuda_like_functions`):
matmuls and convolutions run in the autocast dtype (fp16/bf16), group/layer norms return fp32
(autocast's fp32 list), and fused attention (flash / memory-efficient SDPA) keeps only q, k, v and
the output, never the attention matrix.

Gradient checkpointing: the model's own checkpointing is switched on with a recording function in
place of ``torch.utils.checkpoint`` (diffusers calls it for every unit it checkpoints: resnet and
transformer blocks of a UNet, each block of a DiT). With checkpointing, what is kept is what lies
outside these units plus every unit's inputs; the backward pass then recomputes one unit at a time,
so the peak adds the largest unit's own kept tensors.

Not counted: gradients in flight during the backward pass (about one activation tensor at a
time), the CUDA caching allocator's fragmentation, cuDNN/cuBLAS workspaces.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

HALF = torch.float16


@dataclass
class SavedTensors:
    """Bytes of the distinct storages autograd keeps."""

    params: set = field(default_factory=set)
    seen: dict = field(default_factory=dict)  # storage id -> bytes
    keep: list = field(default_factory=list)  # keeps storages alive so their ids stay unique

    @property
    def total(self) -> int:
        """Bytes kept so far."""
        return sum(self.seen.values())

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks pack hook: record the tensor's storage once."""
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in self.params:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self.seen:
                self.seen[key] = storage.nbytes()
                self.keep.append(storage)
        return tensor

    def storages(self, tensors) -> dict[int, int]:
        """``{storage id: bytes}`` of the tensors among ``tensors`` (parameters excluded)."""
        return {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors
                if isinstance(t, torch.Tensor) and id(t) not in self.params}


class _KeepQKVOut(torch.autograd.Function):
    """Stands in for fused attention: keeps q, k, v and the output, as flash attention does."""

    @staticmethod
    def forward(ctx, q, k, v, out):
        ctx.save_for_backward(q, k, v, out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the estimate never runs backward
        raise NotImplementedError


@contextlib.contextmanager
def cuda_like_functions(dtype: torch.dtype = HALF):
    """Patch torch.nn.functional so meta tensors are stored as under CUDA autocast in ``dtype`` with
    fused attention (see the module docstring); restored on exit."""
    saved = {name: getattr(F, name) for name in ("linear", "conv2d", "group_norm", "layer_norm",
                                                   "scaled_dot_product_attention")}

    def half(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    def linear(x, w, b=None):
        return saved["linear"](half(x), half(w), half(b))

    def conv2d(x, w, b=None, *args, **kwargs):
        return saved["conv2d"](half(x), half(w), half(b), *args, **kwargs)

    def norm(name):
        def run(x, *args, **kwargs):
            args = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
            kwargs = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            return saved[name](x.float(), *args, **kwargs)
        return run

    def attention(*args, **kwargs):
        names = ("query", "key", "value")
        q, k, v = [args[i] if i < len(args) else kwargs.pop(n) for i, n in enumerate(names)]
        args = args[3:]
        with torch.no_grad():
            out = saved["scaled_dot_product_attention"](half(q), half(k), half(v), *args, **kwargs)
        return _KeepQKVOut.apply(half(q), half(k), half(v), out)

    patched = {"linear": linear, "conv2d": conv2d, "group_norm": norm("group_norm"),
               "layer_norm": norm("layer_norm"), "scaled_dot_product_attention": attention}
    try:
        for name, fn in patched.items():
            setattr(F, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)


def measure_activations(model: torch.nn.Module, forward: Callable[[], object],
                        dtype: torch.dtype = HALF) -> dict[str, int]:
    """Bytes kept for the backward pass by ``forward()`` (one call of ``model`` on meta tensors):
    ``plain`` (no checkpointing) and ``checkpointed`` (the model's gradient checkpointing, peak
    during the backward pass; equal to ``plain`` when the model cannot checkpoint)."""
    saved = SavedTensors(params={id(p) for p in model.parameters()})
    units: list[int] = []  # bytes first kept inside each checkpointed unit
    unit_inputs: dict[int, int] = {}

    def recording(block, *args):
        before = saved.total
        unit_inputs.update(saved.storages(args))
        out = block(*args)
        units.append(saved.total - before)
        return out

    can_checkpoint = bool(getattr(model, "_supports_gradient_checkpointing", False))
    if can_checkpoint:
        model.enable_gradient_checkpointing(recording)
    try:
        with cuda_like_functions(dtype), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            forward()
    finally:
        if can_checkpoint:
            model.disable_gradient_checkpointing()
    plain = saved.total
    if not units:
        return {"plain": plain, "checkpointed": plain}
    kept = plain - sum(units) + sum(unit_inputs.values())
    return {"plain": plain, "checkpointed": min(plain, kept + max(units))}


__all__ = ["HALF", "SavedTensors", "cuda_like_functions", "measure_activations"]
