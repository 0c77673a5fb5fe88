"""Preparation (METHOD.md §1): turn raw reference photos into a segmented subject set.

:func:`prepare` reads like a pipeline's ``__call__``: every input is checked before any model is
loaded (:mod:`mudi.prepare.photos`), only the needed models are loaded (:func:`load_models`),
masks are made (:mod:`mudi.prepare.masking`), and the outputs are written into a staging folder
next to ``out`` that is renamed into place at the end, so a failed run leaves no partial output.
Masks are stored as 0/255 PNGs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mudi.errors import MudiError
from mudi.io import claim_output_dir, staged_output
from mudi.prepare.config import DEFAULT_BOX_MARGIN, DEFAULT_THRESHOLD, PrepareConfig, check_box_settings
from mudi.prepare.detect import DEFAULT_NMS_IOU
from mudi.prepare.importer import import_subjects
from mudi.prepare.masking import PhotoResult, run_preparation
from mudi.prepare.photos import SUBJECT_KEYS, SubjectSpec, collect_inputs, models_needed
from mudi.prepare.report import PrepareReport, failure_table, write_outputs
from mudi.protocols import Detector, Segmenter
from mudi.runtime import pick_device
from mudi.settings import RunOptions
from mudi.subjects import Photo, SegmentedPhoto, Subject, SubjectSet, split_phrase


def prepare(
    config: PrepareConfig,
    options: RunOptions | None = None,
    *,
    detector: Detector | None = None,
    segmenter: Segmenter | None = None,
) -> PrepareReport:
    """Make the subject set ``config`` describes at ``config.out`` (METHOD §1).

    With ``config.source`` the existing set is validated and copied (:func:`import_subjects`).
    Otherwise ``config.subjects`` ("identifier class=folder", keys a, b, ... in order) are
    segmented: masks from files or alpha channels, boxes from ``config.boxes``, everything else
    detected (OWLv2, exactly one box) and segmented (SAM, or GrabCut with ``segmenter="grabcut"``).
    ``detector`` / ``segmenter`` objects (implementing the protocols) replace the models named
    in the config. Models are loaded only if some photo needs them, and only after every input
    was validated.

    Photos that fail are left out and listed (``failures.json``, contact sheet). A subject with
    no usable photo, or any failure with ``config.strict``, raises MudiError and writes nothing.
    """
    options = options or RunOptions()
    # 1. check the config and the device
    config.check()
    if config.importing:
        return import_subjects(config.source, config.out, options)
    device = pick_device(options.device)
    # 2. check and load everything the user gave, before any model
    specs = [SubjectSpec.parse(s) for s in config.subjects]
    notes: list[str] = []
    inputs = collect_inputs(specs, masks_dir=config.masks or None, boxes=config.boxes or None,
                            captions=config.captions or None, notes=notes)
    out = claim_output_dir(config.out, overwrite=options.overwrite, what="subject-set")
    # 3. load the models the photos need
    need_det, need_seg = models_needed(inputs)
    detector, segmenter = load_models(
        detector if detector is not None else config.detector,
        segmenter if segmenter is not None else config.segmenter,
        need_det, need_seg, device=device, nms_iou=config.nms_iou,
    )
    # 4. masks for every photo
    results = run_preparation(inputs, detector, segmenter, threshold=config.threshold, margin=config.margin,
                              progress=options.progress)
    # 5. the subject set of the usable photos
    failed = [r for r in results if not r.ok]
    if config.strict and failed:
        raise MudiError(
            f"{len(failed)} photo(s) failed (--strict: nothing written):\n{failure_table(results)}\n"
            "Supply masks (--masks DIR or mask_<name>.png) or boxes (--boxes FILE)."
        )
    sset = build_subject_set(specs, results)
    # 6. write everything at once
    record = _settings_record(config, specs, results, detector if need_det else None,
                              segmenter if need_seg else None)
    with staged_output(out, overwrite=options.overwrite, what="subject-set") as stage:
        write_outputs(stage, sset, results, record, _title(config, record, need_det), config.to_toml())
    return PrepareReport(out, SubjectSet.load(out, validate=False), results, notes)


def build_subject_set(specs: Sequence[SubjectSpec], results: Sequence[PhotoResult]) -> SubjectSet:
    """A SubjectSet of the successful photos (original files kept for byte-exact copies).

    Raises MudiError listing the failures when a subject has no usable photo.
    """
    subjects: list[Subject] = []
    cache: dict[str, list[SegmentedPhoto]] = {}
    for i, spec in enumerate(specs):
        key = SUBJECT_KEYS[i]
        ident, klass = split_phrase(spec.phrase)
        good = [r for r in results if r.key == key and r.ok]
        if not good:
            raise MudiError(
                f"subject {spec.phrase!r} ({spec.folder}) has no usable photo:\n"
                + failure_table([r for r in results if r.key == key])
                + "\nSupply masks (mask_<name>.png next to the photo, or --masks DIR), boxes (--boxes FILE), "
                "or try another --threshold."
            )
        subj = Subject(key, ident, klass, [Photo(r.path, None, r.caption) for r in good])
        subjects.append(subj)
        cache[key] = [
            SegmentedPhoto(np.asarray(r.image, dtype=np.uint8).copy(), r.mask, r.caption, r.path) for r in good
        ]
    sset = SubjectSet(subjects)
    sset._cache = cache  # photos are already loaded and segmented
    return sset


def load_models(
    detector: Detector | str | None,
    segmenter: Segmenter | str | None,
    need_detector: bool,
    need_segmenter: bool,
    *,
    device: str | torch.device = "cpu",
    nms_iou: float | None = DEFAULT_NMS_IOU,
) -> tuple[Detector | None, Segmenter | None]:
    """Turn names into loaded models (only the needed ones). Names are resolved first, so an
    unavailable model fails before anything heavy is loaded."""
    from mudi.errors import ModelNotAvailableError
    from mudi.models.loading import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, resolve_model

    det_name = seg_name = None
    if need_detector and (detector is None or isinstance(detector, (str, os.PathLike))):
        det_name = str(detector) if detector is not None else DEFAULT_DETECTOR
    if need_segmenter and (segmenter is None or isinstance(segmenter, (str, os.PathLike))):
        seg_name = str(segmenter) if segmenter is not None else DEFAULT_SEGMENTER
        if seg_name.lower() == "grabcut":
            seg_name = None
            from mudi.prepare.segment import GrabCutSegmenter

            segmenter = GrabCutSegmenter()
    for flag, name, kind in (("--detector", det_name, "owlv2"), ("--segmenter", seg_name, "sam")):
        if name is None:
            continue
        try:
            resolve_model(name, kind)
        except ModelNotAvailableError as exc:
            extra = " (or --segmenter grabcut, a weight-free fallback)" if flag == "--segmenter" else ""
            raise ModelNotAvailableError(
                f"{flag}: {exc} For `mudi prepare`: pass {flag} DIR{extra}, or give masks "
                "(--masks DIR, mask_<name>.png) or boxes (--boxes FILE) so it is not needed."
            ) from None
        except MudiError as exc:
            raise MudiError(f"{flag}: {exc}") from None
    if det_name is not None:
        from mudi.prepare.detect import Owlv2Detector

        detector = Owlv2Detector(det_name, device=device, nms_iou=nms_iou)
    if seg_name is not None:
        from mudi.prepare.segment import SamSegmenter

        segmenter = SamSegmenter(seg_name, device=device)
    return (detector if need_detector else None), (segmenter if need_segmenter else None)


def mask_candidates(
    image: Image.Image,
    box: Sequence[float],
    segmenter: Segmenter | str | None = None,
    *,
    margin: float = DEFAULT_BOX_MARGIN,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The masks a user can choose from for ``box`` in ``image``: (bool masks (K, H, W), scores (K,)),
    best first. ``box`` is enlarged by ``margin`` as in :func:`prepare`; ``segmenter`` is loaded as
    :func:`prepare` loads it (a name, ``"grabcut"``, ``None`` = the default SAM, or an object). SAM gives
    its 3 multimask candidates with their predicted IoU; a segmenter without ``candidates`` (GrabCut)
    gives its one mask with score NaN. Save the chosen one with :func:`mudi.io.mask_to_image`."""
    from mudi.geometry import enlarge_box

    check_box_settings(DEFAULT_THRESHOLD, margin)
    image = image.convert("RGB")
    _, seg = load_models(None, segmenter, False, True, device=device)
    prompt = enlarge_box(box, image.size, margin)
    if hasattr(seg, "candidates"):
        masks, scores = seg.candidates(image, prompt)
    else:
        masks, scores = np.asarray(seg.segment(image, prompt))[None], np.array([np.nan])
    return np.asarray(masks).astype(bool), np.asarray(scores, dtype=np.float32)


