"""What a preparation reports: tables for the terminal, the contact sheet (every photo with its
mask outline; failed photos crossed out with their reason), failures.json and prepare.json."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mudi.io import save_image_atomic, write_json_atomic, write_text_atomic
from mudi.prepare.masking import PhotoResult
from mudi.subjects import SubjectSet

CONTACT_SHEET = "contact_sheet.png"
FAILURES = "failures.json"
REPORT = "prepare.json"
#: The resolved [prepare] table of the run that made the set.
CONFIG = "config.toml"


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


def contact_sheet(results: Sequence[PhotoResult], *, title: str = "", cell: int = 256) -> Image.Image:
    """Every photo with its mask outline, labelled by subject; failed photos are crossed out in
    red with their reason (and any detected boxes drawn)."""
    from mudi.viz import grid

    tiles, labels = [], []
    for r in results:
        thumb, scale = _thumb(r.image, 2 * cell)
        if r.ok:
            tiles.append(_ok_tile(thumb, r.mask, scale))
            labels.append(f"{r.phrase} | {r.path.name} | {r.method}")
        else:
            tiles.append(_failed_tile(thumb, r, scale))
            labels.append(f"FAILED {r.phrase} | {r.path.name}: {r.reason}")
    sheet = grid(tiles, labels=labels, cell=cell)
    return _with_title(sheet, title) if title else sheet


def _thumb(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    scale = min(1.0, side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    return image, scale


def _ok_tile(thumb: Image.Image, mask: np.ndarray, scale: float) -> Image.Image:
    """The photo with its mask outlined (the mask scaled like the thumbnail)."""
    from mudi.viz import outline_mask

    if scale < 1.0:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(thumb.size, Image.NEAREST)) >= 128
    return outline_mask(thumb, mask)


def _failed_tile(thumb: Image.Image, r: PhotoResult, scale: float) -> Image.Image:
    """The photo crossed out in red, with the boxes the detector found."""
    from mudi.viz import draw_boxes

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
    return tile


def _with_title(sheet: Image.Image, title: str) -> Image.Image:
    """``sheet`` under a white banner holding ``title`` (wrapped)."""
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # older Pillow
        font = ImageFont.load_default()
    lines = textwrap.wrap(title, width=max(20, (sheet.width - 12) // 7))
    banner = 8 + 15 * len(lines)
    out = Image.new("RGB", (sheet.width, sheet.height + banner), (255, 255, 255))
    out.paste(sheet, (0, banner))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, 4 + 15 * i), line, fill=(0, 0, 0), font=font)
    return out


@dataclass
class PrepareReport:
    """What a preparation wrote: the folder, the subject set in it, every photo's outcome."""

    out: Path
    subject_set: SubjectSet
    results: list[PhotoResult]
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[PhotoResult]:
        """The photos that got no mask (left out of the set)."""
        return [r for r in self.results if not r.ok]


def write_outputs(stage: Path, sset: SubjectSet, results: Sequence[PhotoResult], settings: dict[str, Any],
                  title: str, config_toml: str) -> None:
    """The subject set, contact sheet, failures.json, prepare.json and config.toml into ``stage``."""
    sset.save(stage, overwrite=True)
    save_image_atomic(contact_sheet(results, title=title), stage / CONTACT_SHEET)
    write_json_atomic(stage / FAILURES, [r.record() for r in results if not r.ok])
    write_json_atomic(stage / REPORT, {**settings, "photos": [r.record() for r in results]})
    write_text_atomic(stage / CONFIG, config_toml)


__all__ = [
    "CONFIG",
    "CONTACT_SHEET",
    "FAILURES",
    "REPORT",
    "PrepareReport",
    "contact_sheet",
    "failure_table",
    "results_table",
    "write_outputs",
]
