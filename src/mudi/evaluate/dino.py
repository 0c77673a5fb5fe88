"""Whole-image embedders for the DreamBench metrics: DINO (ViT-S/16) and CLIP image features.

- :class:`DinoEmbedder` — DINO as the DreamBench papers compute it: the self-supervised
  ViT-S/16 of Caron et al. (``facebook/dino-vits16``, a ``transformers.ViTModel``), the
  embedding is the CLS token of the last layer (after its layer norm), L2-normalised. (D&C uses
  DINOv2 and the mean of all tokens instead; see :mod:`mudi.evaluate.embed`.)
- :class:`ClipImageEmbedder` — the image side of a :class:`~mudi.evaluate.textfid.ClipScorer`
  as an :class:`~mudi.protocols.Embedder` (for CLIP-I).

Both return (N, D) float32 rows, L2-normalised, and count what they embedded (``n_embedded``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

#: DINO backbone of the DreamBench metric (DreamBooth, and the multi-subject papers after it).
DEFAULT_DINO_V1 = "facebook/dino-vits16"
#: CLIP backbone of CLIP-I / CLIP-T when mudi's default CLIP score model is in use.
DEFAULT_METRIC_CLIP = "openai/clip-vit-base-patch32"


class DinoEmbedder:
    """CLS-token embeddings of a ViT (default: DINO ViT-S/16), L2-normalised.

    Args:
        model: a model folder or hub id (default :data:`DEFAULT_DINO_V1`) or a loaded
            ``(model, image processor)`` pair.
        device: torch device.
        batch_size: images per forward pass.
    """

    def __init__(self, model=None, *, device: str = "cpu", batch_size: int = 16):
        import torch

        from mudi.models.loading import load_dinov2, model_pair

        # load_dinov2 is AutoModel + AutoImageProcessor: a ViT folder gives a ViTModel
        self.model, self.processor, self.name = model_pair(model, load_dinov2, default=DEFAULT_DINO_V1, kind="dino",
                                                           device=device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.n_embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLS token of the last layer per image, (N, hidden) float32, L2-normalised."""
        import torch

        if not images:
            return np.zeros((0, int(self.model.config.hidden_size)), np.float32)
        dtype = next(self.model.parameters()).dtype
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                chunk = [im.convert("RGB") for im in images[i:i + self.batch_size]]
                px = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, dtype)
                out.append(self.model(pixel_values=px).last_hidden_state[:, 0].float().cpu().numpy())
        self.n_embedded += len(images)
        x = np.concatenate(out)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def __repr__(self) -> str:
        return f"DinoEmbedder({self.name!r})"


class ClipImageEmbedder:
    """CLIP image features of a :class:`~mudi.evaluate.textfid.ClipScorer` as an embedder."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.name = getattr(scorer, "name", repr(scorer))
        self.n_embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Projected CLIP image embeddings, (N, D), L2-normalised."""
        self.n_embedded += len(images)
        return np.asarray(self.scorer.image_embeds(list(images)), dtype=np.float32)

    def __repr__(self) -> str:
        return f"ClipImageEmbedder({self.name!r})"


__all__ = ["DEFAULT_DINO_V1", "DEFAULT_METRIC_CLIP", "ClipImageEmbedder", "DinoEmbedder"]
