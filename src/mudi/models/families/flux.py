"""FLUX.1 ([dev], guidance-distilled, and [schnell]): CLIP pooled + T5 text, 2×2-packed latents."""

from __future__ import annotations

import torch

from mudi.models.families.base import SamplingDefaults, TextEmbeds
from mudi.models.families.flow import FlowFamily


class FluxFamily(FlowFamily):
    """FLUX.1 pipelines (``FluxPipeline``; [dev] and [schnell] differ in the transformer config).

    - Text: the CLIP encoder's pooled embedding and the T5 encoder's per-token states (512 tokens
      for [dev], 256 for [schnell], the pipeline's defaults, in training and sampling alike).
    - Latents: 16 channels, ``(z − shift_factor)·scaling_factor``; the transformer reads them
      packed into 2×2 patches (64-wide tokens) with their (0, row, column) position ids, the text
      tokens with all-zero ids.
    - [dev] takes a guidance embedding: training feeds it a fixed value (``--guidance-embed``,
      3.5 as diffusers' script); sampling uses ``--guidance``.
    - Training σ: uniform density (diffusers' FLUX script default ``weighting_scheme = none``),
      shifted for the training resolution as the sampler shifts (``use_dynamic_shifting``).
    - LoRA targets: attention (image and text streams) and feed-forward layers, diffusers' list.
    """

    name = "flux"
    writes_kohya = True  # the ComfyUI/kohya copy in the BFL layout (mudi.models.comfy_flux)
    pipeline_names = ("FluxPipeline",)
    transformer_class_name = "FluxTransformer2DModel"
    default_lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                            "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                            "ff_context.net.0.proj", "ff_context.net.2")
    sampling = SamplingDefaults(28, 3.5, "")  # pipeline call defaults; FLUX.1 samples without a negative prompt
    default_weighting_scheme = "none"
    default_sample_size = 128

    def patch_size(self, transformer_config) -> int:
        """FLUX packs 2×2 latent cells into one token."""
        return 2

    def uses_guidance(self, transformer) -> bool:
        """[dev] (``guidance_embeds``) takes the guidance value as an input."""
        return bool(getattr(transformer.config, "guidance_embeds", False))

    def max_sequence_length(self, pipe) -> int:
        """T5 tokens per prompt: 512 for [dev], 256 for [schnell] (the pipelines' recommendations)."""
        transformer = getattr(pipe, "transformer", None)
        return 512 if transformer is None or self.uses_guidance(transformer) else 256

    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """T5 states (tokens) and the CLIP pooled embedding, from the pipeline's ``encode_prompt``."""
        tokens, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length(pipe))
        return TextEmbeds(tokens, pooled)

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """Prompt and pooled embeddings (FLUX.1 samples without a negative prompt)."""
        return {"prompt_embeds": cond.tokens, "pooled_prompt_embeds": cond.pooled}

    def grid_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's packed latents back to (B, 16, h, w)."""
        return pipe._unpack_latents(latents, resolution, resolution, self.vae_scale_factor(pipe))

    def pipeline_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """FluxPipeline takes ``latents=`` packed."""
        return self.pack(latents)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, h/2 · w/2, 4C) tokens, the pipeline's packing."""
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        return FluxPipeline._pack_latents(latents, b, c, h, w)

    def denoise(self, transformer, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for (B, C, h, w) latents at σ = ``t``: packed in, unpacked out."""
        from diffusers import FluxPipeline

        b, _, h, w = noisy.shape
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        txt_ids = torch.zeros(embeds.tokens.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        g = None if guidance is None else torch.full((b,), float(guidance), device=noisy.device, dtype=torch.float32)
        out = transformer(hidden_states=self.pack(noisy), timestep=t.to(noisy.device, noisy.dtype), guidance=g,
                          pooled_projections=embeds.pooled, encoder_hidden_states=embeds.tokens, txt_ids=txt_ids,
                          img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h, w, 1)


__all__ = ["FluxFamily"]
