"""Preparation (METHOD.md §1): turn raw reference photos into a segmented :class:`SubjectSet`.

For every photo of every subject the mask comes from the first of these that applies:

1. a **mask file** given by the user: ``mask_<stem>.<ext>`` next to the photo, or ``<stem>.<ext>``
   / ``mask_<stem>.<ext>`` in a ``masks_dir``;
2. the photo's **alpha channel** (RGBA photos whose alpha is the mask);
3. a **box** given by the user (``boxes``: photo file name -> [x0, y0, x1, y1] in pixels of the
   upright photo), which skips detection;
4. **detection**: the detector (OWLv2) is queried with the subject's descriptive class
   ("corgi" for "olis corgi") at ``threshold`` (default 0.2). Exactly one box must remain,
   otherwise the photo fails ("no box above 0.2", "3 boxes: ambiguous, supply a mask or a box").

A box (user or detected) is enlarged by ``margin`` (default 5 %) of the image width/height on
each side, clamped to the image, and given to the segmenter (SAM: one box prompt, one mask).
Masks are stored as 0/255 PNGs.

Everything a user gave is checked before any model is loaded (:func:`collect_inputs`), and
outputs are written into a staging folder next to ``out`` that is renamed into place at the
end, so a failed run leaves no partial output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mudi.errors import MudiError
from mudi.geometry import clamp_box, enlarge_box
from mudi.io import (
    IMAGE_SUFFIXES,
    claim_output_dir,
    list_images,
    load_mask,
    load_rgb_alpha,
    save_image_atomic,
    staged_output,
    write_json_atomic,
)
from mudi.protocols import Detection, Detector, Segmenter
from mudi.subjects import SegmentedPhoto, Subject, SubjectSet, Photo, split_phrase

DEFAULT_THRESHOLD = 0.2
#: Box enlargement per side before segmenting, as a fraction of the image width/height.
DEFAULT_BOX_MARGIN = 0.05
SUBJECT_KEYS = "abcdefghijklmnopqrstuvwxyz"
CONTACT_SHEET = "contact_sheet.png"
FAILURES = "failures.json"
REPORT = "prepare.json"

# how a photo's mask was obtained
FROM_MASK_FILE = "mask file"
FROM_ALPHA = "alpha channel"
FROM_BOX = "user box"
FROM_DETECTION = "detected"


# ----------------------------------------------------------------------------- geometry


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
) -> tuple[np.ndarray | None, tuple[float, float, float, float], str]:
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


# ----------------------------------------------------------------------------- inputs


@dataclass
class SubjectSpec:
    """One ``--subject "olis corgi=photos/corgi"``: phrase and photo folder."""

    phrase: str
    folder: Path

    @classmethod
    def parse(cls, text: str) -> "SubjectSpec":
        """Parse ``"identifier class=folder"``."""
        if "=" not in text:
            raise MudiError(
                f"--subject {text!r}: expected \"IDENTIFIER CLASS=FOLDER\", e.g. \"olis corgi=photos/corgi\"."
            )
        phrase, folder = text.split("=", 1)
        phrase, folder = " ".join(phrase.split()), folder.strip()
        if not folder:
            raise MudiError(f"--subject {text!r}: the photo folder after '=' is empty.")
        split_phrase(phrase, f"--subject {text!r}: ")
        return cls(phrase, Path(folder))

    @property
    def identifier(self) -> str:
        return split_phrase(self.phrase)[0]

    @property
    def cls(self) -> str:
        return split_phrase(self.phrase)[1]


@dataclass
class PhotoInput:
    """A loaded photo and what the user gave for it (validated)."""

    key: str
    phrase: str
    query: str
    path: Path
    image: Image.Image
    caption: str
    mask: np.ndarray | None = None
    mask_source: str | None = None  # FROM_MASK_FILE / FROM_ALPHA
    mask_path: Path | None = None
    box: tuple[float, float, float, float] | None = None  # user box


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
    box: tuple[float, float, float, float] | None = None  # user or detected box
    prompt_box: tuple[float, float, float, float] | None = None  # after the margin
    score: float | None = None
    detections: list[Detection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
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


def _is_mask_name(p: Path) -> bool:
    return p.name.lower().startswith("mask_")


def subject_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos, ignored non-image files) in a subject folder; ``mask_*`` files are masks."""
    photos = [p for p in list_images(folder) if not _is_mask_name(p)]
    ignored = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES
        and p.suffix.lower() != ".txt"
    )
    return photos, ignored


