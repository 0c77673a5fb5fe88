"""LoRA on the text encoders (``mudi train --train-text-encoder``): attach, name, export.

The adapters go on the CLIP attention projections (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``), as the reference trainer and diffusers' ``train_dreambooth_lora_sdxl.py`` put them,
with the UNet LoRA's rank and alpha. Text encoders are named by their pipeline attribute
(``text_encoder``, ``text_encoder_2``): :mod:`mudi.models.lora` stores their weights under those
prefixes in the diffusers file (what ``load_lora_weights`` reads), and under ``lora_te_`` (one
encoder, SD 1.x/2.x) or ``lora_te1_`` / ``lora_te2_`` (SDXL) in the kohya copy.
"""

from __future__ import annotations

import torch

#: The reference trainer's text-encoder LoRA targets (CLIP attention projections).
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def add_text_encoder_lora(encoders: dict[str, torch.nn.Module], *, rank: int, alpha: float,
                          target_modules: list[str], dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Freeze every text encoder and attach a trainable LoRA adapter named ``default`` (B = 0: the
    encoders start equal to the base ones); return the trainable parameters (fp32), encoder after encoder.

    The adapter is injected with peft itself (as diffusers does for the UNet), not with
    transformers' ``add_adapter`` (which refuses peft versions older than it wants); the config
    is kept as ``peft_config`` like peft's own models keep it.
    """
    from peft import LoraConfig, inject_adapter_in_model

    params: list[torch.nn.Parameter] = []
    for name, enc in encoders.items():
        enc.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                            target_modules=list(target_modules))
        inject_adapter_in_model(config, enc, adapter_name="default")
        enc.peft_config = {"default": config}
        own = [p for p in enc.parameters() if p.requires_grad]
        if not own:
            raise ValueError(f"no module of {name} matched the LoRA targets {target_modules}")
        for p in own:
            p.data = p.data.float()
        params += own
    return params


class AdapterSwitch:
    """``disable_adapters()`` / ``enable_adapters()`` of a model with peft LoRA layers (what diffusers'
    UNet offers; used for the text encoders by :func:`mudi.train.dco.lora_disabled`)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def _set(self, enabled: bool) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(enabled)

    def disable_adapters(self) -> None:
        """The model answers as its base model (its LoRA layers off)."""
        self._set(False)

    def enable_adapters(self) -> None:
        """The LoRA layers on again (and trainable)."""
        self._set(True)


__all__ = ["AdapterSwitch", "TEXT_ENCODER_TARGETS", "add_text_encoder_lora"]
