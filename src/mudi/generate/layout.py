"""Layouts: where each subject goes on the initialization canvas (METHOD.md §4, step 1).

A :data:`Layout` is a list of :class:`LayoutBox` ``(key, box)`` pairs: the subject key of a
:class:`~mudi.subjects.SubjectSet` and a box ``(x0, y0, x1, y1)`` in canvas pixels (x1/y1
exclusive). The subject's segmented photo, cropped to its mask's bounding box, is pasted
into the box (see :func:`mudi.generate.init.render_canvas`). Later placements are drawn on top.

Three ways to get one:

- :func:`auto_layout` (the default): k equal vertical slots in random order, each subject's
  mask box scaled to fit its slot × ``fill`` (0.8), small random jitter; seeded. With
  ``sizes`` (relative sizes per subject, e.g. ``{"a": 1.0, "b": 0.6}``) the subjects'
  heights follow the given ratios and they stand on a common ground line.
- :func:`load_layout_file`: user boxes from a JSON file, validated against the canvas and the
  subjects of the prompt.
- :class:`~mudi.generate.llm_layout.LLMLayoutProvider` / :func:`~mudi.generate.llm_layout.llm_layout`:
  boxes proposed by a language model behind an OpenAI-compatible ``/v1/chat/completions``
  endpoint; any failure falls back to :func:`auto_layout` with a :class:`LayoutWarning`.

Boxes given by a user or a language model are *regions*: :func:`~mudi.geometry.fit_box` shrinks them to the
photo's aspect ratio (centred), so subjects are never distorted. The layouts returned by
this module are already fitted when the subjects' sizes are known.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from mudi.errors import MudiError
from mudi.geometry import fit_box

Box = tuple[int, int, int, int]

#: Fraction of its slot a subject's box fills in the automatic layout.
DEFAULT_FILL = 0.8
#: Maximum jitter of a box centre, as a fraction of the slot width / canvas height.
DEFAULT_JITTER = 0.05


class LayoutWarning(UserWarning):
    """A layout could not be made as asked and a fallback was used."""


class LayoutBox(NamedTuple):
    """One subject on the canvas: its key and box (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    key: str
    box: Box


Layout = list[LayoutBox]


# ----------------------------------------------------------------------------- helpers

def layout_to_json(layout: Sequence[LayoutBox]) -> list[dict[str, Any]]:
    """``[{"key": "a", "box": [x0, y0, x1, y1]}, ...]`` (the sidecar / layout-file format)."""
    return [{"key": p.key, "box": [int(v) for v in p.box]} for p in layout]


def _clamp_box(x0: float, y0: float, w: int, h: int, width: int, height: int) -> Box:
    """Integer box of size (w, h) at (x0, y0), shifted to lie inside the canvas."""
    w, h = min(max(1, w), width), min(max(1, h), height)
    ix0 = int(round(min(max(x0, 0.0), width - w)))
    iy0 = int(round(min(max(y0, 0.0), height - h)))
    return ix0, iy0, ix0 + w, iy0 + h


def check_box(box: Sequence[Any], width: int, height: int, where: str) -> Box:
    """Validate one box (4 numbers, x0 < x1, y0 < y1, inside the canvas); return ints."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise MudiError(f"{where}: a box must be a list of 4 numbers [x0, y0, x1, y1] in pixels, got {box!r}.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box):
        raise MudiError(f"{where}: box {list(box)!r} must contain 4 finite numbers.")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise MudiError(f"{where}: box {list(box)!r} is empty; need x0 < x1 and y0 < y1.")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise MudiError(
            f"{where}: box {list(box)!r} is outside the {width}x{height} canvas; every box must satisfy "
            f"0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}."
        )
    out = (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
    if out[2] <= out[0] or out[3] <= out[1]:
        raise MudiError(f"{where}: box {list(box)!r} is smaller than one pixel.")
    return out


# --------------------------------------------------------------------------- automatic

def auto_layout(
    subjects: Sequence[tuple[str, tuple[int, int]]],
    width: int,
    height: int | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    fill: float = DEFAULT_FILL,
    jitter: float = DEFAULT_JITTER,
    sizes: Mapping[str, float] | None = None,
    shuffle: bool = True,
) -> Layout:
    """The default layout: k equal vertical slots, subjects in random order.

    Args:
        subjects: ``(key, (w, h))`` per subject, where (w, h) is the size of the subject's mask
            bounding box in its photo (only the aspect ratio and relative extent matter).
        width, height: canvas size in pixels (``height`` defaults to ``width``).
        rng: a numpy Generator or a seed; decides the order and the jitter.
        fill: each box fits its slot (slot width × canvas height) scaled by ``fill``.
        jitter: maximum random shift of a box centre, as a fraction of the slot width
            (horizontally) and of the canvas height (vertically); kept inside the canvas.
        sizes: optional relative sizes per key (e.g. ``{"a": 1.0, "b": 0.5}``): the boxes'
            heights follow these ratios (as large as the slots allow) and the subjects stand
            on a common ground line instead of being centred.
        shuffle: randomize the left-to-right order (else the given order).

    Returns:
        One :class:`LayoutBox` per subject, in left-to-right order of the slots.
    """
    height = width if height is None else height
    if not subjects:
        raise MudiError("a layout needs at least one subject.")
    if not 0 < fill <= 1:
        raise MudiError(f"layout fill must be in (0, 1], got {fill}.")
    if not 0 <= jitter < 0.5:
        raise MudiError(f"layout jitter must be in [0, 0.5), got {jitter}.")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    k = len(subjects)
    order = list(rng.permutation(k)) if shuffle else list(range(k))
    slot_w = width / k
    keys = [subjects[i][0] for i in order]
    dims = [(max(1, int(subjects[i][1][0])), max(1, int(subjects[i][1][1]))) for i in order]
    # scale at which each subject fills its slot × fill
    fit_scale = [fill * min(slot_w / w, height / h) for w, h in dims]
    if sizes:
        missing = [key for key in keys if key not in sizes]
        if missing:
            raise MudiError(f"relative sizes given for {sorted(sizes)} but not for subject(s) {missing}.")
        bad = {key: sizes[key] for key in keys if not (float(sizes[key]) > 0 and np.isfinite(float(sizes[key])))}
        if bad:
            raise MudiError(f"relative sizes must be positive numbers, got {bad}.")
        # target heights t_k = c_k * lam, as large as every slot allows
        lam = min(dims[j][1] * fit_scale[j] / float(sizes[key]) for j, key in enumerate(keys))
        scales = [float(sizes[key]) * lam / dims[j][1] for j, key in enumerate(keys)]
    else:
        scales = fit_scale
    boxes_wh = [(max(1, int(round(w * s))), max(1, int(round(h * s)))) for (w, h), s in zip(dims, scales)]
    jx = rng.uniform(-jitter, jitter, size=k) * slot_w
    jy = rng.uniform(-jitter, jitter, size=k) * height
    out: Layout = []
    if sizes:
        tallest = max(h for _, h in boxes_wh)
        ground = height / 2 + tallest / 2 + float(jy[0])
    for j, (key, (bw, bh)) in enumerate(zip(keys, boxes_wh)):
        cx = slot_w * (j + 0.5) + float(jx[j])
        x0 = cx - bw / 2
        y0 = (ground - bh) if sizes else (height / 2 + float(jy[j]) - bh / 2)
        out.append(LayoutBox(key, _clamp_box(x0, y0, bw, bh, width, height)))
    return out


# ---------------------------------------------------------------------------- from file

def parse_layout_json(
    data: Any,
    width: int,
    height: int,
    resolve_key,
    where: str,
) -> list[tuple[str, Box]]:
    """Boxes from a parsed layout document (see :func:`load_layout_file` for the formats).

    ``resolve_key(name) -> key`` maps a subject name (key, identifier or phrase) to its key and
    raises :class:`MudiError` for unknown names. Boxes are validated against the canvas.
    """
    src_w = src_h = None
    entries: list[tuple[Any, Any]] = []
    if isinstance(data, dict) and ("boxes" in data or "layout" in data):
        size = data.get("size")
        if size is not None:
            if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0:
                src_w = src_h = float(size)
            elif isinstance(size, (list, tuple)) and len(size) == 2 and all(
                isinstance(v, (int, float)) and v > 0 for v in size
            ):
                src_w, src_h = float(size[0]), float(size[1])
            else:
                raise MudiError(f"{where}: \"size\" must be the canvas side (a number) or [width, height].")
        data = data.get("boxes", data.get("layout"))
    if isinstance(data, dict):
        entries = list(data.items())
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise MudiError(f"{where}: entry {i} must be an object like {{\"key\": \"a\", \"box\": [x0, y0, x1, y1]}}.")
            name = item.get("key", item.get("subject", item.get("identifier", item.get("phrase"))))
            if name is None or "box" not in item:
                raise MudiError(f"{where}: entry {i} needs a subject (\"key\") and a \"box\" [x0, y0, x1, y1].")
            entries.append((name, item["box"]))
    else:
        raise MudiError(
            f"{where}: expected a list of {{\"key\": ..., \"box\": [x0, y0, x1, y1]}} objects, an object "
            "mapping subjects to boxes, or {\"size\": S, \"boxes\": ...}."
        )
    out: list[tuple[str, Box]] = []
    seen: set[str] = set()
    cw, ch = (src_w, src_h) if src_w else (width, height)
    for name, box in entries:
        if not isinstance(name, str):
            raise MudiError(f"{where}: subject name {name!r} must be a string.")
        try:
            key = resolve_key(name)
        except MudiError as exc:
            raise MudiError(f"{where}: {exc}") from None
        if key in seen:
            raise MudiError(f"{where}: subject {name!r} has more than one box.")
        seen.add(key)
        b = check_box(box, int(cw) if float(cw).is_integer() else cw, int(ch) if float(ch).is_integer() else ch,
                      f"{where}: subject {name!r}")
        if src_w:
            sx, sy = width / src_w, height / src_h
            fb = [float(v) for v in box]
            b = (int(round(fb[0] * sx)), int(round(fb[1] * sy)), int(round(fb[2] * sx)), int(round(fb[3] * sy)))
            b = (b[0], b[1], max(b[2], b[0] + 1), max(b[3], b[1] + 1))
        out.append((key, b))
    return out


def load_layout_file(
    path: str | Path,
    width: int,
    height: int,
    subject_keys: Sequence[str],
    resolve_key,
    *,
    prompt: str | None = None,
) -> list[tuple[str, Box]]:
    """Read user boxes from a JSON file and check them against the canvas and the prompt.

    Accepted formats (subjects named by key, identifier or phrase)::

        [{"key": "a", "box": [x0, y0, x1, y1]}, {"key": "b", "box": [...]}]
        {"olis": [x0, y0, x1, y1], "hta": [...]}
        {"size": 1024, "boxes": <either of the above>}   # boxes drawn on a 1024 canvas,
                                                          # rescaled to the output resolution

    The file must give exactly one box for each subject in ``subject_keys`` (the subjects of
    the prompt) and every box must lie inside the canvas. The boxes are regions; the photos
    are fitted into them keeping their aspect ratio.

    Returns:
        ``[(key, box), ...]`` in the file's order (later boxes are drawn on top).
    """
    path = Path(path)
    if not path.is_file():
        raise MudiError(f"{path}: layout file not found (give --layout auto, llm or a JSON file of boxes).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: not valid JSON ({exc}).") from None
    entries = parse_layout_json(data, width, height, resolve_key, str(path))
    got = [k for k, _ in entries]
    want = list(subject_keys)
    if sorted(got) != sorted(want):
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        what = f" for prompt {prompt!r}" if prompt else ""
        parts = []
        if missing:
            parts.append(f"no box for {missing}")
        if extra:
            parts.append(f"boxes for {extra} which the prompt does not name")
        raise MudiError(
            f"{path}: the layout must give exactly one box per subject{what} ({want}); "
            + " and ".join(parts) + "."
        )
    return entries


def fit_layout(entries: Sequence[tuple[str, Sequence[float]]], dims: Mapping[str, tuple[int, int]]) -> Layout:
    """Shrink region boxes to each subject's aspect ratio (``dims[key]`` = mask-box (w, h))."""
    return [LayoutBox(key, fit_box(box, dims[key])) for key, box in entries]


__all__ = [
    "Box",
    "DEFAULT_FILL",
    "DEFAULT_JITTER",
    "Layout",
    "LayoutBox",
    "LayoutWarning",
    "auto_layout",
    "check_box",
    "fit_layout",
    "layout_to_json",
    "load_layout_file",
    "parse_layout_json",
]
