"""Estimate the activation memory of one UNet-LoRA training micro-batch on the meta device.

A CPU cannot measure CUDA activation memory, and a full-size SDXL step at 1024 px does not fit
this machine, so ``bench_fullsize.py`` estimates it instead with the product's own measurement
(:mod:`mudi.train.activations`, also behind the estimate ``mudi train`` prints): the full-size
UNet (with the rank-32 LoRA, peft) runs one forward pass on the **meta device** while autograd's
saved tensors are recorded, CUDA fp16 autocast and fused attention emulated, and diffusers'
gradient checkpointing switched on with a recording function to find its units.

Not counted: gradients in flight during the backward pass (about one activation tensor at a
time), the CUDA caching allocator's fragmentation, cuDNN/cuBLAS workspaces — the measured
``--device cuda`` peaks include them.
"""

from __future__ import annotations

import torch

from mudi.train.activations import HALF, SavedTensors, cuda_like_functions, measure_activations  # noqa: F401

GB = 1e9


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
    unet = _lora_unet(scale, part, rank, targets)
    args, kwargs = _inputs(scale, part, batch)
    return measure_activations(unet, lambda: unet(*args, **kwargs), HALF)


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