def _find_mask(photo: Path, masks_dir: Path | None) -> Path | None:
    stems = []
    if masks_dir is not None:
        stems += [masks_dir / photo.stem, masks_dir / f"mask_{photo.stem}"]
    stems.append(photo.parent / f"mask_{photo.stem}")
    for base in stems:
        for suffix in IMAGE_SUFFIXES:
            for cand in (base.with_name(base.name + suffix), base.with_name(base.name + suffix.upper())):
                if cand.is_file():
                    return cand
    return None


def _read_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise MudiError(f"{path}: {what} file not found.")
    if not path.is_file():
        raise MudiError(f"{path}: expected a JSON {what} file, found a folder.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: not valid JSON ({exc}).") from None


def _match_keys(
    mapping: Mapping[str, Any], photos: Sequence[tuple[SubjectSpec, Path]], source: str
) -> dict[Path, Any]:
    """Map keys ("a00.jpg", "corgi/a00.jpg" or a path) of a user JSON file to photos."""
    out: dict[Path, Any] = {}
    for k, value in mapping.items():
        matches = []
        for spec, p in photos:
            names = {p.name, f"{spec.folder.name}/{p.name}", str(p), str(p.resolve())}
            if k in names or k.replace("\\", "/") in names:
                matches.append(p)
        if not matches:
            raise MudiError(
                f"{source}: entry {k!r} matches no photo of the given subjects. Keys are photo file "
                "names (\"a00.jpg\") or \"FOLDER/name\"."
            )
        if len(matches) > 1:
            raise MudiError(
                f"{source}: entry {k!r} matches several photos ({', '.join(map(str, matches))}); "
                "write it as \"FOLDER/name\" to say which."
            )
        if matches[0] in out:
            raise MudiError(f"{source}: photo {matches[0]} is listed twice.")
        out[matches[0]] = value
    return out


def _photo_mapping(spec: Any, what: str, values: str, listed) -> dict[Path, Any]:
    """A per-photo mapping given as a dict or a JSON file (``--boxes`` / ``--captions``), keyed
    by the photos in ``listed``; {} when ``spec`` is None."""
    if spec is None:
        return {}
    source = what if isinstance(spec, Mapping) else str(spec)
    data = spec if isinstance(spec, Mapping) else _read_json(Path(spec), what)
    if not isinstance(data, Mapping):
        raise MudiError(f"{source}: expected a JSON object mapping photo file names to {values}.")
    return _match_keys(data, listed, source)


def _parse_box(value: Any, photo: Path, size: tuple[int, int], source: str) -> tuple[float, float, float, float]:
    W, H = size
    ok = (
        isinstance(value, (list, tuple)) and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    )
    if not ok:
        raise MudiError(f"{source}: box for {photo.name} must be [x0, y0, x1, y1] in pixels, got {value!r}.")
    x0, y0, x1, y1 = (float(v) for v in value)
    cx0, cy0, cx1, cy1 = clamp_box(value, size)
    if not (x1 > x0 and y1 > y0):
        raise MudiError(f"{source}: box {value!r} for {photo.name} is empty; need x0 < x1 and y0 < y1.")
    if not (cx1 - cx0 >= 1 and cy1 - cy0 >= 1):
        raise MudiError(
            f"{source}: box {value!r} for {photo.name} lies outside the photo ({W}x{H} px, upright)."
        )
    return cx0, cy0, cx1, cy1


