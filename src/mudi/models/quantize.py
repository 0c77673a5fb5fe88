"""A quantized frozen base: the denoiser's weights in 4-bit NF4 (bitsandbytes) or int8 (torchao).

``--quantize nf4`` loads the denoiser (UNet or transformer) through diffusers'
``from_pretrained(quantization_config=...)`` with a ``BitsAndBytesConfig`` (NF4, compute in the
training dtype), as the diffusers QLoRA FLUX/SD3 examples do; ``--quantize int8`` with a
``TorchAoConfig`` holding torchao's ``Int8WeightOnlyConfig``. Only the denoiser is quantized
(text encoders are freed after caching; the VAE is small). The LoRA layers peft puts on top stay
full precision (float32): peft has LoRA layers for bitsandbytes 4-bit and torchao linear layers,
and switching the adapter off (DCO's base-model pass) runs the quantized base alone.

Both backends are optional extras: ``pip install 'mudi[nf4]'`` / ``'mudi[int8]'``. diffusers'
bitsandbytes loader needs a CUDA device; torchao int8 also runs on a CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from mudi.errors import MudiError

QUANTIZE_CHOICES = ("none", "nf4", "int8")

#: kind → (import name, mudi extra, pip requirement, needs CUDA)
_BACKENDS = {
    "nf4": ("bitsandbytes", "nf4", "bitsandbytes>=0.46", True),
    "int8": ("torchao", "int8", "torchao>=0.16", False),
}

#: Bytes one weight of a quantized ``nn.Linear`` takes: NF4 = 4 bits + one float32 absmax per
#: block of 64 weights; int8 = 1 byte (+ one scale per output row, counted separately).
QUANTIZED_WEIGHT_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0}

#: The pipeline components that hold a denoiser, in the order looked for.
DENOISER_COMPONENTS = ("transformer", "unet")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_quantize(kind: str, device: torch.device | None = None, *, installed=None) -> None:
    """Raise MudiError unless ``--quantize kind`` can run here: the backend is installed (else the
    pip command to run) and, for NF4, the device is a CUDA device."""
    if kind == "none":
        return
    if kind not in _BACKENDS:
        raise MudiError(f"--quantize {kind!r} is unknown: choose one of {', '.join(QUANTIZE_CHOICES)}.")
    module, extra, requirement, needs_cuda = _BACKENDS[kind]
    if not (installed or _installed)(module):
        raise MudiError(f"--quantize {kind} needs {module}, which is not installed: run "
                        f"pip install 'mudi[{extra}]' (or pip install '{requirement}'), or train with --quantize none.")
    if needs_cuda and device is not None and device.type != "cuda":
        raise MudiError(f"--quantize {kind}: diffusers loads bitsandbytes 4-bit weights on CUDA devices only, and this "
                        f"run is on {device}. Use --device cuda, --quantize int8 (torchao, runs on a CPU) or --quantize none.")


def quantization_config(kind: str, compute_dtype: torch.dtype):
    """The diffusers model quantization config of ``kind`` (``nf4`` or ``int8``)."""
    if kind == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    if kind == "int8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    raise ValueError(f"no quantization config for {kind!r}")


def denoiser_component(index: dict) -> str:
    """The ``model_index.json`` component that holds the denoiser (``transformer`` or ``unet``)."""
    for name in DENOISER_COMPONENTS:
        if name in index:
            return name
    raise MudiError("the pipeline has neither a transformer nor a unet component; nothing to quantize.")


def pipeline_quantization(kind: str, compute_dtype: torch.dtype, index: dict) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that quantize the pipeline's denoiser (none for ``none``)."""
    if kind == "none":
        return {}
    from diffusers import PipelineQuantizationConfig

    component = denoiser_component(index)
    return {"quantization_config": PipelineQuantizationConfig(
        quant_mapping={component: quantization_config(kind, compute_dtype)})}


def is_quantized(module) -> bool:
    """Whether a loaded model holds quantized weights (its dtype must not be changed)."""
    return bool(getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None) is not None)


__all__ = ["DENOISER_COMPONENTS", "QUANTIZED_WEIGHT_BYTES", "QUANTIZE_CHOICES", "check_quantize",
           "denoiser_component", "is_quantized", "pipeline_quantization", "quantization_config"]
