"""Validation grids during training: a few prompts sampled with the current LoRA.

The prompts' embeddings come from the caption cache (no text-encoder call); the denoising runs
under the run's autocast, the VAE decode outside it (see :func:`decode_latents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mudi.io import save_image_atomic

VALIDATION_DIR = "validation"


@torch.no_grad()
def decode_latents(pipe, family, latents: torch.Tensor) -> list:
    """Validation latents -> PIL images, decoded outside autocast in the VAE's own dtype.

    Under fp16 autocast the SDXL base VAE (kept in fp32 because its config says
    ``force_upcast``) would run its convolutions in fp16, overflow and give black images.
    """
    vae = pipe.vae
    param = next(vae.parameters())
    z = family.from_latents(vae, latents.to(param.device, param.dtype))
    images = []
    for i in range(z.shape[0]):  # one at a time: a 1024 px fp32 decode of a batch is several GB
        image = family.vae_decode(vae, z[i : i + 1])
        images.extend(pipe.image_processor.postprocess(image.float(), output_type="pil"))
    return images


@dataclass
class ValidationSettings:
    """What a validation grid shows and how it is sampled."""

    prompts: list[str]
    images_per_prompt: int
    steps: int
    guidance_scale: float
    resolution: int
    seed: int


class Validator:
    """Writes ``OUT/validation/step_XXXXXX.png``: prompts × images, sampled with the training UNet."""

    def __init__(self, pipe, family, text_cache, settings: ValidationSettings, out: Path, autocast):
        self.pipe, self.family, self.text = pipe, family, text_cache
        self.settings, self.out, self.autocast = settings, Path(out), autocast

    def run(self, step: int, unet) -> Path:
        """Sample the grid with ``unet`` (the unwrapped training denoiser, put back in train mode after)."""
        from mudi import viz

        s = self.settings
        unet.eval()
        images, labels = [], []
        try:
            for pi, prompt in enumerate(s.prompts):
                images.extend(self._sample(pi, prompt))
                labels.extend([prompt] * s.images_per_prompt)
        finally:
            unet.train()
        sheet = viz.grid(images, labels=labels, cols=s.images_per_prompt, cell=min(256, max(128, s.resolution)))
        path = self.out / VALIDATION_DIR / f"step_{step:06d}.png"
        save_image_atomic(sheet, path)
        return path

    @torch.no_grad()
    def _sample(self, pi: int, prompt: str) -> list:
        s = self.settings
        n = s.images_per_prompt
        gens = [torch.Generator("cpu").manual_seed(s.seed + 1000 * pi + j) for j in range(n)]
        kw = self.family.pipeline_embeds(self.text.get([prompt]).repeat(n), self.text.uncond.repeat(n))
        with self.autocast(self.family.denoiser(self.pipe)):  # the denoiser only: see decode_latents for the VAE
            kw.update(num_inference_steps=s.steps, output_type="latent", guidance_scale=s.guidance_scale,
                      height=s.resolution, width=s.resolution, generator=gens)
            res = self.pipe(**self.family.call_kwargs(self.pipe, kw))
        return decode_latents(self.pipe, self.family, self.family.grid_latents(self.pipe, res.images, s.resolution))


__all__ = ["ValidationSettings", "Validator", "decode_latents"]
