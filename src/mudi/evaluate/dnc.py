"""Detect-and-Compare (D&C): the multi-subject fidelity metric of MuDI (METHOD.md §6).

This module is the pure math, numpy only, no model. For a generated image showing K subjects,
each with reference embeddings R_k (rows, L2-normalised) and m detected boxes embedded the same
way:

- ``S_DC_raw[i, k] = mean_{r in R_k} cos(box_i, r)`` — :func:`box_similarity` (m × K);
- boxes are matched to subjects greedily, column by column: subject k (in order 0..K-1) takes
  the still unused box with the largest ``S_DC_raw[:, k]`` — :func:`greedy_match`; the matched
  rows form the K × K matrix ``S_DC`` whose row k is the box matched to subject k;
- ``S_GT[k, l] = mean_{r in R_k, r' in R_l} cos(r, r')`` with self-pairs (r = r') included —
  :func:`ground_truth_similarity`;
- ``D&C = 1 − ‖S_GT − S_DC‖`` with the spectral norm (largest singular value) by default, as
  the reference demo computes it (``np.linalg.norm(..., ord=2)``); the Frobenius norm (METHOD.md's
  default, mudi's old one) is an option — :func:`dnc_score`;
- count rule: if m ≠ K the score is 0 and the image is a *count error* ("missing" if m < K,
  "duplicate" if m > K) — :func:`detect_and_compare`.

D&C is 1 for a perfect match; it is not clipped, so an image whose boxes look like the wrong
subjects can score below 0 (below a count error), which is faithful to the formula.

Crops are cut from the image and padded with white to a square (:func:`crop_box`) before they
are embedded; reference photos are embedded whole.

Worked examples from the paper's appendix figure (S_GT = [[0.78, 0.28], [0.28, 0.71]]): matched
S_DC = [[0.72, 0.26], [0.29, 0.71]] → 0.93; [[0.64, 0.28], [0.32, 0.70]] → 0.86;
[[0.27, 0.74], [0.25, 0.71]] → 0.31; three boxes for two subjects → 0 (either norm). The figure's
"severely mixed" (0.56) and three-subject "mixed" (0.62) values come out of neither norm from the
printed matrices, and its three-subject "good" 0.84 only from the Frobenius norm
(tests/test_defaults.py computes all of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from mudi.geometry import pixel_box

Norm = Literal["fro", "spectral"]
NORMS: tuple[str, ...] = ("fro", "spectral")
#: The reference demo's norm (``np.linalg.norm(..., ord=2)``, the spectral norm); "fro" was the old default.
DEFAULT_NORM: Norm = "spectral"

#: OWLv2 score threshold used by the paper for D&C.
DEFAULT_DETECTION_THRESHOLD = 0.4


# ----------------------------------------------------------------------------- crops

def pad_to_square(image: Image.Image, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Centre ``image`` on a ``fill``-coloured square whose side is the image's longer side."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h, 1)
    if w == h == side:
        return image
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Crop ``box`` (pixels, clipped to the image) and pad it white to a square."""
    return pad_to_square(image.convert("RGB").crop(pixel_box(box, image.size)))


# ----------------------------------------------------------------------------- matrices

