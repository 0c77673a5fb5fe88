"""Qwen-Image: Qwen2.5-VL text states with their padding mask, a video VAE with a frame axis."""

from __future__ import annotations

from typing import Any

import torch

from mudi.models.families.base import SamplingDefaults, TextEmbeds
from mudi.models.families.flow import FlowFamily
from mudi.models.families.newer import NeedsDiffusers


class QwenImageFamily(NeedsDiffusers, FlowFamily):
    """``QwenImagePipeline`` models (Qwen-Image and its 2512 update).

    - Text: the last hidden states of Qwen2.5-VL for the pipeline's prompt template, the template's
      system prefix dropped (the pipeline's ``encode_prompt``); prompts of different lengths are
      zero-padded with a padding mask (:attr:`TextEmbeds.mask`), as diffusers' script batches them.
      No pooled embedding.
    - Latents: the VAE is a causal video VAE: images go in and come out with a frame axis of 1
      (:meth:`vae_encode`, :meth:`vae_decode`), latents are normalized per channel with the VAE's
      ``latents_mean``/``latents_std``, and the transformer reads them packed into 2×2 patches
      (64-wide tokens) with the image shape it builds its positions from.
    - Guidance: "true" classifier-free guidance (``true_cfg_scale``, with a negative prompt; the
      model card's " " by default) — :meth:`call_kwargs` maps ``guidance_scale`` onto it.
    - Training σ: uniform density (the Qwen-Image script's ``weighting_scheme = none``), shifted as
      the sampler shifts at the training resolution (its exponential dynamic shift).
    - LoRA targets: the attention projections, diffusers' script default.
    """

    name = "qwen-image"
    pipeline_names = ("QwenImagePipeline",)
    transformer_class_name = "QwenImageTransformer2DModel"
    min_diffusers = "0.35.0"
    label = "Qwen-Image"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    default_lora_targets = ("to_k", "to_q", "to_v", "to_out.0")
    sampling = SamplingDefaults(50, 4.0, negative_prompt=" ")
    default_weighting_scheme = "none"
    default_sample_size = 128
    max_sequence_length = 512

    # ------------------------------------------------------------------ sizes
    @staticmethod
    def _vae_factor(vae_config) -> int:
        return 2 ** len(vae_config["temperal_downsample"])

    def _info(self, path, transformer, vae, folder=None):
        from mudi.models.families.base import ModelInfo

        factor = self._vae_factor(vae)
        return ModelInfo(path, self, factor, self.patch_size(transformer), self.default_sample_size * factor,
                         "flow_matching", folder)

    def vae_scale_factor(self, pipe) -> int:
        """Pixels per latent cell: 2 per down-sampling stage of the video VAE (8)."""
        return self._vae_factor(pipe.vae.config)

    def latent_channels(self, pipe) -> int:
        """Channels of the latent grid (the video VAE's ``z_dim``, 16)."""
        return int(pipe.vae.config.z_dim)

    # ------------------------------------------------------------------ VAE (frame axis)
    def vae_encode(self, vae, pixels: torch.Tensor):
        """The posterior of (B, 3, H, W) images as one-frame videos, with the frame axis removed."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = vae.encode(pixels[:, :, None]).latent_dist
        return DiagonalGaussianDistribution(dist.parameters[:, :, 0])

    def vae_decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) raw latents → (B, 3, H, W) images (one-frame video decode)."""
        return vae.decode(z[:, :, None], return_dict=False)[0][:, :, 0]

    def grid_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's packed latents back to (B, 16, h, w)."""
        return pipe._unpack_latents(latents, resolution, resolution, self.vae_scale_factor(pipe))[:, :, 0]

    def pipeline_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline takes ``latents=`` packed: (B, C, h, w) → (B, h/2 · w/2, 4C) tokens (its noise,
        drawn (B, 1, C, h, w), holds the same values as a (B, C, h, w) draw)."""
        from diffusers import QwenImagePipeline as P

        b, c, h, w = latents.shape
        return P._pack_latents(latents, b, c, h, w)

    # ------------------------------------------------------------------ text
    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """Template-stripped Qwen2.5-VL states and their padding mask (all ones when unpadded)."""
        tokens, mask = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                          max_sequence_length=self.max_sequence_length)
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return TextEmbeds(tokens, mask=mask)

    @staticmethod
    def _mask(embeds: TextEmbeds) -> torch.Tensor | None:
        """The padding mask to pass, None when no token is padding (as the pipeline does)."""
        mask = embeds.mask
        return None if mask is None or bool(mask.all()) else mask

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """Prompt and negative embeddings with their masks."""
        return {"prompt_embeds": cond.tokens, "prompt_embeds_mask": cond.mask,
                "negative_prompt_embeds": uncond.tokens, "negative_prompt_embeds_mask": uncond.mask}

    def call_kwargs(self, pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``guidance_scale`` is Qwen-Image's ``true_cfg_scale`` (its ``guidance_scale`` is for
        guidance-distilled transformers only)."""
        kwargs = dict(kwargs)
        if "guidance_scale" in kwargs and not pipe.transformer.config.guidance_embeds:
            kwargs["true_cfg_scale"] = kwargs.pop("guidance_scale")
        return kwargs

    # ------------------------------------------------------------------ denoiser
    def denoise(self, transformer, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for (B, C, h, w) latents at σ = ``t``: packed in, unpacked out."""
        from diffusers import QwenImagePipeline as P

        b, c, h, w = noisy.shape
        tokens = P._pack_latents(noisy, b, c, h, w)
        g = None if guidance is None else torch.full((b,), float(guidance), device=noisy.device, dtype=torch.float32)
        out = transformer(hidden_states=tokens, timestep=t.to(noisy.device, noisy.dtype), guidance=g,
                          encoder_hidden_states=embeds.tokens, encoder_hidden_states_mask=self._mask(embeds),
                          img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return P._unpack_latents(out, h, w, 1)[:, :, 0]


__all__ = ["QwenImageFamily"]
