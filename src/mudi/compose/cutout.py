"""Cut-outs: a segmented photo cropped to its mask, and the one way mudi pastes it into a canvas.

Seg-Mix composites (:mod:`mudi.compose.segmix`) and the initialization canvas of generation
(:func:`mudi.generate.init.render_canvas`) both paste subjects with :func:`paste_crop`: the crop
is resized to the target box (bicubic for the photo; bilinear and a threshold at 128 for the
mask), then only the mask pixels are copied, so everything else stays as it was (pure white on
a fresh canvas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from mudi.subjects import SegmentedPhoto

#: Resampling filter for photos (masks use bilinear + threshold 128).
RESAMPLE = Image.BICUBIC
WHITE = (255, 255, 255)
_THRESHOLD_LUT = [0] * 128 + [255] * 128


@dataclass
class Crop:
    """A photo cropped to its mask's bounding box, ready to be resized and pasted.

    ``image`` is RGB, ``mask`` is 'L' (0/255); ``offset`` is the crop's (x, y) in the photo.
    """

    image: Image.Image
    mask: Image.Image
    offset: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the crop."""
        return self.image.size


def crop_photo(photo: SegmentedPhoto) -> Crop:
    """Crop a photo and its mask to the mask's bounding box."""
    x0, y0, x1, y1 = photo.bbox
    img = Image.fromarray(np.ascontiguousarray(photo.image[y0:y1, x0:x1]), "RGB")
    m = np.where(photo.mask[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return Crop(img, Image.fromarray(m, "L"), (x0, y0))


def as_crop(photo: SegmentedPhoto | Crop) -> Crop:
    """``photo`` itself if it is already a :class:`Crop`, else its crop."""
    return photo if isinstance(photo, Crop) else crop_photo(photo)


def binary_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an 'L' 0/255 mask (bilinear) and threshold it at 128 back to 0/255."""
    return mask.resize(size, Image.BILINEAR).point(_THRESHOLD_LUT)


def paste_crop(
    canvas: Image.Image,
    union: np.ndarray,
    crop: Crop,
    box: Sequence[int],
    *,
    reducing_gap: float | None = None,
) -> None:
    """Resize ``crop`` to ``box`` (x0, y0, x1, y1) and copy its mask pixels into ``canvas``.

    ``union`` (bool, the canvas's (H, W)) gets the pasted mask pixels added. Parts outside the
    canvas are clipped. ``reducing_gap`` is passed to PIL's resize of the photo (``None``: exact
    bicubic; generation's init canvas uses 3.0).
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    size = (x1 - x0, y1 - y0)
    img = crop.image.resize(size, RESAMPLE, reducing_gap=reducing_gap)
    mask = binary_mask(crop.mask, size)
    canvas.paste(img, (x0, y0), mask)  # binary mask: mask pixels copied exactly, others untouched
    H, W = union.shape
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if cx0 < cx1 and cy0 < cy1:
        union[cy0:cy1, cx0:cx1] |= np.asarray(mask)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] != 0


def white_canvas(width: int, height: int | None = None) -> tuple[Image.Image, np.ndarray]:
    """A pure white RGB canvas and its empty union mask."""
    height = width if height is None else height
    return Image.new("RGB", (width, height), WHITE), np.zeros((height, width), dtype=bool)


__all__ = ["RESAMPLE", "WHITE", "Crop", "as_crop", "binary_mask", "crop_photo", "paste_crop", "white_canvas"]
