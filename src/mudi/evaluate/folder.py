"""What to evaluate: images with the subjects they should show.

- :func:`make_items` — in-memory images (or paths) plus prompts and/or subject keys;
- :func:`collect_folder` — a folder written by ``mudi generate`` (``NNNN.png`` + ``NNNN.json``
  sidecars), checked against the subject set before any model is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from mudi.errors import MudiError
from mudi.io import list_images, load_rgb

#: Files ``mudi generate`` writes beside the images that are not generations themselves.
ARTIFACT_PATTERNS = (r"^contact_sheet", r"_sheet$", r"_init$", r"_layout$", r"_grid$", r"_boxes$", r"^grid$")


@dataclass
class EvalItem:
    """One image to evaluate: an image (or a path to load lazily) and what it should show."""

    name: str
    subjects: list[str]
    prompt: str | None = None
    image: Image.Image | None = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None

    def load(self) -> Image.Image:
        """The image as RGB (loaded from ``path`` if no image was given)."""
        if self.image is not None:
            return self.image if self.image.mode == "RGB" else self.image.convert("RGB")
        if self.path is None:
            raise MudiError(f"{self.name}: no image given.")
        return load_rgb(self.path)


def _set_name(subject_set) -> str:
    return str(subject_set.root or "(in memory)")


def resolve_subject_keys(subject_set, prompt: str | None, keys: Sequence[str] | None, where: str) -> list[str]:
    """The subject keys an image shows: explicit ``keys`` (keys, identifiers or phrases accepted)
    or else the identifiers found in ``prompt``. ``where`` prefixes error messages."""
    if keys:
        out = []
        for k in keys:
            try:
                out.append(subject_set.subject(str(k)).key)
            except MudiError:
                known = ", ".join(f"{s.key} ({s.phrase})" for s in subject_set)
                raise MudiError(
                    f"{where}names subject {k!r}, which is not in the subject set {_set_name(subject_set)} "
                    f"(it has {known}). Pass the subject set the images were generated with (--subjects)."
                ) from None
        if len(set(out)) != len(out):
            raise MudiError(f"{where}names a subject twice: {list(keys)}.")
        return out
    if prompt is None:
        raise MudiError(f"{where}no prompt and no subject keys: cannot tell which subjects it shows.")
    found = [s.key for s in subject_set.subjects_in_prompt(prompt)]
    if not found:
        idents = ", ".join(s.identifier for s in subject_set)
        raise MudiError(
            f"{where}the prompt {prompt!r} contains none of the identifiers of the subject set "
            f"{_set_name(subject_set)} ({idents}). Pass the subject set the images were "
            "generated with, or say which subjects it shows (--subject-keys)."
        )
    return found


def make_items(images: Sequence[Image.Image | str | Path], subject_set, *,
               prompts: Sequence[str | None] | str | None = None,
               subjects: Sequence[Sequence[str] | None] | None = None,
               names: Sequence[str] | None = None) -> list[EvalItem]:
    """Build :class:`EvalItem` s from images plus prompts and/or subject keys (one per image)."""
    n = len(images)
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts] * n
    if subjects is None:
        subjects = [None] * n
    if len(prompts) != n or len(subjects) != n:
        raise MudiError(f"{n} images but {len(prompts)} prompts and {len(subjects)} subject lists.")
    items = []
    for i, im in enumerate(images):
        name = names[i] if names else (Path(im).stem if isinstance(im, (str, Path)) else f"{i:04d}")
        keys = resolve_subject_keys(subject_set, prompts[i], subjects[i], f"image {name}: ")
        item = EvalItem(name, keys, prompts[i])
        if isinstance(im, (str, Path)):
            item.path = Path(im)
        elif isinstance(im, Image.Image):
            item.image = im
        else:
            item.error = f"not an image: {type(im).__name__}"
        items.append(item)
    return items


def is_artifact(path: Path) -> bool:
    """True for files ``mudi generate`` writes beside the generations (contact sheets, init canvases…)."""
    return any(re.search(p, path.stem) for p in ARTIFACT_PATTERNS)


def _read_sidecar(side: Path) -> dict:
    meta = json.loads(side.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def _check_phrases(side: Path, meta: dict, keys: list[str], subject_set) -> None:
    """A sidecar's subject phrases must be the subject set's (else it is the wrong set)."""
    phrases = meta.get("phrases")
    if not (isinstance(phrases, list) and meta.get("subjects") and len(phrases) == len(keys)):
        return
    for key, ph in zip(keys, phrases):
        subj = subject_set.subject(key)
        if isinstance(ph, str) and " ".join(ph.lower().split()) != " ".join(subj.phrase.lower().split()):
            said = f" (sidecar says: {meta['subject_set']})." if meta.get("subject_set") else "."
            raise MudiError(
                f"{side}: subject {key!r} is {ph!r} in the sidecar but {subj.phrase!r} in the subject "
                f"set {_set_name(subject_set)}. Pass the subject set the images were generated with" + said
            )


def _item(p: Path, subject_set, prompt: str | None, keys: Sequence[str] | None) -> EvalItem:
    """The item of image ``p`` from its sidecar, or from ``prompt``/``keys`` without one."""
    side = p.with_suffix(".json")
    if not side.exists():
        try:
            found = resolve_subject_keys(subject_set, prompt, keys, "")
        except MudiError as exc:
            raise MudiError(f"{p} has no sidecar JSON and --prompt/--subject-keys do not work: {exc}") from None
        return EvalItem(p.stem, found, prompt, path=p, meta={"sidecar": None})
    try:
        meta = _read_sidecar(side)
    except (ValueError, UnicodeDecodeError) as exc:
        return EvalItem(p.stem, [], None, path=p, error=f"{side.name}: unreadable sidecar ({exc})")
    sp = meta.get("prompt")
    sp = sp if isinstance(sp, str) else prompt
    found = resolve_subject_keys(subject_set, sp, meta.get("subjects") or keys, f"{side}: ")
    _check_phrases(side, meta, found, subject_set)
    return EvalItem(p.stem, found, sp, path=p, meta=meta)


def collect_folder(images_dir: str | Path, subject_set, *, prompt: str | None = None,
                   subject_keys: Sequence[str] | None = None) -> list[EvalItem]:
    """Read a ``mudi generate`` folder: images + sidecar JSONs, checked against the subject set.

    Images without a sidecar use ``prompt`` / ``subject_keys``; if neither is given that is an
    error (raised before anything is computed). A sidecar naming a subject the set does not
    have, or an identifier that differs from the set's, is an error too. A sidecar that is not
    valid JSON makes only that image an error entry.
    """
    images_dir = Path(images_dir)
    files = [p for p in list_images(images_dir) if not is_artifact(p)]
    if not files:
        raise MudiError(f"{images_dir}: no images found (expected NNNN.png files from `mudi generate`).")
    no_sidecar = prompt is None and not subject_keys
    missing = [p.name for p in files if no_sidecar and not p.with_suffix(".json").exists()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise MudiError(
            f"{images_dir}: {len(missing)} image(s) have no sidecar JSON: {', '.join(missing[:5])}{more}. "
            "Images from `mudi generate` come with NNNN.json sidecars; for other images pass --prompt "
            "(with the subject identifiers) and/or --subject-keys to say what they show."
        )
    items: list[EvalItem] = []
    problems: list[str] = []
    for p in files:
        try:
            items.append(_item(p, subject_set, prompt, subject_keys))
        except MudiError as exc:
            if not p.with_suffix(".json").exists():
                raise
            problems.append(str(exc))
    if problems:
        more = f"\n(and {len(problems) - 3} more such problems)" if len(problems) > 3 else ""
        raise MudiError("the images do not match the subject set:\n" + "\n".join(problems[:3]) + more)
    return items


__all__ = ["ARTIFACT_PATTERNS", "EvalItem", "collect_folder", "is_artifact", "make_items", "resolve_subject_keys"]