def _as_rows(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of embeddings (rows), got shape {a.shape}")
    return a


def _normalise(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(n, 1e-12)


def box_similarity(box_embeddings: np.ndarray, reference_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """``S_DC_raw[i, k]``: mean cosine similarity of box i to the references of subject k (m × K).

    Embeddings are re-normalised here, so unnormalised rows are fine too.
    """
    boxes = _normalise(_as_rows(box_embeddings, "box_embeddings"))
    cols = []
    for k, refs in enumerate(reference_embeddings):
        r = _normalise(_as_rows(refs, f"reference_embeddings[{k}]"))
        if r.shape[0] == 0:
            raise ValueError(f"subject {k} has no reference embeddings")
        if boxes.shape[0] and r.shape[1] != boxes.shape[1]:
            raise ValueError(f"embedding sizes differ: boxes {boxes.shape[1]}, subject {k} refs {r.shape[1]}")
        cols.append((boxes @ r.T).mean(axis=1) if boxes.shape[0] else np.zeros(0))
    return np.stack(cols, axis=1) if cols else np.zeros((boxes.shape[0], 0))


def ground_truth_similarity(reference_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """``S_GT[k, l]``: mean cosine over all reference pairs of subjects k and l, self-pairs included."""
    refs = [_normalise(_as_rows(r, f"reference_embeddings[{k}]")) for k, r in enumerate(reference_embeddings)]
    K = len(refs)
    out = np.zeros((K, K))
    for k in range(K):
        for l in range(k, K):
            out[k, l] = out[l, k] = float((refs[k] @ refs[l].T).mean())
    return out


def greedy_match(s_raw: np.ndarray) -> list[int]:
    """Box index for each subject, matching greedily column by column.

    Subject k (k = 0, 1, …, K-1 in this order) takes the unused box i with the largest
    ``s_raw[i, k]``; ties go to the lower box index. This is *not* the optimal assignment: an
    earlier subject can take the box a later subject needed (see the tests). Needs m ≥ K boxes.
    """
    s = np.asarray(s_raw, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (boxes × subjects), got shape {s.shape}")
    m, K = s.shape
    if m < K:
        raise ValueError(f"cannot match {K} subjects to {m} boxes")
    used = np.zeros(m, dtype=bool)
    match: list[int] = []
    for k in range(K):
        col = np.where(used, -np.inf, s[:, k])
        i = int(np.argmax(col))
        used[i] = True
        match.append(i)
    return match


def matrix_norm(a: np.ndarray, norm: Norm = DEFAULT_NORM) -> float:
    """Frobenius (``"fro"``) or spectral (``"spectral"``, largest singular value) norm."""
    if norm == "fro":
        return float(np.linalg.norm(a, "fro"))
    if norm == "spectral":
        return float(np.linalg.norm(a, 2)) if a.size else 0.0
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def dnc_score(s_gt: np.ndarray, s_dc: np.ndarray, norm: Norm = DEFAULT_NORM) -> float:
    """``1 − ‖S_GT − S_DC‖`` for a matched K × K ``S_DC`` (row k = box matched to subject k)."""
    s_gt = np.asarray(s_gt, dtype=np.float64)
    s_dc = np.asarray(s_dc, dtype=np.float64)
    if s_gt.shape != s_dc.shape or s_gt.ndim != 2 or s_gt.shape[0] != s_gt.shape[1]:
        raise ValueError(f"S_GT {s_gt.shape} and S_DC {s_dc.shape} must be the same square shape")
    return 1.0 - matrix_norm(s_gt - s_dc, norm)


# ----------------------------------------------------------------------------- results

@dataclass
class DncResult:
    """Everything D&C computed for one image.

    ``score`` is 0 on a count error. ``s_dc`` is the matched K × K matrix (row k = box matched
    to subject k; ``None`` on a count error); ``s_dc_raw`` the m × K box-to-subject matrix
    before matching; ``matched`` the box index per subject; ``boxes`` all m detected boxes.
    ``identities_ok`` says whether every matched box is most similar to its own subject
    (argmax of row k of ``s_dc`` is k): a simple, threshold-free "nobody was mixed up" check.
    """

    score: float
    count_ok: bool
    n_boxes: int
    n_subjects: int
    s_gt: np.ndarray
    s_dc_raw: np.ndarray
    s_dc: np.ndarray | None = None
    matched: list[int] | None = None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    norm: str = DEFAULT_NORM

    @property
    def count_error(self) -> str | None:
        """``None``, ``"missing"`` (fewer boxes than subjects) or ``"duplicate"`` (more)."""
        if self.count_ok:
            return None
        return "missing" if self.n_boxes < self.n_subjects else "duplicate"

    @property
    def matched_boxes(self) -> list[tuple[float, float, float, float]] | None:
        """Box of each subject in subject order (``None`` on a count error)."""
        if self.matched is None:
            return None
        return [self.boxes[i] for i in self.matched] if self.boxes else None

    @property
    def identities_ok(self) -> bool:
        if self.s_dc is None:
            return False
        return bool(all(int(np.argmax(row)) == k for k, row in enumerate(self.s_dc)))

    def to_dict(self) -> dict:
        """JSON-ready dict (matrices as nested lists rounded to 4 decimals)."""
        def r(a):
            return None if a is None else np.round(np.asarray(a, dtype=float), 4).tolist()

        return {
            "dnc": round(float(self.score), 6),
            "count_ok": self.count_ok,
            "count_error": self.count_error,
            "n_boxes": self.n_boxes,
            "n_subjects": self.n_subjects,
            "identities_ok": self.identities_ok,
            "norm": self.norm,
            "S_GT": r(self.s_gt),
            "S_DC": r(self.s_dc),
            "S_DC_raw": r(self.s_dc_raw),
            "matched": self.matched,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DncResult":
        """The inverse of :meth:`to_dict` (matrices and score as rounded there)."""
        def a(x):
            return None if x is None else np.asarray(x, dtype=np.float64)

        k = int(d["n_subjects"])
        raw = a(d.get("S_DC_raw"))
        return cls(float(d["dnc"]), bool(d["count_ok"]), int(d["n_boxes"]), k, a(d.get("S_GT")),
                   raw if raw is not None else np.zeros((0, k)), a(d.get("S_DC")), d.get("matched"),
                   [tuple(float(v) for v in b) for b in d.get("boxes") or []],
                   d.get("norm", "fro"))  # files without "norm" predate the spectral default


def detect_and_compare(
    s_dc_raw: np.ndarray,
    s_gt: np.ndarray,
    *,
    norm: Norm = DEFAULT_NORM,
    boxes: Sequence[Sequence[float]] | None = None,
) -> DncResult:
    """Apply the count rule, greedy matching and the score to an m × K box/subject matrix."""
    s_raw = np.asarray(s_dc_raw, dtype=np.float64)
    s_gt = np.asarray(s_gt, dtype=np.float64)
    K = s_gt.shape[0]
    if s_raw.ndim != 2 or (s_raw.shape[0] and s_raw.shape[1] != K):
        raise ValueError(f"S_DC_raw {s_raw.shape} must have one column per subject ({K})")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    m = s_raw.shape[0]
    box_list = [tuple(float(v) for v in b) for b in (boxes or [])]
    if boxes is not None and len(box_list) != m:
        raise ValueError(f"{len(box_list)} boxes for a {m}-row similarity matrix")
    if m != K:
        return DncResult(0.0, False, m, K, s_gt, s_raw.reshape(m, K), None, None, box_list, norm)
    match = greedy_match(s_raw)
    s_dc = s_raw[match]
    return DncResult(dnc_score(s_gt, s_dc, norm), True, m, K, s_gt, s_raw, s_dc, match, box_list, norm)


def detect_and_compare_embeddings(
    box_embeddings: np.ndarray,
    reference_embeddings: Sequence[np.ndarray],
    *,
    norm: Norm = DEFAULT_NORM,
    boxes: Sequence[Sequence[float]] | None = None,
    s_gt: np.ndarray | None = None,
) -> DncResult:
    """D&C from embeddings: box rows (m × D) and one (n_k × D) reference array per subject.

    Pass a precomputed ``s_gt`` to avoid recomputing it for every image.
    """
    if s_gt is None:
        s_gt = ground_truth_similarity(reference_embeddings)
    box_embeddings = np.asarray(box_embeddings, dtype=np.float64).reshape(-1, _dim(reference_embeddings))
    s_raw = box_similarity(box_embeddings, reference_embeddings)
    return detect_and_compare(s_raw, s_gt, norm=norm, boxes=boxes)


def _dim(refs: Sequence[np.ndarray]) -> int:
    return int(np.asarray(refs[0]).shape[1]) if len(refs) else 0


__all__ = [
    "DEFAULT_DETECTION_THRESHOLD",
    "DEFAULT_NORM",
    "DncResult",
    "NORMS",
    "box_similarity",
    "crop_box",
    "detect_and_compare",
    "detect_and_compare_embeddings",
    "dnc_score",
    "greedy_match",
    "ground_truth_similarity",
    "matrix_norm",
    "pad_to_square",
]
