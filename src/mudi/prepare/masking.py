"""Masks for the photos that need them: detect (exactly one box), enlarge the box, segment
(METHOD.md §1).

Detection queries the detector with the subject's descriptive class ("corgi" for "olis corgi")
at ``threshold``. Exactly one box must remain, otherwise the photo fails ("no box above 0.2",
"3 boxes: ambiguous, supply a mask or a box"). A box (user or detected) is enlarged by
``margin`` of the image width/height on each side, clamped to the image, and given to the
segmenter (SAM: one box prompt, one mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError
from mudi.geometry import Box, enlarge_box
from mudi.prepare.config import DEFAULT_BOX_MARGIN, DEFAULT_THRESHOLD, check_box_settings
from mudi.prepare.photos import FROM_BOX, FROM_DETECTION, FROM_MASK_FILE, PhotoInput, models_needed
from mudi.protocols import Detection, Detector, Segmenter


@dataclass
class PhotoResult:
    """Outcome for one photo: a mask, or the reason it failed."""

    key: str
    phrase: str
    path: Path
    image: Image.Image
    caption: str
    method: str
    mask: np.ndarray | None = None
    reason: str = ""
    box: Box | None = None  # user or detected box
    prompt_box: Box | None = None  # after the margin
    score: float | None = None
    detections: list[Detection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the photo got a mask."""
        return self.mask is not None

    def record(self) -> dict[str, Any]:
        """JSON-serialisable summary (no pixels)."""
        rnd = (lambda b: [round(float(v), 2) for v in b] if b is not None else None)
        return {
            "subject": self.key,
            "phrase": self.phrase,
            "photo": str(self.path),
            "ok": self.ok,
            "method": self.method,
            "reason": self.reason or None,
            "box": rnd(self.box),
            "prompt_box": rnd(self.prompt_box),
            "score": None if self.score is None else round(self.score, 4),
            "detections": [
                {"box": rnd(d.box), "score": round(d.score, 4)} for d in self.detections
            ],
            "mask_pixels": int(self.mask.sum()) if self.mask is not None else 0,
        }


def pick_single_box(
    detections: Sequence[Detection], threshold: float
) -> tuple[Detection | None, str]:
    """Apply the exactly-one-box rule: (the detection, "") or (None, reason)."""
    dets = [d for d in detections if d.score >= threshold]
    if not dets:
        return None, f"no box above {threshold:g}"
    if len(dets) > 1:
        return None, f"{len(dets)} boxes: ambiguous, supply a mask or a box"
    return dets[0], ""


def segment_in_box(
    image: Image.Image, box: Sequence[float], segmenter: Segmenter, margin: float = DEFAULT_BOX_MARGIN
) -> tuple[np.ndarray | None, Box, str]:
    """Enlarge ``box`` by ``margin`` and segment: (mask or None, prompt box, failure reason)."""
    prompt = enlarge_box(box, image.size, margin)
    mask = np.asarray(segmenter.segment(image, prompt)).astype(bool)
    if mask.shape != (image.height, image.width):
        raise RuntimeError(
            f"segmenter returned a {mask.shape} mask for a {image.width}x{image.height} image"
        )
    if not mask.any():
        return None, prompt, "segmentation produced an empty mask; supply a mask"
    return mask, prompt, ""


def segment_photo(
    image: Image.Image,
    class_phrase: str,
    detector: Detector,
    segmenter: Segmenter,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_BOX_MARGIN,
) -> tuple[np.ndarray | None, str]:
    """METHOD §1 for one photo: detect ``class_phrase``, require exactly one box, enlarge it by
    ``margin``, segment. Returns (bool mask, "") or (None, reason the photo failed)."""
    dets = detector.detect([image], [class_phrase], threshold)[0]
    det, reason = pick_single_box(dets, threshold)
    if det is None:
        return None, reason
    mask, _, reason = segment_in_box(image, det.box, segmenter, margin)
    return mask, reason


def run_preparation(
    inputs: Sequence[PhotoInput],
    detector: Detector | None,
    segmenter: Segmenter | None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_BOX_MARGIN,
    batch_size: int = 4,
    progress: bool = True,
) -> list[PhotoResult]:
    """Masks for every photo (in input order): user masks as given, user boxes segmented,
    everything else detected (exactly one box) and segmented."""
    # 1. check the settings and that the needed models were given
    check_box_settings(threshold, margin)
    need_det, need_seg = models_needed(inputs)
    if need_det and detector is None:
        raise MudiError("some photos have neither a mask nor a box, so a detector is needed.")
    if need_seg and segmenter is None:
        raise MudiError("some photos have no mask, so a segmenter is needed.")
    # 2. photos with a mask (file or alpha) are done
    results: list[PhotoResult | None] = [
        _result(item, item.mask_source or FROM_MASK_FILE, mask=item.mask) if item.mask is not None else None
        for item in inputs
    ]
    # 3. detect a box for the photos with neither a mask nor a box
    detected = _detect(inputs, detector, threshold, batch_size, progress)
    # 4. segment inside the user or detected box
    _segment(inputs, results, detected, segmenter, margin, progress)
    return [r for r in results if r is not None]


def _result(item: PhotoInput, method: str, **kwargs: Any) -> PhotoResult:
    return PhotoResult(item.key, item.phrase, item.path, item.image, item.caption, method, **kwargs)


def _detect(inputs: Sequence[PhotoInput], detector: Detector | None, threshold: float, batch_size: int,
            progress: bool) -> dict[int, tuple[Detection | None, str, list[Detection]]]:
    """Detection, batched per subject (each subject has its own text query): for each photo
    index, (the one box or None, the failure reason, every detection)."""
    from tqdm.auto import tqdm

    detected: dict[int, tuple[Detection | None, str, list[Detection]]] = {}
    todo = [n for n, i in enumerate(inputs) if i.mask is None and i.box is None]
    if not todo:
        return detected
    bar = tqdm(total=len(todo), desc="detect", unit="photo", disable=not progress)
    by_query: dict[str, list[int]] = {}
    for n in todo:
        by_query.setdefault(inputs[n].query, []).append(n)
    for query, idx in by_query.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            dets = detector.detect([inputs[n].image for n in chunk], [query], threshold)
            for n, d in zip(chunk, dets):
                det, reason = pick_single_box(d, threshold)
                detected[n] = (det, reason, list(d))
            bar.update(len(chunk))
    bar.close()
    return detected


def _segment(inputs: Sequence[PhotoInput], results: list[PhotoResult | None],
             detected: dict[int, tuple[Detection | None, str, list[Detection]]],
             segmenter: Segmenter | None, margin: float, progress: bool) -> None:
    """Fill ``results`` for the photos without a mask: segment the user box or the one detected
    box; a photo without one box fails with the detection's reason."""
    from tqdm.auto import tqdm

    seg_todo = [n for n in range(len(inputs)) if results[n] is None]
    bar = tqdm(total=len(seg_todo), desc="segment", unit="photo", disable=not progress or not seg_todo)
    for n in seg_todo:
        item = inputs[n]
        if item.box is not None:
            res = _result(item, FROM_BOX, box=item.box)
        else:
            det, reason, dets = detected[n]
            res = _result(item, FROM_DETECTION, detections=dets, reason=reason)
            if det is not None:
                res.box, res.score = det.box, det.score
        if res.box is not None:
            res.mask, res.prompt_box, res.reason = segment_in_box(item.image, res.box, segmenter, margin)
        results[n] = res
        bar.update(1)
    bar.close()


__all__ = ["PhotoResult", "pick_single_box", "run_preparation", "segment_in_box", "segment_photo"]
