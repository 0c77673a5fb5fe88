"""Stable Diffusion XL: two text encoders, pooled text embeddings and size/crop time ids."""

from __future__ import annotations

from typing import Any

import torch

from mudi.models.families.base import REFERENCE_NEGATIVE_PROMPT, SamplingDefaults, TextEmbeds, UNetFamily


class SDXLFamily(UNetFamily):
    """SDXL pipelines (``StableDiffusionXLPipeline``).

    Differences from SD 1.x/2.x: prompts are encoded by two text encoders into per-token states
    plus a pooled embedding; the UNet additionally takes ``added_cond_kwargs`` (the pooled
    embedding and the micro-conditioning ``time_ids`` = original size, crop top-left, target
    size); an empty negative prompt may be all zeros (``force_zeros_for_empty_prompt``); kohya
    names LoRA modules after the original (SGM) UNet's blocks.
    """

    name = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    #: diffusers' ``StableDiffusionXLPipeline`` call defaults (50 steps, guidance 5.0), which the
    #: reference code samples with, and the reference's negative prompt
    sampling = SamplingDefaults(50, 5.0, REFERENCE_NEGATIVE_PROMPT)

    @classmethod
    def matches(cls, index: dict) -> bool:
        """An index with a second text encoder, or a pipeline class named ``...XL...``."""
        return "text_encoder_2" in index or "XL" in str(index.get("_class_name", ""))

    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """Per-token states of both encoders (concatenated) and the pooled embedding."""
        tokens, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return TextEmbeds(tokens, pooled)

    def encode_negative(self, pipe, negative: str, device) -> TextEmbeds:
        """All zeros for an empty negative prompt when the pipeline says so, else encoded."""
        if not negative and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)):
            return self.encode_text(pipe, [""], device).zeros_like()
        return self.encode_text(pipe, [negative], device)

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """Prompt and pooled embeddings for ``pipe(...)``."""
        return {**super().pipeline_embeds(cond, uncond),
                "pooled_prompt_embeds": cond.pooled, "negative_pooled_prompt_embeds": uncond.pooled}

    def unet_kwargs(self, embeds: TextEmbeds, resolution: int) -> dict[str, Any]:
        """``added_cond_kwargs``: the pooled embedding and time ids (size S×S, no crop, target S×S)."""
        S = resolution
        pooled = embeds.pooled
        time_ids = torch.tensor([[S, S, 0, 0, S, S]], dtype=pooled.dtype, device=pooled.device)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}}

    def kohya_block_layers(self, unet) -> int | None:
        """kohya's SDXL LoRAs use the original UNet's block names: needs ``layers_per_block``."""
        lpb = getattr(unet.config, "layers_per_block", 2)
        return int(lpb) if isinstance(lpb, int) else None

    def kohya_base_version(self, unet) -> str:
        return "sdxl_base_v1-0"

    def is_v2(self, unet) -> bool:
        return False


__all__ = ["SDXLFamily"]
