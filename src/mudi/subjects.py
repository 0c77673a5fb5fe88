"""SubjectSet: the one description of *who* we personalize.

A subject set is a folder in the MuDI reference format (read by :mod:`mudi.metadata`)::

    metadata.jsonl   line 1: {"id": {"a": "olis corgi", "b": "hta chow chow"}}
                     then:   {"id": "a", "file_name": "a00.jpg", "mask_path": "mask_a00.png",
                              "text": "A photo of a olis corgi ..."}
    a00.jpg, mask_a00.png, ...

Each subject has a key ("a"), an identifier token ("olis") and a descriptive class
("corgi"); its *phrase* is "identifier class". Every photo has a binary mask (0 background,
255 subject; stored masks are thresholded at 128). A photo may carry its mask as an alpha
channel instead of a mask file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError
from mudi.geometry import mask_bbox
from mudi.metadata import METADATA, read_metadata, split_phrase
from mudi.io import (
    load_mask,
    load_rgb_alpha,
    mask_to_image,
    claim_output_dir,
    save_image_atomic,
    write_bytes_atomic,
    write_text_atomic,
)

#: Identifiers used by the reference implementation for up to five subjects.
DEFAULT_IDENTIFIERS = ("olis", "hta", "ult", "amg", "lun", "sks", "zwx", "vrp", "qmk", "dlt")


@dataclass
class SegmentedPhoto:
    """A loaded photo: RGB uint8 array (H, W, 3), bool mask (H, W) and caption."""

    image: np.ndarray
    mask: np.ndarray
    caption: str
    path: Path

    @cached_property
    def bbox(self) -> tuple[int, int, int, int]:
        """Mask bounding box (x0, y0, x1, y1), x1/y1 exclusive."""
        return mask_bbox(self.mask)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the photo."""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class Photo:
    """One reference photo of a subject, as listed in metadata.jsonl."""

    image_path: Path
    mask_path: Path | None
    caption: str

    def load(self) -> SegmentedPhoto:
        """Read the photo and its mask (file, else alpha channel); MudiError naming the file."""
        img, alpha = load_rgb_alpha(self.image_path)
        if self.mask_path is not None:
            mask = load_mask(self.mask_path, img.size)
        elif alpha is not None:
            if not alpha.any():
                raise MudiError(f"{self.image_path}: the alpha channel (used as mask) is fully transparent.")
            mask = alpha
        else:
            raise MudiError(
                f"{self.image_path}: no mask. Give a mask file (mask_path in metadata.jsonl), an RGBA "
                "photo whose alpha is the mask, or run `mudi prepare` to segment it."
            )
        return SegmentedPhoto(np.asarray(img, dtype=np.uint8).copy(), mask, self.caption, self.image_path)


@dataclass
class Subject:
    """One subject: its key ("a"), identifier token ("olis"), descriptive class ("corgi") and photos."""

    key: str
    identifier: str
    cls: str
    photos: list[Photo] = field(default_factory=list)

    @property
    def phrase(self) -> str:
        """"identifier class", e.g. "olis corgi"."""
        return f"{self.identifier} {self.cls}"