def validate_specs(specs: Sequence[SubjectSpec]) -> None:
    """At least two subjects, unique identifiers, phrases and folders."""
    if len(specs) < 2:
        raise MudiError(
            f"got {len(specs)} subject(s); mudi personalizes at least 2 subjects at once. "
            "Give another --subject \"IDENTIFIER CLASS=FOLDER\"."
        )
    if len(specs) > len(SUBJECT_KEYS):
        raise MudiError(f"got {len(specs)} subjects; at most {len(SUBJECT_KEYS)} are supported.")
    seen: dict[str, str] = {}
    for s in specs:
        folder = str(s.folder.expanduser().resolve())
        for kind, val in (("identifier", s.identifier.lower()), ("phrase", s.phrase.lower()), ("folder", folder)):
            tag = f"{kind}:{val}"
            if tag in seen:
                raise MudiError(
                    f"duplicate {kind} {val!r} (subjects {seen[tag]!r} and {s.phrase!r}); every subject "
                    "needs its own identifier, phrase and photo folder."
                )
            seen[tag] = s.phrase


def collect_inputs(
    specs: Sequence[SubjectSpec],
    *,
    masks_dir: str | Path | None = None,
    boxes: str | Path | Mapping[str, Any] | None = None,
    captions: str | Path | Mapping[str, str] | None = None,
    notes: list[str] | None = None,
) -> list[PhotoInput]:
    """Check and load everything the user gave, before any model is loaded.

    Raises :class:`MudiError` naming the file for: fewer than 2 subjects, duplicate
    identifiers/phrases/folders, missing or empty folders, unreadable photos, masks of the wrong
    size or empty, fully transparent alpha, invalid box/caption files. Harmless oddities (files
    that are not photos and were skipped) are appended to ``notes``.
    """
    validate_specs(specs)
    mdir = None
    if masks_dir is not None:
        mdir = Path(masks_dir)
        if not mdir.is_dir():
            raise MudiError(f"{mdir}: --masks folder not found (or not a folder).")
    listed: list[tuple[SubjectSpec, Path]] = []
    for spec in specs:
        folder = spec.folder
        if not folder.exists():
            raise MudiError(f"{folder}: photo folder of subject {spec.phrase!r} not found.")
        photos, ignored = subject_photos(folder)
        if not photos:
            extra = f" (found only: {', '.join(p.name for p in ignored[:5])})" if ignored else ""
            raise MudiError(
                f"{folder}: no photos of subject {spec.phrase!r}{extra}. Put JPEG/PNG/WebP photos "
                f"({', '.join(IMAGE_SUFFIXES)}) in the folder."
            )
        if ignored and notes is not None:
            names = ", ".join(p.name for p in ignored[:5]) + (", ..." if len(ignored) > 5 else "")
            notes.append(f"{folder}: skipped {len(ignored)} file(s) that are not photos: {names}")
        listed.extend((spec, p) for p in photos)

    box_map = _photo_mapping(boxes, "boxes", "[x0, y0, x1, y1]", listed)
    caption_map = _photo_mapping(captions, "captions", "captions", listed)
    for p, c in caption_map.items():
        if not isinstance(c, str) or not c.strip():
            where = "captions" if isinstance(captions, Mapping) else str(captions)
            raise MudiError(f"{where}: caption for {p.name} must be a non-empty string.")

    used_masks: dict[Path, Path] = {}
    keys = {id(spec): SUBJECT_KEYS[i] for i, spec in enumerate(specs)}
    inputs: list[PhotoInput] = []
    for spec, path in listed:
        image, alpha = load_rgb_alpha(path)
        caption = caption_map.get(path)
        if caption is None:
            side = path.with_suffix(".txt")
            caption = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
            caption = caption or f"a photo of a {spec.phrase}"
        item = PhotoInput(keys[id(spec)], spec.phrase, spec.cls, path, image, " ".join(caption.split()))
        mask_path = _find_mask(path, mdir)
        if mask_path is not None:
            resolved = mask_path.resolve()
            if resolved in used_masks:
                raise MudiError(
                    f"{mask_path}: this mask would apply to two photos ({used_masks[resolved]} and {path}); "
                    "give the photos different file names."
                )
            used_masks[resolved] = path
            item.mask = load_mask(mask_path, image.size)
            item.mask_source, item.mask_path = FROM_MASK_FILE, mask_path
        elif alpha is not None:
            if not alpha.any():
                raise MudiError(
                    f"{path}: the alpha channel (used as the mask) is fully transparent; "
                    "make the subject opaque or remove the alpha channel."
                )
            item.mask, item.mask_source = alpha, FROM_ALPHA
        if path in box_map:
            item.box = _parse_box(box_map[path], path, image.size, str(boxes))
        inputs.append(item)
    return inputs


