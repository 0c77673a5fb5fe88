"""The settings of one evaluation (:class:`EvaluateConfig`, the ``[evaluate]`` table of a run file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mudi.errors import MudiError
from mudi.evaluate.dnc import DEFAULT_DETECTION_THRESHOLD, DEFAULT_NORM, NORMS
from mudi.evaluate.embed import ReferenceEmbeddings
from mudi.evaluate.scoring import DEFAULT_BATCH_SIZE
from mudi.evaluate.summary import DEFAULT_SUCCESS_THRESHOLD
from mudi.models.loading import DEFAULT_CLIP
from mudi.settings import Settings, setting


@dataclass
class EvaluateConfig(Settings):
    """What to evaluate, with which models, and how to score (``mudi evaluate``).

    ``images`` is a folder written by ``mudi generate`` (``NNNN.png`` + ``NNNN.json``); the
    results go to ``out`` (nothing is written when it is empty).
    """

    SECTION: ClassVar[str] = "evaluate"

    images: str = setting("", "folder of generated images (NNNN.png + NNNN.json sidecars from `mudi generate`)",
                          metavar="DIR")
    subjects: str = setting("", "the subject-set folder the images personalize", metavar="DIR")
    out: str = setting("", "output folder: scores.csv, per_image.json, scores.json, config.toml, report.html",
                       metavar="OUT")
    label: str = setting("", "name of the run in reports and comparisons (default: the images folder's name)")
    prompt: str = setting("", "prompt of images that have no sidecar JSON (its identifiers say which subjects "
                              "the images show)", metavar="P")
    subject_keys: list[str] = setting([], "comma-separated subject keys (or identifiers) shown in images "
                                          "without a sidecar, e.g. a,b (default: the identifiers in --prompt)",
                                      metavar="KEYS", separator=",")
    detector: str = setting("owlv2", "detector: owlv2 (google/owlv2-base-patch16-ensemble), an OWLv2 model "
                                     "folder or hub id, or a plugin's name (e.g. toy)", metavar="NAME|M")
    embedder: str = setting("dinov2", "embedder: dinov2 (facebook/dinov2-base, D&C-DINO), dreamsim (D&C-DS, "
                                      "optional extra), a DINOv2 model folder or hub id, or a plugin's name "
                                      "(e.g. toy)", metavar="NAME|M")
    dreamsim_cache: str = setting("", "folder holding the DreamSim weights for --embedder dreamsim (never "
                                      "downloaded; the error says what to put there)", metavar="DIR")
    clip: str = setting(DEFAULT_CLIP, "CLIP model folder or hub id for the CLIP score; 'none' to skip",
                        metavar="M|none")
    dino_model: str = setting("auto", "backbone of the DINO metric (CLS token, whole image vs references): a ViT "
                                      "folder or hub id; auto = facebook/dino-vits16 (DINO ViT-S/16, as DreamBench) "
                                      "with --embedder dinov2, else the D&C embedder; embedder = the D&C embedder; "
                                      "none = skip", metavar="M|auto|embedder|none")
    clip_i_model: str = setting("auto", "CLIP model of CLIP-I and CLIP-T: a folder or hub id; auto = "
                                        "openai/clip-vit-base-patch32 (ViT-B/32) with the default --clip, else the "
                                        "--clip model; clip = the --clip model; none = skip",
                                metavar="M|auto|clip|none")
    image_reward: bool = setting(False, "also compute ImageReward (needs the optional image-reward package)")
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "images per batch", metavar="N")
    threshold: float = setting(DEFAULT_DETECTION_THRESHOLD, "detection score threshold (the paper's)", metavar="T")
    success_threshold: float = setting(DEFAULT_SUCCESS_THRESHOLD, "minimum D&C of a successful image", metavar="X")
    norm: str = setting(DEFAULT_NORM, "matrix norm of D&C: spectral (the reference demo's ord=2) or fro "
                                      "(Frobenius, METHOD.md's and mudi's old default)", choices=NORMS)
    nms: str = setting("none", "'none' counts the raw detector boxes as the reference code does; an IoU (the old "
                               "default 0.5) merges overlapping detections before counting", metavar="IOU|none")
    reference_mode: str = setting("whole", "embed reference photos whole (paper) or cut out with their masks",
                                  choices=ReferenceEmbeddings.MODES)
    queries: list[str] = setting([], "detection query of a subject, KEY=TEXT (default: its class, e.g. "
                                     "'corgi'); repeatable", flag="--query", metavar="KEY=TEXT")
    report: bool = setting(True, "write report.html")

    def check(self) -> None:
        """Check the values that need no file: thresholds, batch size, NMS, query syntax.

        Raises:
            MudiError: naming the option, what is wrong and the allowed values.
        """
        if self.batch_size < 1:
            raise MudiError(f"--batch-size must be >= 1, got {self.batch_size}.")
        for name in ("threshold", "success_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise MudiError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}.")
        if self.norm not in NORMS:
            raise MudiError(f"--norm {self.norm!r}: choose one of {', '.join(NORMS)}.")
        if self.reference_mode not in ReferenceEmbeddings.MODES:
            raise MudiError(f"--reference-mode {self.reference_mode!r}: choose one of "
                            f"{', '.join(ReferenceEmbeddings.MODES)}.")
        self.nms_iou()
        if self.embedder == "dreamsim":
            from mudi.evaluate.dreamsim import check_cache

            check_cache(self.dreamsim_cache)
        for spec in self.queries:
            if "=" not in spec:
                raise MudiError(f"--query {spec!r}: expected KEY=TEXT, e.g. a='corgi dog'.")

    def nms_iou(self) -> float | None:
        """The NMS IoU ``nms`` asks for (``None``: no NMS)."""
        spec = str(self.nms)
        if spec.lower() in ("none", "off", "no"):
            return None
        try:
            v = float(spec)
        except ValueError:
            raise MudiError(f"--nms {spec!r}: give an IoU in (0, 1] or 'none'.") from None
        if not 0.0 < v <= 1.0:
            raise MudiError(f"--nms {spec!r}: the IoU must be in (0, 1].")
        return v

    def query_map(self, subject_set) -> dict[str, str]:
        """``queries`` as ``{subject key: text}`` (keys, identifiers or phrases accepted)."""
        out = {}
        for spec in self.queries:
            k, text = spec.split("=", 1)
            out[subject_set.subject(k.strip()).key] = text.strip()
        return out

    def uses_clip(self) -> bool:
        """False when ``clip`` is ``none`` (or empty)."""
        return self.clip.lower() not in ("", "none")


__all__ = ["EvaluateConfig"]