def segmenter_label(segmenter: Any) -> str:
    """How the contact sheet and prepare.json name a segmenter ("SAM (facebook/sam-vit-huge)")."""
    label = getattr(segmenter, "label", None) or type(segmenter).__name__
    name = getattr(segmenter, "name", None)
    return f"{label} ({name})" if name and str(name).lower() not in label.lower() else label


def _settings_record(config: PrepareConfig, specs: Sequence[SubjectSpec], results: Sequence[PhotoResult],
                     detector: Detector | None, segmenter: Segmenter | None) -> dict[str, Any]:
    """The settings part of prepare.json (``None`` models: not needed, every photo had a mask/box)."""
    return {
        "mode": "segment",
        "subjects": {SUBJECT_KEYS[i]: {"phrase": s.phrase, "folder": str(s.folder)} for i, s in enumerate(specs)},
        "detector": getattr(detector, "name", type(detector).__name__) if detector is not None else "none",
        "segmenter": segmenter_label(segmenter) if segmenter is not None else "none (all masks given)",
        "threshold": config.threshold,
        "nms_iou": config.nms_iou if detector is not None else None,
        "margin": config.margin,
        "n_photos": len(results),
        "n_failed": sum(not r.ok for r in results),
    }


def _title(config: PrepareConfig, record: dict[str, Any], detected: bool) -> str:
    """The contact sheet's title line."""
    if detected:
        det_part = f"{record['detector']} (threshold {config.threshold:g})"
    else:
        det_part = "none (masks/boxes given)"
    title = f"mudi prepare | detector: {det_part} | segmenter: {record['segmenter']} | margin {config.margin:g}"
    if record["n_failed"]:
        title += f" | {record['n_failed']} FAILED"
    return title


__all__ = ["build_subject_set", "load_models", "mask_candidates", "prepare", "segmenter_label"]
