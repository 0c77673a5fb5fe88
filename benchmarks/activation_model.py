"""Estimate the activation memory of one UNet-LoRA training micro-batch on the meta device.

A CPU cannot measure CUDA activation memory, and a full-size SDXL step at 1024 px does not fit
this machine, so ``bench_fullsize.py`` estimates it instead: the full-size UNet (with the
rank-32 LoRA, peft) runs one forward pass on the **meta device** — shapes and dtypes only, no
weights, no arithmetic, a few seconds — while a ``saved_tensors_hooks`` pair records every
tensor autograd keeps for the backward pass (deduplicated by storage; parameters excluded).
That sum is what a training step holds at the end of its forward pass.

CUDA behaviour is emulated where it changes what is stored:

- autocast fp16: matmuls and convolutions run in fp16 (fp16 weights, fp32 LoRA weights cast),
  group/layer norms return fp32 (autocast's fp32 list), so the SiLU after a GroupNorm keeps an
  fp32 tensor, as on a GPU;
- fused attention (flash / memory-efficient SDPA): only q, k, v and the output are kept, never
  the attention matrix.

Gradient checkpointing (diffusers checkpoints every ResnetBlock2D and BasicTransformerBlock):
the kept tensors are those outside these units plus each unit's input; the backward pass then
recomputes one unit at a time, so the peak adds the largest unit's own kept tensors.

Not counted: gradients in flight during the backward pass (about one activation tensor at a
time), the CUDA caching allocator's fragmentation, cuDNN/cuBLAS workspaces — the measured
``--device cuda`` peaks include them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

GB = 1e9
HALF = torch.float16


@dataclass
class SavedTensors:
    """Bytes of the distinct storages autograd keeps, with a per-unit breakdown."""

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

    def storage_bytes(self, tensors) -> int:
        """Bytes of the storages of ``tensors`` (each counted once)."""
        found = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors
                 if isinstance(t, torch.Tensor)}
        return sum(found.values())


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
def cuda_like_functions():
    """Patch torch.nn.functional so meta tensors are stored as under CUDA autocast fp16 with
    fused attention (see the module docstring); restored on exit."""
    saved = {name: getattr(F, name) for name in ("linear", "conv2d", "group_norm", "layer_norm",
                                                   "scaled_dot_product_attention")}

    def half(t):
        return t.to(HALF) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

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

    def attention(q, k, v, *args, **kwargs):
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


def _lora_unet(scale: str, part: str, rank: int, targets: tuple[str, ...]):
    from peft import LoraConfig, inject_adapter_in_model

    import fullsize_models as fm
    from mudi.runtime import quiet_libraries

    with torch.device("meta"), quiet_libraries():
        unet = fm.pipeline_modules(scale, part)["unet"].to(HALF)
        unet.requires_grad_(False)
        unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)), unet)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return unet.train()


def _inputs(scale: str, part: str, batch: int) -> tuple[tuple, dict]:
    import fullsize_models as fm

    cfg = fm.config(scale, part)
    side = cfg["resolution"] // 8
    with torch.device("meta"):
        args = (torch.empty(batch, 4, side, side, dtype=HALF), torch.zeros(batch, dtype=torch.long),
                torch.empty(batch, 77, cfg["unet"]["cross_attention_dim"], dtype=HALF))
        kwargs = {}
        if "text_encoder_2" in cfg:
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, cfg["text_encoder_2"]["projection_dim"],
                                                                      dtype=HALF),
                                           "time_ids": torch.empty(batch, 6, dtype=HALF)}
    return args, kwargs


def estimate(scale: str, part: str, batch: int, rank: int, targets: tuple[str, ...]) -> dict[str, int]:
    """Bytes kept for backward by one UNet forward of ``batch`` examples at the native resolution:
    ``plain`` (no checkpointing) and ``checkpointed`` (diffusers' gradient checkpointing, peak
    during the backward pass)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    unet = _lora_unet(scale, part, rank, targets)
    saved = SavedTensors(params={id(p) for p in unet.parameters()})
    units: list[tuple[int, int]] = []  # (bytes first kept inside the unit, bytes of its inputs)
    starts: dict[int, tuple[int, int]] = {}

    def pre(module, args, kwargs):
        tensors = list(args) + list(kwargs.values())
        starts[id(module)] = (saved.total, saved.storage_bytes(tensors[:1]))

    def post(module, args, kwargs, output):
        before, inputs = starts.pop(id(module))
        units.append((saved.total - before, inputs))

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in unet.modules()
               if isinstance(m, (ResnetBlock2D, BasicTransformerBlock))]
    handles += [m.register_forward_hook(post, with_kwargs=True) for m in unet.modules()
                if isinstance(m, (ResnetBlock2D, BasicTransformerBlock))]
    args, kwargs = _inputs(scale, part, batch)
    with cuda_like_functions(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        unet(*args, **kwargs)
    for h in handles:
        h.remove()
    plain = saved.total
    kept = plain - sum(inside for inside, _ in units) + sum(inputs for _, inputs in units)
    return {"plain": plain, "checkpointed": kept + max(inside for inside, _ in units)}


def print_activation_estimates(rank: int, targets: tuple[str, ...]) -> dict[tuple[str, int], dict[str, int]]:
    """Print (and return, by ``(part, batch)``) the activation estimate of SDXL at 1024 px and
    SD 1.5 at 512 px, micro-batch 1 and 2."""
    import fullsize_models as fm

    print("  activations (UNet forward kept for backward; meta-device estimate, CUDA fp16 autocast + fused "
          "attention emulated; see activation_model.py):")
    estimates = {}
    for part in fm.PIPELINES:
        res = fm.config("full", part)["resolution"]
        for batch in (1, 2):
            estimates[part, batch] = est = estimate("full", part, batch, rank, targets)
            why = "instance only" if batch == 1 else "with priors: instance + class example"
            print(f"  activations {part:4s} {res}px micro-batch {batch} ({why}): no checkpointing "
                  f"{est['plain'] / GB:.2f} GB, gradient checkpointing {est['checkpointed'] / GB:.2f} GB",
                  flush=True)
    return estimates
