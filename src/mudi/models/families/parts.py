"""What every model family shares: the text encoders it lists, negative prompts, and the latent
normalization the pipelines' VAEs expect (per-channel statistics, or a shift and a scale)."""

from __future__ import annotations

from typing import ClassVar

import torch


def _vae_channel_stats(vae, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is None or std is None:
        return None
    m = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    return m, s


def normalize_latents(vae, sample: torch.Tensor) -> torch.Tensor:
    """VAE posterior sample → normalized latents, as the pipelines' decoders expect them back.

    ``(z − latents_mean) · scaling / latents_std`` when the VAE config has per-channel
    statistics, else ``(z − shift_factor) · scaling`` (no shift when it has none).
    """
    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    stats = _vae_channel_stats(vae, sample)
    if stats is not None:
        return (sample - stats[0]) * scaling / stats[1]
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        return (sample - float(shift)) * scaling
    return sample * scaling


def denormalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalize_latents`: normalized latents → what ``vae.decode`` expects."""
    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    stats = _vae_channel_stats(vae, z)
    if stats is not None:
        return z * stats[1] / scaling + stats[0]
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        return z / scaling + float(shift)
    return z / scaling


class FamilyParts:
    """What every family shares: the text encoders it lists, negative prompts, latent normalization."""

    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)

    def text_encoders(self, pipe) -> list[torch.nn.Module]:
        """The pipeline's text encoders that are present."""
        return [getattr(pipe, n) for n in self.text_encoder_names if getattr(pipe, n, None) is not None]

    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        raise NotImplementedError

    def encode_negative(self, pipe, negative: str, device) -> TextEmbeds:
        """Embeddings of a negative prompt for classifier-free guidance."""
        return self.encode_text(pipe, [negative], device)

    def to_latents(self, vae, sample: torch.Tensor) -> torch.Tensor:
        """VAE posterior sample → the normalized latents the denoiser works on (:func:`normalize_latents`)."""
        return normalize_latents(vae, sample)

    def from_latents(self, vae, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_latents` (:func:`denormalize_latents`)."""
        return denormalize_latents(vae, z)

    def grid_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """What ``pipe(..., output_type="latent")`` returned, as (B, C, h, w) latents (as is, unpacked)."""
        return latents

    def pipeline_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents as the pipeline's ``latents=`` argument takes them (as they are, unpacked)."""
        return latents

    def grid_noise(self, shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
        """ε for (B, C, h, w) latents, drawn with the same ``randn_tensor`` call (shape and order) the
        pipeline's ``prepare_latents`` makes, so ``--init none`` and ``--init mudi`` share it."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def vae_encode(self, vae, pixels: torch.Tensor):
        """The VAE posterior (``latent_dist``) of (B, 3, H, W) images in [-1, 1]."""
        return vae.encode(pixels).latent_dist

    def vae_decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) raw VAE latents (:meth:`from_latents`) → (B, 3, H, W) images."""
        return vae.decode(z, return_dict=False)[0]

    def call_kwargs(self, pipe, kwargs: dict) -> dict:
        """The keyword arguments of a ``pipe(...)`` call in the family pipeline's own terms
        (``prompt``, ``negative_prompt``, ``guidance_scale``, ... pass as they are by default)."""
        return kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


__all__ = ["FamilyParts", "denormalize_latents", "normalize_latents"]
