"""A toy detector and embedder for toy-world images (classical image processing, no weights).

Why classical: toy scenes are flat-coloured shapes on a few textured backgrounds, so a
background colour model + connected components finds the objects, template matching names
their shape, and a Fourier texture descriptor tells the markings apart. This needs no
training, no download and no randomness, runs in milliseconds, and it degrades gracefully
on the base model's slightly blurry samples (it is checked on both, see tests/test_toy.py).

- :class:`ToyDetector` implements :class:`mudi.protocols.Detector`. A query's class word
  (the last word of the query that is one of :data:`mudi.toy.world.CLASSES`, e.g.
  "wip circle" -> circle) decides what it matches; the score is the IoU between the found
  blob and the best-fitting template of that class.
- :class:`ToyEmbedder` implements :class:`mudi.protocols.Embedder`: it isolates the main
  object of an image (a reference photo or a white-padded crop) and describes its colour,
  shape and markings (a translation-invariant Fourier magnitude of the marking pattern inside
  the object box). Features are centred on the mean of 80 random toy objects so that cosine
  similarity is informative (same subject ~ 0.9, same class but other markings clearly lower).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from mudi.protocols import Detection
from mudi.toy import world

WORK_RES = 64  # images are analysed at 64 x 64


def _as_array(img: Image.Image) -> np.ndarray:
    im = img.convert("RGB")
    if im.size != (WORK_RES, WORK_RES):
        im = im.resize((WORK_RES, WORK_RES), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def foreground_mask(arr: np.ndarray, border: int = 3, thresh: float = 40.0) -> np.ndarray:
    """Pixels unlike every background colour seen on the image border.

    The border ring's pixels (minus the 30 % most atypical, which may belong to objects
    touching the border) are the background samples; the background may be multi-modal
    (e.g. grass plus white padding around a crop). A pixel is foreground when its RGB
    distance to the nearest background sample exceeds `thresh`. A 2x2 closing bridges thin
    markings that match the background, holes are filled, and an opening cuts the thin halos
    and bridges that blur (e.g. from a VAE decoder) leaves between neighbouring objects.
    The parameters were tuned on renders and on VAE reconstructions of renders.
    """
    h, w, _ = arr.shape
    ring = np.concatenate(
        [arr[:border].reshape(-1, 3), arr[-border:].reshape(-1, 3),
         arr[:, :border].reshape(-1, 3), arr[:, -border:].reshape(-1, 3)]
    )
    med = np.median(ring, axis=0)
    d0 = np.sqrt(((ring - med) ** 2).sum(1))
    core = ring[d0 <= np.percentile(d0, 70)]
    core = core[:: max(1, len(core) // 192)]
    x = arr.reshape(-1, 3)
    d2 = (x * x).sum(1)[:, None] - 2 * x @ core.T + (core * core).sum(1)[None, :]
    dist = np.sqrt(np.maximum(d2.min(1), 0)).reshape(h, w)
    fg = dist > thresh
    fg = ndimage.binary_closing(fg, np.ones((2, 2), bool))
    fg = ndimage.binary_fill_holes(fg)
    fg = ndimage.binary_opening(fg, ndimage.generate_binary_structure(2, 1))
    return fg


@lru_cache(maxsize=None)
def _template(shape: str) -> np.ndarray:
    """Canonical boolean mask of `shape`, cropped to its own bounding box (float 0/1)."""
    res = 128
    obj = world.ToyObject(shape, "red", "plain", res / 2, res / 2, res * 0.9)
    s = (np.arange(res, dtype=np.float32) + 0.5)
    ys, xs = np.meshgrid(s, s, indexing="ij")
    m = world._shape_mask(obj, xs, ys)
    rows, cols = np.where(m)
    return m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)


@lru_cache(maxsize=4096)
def _fit_template(shape: str, h: int, w: int, blur: float) -> np.ndarray:
    """The class template stretched to an h x w box; `blur` (px) mimics soft, rounded renders."""
    t = Image.fromarray((_template(shape) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    cov = np.asarray(t, np.float32) / 255.0
    if blur > 0:
        cov = ndimage.gaussian_filter(np.pad(cov, 3), blur)[3:-3, 3:-3]
    return cov >= 0.5


#: Blur levels tried per class: a blob is compared with sharp and with softened templates.
TEMPLATE_BLURS = (0.0, 1.0, 2.0)


def shape_scores(blob: np.ndarray) -> dict[str, float]:
    """Best IoU of a cropped blob (bool, tight box) with each class template stretched to its
    box, over a few template blur levels."""
    h, w = blob.shape
    out = {}
    for c in world.CLASSES:
        best = 0.0
        for b in TEMPLATE_BLURS:
            t = _fit_template(c, h, w, b)
            inter = np.logical_and(t, blob).sum()
            union = np.logical_or(t, blob).sum()
            best = max(best, float(inter / max(union, 1)))
        out[c] = best
    return out


def class_word(query: str) -> str | None:
    """The class word of a query phrase: its last word that is a toy class (or None)."""
    words = [w.strip(".,;:!?").lower() for w in query.split()]
    for w in reversed(words):
        for c in world.CLASSES:
            if w in (c, c + "s"):
                return c
    return None


def find_objects(arr: np.ndarray, min_area: int = 24) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Connected foreground blobs: (x0, y0, x1, y1) box (exclusive end) and the blob crop."""
    fg = foreground_mask(arr)
    lab, n = ndimage.label(fg)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        blob = lab[sl] == i
        if blob.sum() < min_area:
            continue
        ys, xs = sl
        out.append(((xs.start, ys.start, xs.stop, ys.stop), blob))
    return out


