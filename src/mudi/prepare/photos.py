"""Gathering what the user gave for each photo: subject folders, mask files, alpha channels,
boxes and captions (METHOD.md §1, inputs).

Everything is checked and loaded here, before any model is loaded (:func:`collect_inputs`).
For every photo the mask comes from the first of these that applies: a **mask file**
(``mask_<stem>.<ext>`` next to the photo, or ``<stem>.<ext>`` / ``mask_<stem>.<ext>`` in a
``masks_dir``), the photo's **alpha channel**, a **box** given by the user (``boxes``: photo file
name -> [x0, y0, x1, y1] in pixels of the upright photo, skips detection), else detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError
from mudi.geometry import Box, clamp_box
from mudi.io import IMAGE_SUFFIXES, list_images, load_mask, load_rgb_alpha, read_json
from mudi.subjects import split_phrase

#: Subject keys in the order the subjects are given.
SUBJECT_KEYS = "abcdefghijklmnopqrstuvwxyz"

# how a photo's mask was obtained
FROM_MASK_FILE = "mask file"
FROM_ALPHA = "alpha channel"
FROM_BOX = "user box"
FROM_DETECTION = "detected"


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
        """The first word of the phrase ("olis")."""
        return split_phrase(self.phrase)[0]

    @property
    def cls(self) -> str:
        """The descriptive class ("corgi"), also the detector's query."""
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
    box: Box | None = None  # user box
    alpha: np.ndarray | None = None  # the photo's alpha channel as a mask, if it has one


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
    data = spec if isinstance(spec, Mapping) else read_json(Path(spec), what)
    if not isinstance(data, Mapping):
        raise MudiError(f"{source}: expected a JSON object mapping photo file names to {values}.")
    return _match_keys(data, listed, source)


def _parse_box(value: Any, photo: Path, size: tuple[int, int], source: str) -> Box:
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
    listed = _list_photos(specs, notes)
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
        item = _load_photo(spec, path, keys[id(spec)], caption_map.get(path))
        _attach_mask(item, _find_mask(path, mdir), used_masks)
        if path in box_map:
            item.box = _parse_box(box_map[path], path, item.image.size, str(boxes))
        inputs.append(item)
    return inputs


def _list_photos(specs: Sequence[SubjectSpec], notes: list[str] | None) -> list[tuple[SubjectSpec, Path]]:
    """(subject, photo) pairs of every subject folder; MudiError for a missing or photo-less folder."""
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
    return listed


def _load_photo(spec: SubjectSpec, path: Path, key: str, caption: str | None) -> PhotoInput:
    """The photo upright as RGB with its caption: given, else ``<name>.txt``, else the default."""
    image, alpha = load_rgb_alpha(path)
    if caption is None:
        side = path.with_suffix(".txt")
        caption = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
        caption = caption or f"a photo of a {spec.phrase}"
    item = PhotoInput(key, spec.phrase, spec.cls, path, image, " ".join(caption.split()))
    item.alpha = alpha
    return item


def _attach_mask(item: PhotoInput, mask_path: Path | None, used_masks: dict[Path, Path]) -> None:
    """Give ``item`` its mask file's mask, else its alpha channel's, if either exists."""
    if mask_path is not None:
        resolved = mask_path.resolve()
        if resolved in used_masks:
            raise MudiError(
                f"{mask_path}: this mask would apply to two photos ({used_masks[resolved]} and {item.path}); "
                "give the photos different file names."
            )
        used_masks[resolved] = item.path
        item.mask = load_mask(mask_path, item.image.size)
        item.mask_source, item.mask_path = FROM_MASK_FILE, mask_path
    elif item.alpha is not None:
        if not item.alpha.any():
            raise MudiError(
                f"{item.path}: the alpha channel (used as the mask) is fully transparent; "
                "make the subject opaque or remove the alpha channel."
            )
        item.mask, item.mask_source = item.alpha, FROM_ALPHA


def models_needed(inputs: Sequence[PhotoInput]) -> tuple[bool, bool]:
    """(needs a detector, needs a segmenter) for these inputs."""
    need_seg = any(i.mask is None for i in inputs)
    need_det = any(i.mask is None and i.box is None for i in inputs)
    return need_det, need_seg




__all__ = [
    "FROM_ALPHA",
    "FROM_BOX",
    "FROM_DETECTION",
    "FROM_MASK_FILE",
    "SUBJECT_KEYS",
    "PhotoInput",
    "SubjectSpec",
    "collect_inputs",
    "models_needed",
    "subject_photos",
    "validate_specs",
]
