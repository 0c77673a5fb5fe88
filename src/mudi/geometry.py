"""Box and mask geometry shared by the stages (pure numpy, no images, no models).

Conventions everywhere in mudi: a box is ``(x0, y0, x1, y1)`` in pixels with ``x1``/``y1``
exclusive, an image size is ``(width, height)`` and a mask is a boolean ``(H, W)`` array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: A box in pixels (x0, y0, x1, y1), x1/y1 exclusive.
Box = tuple[float, float, float, float]
#: A box in whole pixels.
IntBox = tuple[int, int, int, int]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def clamp_box(box: Sequence[float], size: tuple[int, int]) -> Box:
    """``box`` with every coordinate clamped to the image ``[0, width] x [0, height]`` (floats).

    A box entirely outside the image collapses to an empty box on its border.
    """
    width, height = float(size[0]), float(size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        min(max(x0, 0.0), width),
        min(max(y0, 0.0), height),
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
    )


def pixel_box(box: Sequence[float], size: tuple[int, int]) -> IntBox:
    """Round a float box outward to whole pixels inside an image of ``size`` (width, height).

    The result is at least one pixel wide and high, so it can always be cropped.
    """
    w, h = size
    x0 = int(np.floor(min(max(float(box[0]), 0.0), w - 1)))
    y0 = int(np.floor(min(max(float(box[1]), 0.0), h - 1)))
    x1 = int(np.ceil(min(max(float(box[2]), 0.0), w)))
    y1 = int(np.ceil(min(max(float(box[3]), 0.0), h)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def enlarge_box(box: Sequence[float], size: tuple[int, int], margin: float) -> Box:
    """Grow ``box`` by ``margin`` x image width (left and right) and ``margin`` x image height
    (top and bottom), clamped to the image of ``size`` (width, height)."""
    W, H = size
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * W, margin * H
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(W), x1 + dx), min(float(H), y1 + dy))


def fit_box(box: Sequence[float], size: tuple[float, float]) -> IntBox:
    """The largest box of aspect ``size`` = (w, h) inside ``box``, centred; whole pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    w, h = float(size[0]), float(size[1])
    scale = min(bw / w, bh / h)
    fw, fh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    fw, fh = min(fw, int(round(bw))), min(fh, int(round(bh)))
    nx0 = int(round(x0 + (bw - fw) / 2))
    ny0 = int(round(y0 + (bh - fh) / 2))
    return nx0, ny0, nx0 + fw, ny0 + fh


def mask_bbox(mask: np.ndarray) -> IntBox:
    """Bounding box of the true pixels of a mask.

    Raises:
        ValueError: the mask is empty (callers check ``mask.any()`` and say which photo).
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise ValueError("empty mask has no bounding box")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


__all__ = ["Box", "IntBox", "box_iou", "clamp_box", "enlarge_box", "fit_box", "mask_bbox", "pixel_box"]
