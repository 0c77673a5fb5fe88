"""What composition produces: training examples, where each subject went, captions, loss weights,
and the plain (non-composite) example.

Plain examples: the photo is resized so its shortest side is S (bicubic) and centre-cropped to
S×S (or cropped at a given offset: training's random crops); its mask is transformed identically
(bilinear, threshold 128); the caption is the photo's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mudi.compose.cutout import RESAMPLE, binary_mask
from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto


@dataclass
class Placement:
    """Where one subject went on the canvas.

    ``box`` is (x0, y0, x1, y1) in canvas pixels, x1/y1 exclusive. ``slot`` is the horizontal
    slot (0 = leftmost), ``z`` the paste order (the highest z is on top). ``photo`` is the index
    of the photo in its subject's list when known.
    """

    key: str
    box: tuple[int, int, int, int]
    scale: float
    slot: int = 0
    z: int = 0
    photo: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the box as a list)."""
        d = asdict(self)
        d["box"] = list(self.box)
        return d


@dataclass
class Example:
    """One training example.

    ``image`` is an RGB S×S PIL image; ``mask`` a bool S×S array (union of the pasted subject
    masks for Seg-Mix, the pasted rectangles for Cut-Mix, the photo's own transformed mask for
    plain examples); ``subjects`` lists subject keys in caption order (current subject first).
    """

    image: Image.Image
    mask: np.ndarray
    caption: str
    subjects: list[str]
    kind: str
    placements: list[Placement] = field(default_factory=list)

    @property
    def is_composite(self) -> bool:
        """True for Seg-Mix and Cut-Mix examples."""
        return self.kind in ("segmix", "cutmix")

    def loss_weight(self, alpha: float = 1.0, grid: int | tuple[int, int] | None = None) -> np.ndarray:
        """``w = M·(1 − α) + α`` on a grid (see :func:`loss_weight_map`)."""
        return loss_weight_map(self.mask, alpha, grid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no pixels)."""
        return {
            "caption": self.caption,
            "subjects": list(self.subjects),
            "kind": self.kind,
            "placements": [p.to_dict() for p in self.placements],
        }


def composite_caption(phrases: Sequence[str]) -> str:
    """``a photo of a {A} and a {B}, simple background.``; for 3+: ``a {A}, a {B} and a {C}``."""
    parts = [f"a {p}" for p in phrases]
    if len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}, simple background."


def plain_resized_size(photo: SegmentedPhoto, size: int) -> tuple[int, int]:
    """(width, height) of ``photo`` resized so its shortest side is ``size``: the S×S crops of
    :func:`plain` have their left edge in ``[0, width - size]`` and their top in ``[0, height - size]``."""
    H, W = photo.image.shape[:2]
    scale = size / min(W, H)
    return max(size, round(W * scale)), max(size, round(H * scale))


def plain(photo: SegmentedPhoto, size: int, caption: str | None = None, *, key: str = "",
          photo_index: int | None = None, offset: tuple[int, int] | None = None) -> Example:
    """The photo resized (shortest side = S) and cropped to S×S, mask transformed alike: the centre
    crop, or the one whose top-left corner is ``offset`` = (left, top) in the resized photo."""
    H, W = photo.image.shape[:2]
    scale = size / min(W, H)
    nw, nh = plain_resized_size(photo, size)
    left, top = ((nw - size) // 2, (nh - size) // 2) if offset is None else (int(offset[0]), int(offset[1]))
    if not (0 <= left <= nw - size and 0 <= top <= nh - size):
        raise ValueError(f"crop offset {(left, top)} outside the resized photo {(nw, nh)} for size {size}")
    box = (left, top, left + size, top + size)
    img = Image.fromarray(photo.image, "RGB").resize((nw, nh), RESAMPLE).crop(box)
    m_img = Image.fromarray(np.where(photo.mask, 255, 0).astype(np.uint8), "L")
    mask = np.asarray(binary_mask(m_img, (nw, nh)).crop(box)) != 0
    pl = Placement(key, (-left, -top, nw - left, nh - top), float(scale), 0, 0, photo_index)
    return Example(img, mask, caption if caption is not None else photo.caption, [key], "plain", [pl])


def loss_weight_map(mask: np.ndarray, alpha: float = 1.0, grid: int | tuple[int, int] | None = None) -> np.ndarray:
    """Loss weight ``w = M·(1 − α) + α`` as float32.

    ``grid`` is the latent grid (h, w) (or one int for a square); the mask is area-averaged
    down to it, so M is the subject fraction of each latent cell. ``α = 1`` gives all ones.
    """
    if not 0 <= alpha <= 1:
        raise MudiError(f"loss weight alpha must be in [0, 1] (got {alpha}).")
    m = np.asarray(mask, dtype=np.float32)
    if grid is not None:
        gh, gw = (grid, grid) if isinstance(grid, (int, np.integer)) else grid
        if (gh, gw) != m.shape:
            m = np.asarray(Image.fromarray(m, "F").resize((int(gw), int(gh)), Image.BOX), dtype=np.float32)
    return (m * (1.0 - alpha) + alpha).astype(np.float32)


__all__ = ["Example", "Placement", "composite_caption", "loss_weight_map", "plain", "plain_resized_size"]
