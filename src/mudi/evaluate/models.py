"""The models an evaluation runs (:class:`EvalModels`): detector, embedder, CLIP and ImageReward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mudi.evaluate.config import EvaluateConfig
from mudi.evaluate.embed import ReferenceEmbeddings
from mudi.evaluate.registry import make_detector, make_embedder
from mudi.protocols import Detector, Embedder


@dataclass
class EvalModels:
    """A detector, an embedder and the optional text-fidelity scorers, loaded once and shared
    by every run they evaluate; reference embeddings are cached per subject set.

    Build one from a config with :meth:`load`, or pass your own implementations.
    """

    detector: Detector
    embedder: Embedder
    clip: Any = None
    image_reward: Any = None
    device: str = "cpu"
    #: DINO / CLIP-I / CLIP-T of whole images (:class:`~mudi.evaluate.global_metrics.ImageMetrics`)
    metrics: Any = None
    #: how each component was asked for (saved in scores.json)
    names: dict[str, str | None] = field(default_factory=dict)
    _references: dict[tuple[str, str], ReferenceEmbeddings] = field(default_factory=dict, repr=False, init=False)

    @classmethod
    def load(cls, config: EvaluateConfig, device: str = "cpu") -> "EvalModels":
        """Load the models ``config`` names on ``device`` (a torch device string)."""
        detector = make_detector(config.detector, device=device, batch_size=config.batch_size,
                                 nms_iou=config.nms_iou())
        embedder = make_embedder(config.embedder, device=device, batch_size=config.batch_size,
                                 dreamsim_cache=config.dreamsim_cache)
        clip = image_reward = None
        if config.uses_clip():
            from mudi.evaluate.textfid import ClipScorer

            clip = ClipScorer(config.clip, device=device, batch_size=config.batch_size)
        if config.image_reward:
            from mudi.evaluate.textfid import ImageRewardScorer

            image_reward = ImageRewardScorer(device=device)
        names = {"detector": _describe(detector, config.detector), "embedder": getattr(embedder, "name", None)
                 or config.embedder, "clip": getattr(clip, "name", None)}
        metrics = image_metrics(config, embedder, clip, device)
        return cls(detector, embedder, clip, image_reward, str(device), names=names, metrics=metrics)

    def references(self, subject_set, mode: str) -> ReferenceEmbeddings:
        """The reference embeddings of ``subject_set`` (one object per set folder and mode)."""
        key = (str(subject_set.root) if subject_set.root else f"id:{id(subject_set)}", mode)
        if key not in self._references:
            self._references[key] = ReferenceEmbeddings(subject_set, self.embedder, mode=mode)
        return self._references[key]

    def settings(self) -> dict:
        """What scores.json records about the models."""
        return {**self.names, "device": self.device}


def image_metrics(config: EvaluateConfig, embedder: Embedder, clip, device: str):
    """The DINO / CLIP-I / CLIP-T models ``config.dino_model`` and ``config.clip_i_model`` ask for
    (``None`` when both are off); ``auto`` picks the papers' backbones next to mudi's default
    models and otherwise reuses the models already loaded, so local and offline runs need nothing more."""
    from mudi.evaluate.dino import DEFAULT_DINO_V1, DEFAULT_METRIC_CLIP, DinoEmbedder
    from mudi.evaluate.global_metrics import ImageMetrics
    from mudi.models.loading import DEFAULT_CLIP

    dino_spec, clip_spec = config.dino_model.strip(), config.clip_i_model.strip()
    dino = clip_i = None
    names: dict[str, str | None] = {}
    if dino_spec == "auto":
        dino_spec = DEFAULT_DINO_V1 if config.embedder == "dinov2" else "embedder"
    if dino_spec == "embedder":
        dino, names["dino"] = embedder, f"{getattr(embedder, 'name', None) or config.embedder} (the D&C embedder)"
    elif dino_spec.lower() not in ("", "none"):
        dino = DinoEmbedder(dino_spec, device=device, batch_size=config.batch_size)
        names["dino"] = dino.name
    if clip_spec == "auto":
        clip_spec = DEFAULT_METRIC_CLIP if config.clip == DEFAULT_CLIP else "clip"
    if clip_spec == "clip":
        clip_i = clip
    elif clip_spec.lower() not in ("", "none"):
        from mudi.evaluate.textfid import ClipScorer

        clip_i = ClipScorer(clip_spec, device=device, batch_size=config.batch_size)
    names["clip"] = getattr(clip_i, "name", None) if clip_i is not None else None
    if dino is None and clip_i is None:
        return None
    return ImageMetrics(dino, clip_i, names=names)


def _describe(detector: Detector, spec: str) -> str:
    """``name (nms_iou=X)`` for a model-backed detector, else the name it was asked for."""
    name = getattr(detector, "name", None)
    if name is None:
        return spec
    return f"{name} (nms_iou={getattr(detector, 'nms_iou', None)})"


__all__ = ["EvalModels", "image_metrics"]
