"""The toy world: procedural shapes, an in-house base model, a toy detector and embedder.

Public API (used by ``mudi demo``):

- :func:`make_subject_set` -- write the two similar toy subjects ("wip circle": a striped
  yellow circle, "jam circle": a dotted yellow circle) as a subject-set folder.
- :func:`base_model_path` -- the shipped base model (a diffusers StableDiffusionPipeline
  folder, 64 x 64 px).
- :class:`ToyDetector`, :class:`ToyEmbedder` -- drop-in replacements for OWLv2 / DINOv2 on
  toy images (:mod:`mudi.protocols`).
- :data:`DEMO_PROMPTS` -- prompts for the demo (:func:`demo_prompts` for 3 or 4 subjects);
  :data:`SUBJECTS`, :func:`similar_subjects` (2-4 similar subjects), :data:`CLASSES`.
- :func:`register` -- makes ``--detector toy`` / ``--embedder toy`` known to ``mudi evaluate``
  and the ``toy`` preset known to ``mudi ui`` (called through the ``mudi.plugins`` entry point,
  so the product never imports the toy world).
"""

from __future__ import annotations

from pathlib import Path

from mudi.errors import MudiError
from mudi.toy.subject_set import make_subject_set
from mudi.toy.vision import ToyDetector, ToyEmbedder, class_word
from mudi.toy.world import CLASSES, MAX_SUBJECTS, SUBJECTS, similar_subjects

#: Prompts for generating both demo subjects together (identifier + class, toy grammar).
DEMO_PROMPTS: tuple[str, ...] = (
    "a photo of a wip circle and a jam circle on grass",
    "a photo of a wip circle and a jam circle, simple background",
    "a photo of a wip circle and a jam circle on water",
    "a photo of a wip circle and a jam circle on wood",
)
#: Backgrounds of the demo prompts, in order (caption suffixes of the toy grammar).
DEMO_BACKGROUNDS: tuple[str, ...] = (" on grass", ", simple background", " on water", " on wood")


def demo_prompts(n_subjects: int = 2) -> tuple[str, ...]:
    """Prompts naming the first ``n_subjects`` similar subjects together, in the toy grammar
    ("a photo of a wip circle, a jam circle and a tok circle on grass"); n = 2 gives DEMO_PROMPTS."""
    from mudi.toy.captions import join_phrases

    names = join_phrases([s.phrase for s in similar_subjects(n_subjects)])
    return tuple(f"a photo of {names}{bg}" for bg in DEMO_BACKGROUNDS)


#: Prompt for class-prior images (prior preservation) of the demo class.
PRIOR_PROMPT = "a photo of a circle, simple background"
#: Sampling settings that work for the base model.
SAMPLING = {"height": 64, "width": 64, "num_inference_steps": 20, "guidance_scale": 4.0}


def base_model_path() -> Path:
    """Folder of the shipped toy base model (StableDiffusionPipeline format)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "toy_base"
    if not (path / "model_index.json").is_file():
        raise MudiError(
            f"{path}: the toy base model is missing (no model_index.json). Reinstall mudi, or "
            "train it with `python -m mudi.toy.train --export <folder>`."
        )
    return path


def toy_detector(model: str | None = None, **options) -> ToyDetector:
    """Registry factory for ``--detector toy`` (device and batch options do not apply)."""
    return ToyDetector()


def toy_embedder(model: str | None = None, **options) -> ToyEmbedder:
    """Registry factory for ``--embedder toy`` (device and batch options do not apply)."""
    return ToyEmbedder()


def register() -> None:
    """Register the toy detector and embedder under the name ``toy`` (the ``mudi.plugins`` entry point)."""
    from mudi.evaluate.registry import register_detector, register_embedder

    from mudi.ui.presets import register_preset

    register_detector("toy", toy_detector)
    register_embedder("toy", toy_embedder)
    register_preset("toy", "mudi.toy.ui_preset:toy_preset")  # a reference: imported when the UI asks


__all__ = [
    "CLASSES",
    "DEMO_BACKGROUNDS",
    "DEMO_PROMPTS",
    "MAX_SUBJECTS",
    "PRIOR_PROMPT",
    "SAMPLING",
    "SUBJECTS",
    "ToyDetector",
    "ToyEmbedder",
    "base_model_path",
    "class_word",
    "demo_prompts",
    "make_subject_set",
    "register",
    "similar_subjects",
]