def models_needed(inputs: Sequence[PhotoInput]) -> tuple[bool, bool]:
    """(needs a detector, needs a segmenter) for these inputs."""
    need_seg = any(i.mask is None for i in inputs)
    need_det = any(i.mask is None and i.box is None for i in inputs)
    return need_det, need_seg


# ----------------------------------------------------------------------------- running


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
    from tqdm.auto import tqdm

    check_settings(threshold, margin)
    need_det, need_seg = models_needed(inputs)
    if need_det and detector is None:
        raise MudiError("some photos have neither a mask nor a box, so a detector is needed.")
    if need_seg and segmenter is None:
        raise MudiError("some photos have no mask, so a segmenter is needed.")

    results: list[PhotoResult | None] = [None] * len(inputs)
    for n, item in enumerate(inputs):
        if item.mask is not None:
            results[n] = PhotoResult(item.key, item.phrase, item.path, item.image, item.caption,
                                     item.mask_source or FROM_MASK_FILE, mask=item.mask)

    # detection, batched per subject (each subject has its own text query)
    detected: dict[int, tuple[Detection | None, str, list[Detection]]] = {}
    todo = [n for n, i in enumerate(inputs) if i.mask is None and i.box is None]
    if todo:
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

    seg_todo = [n for n in range(len(inputs)) if results[n] is None]
    bar = tqdm(total=len(seg_todo), desc="segment", unit="photo", disable=not progress or not seg_todo)
    for n in seg_todo:
        item = inputs[n]
        if item.box is not None:
            res = PhotoResult(item.key, item.phrase, item.path, item.image, item.caption, FROM_BOX, box=item.box)
        else:
            det, reason, dets = detected[n]
            res = PhotoResult(item.key, item.phrase, item.path, item.image, item.caption, FROM_DETECTION,
                              detections=dets)
            if det is None:
                res.reason = reason
                results[n] = res
                bar.update(1)
                continue
            res.box, res.score = det.box, det.score
        mask, prompt, reason = segment_in_box(item.image, res.box, segmenter, margin)
        res.mask, res.prompt_box, res.reason = mask, prompt, reason
        results[n] = res
        bar.update(1)
    bar.close()
    return [r for r in results if r is not None]


def check_settings(threshold: float, margin: float) -> None:
    """Range checks for --threshold and --margin."""
    if not (0.0 <= threshold <= 1.0):
        raise MudiError(f"--threshold must be between 0 and 1, got {threshold}.")
    if not (0.0 <= margin < 0.5):
        raise MudiError(f"--margin must be in [0, 0.5), got {margin}.")


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


