"""The subject-set folder format: ``metadata.jsonl`` and the phrases in it.

::

    metadata.jsonl   line 1: {"id": {"a": "olis corgi", "b": "hta chow chow"}}
                     then:   {"id": "a", "file_name": "a00.jpg", "mask_path": "mask_a00.png",
                              "text": "A photo of a olis corgi ..."}

Paths are relative to the folder and must stay inside it. :func:`read_metadata` checks the
file line by line and names the line of every problem; :class:`mudi.subjects.SubjectSet` builds
the subjects from what it returns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mudi.errors import MudiError

METADATA = "metadata.jsonl"
_IDENT_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass
class PhotoRecord:
    """One photo line of metadata.jsonl, checked: subject key, photo, mask file (or None), caption."""

    key: str
    image_path: Path
    mask_path: Path | None
    caption: str


def split_phrase(phrase: str, where: str = "") -> tuple[str, str]:
    """"olis corgi" → ("olis", "corgi"); the identifier is the first word."""
    parts = phrase.strip().split(None, 1)
    if len(parts) != 2:
        raise MudiError(
            f"{where}subject phrase {phrase!r} must be an identifier and a class, e.g. \"olis corgi\"."
        )
    ident, cls = parts
    if not _IDENT_RE.match(ident):
        raise MudiError(f"{where}identifier {ident!r} must be one word of letters, digits, '_' or '-'.")
    return ident, " ".join(cls.split())


def read_metadata(root: str | Path) -> tuple[dict[str, tuple[str, str]], list[PhotoRecord]]:
    """The subjects ``{key: (identifier, class)}`` (in file order) and the photo records of a
    subject-set folder; MudiError naming the file and line for every problem."""
    root = Path(root)
    if not root.exists():
        raise MudiError(f"{root}: subject-set folder not found.")
    if not root.is_dir():
        raise MudiError(f"{root}: expected a subject-set folder, found a file.")
    meta = root / METADATA
    if not meta.exists():
        raise MudiError(
            f"{root}: no {METADATA}. A subject set is a folder with {METADATA}; create one with "
            "`mudi prepare --subject \"olis corgi=photos/corgi\" --subject ... --out DIR`."
        )
    lines = _json_lines(meta)
    heads = _subjects_line(meta, *lines[0])
    root_res = root.resolve()
    seen_photos: dict[Path, int] = {}
    records = [_photo_line(root, root_res, meta, lineno, rec, heads, seen_photos) for lineno, rec in lines[1:]]
    return heads, records


def _json_lines(meta: Path) -> list[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line."""
    lines = [(i + 1, ln) for i, ln in enumerate(meta.read_text(encoding="utf-8").splitlines()) if ln.strip()]
    if not lines:
        raise MudiError(f"{meta}: the file is empty.")
    records = []
    for lineno, ln in lines:
        try:
            records.append((lineno, json.loads(ln)))
        except json.JSONDecodeError as exc:
            raise MudiError(f"{meta}:{lineno}: not valid JSON ({exc.msg}).") from None
    return records


def _subjects_line(meta: Path, lineno: int, head: object) -> dict[str, tuple[str, str]]:
    """Line 1: ``{"id": {key: phrase}}`` → ``{key: (identifier, class)}``."""
    if not isinstance(head, dict) or not isinstance(head.get("id"), dict) or not head["id"]:
        raise MudiError(
            f"{meta}:{lineno}: the first line must map subject keys to phrases, e.g. "
            '{"id": {"a": "olis corgi", "b": "hta chow chow"}}.'
        )
    heads: dict[str, tuple[str, str]] = {}
    for key, phrase in head["id"].items():
        if not isinstance(phrase, str):
            raise MudiError(f"{meta}:{lineno}: phrase of subject {key!r} must be a string.")
        heads[str(key)] = split_phrase(phrase, f"{meta}:{lineno}: ")
    return heads


def _photo_line(root: Path, root_res: Path, meta: Path, lineno: int, rec: object,
                heads: dict[str, tuple[str, str]], seen_photos: dict[Path, int]) -> PhotoRecord:
    """One photo line, checked (declared subject, files inside the folder, each photo once)."""
    if not isinstance(rec, dict):
        raise MudiError(f"{meta}:{lineno}: expected a JSON object.")
    key = rec.get("id")
    if not isinstance(key, str) or key not in heads:
        raise MudiError(
            f"{meta}:{lineno}: subject id {key!r} is not declared on line 1 "
            f"(declared: {', '.join(heads)})."
        )
    fname = rec.get("file_name")
    if not isinstance(fname, str) or not fname:
        raise MudiError(f"{meta}:{lineno}: missing \"file_name\".")
    img_path = _inside(root, root_res, fname, meta, lineno)
    resolved = img_path.resolve()
    if resolved in seen_photos:
        raise MudiError(
            f"{meta}:{lineno}: photo {fname!r} is listed twice (also on line {seen_photos[resolved]}); "
            "list each photo once, under one subject."
        )
    seen_photos[resolved] = lineno
    mask_path = None
    if rec.get("mask_path"):
        if not isinstance(rec["mask_path"], str):
            raise MudiError(f"{meta}:{lineno}: \"mask_path\" must be a string (a file name).")
        mask_path = _inside(root, root_res, rec["mask_path"], meta, lineno)
    caption = rec.get("text") or f"a photo of a {' '.join(heads[key])}"
    if not isinstance(caption, str):
        raise MudiError(f"{meta}:{lineno}: \"text\" must be a string.")
    return PhotoRecord(key, img_path, mask_path, caption)


def _inside(root: Path, root_res: Path, rel: str, meta: Path, lineno: int) -> Path:
    """Resolve a metadata path and refuse anything outside the set's folder."""
    p = Path(rel)
    if p.is_absolute():
        raise MudiError(f"{meta}:{lineno}: path {rel!r} is absolute; paths must be relative to the set's folder.")
    full = (root / p).resolve()
    try:
        full.relative_to(root_res)
    except ValueError:
        raise MudiError(
            f"{meta}:{lineno}: path {rel!r} points outside the subject-set folder {root}; "
            "keep photos and masks inside the folder."
        ) from None
    if not full.exists():
        raise MudiError(f"{meta}:{lineno}: {rel!r} not found in {root}.")
    return root / p



__all__ = ["METADATA", "PhotoRecord", "read_metadata", "split_phrase"]
