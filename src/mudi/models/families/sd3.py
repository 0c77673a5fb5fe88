"""Stable Diffusion 3 / 3.5 (medium, large): two CLIP encoders and T5, an unpacked 16-channel latent."""

from __future__ import annotations

import torch

from mudi.models.families.base import SamplingDefaults, TextEmbeds
from mudi.models.families.flow import FlowFamily


class SD3Family(FlowFamily):
    """``StableDiffusion3Pipeline`` models (SD3 medium, SD3.5 medium / large).

    - Text: CLIP-L and CLIP-G per-token states (concatenated) next to the T5 states along the
      sequence, and both CLIP pooled embeddings (concatenated); 256 T5 tokens, the pipeline default,
      in training and sampling alike.
    - Latents: 16 channels, ``(z − shift_factor)·scaling_factor``, given to the transformer as a
      grid (it patchifies them itself); classifier-free guidance with a negative prompt.
    - Training σ: logit-normal density (diffusers' SD3 script default), on the scheduler's σ table
      with its fixed ``shift`` (3.0 for SD3.x).
    - LoRA targets: the attention projections of both streams, diffusers' list.
    """

    name = "sd3"
    pipeline_names = ("StableDiffusion3Pipeline",)
    transformer_class_name = "SD3Transformer2DModel"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizer_names = ("tokenizer", "tokenizer_2", "tokenizer_3")
    default_lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                            "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
    sampling = SamplingDefaults(28, 7.0, "")  # the pipeline call defaults (no negative prompt)
    default_weighting_scheme = "logit_normal"

    def _info(self, path, transformer, vae, folder=None):
        info = super()._info(path, transformer, vae, folder)
        info.default_resolution = int(transformer.get("sample_size", 128)) * info.vae_scale_factor
        return info

    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """Joint CLIP + T5 states and the pooled CLIP embeddings, from the pipeline's ``encode_prompt``."""
        tokens, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return TextEmbeds(tokens, pooled)

    def denoise(self, transformer, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for (B, C, h, w) latents at σ = ``t`` (the transformer takes σ·1000)."""
        timestep = (t.to(noisy.device, torch.float32) * 1000).to(noisy.dtype)
        return transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=embeds.tokens,
                           pooled_projections=embeds.pooled, return_dict=False)[0]


__all__ = ["SD3Family"]
