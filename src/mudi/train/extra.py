"""Extra whole-image training examples: the images iterative training keeps (``--extra-examples``).

An examples folder holds images with a mask and a caption each, listed in ``examples.jsonl``::

    {"file_name": "0003.png", "mask_path": "mask_0003.png", "text": "a photo of olis corgi and hta chow chow ...",
     "subjects": ["a", "b"], "dnc": 0.91, "mask_source": "detections"}

Training uses each one as a plain example (resized and centre-cropped like a subject photo, its
caption as is, the mask only for ``--loss-alpha`` weighting), drawn by the example schedule
beside the subject photos; it is never cut into a Seg-Mix composite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto

EXAMPLES_FILE = "examples.jsonl"
#: The example-schedule key of extra examples (no subject key can hold a "+").
EXTRA_KEY = "+extra"
#: The ``kind`` of an extra example in micro-batches and train_log.jsonl.
EXTRA_KIND = "kept"


@dataclass
class ExtraExample:
    """One extra example: the segmented image (mask = the subjects' area) and the subjects it shows."""

    photo: SegmentedPhoto
    subjects: list[str]


def read_examples(folder: str | Path) -> list[ExtraExample]:
    """The examples of one folder (images and masks loaded); MudiError naming the file on a problem."""
    from mudi.io import load_mask, load_rgb

    folder = Path(folder)
    listing = folder / EXAMPLES_FILE
    if not listing.is_file():
        raise MudiError(f"--extra-examples {folder}: no {EXAMPLES_FILE} there (a folder of kept images written by "
                        "iterative training).")
    out = []
    for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image = load_rgb(folder / rec["file_name"])
            mask = load_mask(folder / rec["mask_path"], image.size, allow_empty=True)
            caption, subjects = str(rec["text"]), [str(s) for s in rec.get("subjects") or []]
        except (ValueError, KeyError, TypeError) as exc:
            raise MudiError(f"{listing}, line {n}: not an example entry ({exc}).") from None
        photo = SegmentedPhoto(np.asarray(image, dtype=np.uint8).copy(), mask, caption, folder / rec["file_name"])
        out.append(ExtraExample(photo, subjects))
    return out


def write_examples(folder: str | Path, items: list[dict]) -> Path:
    """Write ``examples.jsonl`` (one line per item: file_name, mask_path, text, subjects, ...) atomically;
    the images and masks must already be in ``folder``."""
    from mudi.io import write_text_atomic

    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    return write_text_atomic(Path(folder) / EXAMPLES_FILE, text)


def load_extra(folders: list[str], subject_keys: list[str]) -> list[ExtraExample]:
    """Every example of ``folders``, in order; their subjects must belong to the subject set."""
    out = []
    for folder in folders:
        for ex in read_examples(folder):
            unknown = [s for s in ex.subjects if s not in subject_keys]
            if unknown:
                raise MudiError(f"--extra-examples {folder}: {ex.photo.path.name} shows subject {unknown[0]!r}, "
                                f"which the subject set does not have ({', '.join(subject_keys)}).")
            out.append(ex)
    return out


def plain_extra(examples: list[ExtraExample], resolution: int) -> dict:
    """The plain training examples of the extra examples, by ``(EXTRA_KEY, index)``."""
    from mudi.compose import plain

    out = {}
    for i, ex in enumerate(examples):
        x = plain(ex.photo, resolution, ex.photo.caption, key=EXTRA_KEY, photo_index=i)
        x.subjects, x.kind = list(ex.subjects) or x.subjects, EXTRA_KIND
        out[(EXTRA_KEY, i)] = x
    return out


__all__ = ["EXAMPLES_FILE", "EXTRA_KEY", "EXTRA_KIND", "ExtraExample", "load_extra", "plain_extra", "read_examples",
           "write_examples"]
