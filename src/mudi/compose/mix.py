"""Training-example composition: Seg-Mix, the Cut-Mix baseline and plain examples (METHOD.md §2).

Pure PIL/numpy code, no torch and no model. Every random choice is drawn from a
:class:`numpy.random.Generator` passed in, so an example is a deterministic function of its
inputs and the generator state.

Seg-Mix geometry on an S×S white canvas (k subjects, defaults give exactly METHOD §2 for k = 2)
----------------------------------------------------------------------------------------------
1. Each photo and mask is cropped to the mask's bounding box (w × h).
2. Largest scale ``m = min((S/k − margin)/w, (S − margin)/h)`` (``margin`` = 32; for k = 2 this is
   ``min((S/2 − 32)/w, (S − 32)/h)``; on canvases smaller than 256 px -- tiny test runs -- the
   default margin is S/8 so that a slot stays usable; pass ``margin=`` to override). The scale is
   drawn uniformly in ``[low·m, m]`` (``low`` = 0.75) independently per subject; in relative-size
   mode it is fixed to ``m·c``.
   The scaled size is ``(round(w·s), round(h·s))`` (at least 1 px).
3. The canvas is split into k equal vertical slots; a random permutation decides which subject
   takes which slot (k = 2: "a random one goes left"). With edge range ``E`` (default
   ``S // (2k)``, i.e. S/4 for k = 2):

   - slots left of the middle are *left-anchored*: left edge at ``slot_start + U{1..E}``;
   - slots right of the middle are *right-anchored*: right edge at ``slot_end − U{1..E}``;
   - the middle slot of an odd k is *centred*: centre at ``slot_centre + U{−E//2..E//2}``.

   For k = 2 this is exactly "left subject's left edge at U{1..S/4}; right subject's right edge
   at S − U{1..S/4}". Slot boundaries are ``round(i·S/k)``. Boxes are clamped to the canvas
   (never needed with the default parameters).
4. Vertical position: top edge uniform in ``U{0..S − h'}`` (the subject always fits).
5. Overlap is allowed; a random permutation decides the paste order, the last pasted is on top
   (k = 2: a fair coin). Only mask pixels are pasted; everything else is pure white.
6. Caption: ``a photo of a {A} and a {B}, simple background.``; for k ≥ 3
   ``a photo of a {A}, a {B} and a {C}, simple background.`` (current subject first).

Random draws happen in this fixed order: scales (per subject, in input order; skipped in
relative-size mode), slot permutation (skipped when ``slots`` is given), top edges (skipped when
``y_tops`` is given), horizontal offsets (per subject, input order), paste-order permutation.

Cut-Mix geometry (baseline; whole photos, no masks pasted)
---------------------------------------------------------
The canvas is split into the same k slots ``[round(i·S/k), round((i+1)·S/k))`` × ``[0, S)``; a
random permutation assigns subjects to slots. Each photo is scaled to *cover* its slot
(``scale = max(slot_w/W, S/H)``) and the slot-sized window is centred on the subject's mask
bounding-box centre, clamped to the photo, so the subject stays in view. The slots tile the
canvas, so the union mask (the pasted rectangles) is all True. Only the slot order is random.

Plain examples
--------------
The photo is resized so its shortest side is S (bicubic) and centre-cropped to S×S; its mask is
transformed identically (bilinear, threshold 128); the caption is the photo's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto, SubjectSet, parse_subject_values

MIX_KINDS = ("segmix", "cutmix", "none")
WHITE = (255, 255, 255)
DEFAULT_LOW = 0.75
#: Seg-Mix margin in pixels (METHOD §2) on canvases of MARGIN_FULL_FROM px and more.
DEFAULT_SEGMIX_MARGIN = 32
#: Below this canvas side the default margin shrinks proportionally (S/8), so tiny test canvases work.
MARGIN_FULL_FROM = 256
#: Resampling filter for photos (masks use bilinear + threshold 128).
RESAMPLE = Image.BICUBIC
RELATIVE_SIZE_MEANING = "a fraction of the largest allowed scale; give the biggest subject 1, e.g. a=1,b=0.6"


# ----------------------------------------------------------------------------- data types


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
        return self.image.size


def crop_photo(photo: SegmentedPhoto) -> Crop:
    """Crop a photo and its mask to the mask's bounding box."""
    x0, y0, x1, y1 = photo.bbox
    img = Image.fromarray(np.ascontiguousarray(photo.image[y0:y1, x0:x1]), "RGB")
    m = np.where(photo.mask[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return Crop(img, Image.fromarray(m, "L"), (x0, y0))


def _as_crop(p: SegmentedPhoto | Crop) -> Crop:
    return p if isinstance(p, Crop) else crop_photo(p)


# ----------------------------------------------------------------------------- captions


def composite_caption(phrases: Sequence[str]) -> str:
    """``a photo of a {A} and a {B}, simple background.``; for 3+: ``a {A}, a {B} and a {C}``."""
    parts = [f"a {p}" for p in phrases]
    if len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {body}, simple background."


# ----------------------------------------------------------------------------- geometry helpers


def default_margin(size: int) -> float:
    """The default margin: 32 px (METHOD §2) for canvases of 256 px and more, S/8 below that."""
    return float(DEFAULT_SEGMIX_MARGIN) if size >= MARGIN_FULL_FROM else size / 8


def max_scale(w: int, h: int, size: int, k: int = 2, margin: float | None = None) -> float:
    """Largest Seg-Mix scale ``m = min((S/k − margin)/w, (S − margin)/h)``."""
    if margin is None:
        margin = default_margin(size)
    return min((size / k - margin) / w, (size - margin) / h)


def slot_bounds(size: int, k: int) -> list[tuple[int, int]]:
    """The k equal vertical slots ``[round(i·S/k), round((i+1)·S/k))``."""
    edges = [round(i * size / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def default_edge_range(size: int, k: int = 2) -> int:
    """Default horizontal jitter range ``S // (2k)`` (S/4 for two subjects)."""
    return max(1, size // (2 * k))


def _anchor(slot: int, k: int) -> str:
    mid = (k - 1) / 2
    if slot < mid:
        return "left"
    if slot > mid:
        return "right"
    return "center"


def _check_params(size: int, k: int, low: float, margin: float | None, edge_range: int | None) -> int:
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


_THRESHOLD_LUT = [0] * 128 + [255] * 128


def _binary_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an 'L' 0/255 mask (bilinear) and threshold it at 128 back to 0/255."""
    return mask.resize(size, Image.BILINEAR).point(_THRESHOLD_LUT)


def _paste(canvas: Image.Image, union: np.ndarray, img: Image.Image, mask: Image.Image, x0: int, y0: int) -> None:
    """Copy the mask pixels of ``img`` into ``canvas`` at (x0, y0) (clipped at the borders).

    ``mask`` is binary 0/255, so PIL's masked paste copies mask pixels exactly and leaves the
    others untouched.
    """
    canvas.paste(img, (x0, y0), mask)
    S_h, S_w = union.shape
    w, h = mask.size
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(S_w, x0 + w), min(S_h, y0 + h)
    if cx0 < cx1 and cy0 < cy1:
        m = np.asarray(mask)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] != 0
        union[cy0:cy1, cx0:cx1] |= m


# ----------------------------------------------------------------------------- Seg-Mix


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
) -> Example:
    """Seg-Mix composite of k = len(photos) segmented subjects on a white S×S canvas.

    ``photos[0]`` is the current subject (its phrase comes first in the caption). ``relative``
    gives fixed scale ratios c (scale = m·c, 0 < c <= 1) instead of random scales; ``slots``
    fixes which horizontal slot each subject takes and ``y_tops`` its top edge (clamped so the
    subject fits) -- used to compose a class example "like" an instance example. See the module
    docstring for the exact geometry and the order of random draws.
    """
    k = len(photos)
    if len(phrases) != k:
        raise MudiError(f"seg_mix: {k} photos but {len(phrases)} phrases.")
    keys = list(keys) if keys is not None else list(phrases)
    E = _check_params(size, k, low, margin, edge_range)
    margin = default_margin(size) if margin is None else float(margin)
    crops = [_as_crop(p) for p in photos]

    # 1-2. scales
    scales: list[float] = []
    if relative is not None:
        if len(relative) != k:
            raise MudiError(f"seg_mix: {k} photos but {len(relative)} relative sizes.")
        for c in relative:
            if not 0 < float(c) <= 1:
                raise MudiError(
                    f"relative size {c} must be in (0, 1]: it is the fraction of the largest allowed "
                    "scale, so give the biggest subject 1 (e.g. a=1,b=0.6)."
                )
    for i, cr in enumerate(crops):
        w, h = cr.size
        m = max_scale(w, h, size, k, margin)
        if relative is not None:
            scales.append(m * float(relative[i]))
        else:
            scales.append(float(rng.uniform(low * m, m)))
    sizes = [(max(1, round(cr.size[0] * s)), max(1, round(cr.size[1] * s))) for cr, s in zip(crops, scales)]

    # 3. horizontal slots
    if slots is None:
        slot_of = [int(v) for v in rng.permutation(k)]
    else:
        slot_of = [int(v) for v in slots]
        if sorted(slot_of) != list(range(k)):
            raise MudiError(f"seg_mix: slots {slot_of} must be a permutation of 0..{k - 1}.")

    # 4. vertical positions
    if y_tops is None:
        ys = [int(rng.integers(0, size - nh + 1)) for (_, nh) in sizes]
    else:
        if len(y_tops) != k:
            raise MudiError(f"seg_mix: {k} photos but {len(y_tops)} vertical positions.")
        ys = [int(min(max(0, int(y)), size - nh)) for y, (_, nh) in zip(y_tops, sizes)]

    # horizontal offsets
    bounds = slot_bounds(size, k)
    xs: list[int] = []
    for i, (nw, _) in enumerate(sizes):
        a, b = bounds[slot_of[i]]
        anchor = _anchor(slot_of[i], k)
        if anchor == "left":
            x0 = a + int(rng.integers(1, E + 1))
        elif anchor == "right":
            x0 = b - int(rng.integers(1, E + 1)) - nw
        else:
            x0 = round((a + b) / 2 - nw / 2) + int(rng.integers(-(E // 2), E // 2 + 1))
        xs.append(int(min(max(0, x0), size - nw)))

    # 5. paste order (last on top)
    order = [int(v) for v in rng.permutation(k)]

    canvas = Image.new("RGB", (size, size), WHITE)
    union = np.zeros((size, size), dtype=bool)
    z_of = [0] * k
    for z, i in enumerate(order):
        z_of[i] = z
        img = crops[i].image.resize(sizes[i], RESAMPLE)
        _paste(canvas, union, img, _binary_mask(crops[i].mask, sizes[i]), xs[i], ys[i])

    pidx = list(photo_indices) if photo_indices is not None else [None] * k
    placements = [
        Placement(
            key=keys[i],
            box=(xs[i], ys[i], xs[i] + sizes[i][0], ys[i] + sizes[i][1]),
            scale=scales[i],
            slot=slot_of[i],
            z=z_of[i],
            photo=pidx[i],
        )
        for i in range(k)
    ]
    return Example(canvas, union, composite_caption(phrases), keys, "segmix", placements)


# ----------------------------------------------------------------------------- Cut-Mix


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

    Each photo covers its slot (scaled to cover, window centred on the subject's mask box and
    clamped to the photo). The only random draw is the slot permutation (skipped when ``slots``
    is given). The union mask is the pasted rectangles (all True: the slots tile the canvas).
    """
    k = len(photos)
    if len(phrases) != k:
        raise MudiError(f"cut_mix: {k} photos but {len(phrases)} phrases.")
    if k < 2:
        raise MudiError(f"a composite needs at least 2 subjects (got k={k}).")
    if size < k:
        raise MudiError(f"canvas size {size} is too small for {k} slots.")
    keys = list(keys) if keys is not None else list(phrases)
    if slots is None:
        slot_of = [int(v) for v in rng.permutation(k)]
    else:
        slot_of = [int(v) for v in slots]
        if sorted(slot_of) != list(range(k)):
            raise MudiError(f"cut_mix: slots {slot_of} must be a permutation of 0..{k - 1}.")
    bounds = slot_bounds(size, k)
    canvas = Image.new("RGB", (size, size), WHITE)
    union = np.zeros((size, size), dtype=bool)
    pidx = list(photo_indices) if photo_indices is not None else [None] * k
    placements = []
    for i, ph in enumerate(photos):
        a, b = bounds[slot_of[i]]
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
        union[:, a:b] = True
        placements.append(Placement(keys[i], (a, 0, b, size), float(scale), slot_of[i], slot_of[i], pidx[i]))
    return Example(canvas, union, composite_caption(phrases), keys, "cutmix", placements)


# ----------------------------------------------------------------------------- plain


def plain(photo: SegmentedPhoto, size: int, caption: str | None = None, *, key: str = "",
          photo_index: int | None = None) -> Example:
    """The photo resized (shortest side = S) and centre-cropped to S×S, mask transformed alike."""
    H, W = photo.image.shape[:2]
    scale = size / min(W, H)
    nw, nh = max(size, round(W * scale)), max(size, round(H * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    box = (left, top, left + size, top + size)
    img = Image.fromarray(photo.image, "RGB").resize((nw, nh), RESAMPLE).crop(box)
    m_img = Image.fromarray(np.where(photo.mask, 255, 0).astype(np.uint8), "L")
    mask = np.asarray(_binary_mask(m_img, (nw, nh)).crop(box)) != 0
    pl = Placement(key, (-left, -top, nw - left, nh - top), float(scale), 0, 0, photo_index)
    return Example(img, mask, caption if caption is not None else photo.caption, [key], "plain", [pl])


# ----------------------------------------------------------------------------- loss weights


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


# ----------------------------------------------------------------------------- Composer


ClassPhotos = Mapping[str, Sequence[SegmentedPhoto]]


class Composer:
    """The METHOD §2 per-example procedure over a :class:`SubjectSet`.

    ``example(key, index, rng)``: with probability ``p`` (and ``mix`` != "none") the example of
    subject ``key``'s photo ``index`` becomes a composite of that photo and ``k − 1`` other
    subjects chosen uniformly without replacement, each with a uniformly chosen photo; otherwise
    it is the plain photo. The decision draw ``rng.random()`` is always made (also for
    ``mix="none"``), so the same seed gives the same decisions whatever the mix kind.

    Options: ``low`` (0.75), ``margin`` (32; S/8 below 256 px), ``edge_range`` (S // (2k)), ``relative_sizes``
    (mapping key/identifier/phrase → c in (0, 1]; unlisted subjects get 1; enables
    relative-size mode for every composite).
    """

    def __init__(
        self,
        subject_set: SubjectSet,
        size: int,
        mix: str = "segmix",
        p: float = 0.3,
        k: int = 2,
        *,
        low: float = DEFAULT_LOW,
        margin: float | None = None,
        edge_range: int | None = None,
        relative_sizes: Mapping[str, float] | None = None,
    ):
        if mix not in MIX_KINDS:
            raise MudiError(f"unknown mix {mix!r}; choose one of {', '.join(MIX_KINDS)}.")
        if not 0 <= p <= 1:
            raise MudiError(f"the composite probability p must be in [0, 1] (got {p}).")
        n = len(subject_set)
        if mix != "none" and not 2 <= k <= n:
            raise MudiError(
                f"k={k} subjects per composite, but the set has {n} subjects; choose 2 <= k <= {n}."
            )
        self.edge_range = _check_params(size, k, low, margin, edge_range) if mix == "segmix" else edge_range
        self.set = subject_set
        self.size = int(size)
        self.mix = mix
        self.p = float(p)
        self.k = int(k)
        self.low = float(low)
        self.margin = default_margin(size) if margin is None else float(margin)
        self.relative: dict[str, float] | None = None
        if relative_sizes:
            self.relative = {s.key: 1.0 for s in subject_set}
            self.relative.update(parse_subject_values(
                relative_sizes, subject_set, low=0.0, high=1.0, option="relative sizes",
                meaning=RELATIVE_SIZE_MEANING,
            ))
        self._crops: dict[tuple[str, int], Crop] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def keys(self) -> list[str]:
        return self.set.keys

    def phrase(self, key: str) -> str:
        return self.set.subject(key).phrase

    def crop(self, key: str, index: int) -> Crop:
        """Cached bbox crop of photo ``index`` of subject ``key``."""
        ck = (key, index)
        if ck not in self._crops:
            self._crops[ck] = crop_photo(self.set.photos(key)[index])
        return self._crops[ck]

    def _compose(self, photos, crops, phrases, keys, indices, rng, *, slots=None, y_tops=None) -> Example:
        if self.mix == "cutmix":
            return cut_mix(photos, phrases, self.size, rng, keys=keys, slots=slots, photo_indices=indices)
        rel = [self.relative.get(key, 1.0) for key in keys] if self.relative else None
        return seg_mix(
            crops, phrases, self.size, rng, keys=keys, relative=rel, low=self.low, margin=self.margin,
            edge_range=self.edge_range, slots=slots, y_tops=y_tops, photo_indices=indices,
        )

    # ------------------------------------------------------------------ API
    def composite(self, key: str, index: int, rng: np.random.Generator) -> Example:
        """A composite (Seg-Mix or Cut-Mix per ``mix``) of ``key``'s photo ``index`` and k − 1
        other subjects, regardless of p."""
        key = self.set.subject(key).key
        photos_a = self.set.photos(key)
        index = int(index) % len(photos_a)
        others = [s for s in self.keys if s != key]
        chosen = [others[int(i)] for i in rng.choice(len(others), size=self.k - 1, replace=False)]
        keys = [key, *chosen]
        indices = [index] + [int(rng.integers(len(self.set.photos(o)))) for o in chosen]
        photos = [self.set.photos(kk)[ii] for kk, ii in zip(keys, indices)]
        crops = [self.crop(kk, ii) for kk, ii in zip(keys, indices)] if self.mix != "cutmix" else None
        return self._compose(photos, crops, [self.phrase(kk) for kk in keys], keys, indices, rng)

    def example(self, key: str, index: int, rng: np.random.Generator) -> Example:
        """One training example for subject ``key``'s photo ``index`` (METHOD §2)."""
        key = self.set.subject(key).key
        photos = self.set.photos(key)
        index = int(index) % len(photos)
        if rng.random() < self.p and self.mix != "none":
            return self.composite(key, index, rng)
        return plain(photos[index], self.size, photos[index].caption, key=key, photo_index=index)

    def mix_like(
        self,
        class_photos: ClassPhotos | SubjectSet,
        example: Example,
        rng: np.random.Generator,
        *,
        class_names: Mapping[str, str] | None = None,
    ) -> Example:
        """The prior-preservation (class) example matching an instance ``example`` (METHOD §3).

        ``class_photos`` maps each subject key to its segmented class images (or is a
        SubjectSet with the same keys). One class image per subject is chosen uniformly. For a
        composite instance example, the class images are composed with the same mix kind, the
        same horizontal slots and the same top edges (clamped so each fits) -- scales, offsets
        and the top/bottom coin are drawn afresh -- and captioned
        ``a photo of a {class A} and a {class B}, simple background.`` (class names default to the
        subjects' descriptive classes). For a plain instance example the result is the chosen
        class image of the example's subject as a plain example with its own caption.
        """
        names = {s.key: s.cls for s in self.set}
        if class_names:
            names.update(class_names)

        def photos_of(key: str) -> Sequence[SegmentedPhoto]:
            try:
                ph = class_photos.photos(key) if isinstance(class_photos, SubjectSet) else class_photos[key]
            except (KeyError, MudiError):
                ph = []
            if not ph:
                raise MudiError(f"no class (prior) images for subject {key!r}; generate them with `mudi priors`.")
            return ph

        keys = list(example.subjects)
        chosen = []
        for key in keys:
            ph = photos_of(key)
            i = int(rng.integers(len(ph)))
            chosen.append((i, ph[i]))
        if not example.is_composite:
            i, ph = chosen[0]
            return plain(ph, self.size, ph.caption, key=keys[0], photo_index=i)
        phrases = [names[key] for key in keys]
        indices = [i for i, _ in chosen]
        photos = [ph for _, ph in chosen]
        slots = [pl.slot for pl in example.placements]
        if example.kind == "cutmix":
            return cut_mix(photos, phrases, self.size, rng, keys=keys, slots=slots, photo_indices=indices)
        y_tops = [pl.box[1] for pl in example.placements]
        rel = [self.relative.get(key, 1.0) for key in keys] if self.relative else None
        return seg_mix(
            photos, phrases, self.size, rng, keys=keys, relative=rel, low=self.low, margin=self.margin,
            edge_range=self.edge_range, slots=slots, y_tops=y_tops, photo_indices=indices,
        )


def parse_relative_sizes(text: str, sset: SubjectSet | None = None) -> dict[str, float]:
    """Parse ``"a=1,b=0.6"`` into ``{"a": 1.0, "b": 0.6}``: each ratio c in (0, 1] is a fraction of
    the largest allowed Seg-Mix scale (names are keys, identifiers or phrases; resolved to keys
    with ``sset``). An empty text is an error: leave the option out instead."""
    if not text or not text.strip():
        raise MudiError("--relative-sizes is empty; give NAME=RATIO pairs, e.g. a=1,b=0.6.")
    return parse_subject_values(
        text, sset, low=0.0, high=1.0, option="--relative-sizes", meaning=RELATIVE_SIZE_MEANING,
    )