def failure_table(results: Sequence[PhotoResult]) -> str:
    """Plain-text table of failed photos and their reasons."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return "  (no failures)"
    w = max(len(str(r.path)) for r in failed)
    return "\n".join(f"  {str(r.path):<{w}}  {r.phrase}: {r.reason}" for r in failed)


def results_table(results: Sequence[PhotoResult]) -> str:
    """Plain-text table of every photo: subject, file, how the mask was made, status."""
    rows = [("subject", "photo", "mask from", "status")]
    for r in results:
        status = "ok" if r.ok else f"FAILED: {r.reason}"
        if r.ok and r.score is not None:
            status = f"ok (score {r.score:.2f})"
        rows.append((r.phrase, str(r.path), r.method, status))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return "\n".join(
        "  " + "  ".join(f"{row[c]:<{widths[c]}}" for c in range(3)) + "  " + row[3] for row in rows
    )


# ----------------------------------------------------------------------------- contact sheet


def _thumb(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    return image, scale


def contact_sheet(results: Sequence[PhotoResult], *, title: str = "", cell: int = 256) -> Image.Image:
    """Every photo with its mask outline, labelled by subject; failed photos are crossed out in
    red with their reason (and any detected boxes drawn)."""
    from mudi.viz import draw_boxes, grid, outline_mask

    tiles, labels = [], []
    for r in results:
        thumb, scale = _thumb(r.image, 2 * cell)
        if r.ok:
            mask = r.mask
            if scale < 1.0:
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(thumb.size, Image.NEAREST)) >= 128
            tile = outline_mask(thumb, mask)
            labels.append(f"{r.phrase} | {r.path.name} | {r.method}")
        else:
            tile = thumb.convert("RGB")
            if r.detections:
                tile = draw_boxes(tile, [[v * scale for v in d.box] for d in r.detections],
                                  [f"{d.score:.2f}" for d in r.detections], color=(255, 160, 0))
            draw = ImageDraw.Draw(tile)
            w, h = tile.size
            lw = max(3, w // 60)
            draw.rectangle((0, 0, w - 1, h - 1), outline=(230, 0, 0), width=lw)
            draw.line((0, 0, w, h), fill=(230, 0, 0), width=lw)
            draw.line((0, h, w, 0), fill=(230, 0, 0), width=lw)
            labels.append(f"FAILED {r.phrase} | {r.path.name}: {r.reason}")
        tiles.append(tile)
    sheet = grid(tiles, labels=labels, cell=cell)
    if not title:
        return sheet
    from PIL import ImageFont

    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # older Pillow
        font = ImageFont.load_default()
    import textwrap

    lines = textwrap.wrap(title, width=max(20, (sheet.width - 12) // 7))
    banner = 8 + 15 * len(lines)
    out = Image.new("RGB", (sheet.width, sheet.height + banner), (255, 255, 255))
    out.paste(sheet, (0, banner))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, 4 + 15 * i), line, fill=(0, 0, 0), font=font)
    return out


# ----------------------------------------------------------------------------- output


@dataclass
class PrepareReport:
    """What a preparation wrote."""

    out: Path
    subject_set: SubjectSet
    results: list[PhotoResult]
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[PhotoResult]:
        return [r for r in self.results if not r.ok]


def _write_outputs(stage: Path, sset: SubjectSet, results: Sequence[PhotoResult], settings: dict, title: str) -> None:
    sset.save(stage, overwrite=True)
    save_image_atomic(contact_sheet(results, title=title), stage / CONTACT_SHEET)
    write_json_atomic(stage / FAILURES, [r.record() for r in results if not r.ok])
    write_json_atomic(stage / REPORT, {**settings, "photos": [r.record() for r in results]})


def _segmenter_label(segmenter: Any) -> str:
    label = getattr(segmenter, "label", None) or type(segmenter).__name__
    name = getattr(segmenter, "name", None)
    return f"{label} ({name})" if name and str(name).lower() not in label.lower() else label


def prepare_from_photos(
    specs: Sequence[SubjectSpec | str],
    out: str | Path,
    *,
    detector: Detector | str | None = None,
    segmenter: Segmenter | str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    margin: float = DEFAULT_BOX_MARGIN,
    boxes: str | Path | Mapping[str, Any] | None = None,
    masks_dir: str | Path | None = None,
    captions: str | Path | Mapping[str, str] | None = None,
    device: str = "cpu",
    nms_iou: float | None = 0.5,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Segment raw photos into a subject set at ``out`` (METHOD §1).

    ``specs``: SubjectSpec or "identifier class=folder" strings (subject keys a, b, ... in
    order). ``detector`` / ``segmenter``: objects implementing the protocols, or model names
    (hub id or local folder; default OWLv2 / SAM checkpoints); ``segmenter="grabcut"`` uses the
    weight-free GrabCut fallback. Models are loaded only if some photo needs them, and only
    after every input was validated. ``nms_iou``: overlapping OWLv2 boxes (IoU above it) count
    as one box (1.0 keeps the raw boxes, as the reference notebook does).

    Photos that fail are left out and listed (``failures.json``, contact sheet). A subject with
    no usable photo, or any failure with ``strict``, raises MudiError and writes nothing.
    """
    specs = [SubjectSpec.parse(s) if isinstance(s, str) else s for s in specs]
    check_settings(threshold, margin)
    if nms_iou is not None and not (0.0 < nms_iou <= 1.0):
        raise MudiError(f"--nms-iou must be in (0, 1], got {nms_iou}.")
    out = Path(out)
    notes: list[str] = []
    inputs = collect_inputs(specs, masks_dir=masks_dir, boxes=boxes, captions=captions, notes=notes)
    claim_output_dir(out, overwrite=overwrite, what="subject-set")
    need_det, need_seg = models_needed(inputs)
    detector, segmenter = load_models(detector, segmenter, need_det, need_seg, device=device, nms_iou=nms_iou)

    results = run_preparation(inputs, detector, segmenter, threshold=threshold, margin=margin, progress=progress)
    failed = [r for r in results if not r.ok]
    if strict and failed:
        raise MudiError(
            f"{len(failed)} photo(s) failed (--strict: nothing written):\n{failure_table(results)}\n"
            "Supply masks (--masks DIR or mask_<name>.png) or boxes (--boxes FILE)."
        )
    sset = build_subject_set(specs, results)
    seg_label = _segmenter_label(segmenter) if need_seg else "none (all masks given)"
    det_label = getattr(detector, "name", type(detector).__name__) if need_det else "none"
    settings = {
        "mode": "segment",
        "subjects": {SUBJECT_KEYS[i]: {"phrase": s.phrase, "folder": str(s.folder)} for i, s in enumerate(specs)},
        "detector": det_label,
        "segmenter": seg_label,
        "threshold": threshold,
        "nms_iou": nms_iou if need_det else None,
        "margin": margin,
        "n_photos": len(results),
        "n_failed": len(failed),
    }
    det_part = f"{det_label} (threshold {threshold:g})" if need_det else "none (masks/boxes given)"
    title = f"mudi prepare | detector: {det_part} | segmenter: {seg_label} | margin {margin:g}"
    if failed:
        title += f" | {len(failed)} FAILED"
    with staged_output(out, overwrite=overwrite, what="subject-set") as stage:
        _write_outputs(stage, sset, results, settings, title)
    return PrepareReport(out, SubjectSet.load(out, validate=False), results, notes)


