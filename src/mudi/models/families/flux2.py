"""FLUX.2 [klein]: Qwen3 text states, batch-norm-normalized 2×2-patchified latents, no pooled text."""

from __future__ import annotations

import copy
from typing import Any

import torch

from mudi.models.families.base import SamplingDefaults, TextEmbeds
from mudi.models.families.flow import FlowFamily
from mudi.models.families.newer import NeedsDiffusers


def _bn_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's batch-norm running mean and std over the 2×2-patchified channels, shaped (1, 4C, 1, 1)."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


class Flux2KleinFamily(NeedsDiffusers, FlowFamily):
    """FLUX.2 [klein] pipelines (``Flux2KleinPipeline``: the 4B/9B base models and their
    step-distilled versions).

    - Text: the Qwen3 encoder's hidden states of layers 9, 18 and 27 stacked per token (the
      pipeline's chat template, ``enable_thinking=False``), 512 tokens; no pooled embedding.
    - Latents: the VAE's 32 channels are patchified 2×2 (128 channels at half the size) and
      normalized with the VAE's batch-norm running statistics, as the pipeline and diffusers'
      klein script do. The trainer keeps them as a (B, C, h, w) grid at the VAE's resolution
      (normalized per channel and position in the 2×2 patch), so masks and Seg-Mix data work as
      for the other families; :meth:`denoise` patchifies and packs them into tokens with their
      (t, h, w, l) position ids, and undoes both on the output.
    - Guidance: classifier-free guidance against the empty prompt (the pipeline has no negative
      prompt argument: a negative prompt is passed as its embeddings, :meth:`call_kwargs`).
    - Training σ: uniform density (the klein script's ``weighting_scheme = none``), shifted as the
      sampler shifts at the training resolution (FLUX.2's empirical ``mu`` for
      :attr:`sampling`'s step count).
    - LoRA targets: diffusers' klein script list — attention of the double-stream blocks, the
      fused QKV+MLP input and the output projection of every single-stream block (the latter
      named per block, so the list depends on the model: :meth:`lora_targets_for`).
    """

    name = "flux2"
    pipeline_names = ("Flux2KleinPipeline",)
    transformer_class_name = "Flux2Transformer2DModel"
    min_diffusers = "0.37.0"
    label = "FLUX.2 [klein]"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    default_lora_targets = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj")
    sampling = SamplingDefaults(50, 4.0, negative_prompt="")
    default_weighting_scheme = "none"
    default_sample_size = 128
    max_sequence_length = 512

    def lora_targets_for(self, transformer_config) -> tuple[str, ...]:
        """The klein script's targets for a transformer with this config."""
        n = int(transformer_config.get("num_single_layers", 0) or 0)
        return self.default_lora_targets + tuple(f"single_transformer_blocks.{i}.attn.to_out" for i in range(n))

    def _info(self, path, transformer, vae, folder=None):
        info = super()._info(path, transformer, vae, folder)
        family = copy.copy(self)  # this model's targets (single-stream blocks named one by one)
        family.default_lora_targets = self.lora_targets_for(transformer)
        info.family = family
        return info

    def patch_size(self, transformer_config) -> int:
        """The VAE latents are patchified 2×2 before the transformer (whose own patch size is 1)."""
        return 2

    def uses_guidance(self, transformer) -> bool:
        """A guidance-embedding transformer takes the guidance value as an input (klein does not)."""
        return bool(getattr(transformer.config, "guidance_embeds", False))

    # ------------------------------------------------------------------ latents
    def to_latents(self, vae, sample: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents → the batch-norm-normalized grid (patchify, normalize, unpatchify)."""
        from diffusers import Flux2KleinPipeline as P

        patches = P._patchify_latents(sample)
        mean, std = _bn_stats(vae, patches)
        return P._unpatchify_latents((patches - mean) / std)

    def from_latents(self, vae, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_latents` (what ``vae.decode`` reads)."""
        from diffusers import Flux2KleinPipeline as P

        patches = P._patchify_latents(z)
        mean, std = _bn_stats(vae, patches)
        return P._unpatchify_latents(patches * std + mean)

    def grid_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """``output_type="latent"`` gives the raw (denormalized) VAE latents: normalize them back."""
        return self.to_latents(pipe.vae, latents)

    def pipeline_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline takes ``latents=`` 2×2-patchified (B, 4C, h/2, w/2), in the normalized space."""
        from diffusers import Flux2KleinPipeline as P

        return P._patchify_latents(latents)

    def grid_noise(self, shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
        """ε drawn as the pipeline draws it (patchified, (B, 4C, h/2, w/2)), back on the (B, C, h, w) grid."""
        from diffusers import Flux2KleinPipeline as P
        from diffusers.utils.torch_utils import randn_tensor

        b, c, h, w = shape
        return P._unpatchify_latents(randn_tensor((b, 4 * c, h // 2, w // 2), generator=generator, device=device,
                                                  dtype=dtype))

    def sampler_start(self, pipe, scheduler, steps: int, height: int, width: int, device, sigma_start: float):
        """Sampling entered at ``sigma_start`` with the pipeline's own shift: FLUX.2's empirical ``mu``
        of the image's token count and the step count (``compute_empirical_mu``)."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        from mudi.models.families.starts import flow_start

        mu = float(compute_empirical_mu(image_seq_len=self.image_seq_len(pipe, height, width), num_steps=steps))
        return flow_start(scheduler, steps, sigma_start, mu, device)

    # ------------------------------------------------------------------ text
    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """The stacked Qwen3 states, from the pipeline's ``encode_prompt``."""
        tokens, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                       max_sequence_length=self.max_sequence_length)
        return TextEmbeds(tokens)

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """Prompt and negative embeddings (the pipeline takes no pooled embedding)."""
        return {"prompt_embeds": cond.tokens, "negative_prompt_embeds": uncond.tokens}

    def call_kwargs(self, pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pipeline has no ``negative_prompt``: a non-empty one is passed as its embeddings."""
        kwargs = dict(kwargs)
        negative = kwargs.pop("negative_prompt", None)
        if negative and kwargs.get("negative_prompt_embeds") is None:
            negatives = [negative] if isinstance(negative, str) else list(negative)
            device = getattr(pipe, "_execution_device", None)
            kwargs["negative_prompt_embeds"] = self.encode_text(pipe, negatives, device).tokens
        return kwargs

    # ------------------------------------------------------------------ training
    def training_objective(self, pipe, resolution: int, flow: Any = None):
        """The seam's flow objective with FLUX.2's own resolution shift (``compute_empirical_mu``)."""
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        objective = super().training_objective(pipe, resolution, flow)
        if objective.mu is not None:
            objective.mu = float(compute_empirical_mu(self.image_seq_len(pipe, resolution, resolution),
                                                          self.sampling.steps))
        return objective

    def denoise(self, transformer, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity for (B, C, h, w) latents at σ = ``t``: patchified and packed in, unpacked out."""
        from diffusers import Flux2KleinPipeline as P

        b = noisy.shape[0]
        patches = P._patchify_latents(noisy)
        img_ids = P._prepare_latent_ids(patches).to(noisy.device)
        txt_ids = P._prepare_text_ids(embeds.tokens).to(noisy.device)
        tokens = P._pack_latents(patches)
        g = None if guidance is None else torch.full((b,), float(guidance), device=noisy.device, dtype=torch.float32)
        out = transformer(hidden_states=tokens, timestep=t.to(noisy.device, noisy.dtype), guidance=g,
                          encoder_hidden_states=embeds.tokens, txt_ids=txt_ids, img_ids=img_ids,
                          return_dict=False)[0]
        out = P._unpack_latents_with_ids(out[:, : tokens.shape[1]], img_ids, patches.shape[2], patches.shape[3])
        return P._unpatchify_latents(out)


__all__ = ["Flux2KleinFamily"]
