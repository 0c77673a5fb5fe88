"""Caches that keep the frozen encoders out of the training steps.

- :class:`TextCache`: the embeddings of the finite caption set, computed once (the text
  encoders can then be released); counts text-encoder calls so a run can prove it makes none
  per step. With ``live=True`` (``--train-text-encoder``: the encoders change every step)
  nothing is cached and every caption is encoded when asked for, with gradients when enabled.
- :class:`LatentEncoder`: VAE encoding, with the latent distribution of plain examples cached;
  a latent sample is normalized by the model family (the one rule for every caller).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mudi.models.families import TextEmbeds

#: Above this many distinct captions the cache is filled lazily (first use) instead of upfront.
MAX_PRECOMPUTED_CAPTIONS = 1024


class TextCache:
    """Text embeddings per caption, computed once with the pipeline's own ``encode_prompt``.

    Counts text-encoder forward calls (forward hooks) so a run can prove it makes none per step.
    """

    def __init__(self, pipe, family, device: torch.device, dtype: torch.dtype, *, live: bool = False):
        self.pipe, self.family, self.device, self.dtype = pipe, family, device, dtype
        self.live = live
        self.cond: dict[str, TextEmbeds] = {}
        self._uncond: TextEmbeds | None = None
        self._negative = ""
        self.calls = 0
        self._hooks = [enc.register_forward_hook(self._count) for enc in self.encoders()]

    def encoders(self) -> list[torch.nn.Module]:
        """The pipeline's text encoders (none once released)."""
        return self.family.text_encoders(self.pipe)

    def _count(self, *_):
        self.calls += 1

    def close(self) -> None:
        """Remove the counting hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> TextEmbeds:
        return self.family.encode_text(self.pipe, prompts, self.encoders()[0].device).to(self.device, self.dtype)

    def add(self, captions: list[str], batch: int = 16) -> None:
        """Encode and store every caption not cached yet."""
        todo = [c for c in dict.fromkeys(captions) if c not in self.cond]
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            embeds = self._encode(chunk)
            for j, c in enumerate(chunk):
                self.cond[c] = embeds.row(j)

    @torch.no_grad()
    def add_uncond(self, negative: str) -> None:
        """Embeddings of the negative prompt for classifier-free-guided validation images."""
        self._negative = negative
        if not self.live:
            enc_device = self.encoders()[0].device
            self._uncond = self.family.encode_negative(self.pipe, negative, enc_device).to(self.device, self.dtype)

    @property
    def uncond(self) -> TextEmbeds | None:
        """The negative prompt's embeddings (live: encoded now, without gradients)."""
        if self.live and self._negative is not None:
            with torch.no_grad():
                enc_device = self.encoders()[0].device
                return self.family.encode_negative(self.pipe, self._negative, enc_device).to(self.device, self.dtype)
        return self._uncond

    def get(self, captions: list[str]) -> TextEmbeds:
        """Batched embeddings; a caption never seen is encoded on the spot (and counted). Live:
        every caption encoded now, with gradients unless they are disabled."""
        if self.live:
            return self.family.encode_text(self.pipe, list(captions), self.encoders()[0].device).to(self.device, self.dtype)
        missing = [c for c in captions if c not in self.cond]
        if missing:
            if not self.encoders():
                raise RuntimeError(f"caption {missing[0]!r} was not pre-computed and the text encoders were released")
            self.add(missing)
        return TextEmbeds.cat([self.cond[c] for c in captions])

    def fill(self, captions: list[str], prompts: list[str], negative: str) -> bool:
        """Cache the training captions (all of them when there are at most
        :data:`MAX_PRECOMPUTED_CAPTIONS`), the validation prompts and the negative prompt.
        Returns True when every training caption is cached (the encoders may then be released)."""
        if self.live:
            self.add_uncond(negative)
            return False
        complete = len(captions) <= MAX_PRECOMPUTED_CAPTIONS
        self.add((captions if complete else []) + prompts)
        self.add_uncond(negative)
        return complete

    def release_encoders(self, *, owned: bool) -> None:
        """Free the text encoders once every caption is cached.

        ``owned`` (the trainer loaded the pipeline): drop them from the pipeline (validation uses
        the cached embeddings); otherwise only move them off the GPU.
        """
        if owned:
            self.close()
            for te in self.encoders():
                te.to("cpu")  # frees the GPU copy even if something else still holds the module
            names = self.family.text_encoder_names + self.family.tokenizer_names
            self.pipe.register_modules(**{n: None for n in names if hasattr(self.pipe, n)})
        elif self.device.type != "cpu":
            for enc in self.encoders():
                enc.to("cpu")


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB → (1, 3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


class LatentEncoder:
    """VAE encoding with a cache of the latent distribution (mean, std) of plain examples."""

    def __init__(self, vae, family, device: torch.device):
        self.vae = vae
        self.family = family
        self.device = device
        self.dtype = next(vae.parameters()).dtype
        self.cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encodes = 0

    @torch.no_grad()
    def distribution(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior of a PIL image, float32."""
        x = image_to_tensor(image).to(self.device, self.dtype)
        dist = self.family.vae_encode(self.vae, x)
        self.encodes += 1
        return dist.mean.float(), dist.std.float()

    def cached(self, key, image) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`distribution`, computed once per ``key``."""
        if key not in self.cache:
            self.cache[key] = self.distribution(image)
        return self.cache[key]

    def sample(self, dist: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """A posterior sample (noise from ``gen``), normalized as the family's denoiser expects."""
        mean, std = dist
        eps = torch.randn(mean.shape, generator=gen, dtype=torch.float32).to(mean.device)
        return self.family.to_latents(self.vae, mean + std * eps)

    def cache_plain(self, subject_set, resolution: int, class_photos=None, class_names=None, *,
                    every_photo: bool = True) -> dict:
        """Encode the plain photos once (instance photos, then class photos): every one, or with
        ``every_photo=False`` (random crops) only those with a single crop (square photos).

        Returns the plain instance examples by ``(key, photo index)`` (their resize and centre crop done once).
        """
        from mudi.compose import plain
        from mudi.train.data import single_crop

        plain_examples = {}
        for s in subject_set:
            for i, ph in enumerate(subject_set.photos(s.key)):
                ex = plain(ph, resolution, ph.caption, key=s.key, photo_index=i)
                plain_examples[(s.key, i)] = ex
                if every_photo or single_crop(ex):
                    self.cached(("instance", s.key, i), ex.image)
        for key, phs in (class_photos or {}).items():
            for i, ph in enumerate(phs):
                ex = plain(ph, resolution, ph.caption, key=key, photo_index=i)
                if every_photo or single_crop(ex):
                    self.cached(("class", class_names[key], i), ex.image)
        return plain_examples


__all__ = ["LatentEncoder", "MAX_PRECOMPUTED_CAPTIONS", "TextCache", "image_to_tensor"]
