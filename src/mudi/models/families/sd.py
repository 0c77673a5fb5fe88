"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, no extra UNet conditioning."""

from __future__ import annotations

from mudi.models.families.base import UNetFamily


class SDFamily(UNetFamily):
    """Stable Diffusion 1.x/2.x pipelines (``StableDiffusionPipeline``).

    Everything is the shared UNet behaviour of :class:`UNetFamily`; SD 2.x is told from 1.x by
    its cross-attention width (1024) where it matters (the kohya file's base-model version).
    """

    name = "sd"
    pipeline_class_name = "StableDiffusionPipeline"

    @classmethod
    def matches(cls, index: dict) -> bool:
        """A ``StableDiffusion*`` pipeline, or any index with a UNet, a VAE and a text encoder."""
        class_name = str(index.get("_class_name", ""))
        return class_name.startswith("StableDiffusion") or {"unet", "vae", "text_encoder"} <= set(index)


__all__ = ["SDFamily"]
