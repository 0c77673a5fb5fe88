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
        return cls(detector, embedder, clip, image_reward, str(device), names)

    def references(self, subject_set, mode: str) -> ReferenceEmbeddings:
        """The reference embeddings of ``subject_set`` (one object per set folder and mode)."""
        key = (str(subject_set.root) if subject_set.root else f"id:{id(subject_set)}", mode)
        if key not in self._references:
            self._references[key] = ReferenceEmbeddings(subject_set, self.embedder, mode=mode)
        return self._references[key]

    def settings(self) -> dict:
        """What scores.json records about the models."""
        return {**self.names, "device": self.device}


def _describe(detector: Detector, spec: str) -> str:
    """``name (nms_iou=X)`` for a model-backed detector, else the name it was asked for."""
    name = getattr(detector, "name", None)
    if name is None:
        return spec
    return f"{name} (nms_iou={getattr(detector, 'nms_iou', None)})"


__all__ = ["EvalModels"]
