"""Small interfaces shared by preparation, evaluation and the toy world.

A *detector* finds subjects from text queries (OWLv2, or the toy world's detector); an
*embedder* maps images to vectors for identity comparison (DINOv2, DreamSim, the toy embedder).
Keeping them behind these protocols lets Detect-and-Compare run unchanged on any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected box in pixel coordinates of the input image."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive)
    score: float
    label: int  # index into the query list


@runtime_checkable
class Detector(Protocol):
    def detect(
        self, images: Sequence[Image.Image], queries: Sequence[str], threshold: float
    ) -> list[list[Detection]]:
        """Detections per image, for all `queries` at once, scores >= threshold."""
        ...


@runtime_checkable
class Embedder(Protocol):
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One L2-normalised float32 row per image, shape (N, D)."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    def segment(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        """A boolean mask (H, W) of the object inside `box` (pixels)."""
        ...
