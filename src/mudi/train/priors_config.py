"""The settings of a ``mudi priors`` run (:class:`PriorsConfig`): how class images are generated,
segmented and captioned for prior preservation (see :mod:`mudi.train.priors`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mudi.errors import MudiError
from mudi.models.families.base import REFERENCE_NEGATIVE_PROMPT
from mudi.settings import Settings, setting
from mudi.train.config import PRIOR_PROMPT

DEFAULT_PRIOR_THRESHOLD = 0.4
#: Caption of a class image in the reference's class metadata (``dataset/reg/*/class_metadata.jsonl``).
PRIOR_CAPTION = "A photo of a {cls}"


@dataclass
class PriorsConfig(Settings):
    """Everything that defines a ``mudi priors`` run (class images for prior preservation)."""

    SECTION: ClassVar[str] = "priors"

    base: str = setting("", "base SD/SDXL pipeline (folder or hub id)", metavar="MODEL")
    subjects: str = setting("", "subject set whose classes to generate", metavar="DIR")
    out: str = setting("", "class-set output folder (new or empty)", metavar="OUT")
    n: int = setting(50, "images per class")
    detector: str = setting("", "OWLv2 detector (default google/owlv2-base-patch16-ensemble); none = the "
                            "central box", metavar="ID|DIR|none")
    segmenter: str = setting("", "SAM segmenter (default facebook/sam-vit-huge) or grabcut (weight-free)",
                             metavar="ID|DIR|grabcut")
    threshold: float = setting(DEFAULT_PRIOR_THRESHOLD, "detector score threshold")
    prompt: str = setting(PRIOR_PROMPT, "class prompt template ({cls} = the class)")
    negative_prompt: str = setting(REFERENCE_NEGATIVE_PROMPT, "negative prompt (the reference's; \"\" for none, the "
                                   "old default)")
    caption: str = setting(PRIOR_CAPTION, "caption of a class image in training ({cls} = the class; \"\" = the "
                           "generation prompt, the old default)")
    margin: float = setting(0.0, "detector box enlargement per side before segmenting, as a fraction of the image "
                            "size (0 as the reference; the old default 0.05 as mudi prepare)")
    resolution: int = setting(0, "image side in pixels (0: the model's)")
    steps: int = setting(50, "sampling steps (the reference's SDXL pipeline default; the old default 30)")
    guidance_scale: float = setting(5.0, "classifier-free guidance scale (the reference's SDXL pipeline default; "
                                    "the old default 7.5)")
    batch_size: int = setting(1, "images per pipeline call")
    seed: int = setting(42, "seed of the first image of the first class")
    vae: str = setting("", "VAE override (e.g. madebyollin/sdxl-vae-fp16-fix)", metavar="MODEL")
    max_tries: float = setting(2.0, "generations per class at most, as a multiple of --n (images whose "
                               "segmentation fails are replaced)")

    def check(self) -> None:
        """Validate the values that need no model; raise MudiError on the first problem."""
        if self.n < 1:
            raise MudiError(f"--n must be >= 1 (got {self.n}).")
        if not 0 < self.threshold <= 1:
            raise MudiError(f"--threshold must be in (0, 1] (got {self.threshold}).")
        if self.steps < 1 or self.batch_size < 1:
            raise MudiError("--steps and --batch-size must be >= 1.")
        if self.resolution < 0:
            raise MudiError(f"--resolution must be >= 0 (0: the model's), got {self.resolution}.")
        if not self.max_tries >= 1:
            raise MudiError(f"--max-tries must be >= 1, got {self.max_tries}.")
        if "{cls}" not in self.prompt:
            raise MudiError(f"--prompt must contain {{cls}} (got {self.prompt!r}).")
        if self.caption and "{cls}" not in self.caption:
            raise MudiError(f"--caption must contain {{cls}} or be \"\" for the generation prompt (got {self.caption!r}).")
        if not 0 <= self.margin < 0.5:
            raise MudiError(f"--margin must be in [0, 0.5) (a fraction of the image size per side), got {self.margin}.")


__all__ = ["DEFAULT_PRIOR_THRESHOLD", "PRIOR_CAPTION", "PriorsConfig"]
