"""Contact sheets of a ``mudi generate`` folder: the images, and the init canvases with their boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from mudi.generate.jobs import ImageJob
from mudi.io import save_image_atomic
from mudi.subjects import SubjectSet


def _thumbnail(path: Path, side: int) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        return im


def write_contact_sheets(out: Path, jobs: Sequence[ImageJob], sset: SubjectSet, *, with_init: bool) -> None:
    """``contact_sheet.png`` (images labelled with index, seed, prompt) and, with init canvases,
    ``init_sheet.png`` (canvases with their layout boxes)."""
    from mudi.viz import draw_boxes, grid

    cell = 256 if len(jobs) <= 64 else 128
    labels = {j.index: f"{j.stem} s{j.seed}: {j.prompt}" for j in jobs}
    images = [_thumbnail(out / f"{j.stem}.png", cell) for j in jobs]
    save_image_atomic(grid(images, labels=[labels[j.index] for j in jobs], cell=cell), out / "contact_sheet.png")
    if not with_init:
        return
    canvases, init_labels = [], []
    for j in jobs:
        p = out / f"{j.stem}_init.png"
        if p.is_file():
            with Image.open(p) as im:
                canvas = im.convert("RGB")
            boxed = draw_boxes(canvas, [pl.box for pl in j.layout],
                               [sset.subject(pl.key).identifier for pl in j.layout], width=max(1, canvas.width // 256))
            boxed.thumbnail((cell, cell))
            canvases.append(boxed)
            init_labels.append(labels[j.index])
    if canvases:
        save_image_atomic(grid(canvases, labels=init_labels, cell=cell), out / "init_sheet.png")
