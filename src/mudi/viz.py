"""Contact sheets and grids: the pictures a person looks at to check a stage's output."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mudi.geometry import mask_bbox


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def fit(img: Image.Image, side: int, background=(255, 255, 255)) -> Image.Image:
    """Scale ``img`` to fit a ``side``×``side`` square (letterboxed)."""
    img = img.convert("RGB")
    scale = side / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(img.resize((w, h), Image.BICUBIC), ((side - w) // 2, (side - h) // 2))
    return canvas


def grid(
    images: Sequence[Image.Image],
    *,
    labels: Sequence[str] | None = None,
    cols: int | None = None,
    cell: int = 256,
    pad: int = 4,
    label_height: int | None = None,
) -> Image.Image:
    """Lay images out in a grid of ``cell``-px squares with optional captions under each."""
    n = len(images)
    if n == 0:
        return Image.new("RGB", (cell, cell), (255, 255, 255))
    cols = cols or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    lh = (label_height if label_height is not None else (28 if labels else 0))
    W = cols * (cell + pad) + pad
    H = rows * (cell + lh + pad) + pad
    sheet = Image.new("RGB", (W, H), (240, 240, 240))
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + lh + pad)
        sheet.paste(fit(img, cell), (x, y))
        if labels:
            text = str(labels[i])
            # wrap to the cell width, two lines at most
            max_chars = max(8, cell // 6)
            lines = [text[j:j + max_chars] for j in range(0, len(text), max_chars)][:2]
            for k, line in enumerate(lines):
                draw.text((x + 2, y + cell + 2 + 12 * k), line, fill=(0, 0, 0), font=font)
    return sheet


def outline_mask(image: Image.Image | np.ndarray, mask: np.ndarray, color=(255, 0, 64), width: int = 3) -> Image.Image:
    """The photo with the mask's outline and bounding box drawn on it, background dimmed."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.float32)
    m = mask.astype(bool)
    dimmed = np.where(m[..., None], arr, arr * 0.45 + 255 * 0.55)
    # outline: mask pixels with a background 4-neighbour (dilated to `width`)
    edge = np.zeros_like(m)
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    if width > 1:
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge, iterations=width // 2)
    out = dimmed.copy()
    out[edge] = color
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if m.any():
        x0, y0, x1, y1 = mask_bbox(m)
        ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 160, 255), width=max(1, width // 2))
    return img


def draw_boxes(image: Image.Image, boxes, labels=None, color=(255, 0, 64), width: int = 3) -> Image.Image:
    """A copy of ``image`` with boxes (x0, y0, x1, y1) and optional labels drawn."""
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    font = _font(12)
    for i, b in enumerate(boxes):
        draw.rectangle(tuple(float(v) for v in b), outline=color, width=width)
        if labels:
            draw.text((float(b[0]) + 3, float(b[1]) + 2), str(labels[i]), fill=color, font=font)
    return img
