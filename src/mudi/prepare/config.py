"""``PrepareConfig``: what `mudi prepare` (and :func:`mudi.prepare.prepare`) makes, with its checks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from mudi.errors import MudiError
from mudi.models.loading import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from mudi.prepare.detect import DEFAULT_NMS_IOU
from mudi.settings import Settings, setting

DEFAULT_THRESHOLD = 0.2
#: Box enlargement per side before segmenting, as a fraction of the image width/height.
DEFAULT_BOX_MARGIN = 0.05

#: Options that only apply when segmenting raw photos (``subjects``), not when importing (``source``).
SEGMENTING_OPTIONS = ("detector", "segmenter", "threshold", "margin", "boxes", "masks", "captions")


@dataclass
class PrepareConfig(Settings):
    """A subject set to make: from raw photos (``subjects``) or from an existing set (``source``)."""

    SECTION: ClassVar[str] = "prepare"

    subjects: list[str] = setting(
        [], "a subject: its phrase and its photo folder, e.g. \"olis corgi=photos/corgi\" (repeat, at "
        "least twice; the identifier is the first word)", flag="--subject", metavar="'IDENTIFIER CLASS=FOLDER'")
    source: str = setting("", "import an existing subject-set folder (metadata.jsonl with masks)",
                          flag="--from", metavar="DIR")
    out: str = setting("", "output folder (new or empty)", metavar="OUT")
    detector: str = setting(DEFAULT_DETECTOR, "OWLv2 checkpoint: hub id or local folder", metavar="ID|DIR")
    segmenter: str = setting(
        DEFAULT_SEGMENTER, "SAM checkpoint: hub id or local folder, or 'grabcut' for the weight-free "
        "OpenCV GrabCut fallback (rougher masks)", metavar="ID|DIR|grabcut")
    threshold: float = setting(DEFAULT_THRESHOLD, "detector score threshold; exactly one box must pass it")
    nms_iou: float = setting(DEFAULT_NMS_IOU, "overlapping detector boxes with IoU above this count as one "
                             "box (1 keeps the raw boxes)", metavar="IOU")
    margin: float = setting(DEFAULT_BOX_MARGIN, "box enlargement per side, as a fraction of the image size")
    boxes: str = setting("", "JSON mapping photo file names to [x0, y0, x1, y1] boxes (skips detection "
                         "for them)", metavar="FILE")
    masks: str = setting("", "folder of mask files named like the photos (<name>.png or mask_<name>.png)",
                         metavar="DIR")
    captions: str = setting("", "JSON mapping photo file names to captions (default \"a photo of a "
                            "<phrase>\")", metavar="FILE")
    strict: bool = setting(False, "fail (write nothing) if any photo fails, instead of leaving it out")

    @property
    def importing(self) -> bool:
        """True when the set is imported from ``source`` rather than segmented from photos."""
        return bool(self.source)

    @property
    def uses_grabcut(self) -> bool:
        """True when masks are made with the weight-free GrabCut fallback instead of SAM."""
        return self.segmenter.lower() == "grabcut"

    def check(self) -> None:
        """Cheap checks of the values (no file is read): one input mode, ranges, an output folder."""
        if self.source and self.subjects:
            raise MudiError("give either --from DIR (import a set) or --subject ... (segment photos), not both.")
        if not self.source and not self.subjects:
            raise MudiError(
                "nothing to prepare: give --from DIR to import a subject set, or at least two "
                "--subject \"IDENTIFIER CLASS=FOLDER\" to segment photos."
            )
        if not self.out:
            raise MudiError("--out: give the output folder for the subject set.")
        if self.source:
            defaults = PrepareConfig()
            flags = {f.name: f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in fields(self)}
            unused = [flags[n] for n in SEGMENTING_OPTIONS if getattr(self, n) != getattr(defaults, n)]
            if unused:
                raise MudiError(f"{', '.join(unused)}: only used with --subject, not with --from.")
            return
        check_box_settings(self.threshold, self.margin)
        if not 0.0 < self.nms_iou <= 1.0:
            raise MudiError(f"--nms-iou must be in (0, 1], got {self.nms_iou}.")


def check_box_settings(threshold: float, margin: float) -> None:
    """Range checks for the detector threshold (``--threshold``) and the box margin (``--margin``)."""
    if not (0.0 <= threshold <= 1.0):
        raise MudiError(f"--threshold must be between 0 and 1, got {threshold}.")
    if not (0.0 <= margin < 0.5):
        raise MudiError(f"--margin must be in [0, 0.5), got {margin}.")


__all__ = ["DEFAULT_BOX_MARGIN", "DEFAULT_NMS_IOU", "DEFAULT_THRESHOLD", "PrepareConfig", "check_box_settings"]