def _cores(dist: np.ndarray, max_parts: int) -> list[tuple[np.ndarray, float]]:
    """Object cores of a blob, strongest first: the distinct maxima of its distance transform,
    without the maxima that lie inside a stronger core's inscribed circle (those are the ridge of
    one elongated or ragged object, not a second object). At most ``max_parts``; (pixels, radius)."""
    peaks = (dist == ndimage.maximum_filter(dist, size=5)) & (dist >= 3.0)
    lab, n = ndimage.label(peaks, np.ones((3, 3), bool))
    if n < 2:
        return []
    index = np.arange(1, n + 1)
    strength = np.asarray(ndimage.maximum(dist, lab, index=index))
    centres = np.asarray(ndimage.center_of_mass(peaks, lab, index))
    kept: list[int] = []
    for i in np.argsort(-strength, kind="stable"):
        if all(np.hypot(*(centres[i] - centres[j])) > strength[j] for j in kept):
            kept.append(int(i))
    return [(lab == i + 1, float(strength[i])) for i in kept[:max_parts]]


def _partition(blob: np.ndarray, dist: np.ndarray, cores: list[tuple[np.ndarray, float]], min_area: int,
               neck_ratio: float) -> list[tuple[tuple[int, int, int, int], np.ndarray]] | None:
    """Split ``blob`` among ``cores`` (geodesic Voronoi); None unless every part is an object
    (see :func:`split_blob`)."""
    h, w = blob.shape
    markers = np.zeros((h, w), np.int32)
    for k, (pixels, _) in enumerate(cores, start=1):
        markers[pixels] = k
    cross = ndimage.generate_binary_structure(2, 1)
    for _ in range(h + w):  # geodesic growth into unclaimed blob pixels
        free = blob & (markers == 0)
        if not free.any():
            break
        grown = ndimage.grey_dilation(markers, footprint=cross)
        markers = np.where(free & (grown > 0), grown, markers)
    hi = ndimage.grey_dilation(markers, footprint=cross)
    lo = -ndimage.grey_dilation(-np.where(blob, markers, 10**6), footprint=cross)
    parts = []
    for k, (_, radius) in enumerate(cores, start=1):
        part = markers == k
        # touches another part; background neighbours count neither in hi (label 0) nor lo (10**6)
        border = part & ((hi != k) | (lo != k))
        neck = float(dist[border].max()) if border.any() else 0.0
        if part.sum() < min_area or neck > neck_ratio * radius:
            return None
        ys, xs = np.where(part)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = part[y0:y1, x0:x1]
        if max(shape_scores(crop).values()) < 0.5:
            return None
        parts.append(((int(x0), int(y0), int(x1), int(y1)), crop))
    return parts


