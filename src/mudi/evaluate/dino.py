"""Whole-image embedders for the DreamBench metrics: DINO (ViT-S/16) and CLIP image features.

- :class:`DinoEmbedder` — DINO as the DreamBench papers compute it: the self-supervised
  ViT-S/16 of Caron et al. (``facebook/dino-vits16``, a ``transformers.ViTModel``); the
  embedding is the CLS token of the last layer (after its layer norm), L2-normalised. (D&C uses
  DINOv2 and the mean of all tokens instead: :class:`~mudi.evaluate.embed.Dinov2Embedder`,
  whose loading and batching this class shares.)
- :class:`ClipImageEmbedder` — the image side of a :class:`~mudi.evaluate.textfid.ClipScorer`
  as an :class:`~mudi.protocols.Embedder` (for CLIP-I).

Both return (N, D) float32 rows, L2-normalised, and count what they embedded (``n_embedded``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from mudi.evaluate.embed import Dinov2Embedder

#: DINO backbone of the DreamBench metric (DreamBooth, and the multi-subject papers after it).
DEFAULT_DINO_V1 = "facebook/dino-vits16"
#: CLIP backbone of CLIP-I / CLIP-T when mudi's default CLIP score model is in use.
DEFAULT_METRIC_CLIP = "openai/clip-vit-base-patch32"


class DinoEmbedder(Dinov2Embedder):
    """CLS-token embeddings of a ViT (default: DINO ViT-S/16), L2-normalised.

    Args:
        model: a model folder or hub id (default :data:`DEFAULT_DINO_V1`; any folder that
            ``transformers.AutoModel`` loads as a ViT) or a loaded ``(model, image processor)`` pair.
        device: torch device.
        batch_size: images per forward pass.
    """

    DEFAULT_MODEL = DEFAULT_DINO_V1
    KIND = "dino"
    POOLING = "cls"

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
