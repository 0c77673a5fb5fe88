"""Annotated thumbnails of evaluated images: the detected boxes drawn on a small copy.

Boxes matched to a subject are drawn in that subject's colour and labelled with its class;
on a count error all boxes are grey and labelled with their detection score.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from mudi.errors import MudiError
from mudi.evaluate.results import ImageResult
from mudi.io import load_rgb
from mudi.metadata import split_phrase
from mudi.viz import draw_boxes

#: Longer side of a thumbnail in pixels.
THUMBNAIL_SIDE = 320
SUBJECT_COLORS = [(255, 0, 64), (0, 140, 255), (0, 180, 60), (255, 150, 0), (170, 0, 255), (0, 200, 200)]
COUNT_ERROR_COLOR = (128, 128, 128)


def class_of(phrase: str) -> str:
    """The class part of a subject phrase: ``"olis corgi"`` → ``"corgi"`` (else the phrase itself)."""
    try:
        return split_phrase(phrase)[1]
    except MudiError:
        return phrase


def thumbnail(image: Image.Image, result: ImageResult, phrases: dict[str, str], side: int = THUMBNAIL_SIDE) -> bytes:
    """JPEG bytes of ``image`` scaled to ``side`` pixels with ``result``'s boxes drawn.

    ``phrases`` maps subject keys to phrases (``"olis corgi"``); boxes are labelled with the class.
    """
    # Small generations (64 px test images) are scaled up too, so boxes and labels stay legible.
    scale = side / max(image.size)
    thumb = image.convert("RGB").resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.BICUBIC if scale < 1 else Image.NEAREST)
    dnc = result.dnc
    if dnc is not None and dnc.matched is not None and dnc.boxes:
        for k, i in enumerate(dnc.matched):
            b = [v * scale for v in dnc.boxes[i]]
            key = result.subjects[k]
            thumb = draw_boxes(thumb, [b], [class_of(phrases.get(key, key))],
                               color=SUBJECT_COLORS[k % len(SUBJECT_COLORS)], width=2)
    elif dnc is not None and dnc.boxes:
        thumb = draw_boxes(thumb, [[v * scale for v in b] for b in dnc.boxes],
                           [f"{d.score:.2f}" for d in result.detections], color=COUNT_ERROR_COLOR, width=2)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def result_thumbnail(result: ImageResult, phrases: dict[str, str], image: Image.Image | None = None) -> bytes | None:
    """The thumbnail of a scored result, its image given or read from ``result.path``;
    ``None`` when it was not scored or its image cannot be read any more."""
    if result.error is not None or result.dnc is None:
        return None
    if image is None:
        if not result.path or not Path(result.path).is_file():
            return None
        try:
            image = load_rgb(result.path)
        except Exception:  # the file changed since it was scored: show the card without a picture
            return None
    return thumbnail(image, result, phrases)


__all__ = ["THUMBNAIL_SIDE", "class_of", "result_thumbnail", "thumbnail"]
