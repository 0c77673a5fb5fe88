"""Cut-Mix, the baseline composite (whole photos, no masks pasted).

The canvas is split into k slots (:mod:`mudi.compose.slots`); a random permutation assigns
subjects to slots. Each photo is scaled to *cover* its slot (``scale = max(slot_w/W, S/H)``) and
the slot-sized window is centred on the subject's mask bounding-box centre, clamped to the
photo, so the subject stays in view. The slots tile the canvas, so the union mask (the pasted
rectangles) is all True. Only the slot order is random.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from mudi.compose.cutout import RESAMPLE, white_canvas
from mudi.compose.examples import Example, Placement, composite_caption
from mudi.compose.slots import assign_slots, slot_bounds
from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto


def cut_mix(
    photos: Sequence[SegmentedPhoto],
    phrases: Sequence[str],
    size: int,
    rng: np.random.Generator,
    *,
    keys: Sequence[str] | None = None,
    slots: Sequence[int] | None = None,
    photo_indices: Sequence[int | None] | None = None,
) -> Example:
    """Cut-Mix baseline: whole photos side by side in k equal vertical slots (see module doc).

    The only random draw is the slot permutation (skipped when ``slots`` is given).
    """
    k = len(photos)
    if len(phrases) != k:
        raise MudiError(f"cut_mix: {k} photos but {len(phrases)} phrases.")
    if k < 2:
        raise MudiError(f"a composite needs at least 2 subjects (got k={k}).")
    if size < k:
        raise MudiError(f"canvas size {size} is too small for {k} slots.")
    keys = list(keys) if keys is not None else list(phrases)
    slot_of = assign_slots(k, rng, slots, "cut_mix")
    bounds = slot_bounds(size, k)
    canvas, union = white_canvas(size)
    pidx = list(photo_indices) if photo_indices is not None else [None] * k
    placements = []
    for i, ph in enumerate(photos):
        a, b = bounds[slot_of[i]]
        scale = _cover_slot(canvas, ph, a, b, size)
        union[:, a:b] = True
        placements.append(Placement(keys[i], (a, 0, b, size), float(scale), slot_of[i], slot_of[i], pidx[i]))
    return Example(canvas, union, composite_caption(phrases), keys, "cutmix", placements)


def _cover_slot(canvas: Image.Image, ph: SegmentedPhoto, a: int, b: int, size: int) -> float:
    """Paste the window of ``ph`` that covers slot [a, b) x [0, S), centred on the subject; its scale."""
    sw = b - a
    H, W = ph.image.shape[:2]
    scale = max(sw / W, size / H)
    win_w, win_h = sw / scale, size / scale
    bx0, by0, bx1, by1 = ph.bbox
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    sx0 = min(max(0.0, cx - win_w / 2), W - win_w)
    sy0 = min(max(0.0, cy - win_h / 2), H - win_h)
    src = Image.fromarray(ph.image, "RGB")
    tile = src.resize((sw, size), RESAMPLE, box=(sx0, sy0, sx0 + win_w, sy0 + win_h))
    canvas.paste(tile, (a, 0))
    return scale


__all__ = ["cut_mix"]
