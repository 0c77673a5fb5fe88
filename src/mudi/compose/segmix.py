"""Seg-Mix (METHOD.md §2): segmented subjects pasted side by side on a white S×S canvas.

Every random choice is drawn from a :class:`numpy.random.Generator` passed in, so an example is
a deterministic function of its inputs and the generator state. Defaults give exactly METHOD §2
for k = 2 subjects.

1. Each photo and mask is cropped to the mask's bounding box (w × h).
2. Largest scale ``m = min((S/k − margin)/w, (S − margin)/h)`` (``margin`` = 32; for k = 2 this is
   ``min((S/2 − 32)/w, (S − 32)/h)``; on canvases smaller than 256 px -- tiny test runs -- the
   default margin is S/8 so that a slot stays usable; pass ``margin=`` to override). The scale is
   drawn uniformly in ``[low·m, m]`` (``low`` = 0.75) independently per subject; in relative-size
   mode it is fixed to ``m·c``. The scaled size is ``(round(w·s), round(h·s))`` (at least 1 px).
3. The canvas is split into k equal vertical slots; a random permutation decides which subject
   takes which slot (k = 2: "a random one goes left"). With edge range ``E`` (default
   ``S // (2k)``, i.e. S/4 for k = 2):

   - slots left of the middle are *left-anchored*: left edge at ``slot_start + U{1..E}``;
   - slots right of the middle are *right-anchored*: right edge at ``slot_end − U{1..E}``;
   - the middle slot of an odd k is *centred*: centre at ``slot_centre + U{−E//2..E//2}``.

   For k = 2 this is exactly "left subject's left edge at U{1..S/4}; right subject's right edge
   at S − U{1..S/4}". Boxes are clamped to the canvas (never needed with the default parameters).
4. Vertical position: top edge uniform in ``U{0..S − h'}`` (the subject always fits); with
   ``same_top`` one draw ``U{0..S − max h'}`` is every subject's top edge (the reference trainer's
   class composites).
5. Overlap is allowed; a random permutation decides the paste order, the last pasted is on top
   (k = 2: a fair coin). Only mask pixels are pasted; everything else is pure white.
6. Caption: ``a photo of a {A} and a {B}, simple background.``; for k ≥ 3
   ``a photo of a {A}, a {B} and a {C}, simple background.`` (current subject first).

Random draws happen in this fixed order: scales (per subject, in input order; skipped in
relative-size mode), slot permutation (skipped when ``slots`` is given), top edges (skipped when
``y_tops`` is given), horizontal offsets (per subject, input order), paste-order permutation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mudi.compose.cutout import Crop, as_crop, paste_crop, white_canvas
from mudi.compose.examples import Example, Placement, composite_caption
from mudi.compose.slots import anchor, assign_slots, slot_bounds
from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto

DEFAULT_LOW = 0.75
#: Seg-Mix margin in pixels (METHOD §2) on canvases of MARGIN_FULL_FROM px and more.
DEFAULT_SEGMIX_MARGIN = 32
#: Below this canvas side the default margin shrinks proportionally (S/8), so tiny test canvases work.
MARGIN_FULL_FROM = 256

Size = tuple[int, int]


def default_margin(size: int) -> float:
    """The default margin: 32 px (METHOD §2) for canvases of 256 px and more, S/8 below that."""
    return float(DEFAULT_SEGMIX_MARGIN) if size >= MARGIN_FULL_FROM else size / 8


def max_scale(w: int, h: int, size: int, k: int = 2, margin: float | None = None) -> float:
    """Largest Seg-Mix scale ``m = min((S/k − margin)/w, (S − margin)/h)``."""
    if margin is None:
        margin = default_margin(size)
    return min((size / k - margin) / w, (size - margin) / h)


def default_edge_range(size: int, k: int = 2) -> int:
    """Default horizontal jitter range ``S // (2k)`` (S/4 for two subjects)."""
    return max(1, size // (2 * k))


def check_segmix(size: int, k: int, low: float, margin: float | None, edge_range: int | None) -> int:
    """Validate Seg-Mix parameters; return the edge range E to use."""
    if margin is None:
        margin = default_margin(size)
    if k < 2:
        raise MudiError(f"a composite needs at least 2 subjects (got k={k}).")
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise MudiError(f"canvas size must be a positive integer (got {size!r}).")
    if margin < 0:
        raise MudiError(f"margin must be >= 0 (got {margin}).")
    if size / k - margin < 1:
        raise MudiError(
            f"canvas size {size} is too small for {k} subjects with margin {margin}: "
            f"each slot is {size / k:.0f} px wide. Use a larger --size, a smaller --k or --margin."
        )
    if not 0 < low <= 1:
        raise MudiError(f"the low scale fraction must be in (0, 1] (got {low}).")
    e = default_edge_range(size, k) if edge_range is None else int(edge_range)
    if e < 1:
        raise MudiError(f"edge range must be >= 1 pixel (got {edge_range}).")
    return e


def seg_mix(
    photos: Sequence[SegmentedPhoto | Crop],
    phrases: Sequence[str],
    size: int,
    rng: np.random.Generator,
    *,
    keys: Sequence[str] | None = None,
    relative: Sequence[float] | None = None,
    low: float = DEFAULT_LOW,
    margin: float | None = None,
    edge_range: int | None = None,
    slots: Sequence[int] | None = None,
    y_tops: Sequence[int] | None = None,
    photo_indices: Sequence[int | None] | None = None,
    same_top: bool = False,
) -> Example:
    """Seg-Mix composite of k = len(photos) segmented subjects on a white S×S canvas.

    ``photos[0]`` is the current subject (its phrase comes first in the caption). ``relative``
    gives fixed scale ratios c (scale = m·c, 0 < c <= 1) instead of random scales; ``slots``
    fixes which horizontal slot each subject takes and ``y_tops`` its top edge (clamped so the
    subject fits) -- used to compose a class example "like" an instance example; ``same_top`` draws
    one top edge shared by every subject. See the module docstring for the exact geometry and the
    order of random draws.
    """
    # 0. check inputs
    k = len(photos)
    if len(phrases) != k:
        raise MudiError(f"seg_mix: {k} photos but {len(phrases)} phrases.")
    keys = list(keys) if keys is not None else list(phrases)
    edge = check_segmix(size, k, low, margin, edge_range)
    margin = default_margin(size) if margin is None else float(margin)
    crops = [as_crop(p) for p in photos]
    # 1-2. scales and scaled sizes
    scales = _scales(crops, size, margin, low, relative, rng)
    sizes = [(max(1, round(cr.size[0] * s)), max(1, round(cr.size[1] * s))) for cr, s in zip(crops, scales)]
    # 3. horizontal slots
    slot_of = assign_slots(k, rng, slots, "seg_mix")
    # 4. vertical positions
    ys = _tops(sizes, size, y_tops, rng, same_top)
    # 3 (cont.). horizontal offsets inside the slots
    xs = _lefts(sizes, slot_of, size, edge, rng)
    # 5. paste order (last on top) and pasting
    order = [int(v) for v in rng.permutation(k)]
    boxes = [(xs[i], ys[i], xs[i] + sizes[i][0], ys[i] + sizes[i][1]) for i in range(k)]
    canvas, union = white_canvas(size)
    z_of = [0] * k
    for z, i in enumerate(order):
        z_of[i] = z
        paste_crop(canvas, union, crops[i], boxes[i])
    # 6. caption and bookkeeping
    pidx = list(photo_indices) if photo_indices is not None else [None] * k
    placements = [Placement(keys[i], boxes[i], scales[i], slot_of[i], z_of[i], pidx[i]) for i in range(k)]
    return Example(canvas, union, composite_caption(phrases), keys, "segmix", placements)


def _scales(crops: Sequence[Crop], size: int, margin: float, low: float,
            relative: Sequence[float] | None, rng: np.random.Generator) -> list[float]:
    """Per-subject scale: uniform in [low·m, m] (one draw each, input order), or m·c when relative."""
    k = len(crops)
    if relative is not None:
        if len(relative) != k:
            raise MudiError(f"seg_mix: {k} photos but {len(relative)} relative sizes.")
        for c in relative:
            if not 0 < float(c) <= 1:
                raise MudiError(
                    f"relative size {c} must be in (0, 1]: it is the fraction of the largest allowed "
                    "scale, so give the biggest subject 1 (e.g. a=1,b=0.6)."
                )
    scales: list[float] = []
    for i, cr in enumerate(crops):
        w, h = cr.size
        m = max_scale(w, h, size, k, margin)
        if relative is not None:
            scales.append(m * float(relative[i]))
        else:
            scales.append(float(rng.uniform(low * m, m)))
    return scales


def _tops(sizes: Sequence[Size], size: int, y_tops: Sequence[int] | None, rng: np.random.Generator,
          same_top: bool = False) -> list[int]:
    """Top edges: uniform in U{0..S − h'} (one draw each), one shared draw in U{0..S − max h'}
    (``same_top``), or ``y_tops`` clamped so each fits."""
    if y_tops is None and same_top:
        return [int(rng.integers(0, size - max(nh for _, nh in sizes) + 1))] * len(sizes)
    if y_tops is None:
        return [int(rng.integers(0, size - nh + 1)) for (_, nh) in sizes]
    if len(y_tops) != len(sizes):
        raise MudiError(f"seg_mix: {len(sizes)} photos but {len(y_tops)} vertical positions.")
    return [int(min(max(0, int(y)), size - nh)) for y, (_, nh) in zip(y_tops, sizes)]


def _lefts(sizes: Sequence[Size], slot_of: Sequence[int], size: int, edge: int,
           rng: np.random.Generator) -> list[int]:
    """Left edges: anchored in each subject's slot with a jitter of up to ``edge`` px (one draw each)."""
    k = len(sizes)
    bounds = slot_bounds(size, k)
    xs: list[int] = []
    for i, (nw, _) in enumerate(sizes):
        a, b = bounds[slot_of[i]]
        side = anchor(slot_of[i], k)
        if side == "left":
            x0 = a + int(rng.integers(1, edge + 1))
        elif side == "right":
            x0 = b - int(rng.integers(1, edge + 1)) - nw
        else:
            x0 = round((a + b) / 2 - nw / 2) + int(rng.integers(-(edge // 2), edge // 2 + 1))
        xs.append(int(min(max(0, x0), size - nw)))
    return xs


__all__ = [
    "DEFAULT_LOW",
    "DEFAULT_SEGMIX_MARGIN",
    "MARGIN_FULL_FROM",
    "check_segmix",
    "default_edge_range",
    "default_margin",
    "max_scale",
    "seg_mix",
]