class SubjectSet:
    """Subjects (K >= 2), their photos, masks and captions; loads and saves the folder format."""

    def __init__(self, subjects: Sequence[Subject], root: Path | None = None):
        self.subjects = list(subjects)
        self.root = Path(root) if root is not None else None
        self._cache: dict[str, list[SegmentedPhoto]] = {}

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self):
        return iter(self.subjects)

    @property
    def keys(self) -> list[str]:
        """Subject keys in order."""
        return [s.key for s in self.subjects]

    def subject(self, name: str) -> Subject:
        """Find a subject by key, identifier or phrase."""
        for s in self.subjects:
            if name in (s.key, s.identifier, s.phrase):
                return s
        known = ", ".join(s.identifier for s in self.subjects)
        raise MudiError(f"unknown subject {name!r}; this set has: {known}.")

    def photos(self, key: str) -> list[SegmentedPhoto]:
        """Loaded photos of a subject (cached in memory)."""
        if key not in self._cache:
            self._cache[key] = [p.load() for p in self.subject(key).photos]
        return self._cache[key]

    def load_all(self) -> dict[str, list[SegmentedPhoto]]:
        """Every subject's loaded photos, by key."""
        return {s.key: self.photos(s.key) for s in self.subjects}

    def subjects_in_prompt(self, prompt: str) -> list[Subject]:
        """Subjects whose identifier occurs as a word in ``prompt``, in order of appearance."""
        words = re.findall(r"[A-Za-z0-9_\-]+", prompt)
        found: list[Subject] = []
        for w in words:
            for s in self.subjects:
                if w == s.identifier and s not in found:
                    found.append(s)
        return found

    def strip_identifiers(self, prompt: str) -> str:
        """Remove identifier tokens from a prompt, keeping the descriptive classes."""
        out = prompt
        for s in self.subjects:
            out = re.sub(rf"\b{re.escape(s.identifier)}\b\s*", "", out)
        return " ".join(out.split())

    # -------------------------------------------------------------- validation
    def validate(self, *, load_images: bool = True, min_subjects: int = 2) -> None:
        """Check the set; raise MudiError on the first problem. ``load_images`` also reads every
        photo and mask (sizes, empty masks, corrupt files)."""
        where = f"{self.root}: " if self.root else ""
        if len(self.subjects) < min_subjects:
            raise MudiError(
                f"{where}found {len(self.subjects)} subject(s); mudi personalizes at least {min_subjects} "
                "subjects at once. Add another subject."
            )
        seen: dict[str, str] = {}
        for s in self.subjects:
            for kind, val in (("key", s.key), ("identifier", s.identifier), ("phrase", s.phrase.lower())):
                tag = f"{kind}:{val.lower()}"
                if tag in seen:
                    raise MudiError(
                        f"{where}duplicate {kind} {val!r} (subjects {seen[tag]!r} and {s.key!r}); "
                        "every subject needs its own identifier and phrase."
                    )
                seen[tag] = s.key
            if not s.photos:
                raise MudiError(f"{where}subject {s.phrase!r} has no photos.")
        if load_images:
            for s in self.subjects:
                self.photos(s.key)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: str | Path, *, validate: bool = True, load_images: bool = True) -> "SubjectSet":
        """Load a subject-set folder (metadata.jsonl format) and validate it."""
        heads, records = read_metadata(root)
        subjects = {key: Subject(key, ident, klass) for key, (ident, klass) in heads.items()}
        for rec in records:
            subjects[rec.key].photos.append(Photo(rec.image_path, rec.mask_path, rec.caption))
        root = Path(root)
        sset = cls(list(subjects.values()), root)
        if validate:
            sset.validate(load_images=load_images)
        return sset

    # ------------------------------------------------------------------- saving
    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the set as a folder (photos as stored, masks as PNG, metadata.jsonl)."""
        out = claim_output_dir(out, overwrite=overwrite, what="subject-set", option="", create=True)
        lines = [json.dumps({"id": {s.key: s.phrase for s in self.subjects}}, ensure_ascii=False)]
        for s in self.subjects:
            for i, (p, seg) in enumerate(zip(s.photos, self.photos(s.key))):
                src = p.image_path
                suffix = src.suffix.lower()
                # Copy upright 8-bit RGB JPEG/PNG photos byte for byte; re-encode anything else.
                if suffix in (".jpg", ".jpeg", ".png") and src.exists() and _is_plain_rgb(src):
                    name = f"{s.key}{i:02d}{suffix}"
                    write_bytes_atomic(out / name, src.read_bytes())
                else:
                    name = f"{s.key}{i:02d}.png"
                    save_image_atomic(Image.fromarray(seg.image), out / name)
                mask_name = f"mask_{s.key}{i:02d}.png"
                save_image_atomic(mask_to_image(seg.mask), out / mask_name)
                lines.append(json.dumps(
                    {"id": s.key, "file_name": name, "mask_path": mask_name, "text": seg.caption},
                    ensure_ascii=False,
                ))
        write_text_atomic(out / METADATA, "\n".join(lines) + "\n")
        return out

    @classmethod
    def from_arrays(
        cls,
        subjects: Iterable[tuple[str, str, Sequence[tuple[Image.Image | np.ndarray, np.ndarray, str]]]],
    ) -> "SubjectSet":
        """Build an in-memory set from (key, phrase, [(image, mask, caption), ...]) tuples."""
        out: list[Subject] = []
        cache: dict[str, list[SegmentedPhoto]] = {}
        for key, phrase, photos in subjects:
            ident, klass = split_phrase(phrase)
            subj = Subject(key, ident, klass)
            segs = []
            for i, (img, mask, caption) in enumerate(photos):
                arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
                mask = np.asarray(mask).astype(bool)
                if mask.shape != arr.shape[:2]:
                    raise MudiError(f"subject {phrase!r} photo {i}: mask shape {mask.shape} != image {arr.shape[:2]}.")
                path = Path(f"<memory>/{key}{i:02d}.png")
                subj.photos.append(Photo(path, None, caption))
                segs.append(SegmentedPhoto(arr.copy(), mask, caption, path))
            out.append(subj)
            cache[key] = segs
        sset = cls(out)
        sset._cache = cache
        return sset


def _is_plain_rgb(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            return im.mode == "RGB" and orientation in (None, 1)
    except Exception:
        return False


def parse_subject_values(
    spec: str | Mapping[str, object] | None,
    sset: SubjectSet | None = None,
    *,
    low: float = 0.0,
    high: float = math.inf,
    option: str = "--sizes",
    meaning: str = "",
) -> dict[str, float]:
    """Parse per-subject numbers such as ``"olis=1,hta=0.6"`` (or a ``{name: value}`` mapping).

    Every value must be a finite number with ``low < value <= high``. Names are kept as written,
    or, with ``sset``, resolved to subject keys (a name may be a key, identifier or phrase).
    An empty or ``None`` spec gives ``{}``.

    Args:
        option: the flag or config key the spec came from, named in every error message.
        meaning: what the value means, added to the out-of-range message.

    Raises:
        MudiError: a part that is not ``NAME=NUMBER``, a value out of range, an unknown subject
            (with ``sset``), or a spec with no pairs in it.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = [_name_value(part.strip(), option) for part in str(spec).split(",") if part.strip()]
    if not items:
        raise MudiError(f"{option} {spec!r} has no NAME=NUMBER pairs; write them like a=1,b=0.6.")
    out: dict[str, float] = {}
    for name, raw in items:
        name = name.strip()
        value = _subject_value(name, raw, option)
        if not low < value <= high:
            bound = f"> {low:g}" if high == math.inf else f"in ({low:g}, {high:g}]"
            raise MudiError(f"{option}: {name}={raw} must be {bound}{f' ({meaning})' if meaning else ''}.")
        if sset is not None:
            try:
                name = sset.subject(name).key
            except MudiError as exc:
                raise MudiError(f"{option}: {exc}") from None
        out[name] = value
    return out


def _name_value(part: str, option: str) -> tuple[str, str]:
    name, sep, raw = part.partition("=")
    if not sep or not name.strip():
        raise MudiError(f"{option}: {part!r} is not NAME=NUMBER (e.g. a=1,b=0.6).")
    return name, raw.strip()


def _subject_value(name: str, raw: object, option: str) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MudiError(f"{option}: the value {raw!r} for {name!r} is not a number.") from None
    if not math.isfinite(value):
        raise MudiError(f"{option}: the value {raw!r} for {name!r} must be a finite number.")
    return value