def load_models(
    detector: Detector | str | None,
    segmenter: Segmenter | str | None,
    need_detector: bool,
    need_segmenter: bool,
    *,
    device: str = "cpu",
    nms_iou: float | None = 0.5,
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


def import_set(src: str | Path, out: str | Path, *, overwrite: bool = False) -> PrepareReport:
    """Validate an existing subject set (metadata.jsonl format), copy it to ``out`` and write
    its contact sheet. Nothing is written if the set is invalid."""
    src, out = Path(src), Path(out)
    claim_output_dir(out, overwrite=overwrite, what="subject-set")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise MudiError(f"{out}: --out must be a different folder from --from.")
    sset = SubjectSet.load(src)
    results = []
    for s in sset.subjects:
        for p, seg in zip(s.photos, sset.photos(s.key)):
            results.append(PhotoResult(
                s.key, s.phrase, p.image_path, Image.fromarray(seg.image), seg.caption,
                FROM_MASK_FILE if p.mask_path is not None else FROM_ALPHA, mask=seg.mask,
            ))
    settings = {
        "mode": "import",
        "source": str(src),
        "subjects": {s.key: {"phrase": s.phrase} for s in sset.subjects},
        "n_photos": len(results),
        "n_failed": 0,
    }
    with staged_output(out, overwrite=overwrite, what="subject-set") as stage:
        _write_outputs(stage, sset, results, settings, f"mudi prepare --from {src}")
    return PrepareReport(out, SubjectSet.load(out, validate=False), results)


__all__ = [
    "DEFAULT_BOX_MARGIN",
    "DEFAULT_THRESHOLD",
    "PhotoInput",
    "PhotoResult",
    "PrepareReport",
    "SubjectSpec",
    "build_subject_set",
    "collect_inputs",
    "contact_sheet",
    "failure_table",
    "import_set",
    "load_models",
    "models_needed",
    "pick_single_box",
    "prepare_from_photos",
    "results_table",
    "run_preparation",
    "segment_in_box",
    "segment_photo",
]