def split_blob(blob: np.ndarray, min_area: int, max_parts: int = 3,
               neck_ratio: float = 0.8) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Split a blob of touching objects at its necks (the way a detector still sees two objects).

    Seeds are the object cores of :func:`_cores` (distance-transform maxima, a ridge inside one
    object counted once); each pixel goes to the core it reaches first by growing inside the blob
    (a geodesic Voronoi split). A split is kept only where the blob really narrows between the
    parts: the widest point of each part's border with the others (its distance-transform value)
    must be at most `neck_ratio` times the part's core radius, and every part must look like some
    class (template IoU >= 0.5). With more cores than objects (a ragged object has a second
    maximum) the weakest cores are dropped one at a time until a split passes. A single object
    (one core) is never split. Returns (box, crop) pairs in the blob's own coordinates;
    ``[(whole box, blob)]`` when there is nothing to split.
    """
    h, w = blob.shape
    dist = ndimage.distance_transform_edt(np.pad(blob, 1))[1:-1, 1:-1]
    cores = _cores(dist, max_parts)
    for k in range(len(cores), 1, -1):
        parts = _partition(blob, dist, cores[:k], min_area, neck_ratio)
        if parts is not None:
            return parts
    return [((0, 0, w, h), blob)]


class ToyDetector:
    """Open-vocabulary-style detector for the toy world (see module docstring).

    Touching objects that merge into one foreground blob are split at their necks
    (:func:`split_blob`), as a learned detector would still report two objects.
    """

    def __init__(self, min_area: int = 24, margin: int = 2, split: bool = True):
        self.min_area = min_area
        self.margin = margin  # boxes are grown by this many pixels (64 px scale), like OWLv2's loose boxes
        self.split = split

    def objects(self, arr: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """Object boxes (64 px scale, exclusive end) and masks in `arr`, merged blobs split."""
        out = []
        for (x0, y0, x1, y1), blob in find_objects(arr, self.min_area):
            if not self.split:
                out.append(((x0, y0, x1, y1), blob))
                continue
            for (a0, b0, a1, b1), crop in split_blob(blob, self.min_area):
                out.append(((x0 + a0, y0 + b0, x0 + a1, y0 + b1), crop))
        return out

    def detect(
        self, images: Sequence[Image.Image], queries: Sequence[str], threshold: float
    ) -> list[list[Detection]]:
        """Detections per image for all `queries` at once (score = template IoU >= threshold).

        Each blob is given to the query whose class fits it best; queries sharing a class word
        (e.g. "wip circle" and "jam circle") share blobs, reported under the first such query.
        """
        classes = [class_word(q) for q in queries]
        results: list[list[Detection]] = []
        for img in images:
            sx, sy = img.size[0] / WORK_RES, img.size[1] / WORK_RES
            arr = _as_array(img)
            dets: list[Detection] = []
            for (x0, y0, x1, y1), blob in self.objects(arr):
                scores = shape_scores(blob)
                best_q, best_s = -1, -1.0
                for qi, c in enumerate(classes):
                    if c is None:
                        continue
                    # a blob only answers the query if that class is (nearly) its best fit
                    if scores[c] >= max(scores.values()) - 0.02 and scores[c] > best_s:
                        best_q, best_s = qi, scores[c]
                if best_q >= 0 and best_s >= threshold:
                    m = self.margin
                    x0, y0 = max(0, x0 - m), max(0, y0 - m)
                    x1, y1 = min(WORK_RES, x1 + m), min(WORK_RES, y1 + m)
                    dets.append(Detection((x0 * sx, y0 * sy, x1 * sx, y1 * sy), best_s, best_q))
            dets.sort(key=lambda d: -d.score)
            results.append(dets)
        return results


# ---------------------------------------------------------------------------------------------
# Embedder


def _main_object(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Mask and box of the largest foreground blob (whole image if none)."""
    objs = find_objects(arr, min_area=12)
    h, w, _ = arr.shape
    if not objs:
        return np.ones((h, w), bool), (0, 0, w, h)
    (x0, y0, x1, y1), blob = max(objs, key=lambda o: o[1].sum())
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = blob
    return m, (x0, y0, x1, y1)


