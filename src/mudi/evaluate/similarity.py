"""The metrics the multi-subject papers report beside D&C, as pure numpy functions.

All embeddings are rows; they are L2-normalised here, so cosine = dot product.

- :func:`reference_similarity` — DINO and CLIP-I: the whole generated image against every
  reference photo of each subject it should show (DreamBench's protocol, extended to several
  subjects as the multi-subject papers do: averaged over each subject's references, then over
  its subjects).
- :func:`text_similarity` — CLIP-T: cosine of the image and the prompt (identifiers removed).
- :func:`identity_scores` — a detect-then-compare identity score per subject (0 when absent).
- :func:`subject_counts` — missing and duplicated subjects of an image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _rows(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"embeddings must be rows (N x D), got shape {a.shape}")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def reference_similarity(image_embeddings, references: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DINO / CLIP-I of N images that each show the K subjects of ``references``.

    Definition: ``per_subject[i, k] = mean_{r in R_k} cos(x_i, r)`` where ``x_i`` is the
    embedding of the whole image i and ``R_k`` the embeddings of subject k's reference photos;
    the image's score is ``mean_k per_subject[i, k]``. With one subject this is DreamBench's
    DINO / CLIP-I (average pairwise cosine of a generated and the real images). Its maximum, 1,
    is reached when the image and every reference have the same embedding.

    Returns:
        ``(score (N,), per_subject (N, K))``.
    """
    x = _rows(image_embeddings)
    if not len(references):
        raise ValueError("no subjects to compare with")
    cols = []
    for k, refs in enumerate(references):
        r = _rows(refs)
        if r.shape[0] == 0 or r.shape[1] != x.shape[1]:
            raise ValueError(f"subject {k}: references of shape {r.shape} do not fit images of width {x.shape[1]}")
        cols.append((x @ r.T).mean(axis=1))
    per = np.stack(cols, axis=1)
    return per.mean(axis=1), per


def text_similarity(image_embeddings, text_embeddings) -> np.ndarray:
    """CLIP-T of N (image, text) pairs: ``cos(image_i, text_i)``, not clipped, not scaled.

    This is the raw cosine the DreamBench tables report (about 0.3 for a good match with
    ViT-B/32); mudi's ``clip_score`` is the other convention, ``100 · max(cos, 0)``.
    """
    x, t = _rows(image_embeddings), _rows(text_embeddings)
    if x.shape != t.shape:
        raise ValueError(f"{x.shape[0]} images but {t.shape[0]} texts (or widths differ)")
    return np.einsum("nd,nd->n", x, t)


def identity_scores(box_similarity: np.ndarray, n_subjects: int) -> np.ndarray:
    """Detect-then-compare identity score of each of K subjects in one image.

    ``box_similarity[i, k]`` is the mean cosine of detected box i's crop to subject k's
    references (D&C's ``S_DC_raw``, m × K). Boxes and subjects are paired one to one, best pair
    first: the largest remaining entry pairs its box with its subject, and both leave the table,
    until boxes or subjects run out. A subject's score is its pair's similarity (clipped below
    at 0); a subject left without a box — absent from the image — scores 0.

    Returns:
        (K,) scores in [0, 1].
    """
    s = np.asarray(box_similarity, dtype=np.float64).reshape(-1, n_subjects)
    out = np.zeros(n_subjects)
    free_b, free_k = np.ones(s.shape[0], bool), np.ones(n_subjects, bool)
    for _ in range(min(s.shape[0], n_subjects)):
        masked = np.where(free_b[:, None] & free_k[None, :], s, -np.inf)
        i, k = np.unravel_index(int(np.argmax(masked)), masked.shape)
        out[k] = max(float(s[i, k]), 0.0)
        free_b[i], free_k[k] = False, False
    return out


def subject_counts(box_similarity: np.ndarray | None, n_boxes: int, n_subjects: int) -> tuple[int, int]:
    """``(missing, duplicate)`` subjects of one image.

    Every detected box is given to the subject it is most similar to (argmax of its row of
    ``box_similarity``, m × K). ``missing`` = subjects with no box; ``duplicate`` = boxes beyond
    the first of each subject, ``sum_k max(n_k − 1, 0)``. A reference pasted twice for two
    subjects is one duplicate and one missing; one subject alone is one missing. Without box
    embeddings (``None`` or too few rows) only the counts decide: ``max(K − m, 0)`` missing,
    ``max(m − K, 0)`` duplicate.
    """
    s = None if box_similarity is None else np.asarray(box_similarity, dtype=np.float64)
    if s is None or s.ndim != 2 or s.shape[0] != n_boxes or n_boxes == 0:
        return max(n_subjects - n_boxes, 0), max(n_boxes - n_subjects, 0)
    per = np.bincount(np.argmax(s, axis=1), minlength=n_subjects)
    return int((per == 0).sum()), int(np.maximum(per - 1, 0).sum())


__all__ = ["identity_scores", "reference_similarity", "subject_counts", "text_similarity"]
