"""The community's multi-subject metrics beside D&C, per image (:class:`ImageMetrics`).

:class:`ImageMetrics` holds the whole-image embedders — DINO and CLIP — and embeds each
subject's reference photos once per subject set (whole photos, as DreamBench does). For a batch
of scored images :meth:`ImageMetrics.apply` sets, on each :class:`~mudi.evaluate.results.ImageResult`:

- ``dino``, ``clip_i`` — :func:`~mudi.evaluate.similarity.reference_similarity`;
- ``clip_t`` — :func:`~mudi.evaluate.similarity.text_similarity` against the prompt with
  identifiers removed;

and :func:`apply_detection_metrics` sets, from the image's D&C detections and box similarities,
``identity`` / ``identity_per_subject`` (:func:`~mudi.evaluate.similarity.identity_scores`,
with the D&C embedder) and ``missing`` / ``duplicate``
(:func:`~mudi.evaluate.similarity.subject_counts`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mudi.evaluate.embed import ReferenceEmbeddings
from mudi.evaluate.similarity import identity_scores, reference_similarity, subject_counts, text_similarity


class ImageMetrics:
    """DINO, CLIP-I and CLIP-T of whole images; references embedded once per subject.

    Args:
        dino: an embedder for DINO (``None``: not computed).
        clip: a :class:`~mudi.evaluate.textfid.ClipScorer` (``image_embeds``/``text_embeds``)
            for CLIP-I and CLIP-T (``None``: not computed).
        names: which model produced each metric (saved with the results).
    """

    def __init__(self, dino=None, clip=None, *, names: dict[str, str | None] | None = None):
        from mudi.evaluate.dino import ClipImageEmbedder

        self.dino = dino
        self.clip = clip
        self.clip_images = ClipImageEmbedder(clip) if clip is not None else None
        self.names = dict(names or {})
        self._refs: dict[tuple[str, str], ReferenceEmbeddings] = {}

    def references(self, subject_set, which: str, embedder) -> ReferenceEmbeddings:
        """Whole-photo reference embeddings of ``subject_set`` for ``which`` (``dino``/``clip``)."""
        key = (str(subject_set.root) if subject_set.root else f"id:{id(subject_set)}", which)
        if key not in self._refs:
            self._refs[key] = ReferenceEmbeddings(subject_set, embedder, mode="whole")
        return self._refs[key]

    def _similarity(self, subject_set, which: str, embedder, images, subjects) -> list[float]:
        refs = self.references(subject_set, which, embedder)
        refs.ensure([k for ks in subjects for k in ks])
        emb = np.asarray(embedder.embed(images), dtype=np.float32)
        return [float(reference_similarity(emb[i], refs.for_keys(ks))[0][0]) for i, ks in enumerate(subjects)]

    def apply(self, subject_set, images: Sequence, results: Sequence) -> None:
        """Set ``dino``, ``clip_i`` and ``clip_t`` on ``results`` (one per image, same order)."""
        if not images:
            return
        subjects = [r.subjects for r in results]
        if self.dino is not None:
            for r, v in zip(results, self._similarity(subject_set, "dino", self.dino, images, subjects)):
                r.dino = v
        if self.clip is not None:
            refs = self.references(subject_set, "clip", self.clip_images)
            refs.ensure([k for ks in subjects for k in ks])
            emb = np.asarray(self.clip_images.embed(images), dtype=np.float32)
            for i, r in enumerate(results):
                r.clip_i = float(reference_similarity(emb[i], refs.for_keys(r.subjects))[0][0])
            with_text = [i for i, r in enumerate(results) if r.fidelity_prompt]
            if with_text:
                t = self.clip.text_embeds([results[i].fidelity_prompt for i in with_text])
                for v, i in zip(text_similarity(emb[with_text], t), with_text):
                    results[i].clip_t = float(v)

    def settings(self) -> dict:
        """Which model produced DINO, CLIP-I and CLIP-T."""
        return {"dino_model": self.names.get("dino"), "clip_i_model": self.names.get("clip"),
                "clip_t_model": self.names.get("clip")}


def apply_detection_metrics(res: Any) -> None:
    """Set ``identity``, ``identity_per_subject``, ``missing`` and ``duplicate`` of a scored result.

    ``identity`` is the mean of the per-subject scores; it is ``None`` when the image had boxes
    whose crops were not embedded (more boxes than D&C diagnoses), where the counts alone then
    decide missing and duplicate.
    """
    d = res.dnc
    if d is None:
        return
    raw = d.s_dc_raw if d.s_dc_raw is not None and d.s_dc_raw.shape[0] == d.n_boxes else None
    res.missing, res.duplicate = subject_counts(raw, d.n_boxes, d.n_subjects)
    if raw is None and d.n_boxes:
        res.identity, res.identity_per_subject = None, {}
        return
    per = identity_scores(raw if raw is not None else np.zeros((0, d.n_subjects)), d.n_subjects)
    res.identity = float(per.mean()) if per.size else None
    res.identity_per_subject = {k: round(float(v), 4) for k, v in zip(res.subjects, per)}


__all__ = ["ImageMetrics", "apply_detection_metrics"]