TEX_RES = 24  # object box is resampled to this for the texture descriptor
TEX_K = 7  # keep Fourier frequencies 0..TEX_K-1 (cycles per object box)


def _features(arr: np.ndarray) -> np.ndarray:
    mask, (x0, y0, x1, y1) = _main_object(arr)
    lum = arr @ np.array([0.299, 0.587, 0.114], np.float32)
    # colour: the object's dominant (median) colour and the share of dark/bright mark pixels
    px = arr[mask]
    lpx = lum[mask]
    base = np.median(px, axis=0) / 255.0
    dark = float((lpx < 70).mean())
    sat = px.max(axis=1) - px.min(axis=1)
    bright = float(((lpx > 180) & (sat < 40)).mean())  # light grey / white marks
    # texture: Fourier magnitude of the luminance pattern inside the object box
    crop = lum[y0:y1, x0:x1].copy()
    cm = mask[y0:y1, x0:x1]
    mean_in = crop[cm].mean() if cm.any() else crop.mean()
    crop[~cm] = mean_in
    crop = crop - mean_in
    t = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((TEX_RES, TEX_RES), Image.BILINEAR))
    spec = np.abs(np.fft.fft2(t)) / (TEX_RES * TEX_RES)
    # half plane (|F| of a real image is point-symmetric): ky in 0..K-1, kx in -(K-1)..K-1
    kx = np.arange(-(TEX_K - 1), TEX_K) % TEX_RES
    spec = spec[:TEX_K][:, kx]
    spec[0, TEX_K - 1] = 0.0  # DC
    tex = np.sqrt(spec).ravel()
    tex = tex / (np.linalg.norm(tex) + 1e-6)
    # coarse shape: the blob resampled to 8x8
    sh = np.asarray(Image.fromarray((cm * 255).astype(np.uint8)).resize((8, 8), Image.BILINEAR), np.float32) / 255.0
    return np.concatenate([
        2.0 * base, [2.0 * dark, 2.0 * bright], 3.0 * tex, 0.5 * sh.ravel() / 8.0,
    ]).astype(np.float32)


@lru_cache(maxsize=1)
def _feature_mean() -> np.ndarray:
    """Mean feature of 80 random single-object toy photos (fixed seed): the centring vector."""
    rng = np.random.default_rng(12345)
    feats = []
    for _ in range(80):
        sc = world.sample_scene(rng, 64, n_objects=1)
        img, _ = world.render_scene(sc)
        feats.append(_features(img.astype(np.float32)))
    return np.mean(feats, axis=0).astype(np.float32)


class ToyEmbedder:
    """Identity embedder for toy objects (see module docstring). Deterministic, no weights."""

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One L2-normalised float32 row per image, shape (N, D)."""
        mu = _feature_mean()
        rows = []
        for img in images:
            f = _features(_as_array(img)) - mu
            rows.append(f / (np.linalg.norm(f) + 1e-8))
        if not rows:
            return np.zeros((0, mu.shape[0]), np.float32)
        return np.stack(rows).astype(np.float32)
