"""The summary of a run: D&C, success and count errors overall, per k, per subject combination,
per prompt and per subject (:func:`summarize`).

**Success rate.** An image is a *success* when the detector finds exactly one box per subject
(no count error) and its D&C is at least ``success_threshold`` (default
:data:`DEFAULT_SUCCESS_THRESHOLD` = 0.8). Why 0.8: on the paper's worked examples a clean image
scores 0.93, a *slightly* mixed one 0.86, a fully mixed subject (a box equally similar to both
subjects, row ≈ [0.5, 0.5]) about 0.64, and one subject drawn twice 0.31. A threshold of 0.8
accepts the clean and barely-mixed images, rejects visible mixing and duplicates, and leaves
~0.1 of slack below a clean score for the pose/crop noise of real generations (with DINOv2
the cross-photo similarities are lower than DreamSim's, so a clean image sits lower too).
It approximates the paper's human criterion "every subject present and none mixed"; change it
with ``success_threshold=`` / ``--success-threshold``. The threshold-free check
``identities_ok`` (every matched box is closest to its own subject) is reported alongside.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from mudi.evaluate.results import ImageResult

#: Minimum D&C of a successful image (see the module docstring for the reasoning).
DEFAULT_SUCCESS_THRESHOLD = 0.8
#: Per-image metrics beside D&C whose means the summary holds (``dino_mean``, ...).
METRICS = ("dino", "clip_i", "clip_t", "identity", "missing", "duplicate")


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "std": None, "sem": None}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": round(float(a.mean()), 6), "std": round(std, 6), "sem": round(std / math.sqrt(a.size), 6)}


def _group_summary(rs: Sequence[ImageResult]) -> dict:
    scored = [r for r in rs if r.dnc is not None]
    n = len(scored)
    dnc = _stats([r.dnc.score for r in scored])
    ok = [r for r in scored if r.dnc.count_ok]
    clip = _stats([r.clip_score for r in scored if r.clip_score is not None])
    ir = _stats([r.image_reward for r in scored if r.image_reward is not None])
    frac = (lambda c: round(c / n, 6) if n else None)
    p_succ = sum(1 for r in scored if r.success) / n if n else 0.0
    return {
        "n_images": len(rs),
        "n_scored": n,
        "n_errors": sum(1 for r in rs if r.error),
        "dnc_mean": dnc["mean"],
        "dnc_std": dnc["std"],
        "dnc_sem": dnc["sem"],
        "dnc_mean_count_ok": _stats([r.dnc.score for r in ok])["mean"],
        "success_rate": frac(sum(1 for r in scored if r.success)),
        "success_rate_sem": round(math.sqrt(p_succ * (1 - p_succ) / n), 6) if n else None,
        "n_success": sum(1 for r in scored if r.success),
        "count_error_rate": frac(n - len(ok)),
        "n_missing": sum(1 for r in scored if r.dnc.count_error == "missing"),
        "n_duplicate": sum(1 for r in scored if r.dnc.count_error == "duplicate"),
        "identities_ok_rate": frac(sum(1 for r in scored if r.dnc.identities_ok)),
        "layout_iou_mean": _stats([r.layout_iou for r in scored if r.layout_iou is not None])["mean"],
        "clip_score_mean": clip["mean"],
        "clip_score_std": clip["std"],
        "image_reward_mean": ir["mean"],
        **{f"{name}_mean": _stats([getattr(r, name) for r in scored if getattr(r, name) is not None])["mean"]
           for name in METRICS},
    }


def _per_subject(results: Sequence[ImageResult]) -> dict:
    """Per subject, over right-count images: mean similarity of its matched box to its own
    references (``own``, compare with ``gt_self`` = S_GT[k, k]) and to the most similar *other*
    subject (``other``, compare with ``gt_other``). A subject whose ``other`` is high is being
    mixed with (or replaced by) another one."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        d = r.dnc
        if d is None or d.s_dc is None:
            continue
        for k, key in enumerate(r.subjects):
            row, gt = d.s_dc[k], d.s_gt[k]
            others = [j for j in range(len(r.subjects)) if j != k]
            acc[key]["own"].append(float(row[k]))
            acc[key]["gt_self"].append(float(gt[k]))
            if others:
                acc[key]["other"].append(float(max(row[j] for j in others)))
                acc[key]["gt_other"].append(float(max(gt[j] for j in others)))
    return {key: {"n": len(v["own"]), **{name: (round(float(np.mean(vals)), 4) if vals else None)
                                         for name, vals in ((n_, v[n_]) for n_ in ("own", "gt_self", "other", "gt_other"))}}
            for key, v in sorted(acc.items())}


def summarize(results: Sequence[ImageResult], success_threshold: float = DEFAULT_SUCCESS_THRESHOLD) -> dict:
    """Summary of a run: overall, per number of subjects k, per subject combination, per prompt.

    ``dnc_mean`` counts count errors as 0 (as the paper does); ``dnc_mean_count_ok`` averages only
    images with the right count. Rates are over scored images (errors excluded).
    """
    out = _group_summary(results)
    out["success_threshold"] = float(success_threshold)
    by_k: dict[int, list[ImageResult]] = defaultdict(list)
    by_combo: dict[str, list[ImageResult]] = defaultdict(list)
    by_prompt: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        if r.error:
            continue
        by_k[r.k].append(r)
        by_combo["+".join(r.subjects)].append(r)
        by_prompt[r.fidelity_prompt or r.prompt or ""].append(r)
    out["per_k"] = {str(k): _group_summary(v) for k, v in sorted(by_k.items())}
    out["per_subjects"] = {c: _group_summary(v) for c, v in sorted(by_combo.items())}
    out["per_prompt"] = {p: {key: g[key] for key in ("n_scored", "dnc_mean", "success_rate", "count_error_rate",
                                                      "clip_score_mean")}
                         for p, g in ((p, _group_summary(v)) for p, v in by_prompt.items())}
    out["per_subject"] = _per_subject(results)
    out["errors"] = [{"name": r.name, "error": r.error} for r in results if r.error]
    return out


__all__ = ["DEFAULT_SUCCESS_THRESHOLD", "summarize"]
