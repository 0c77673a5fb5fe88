"""Reading user images robustly and writing outputs atomically.

Photos arrive in every mode PIL knows (grayscale, CMYK, 16-bit, palette, RGBA) and with EXIF
orientation tags; :func:`load_rgb` turns all of them into an upright 8-bit RGB image or raises a
:class:`~mudi.errors.MudiError` that names the file. Outputs are written to a temporary file in
the target folder and renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import tomllib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mudi.errors import MudiError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MASK_THRESHOLD = 128


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise MudiError(f"{path}: file not found.")
    if path.is_dir():
        raise MudiError(f"{path}: is a folder, expected an image file.")
    if path.stat().st_size == 0:
        raise MudiError(f"{path}: the file is empty (0 bytes). Replace it with a valid image or remove it.")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as exc:
        raise MudiError(f"{path}: the image is too large to open safely ({exc}). Downscale it.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MudiError(
            f"{path}: not a readable image ({exc.__class__.__name__}: {exc}). "
            "Replace it with a valid JPEG/PNG or remove it."
        ) from None
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float single-channel images → 8-bit 'L'."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        if img.mode.startswith("I;16") or (img.mode == "I" and hi > 255):
            scale = 65535.0 if hi > 255 else 255.0
        elif img.mode == "F" and hi <= 1.0:
            scale = 1.0
        else:
            scale = 255.0
        arr = np.clip(arr / scale * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L")
    return img


def load_rgb_alpha(path: str | Path) -> tuple[Image.Image, np.ndarray | None]:
    """Load a photo upright as 8-bit RGB, plus its alpha channel as a bool mask if it has one.

    A fully opaque alpha channel is reported as ``None`` (it carries no mask).
    """
    img = _open(Path(path))
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF must not make a photo unusable
        pass
    img = _to_8bit(img)
    alpha = None
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        a = np.asarray(img.getchannel("A"))
        if a.min() < 255:
            alpha = a >= MASK_THRESHOLD
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return rgb, alpha
    return img.convert("RGB"), alpha


def load_rgb(path: str | Path) -> Image.Image:
    """Load a photo as an upright 8-bit RGB PIL image (transparent parts become white)."""
    return load_rgb_alpha(path)[0]


def load_mask(path: str | Path, size: tuple[int, int] | None = None, *, allow_empty: bool = False) -> np.ndarray:
    """Load a mask file as a bool array (pixel >= 128 is subject).

    ``size`` is the (width, height) of the photo the mask belongs to: a mask of another size is
    an error. RGBA masks use their alpha channel if it is not fully opaque, else their luminance.
    """
    path = Path(path)
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass
    img = _to_8bit(img)
    try:
        if img.mode in ("RGBA", "LA") and np.asarray(img.getchannel("A")).min() < 255:
            arr = np.asarray(img.getchannel("A"))
        else:
            arr = np.asarray(img.convert("L"))
    except ValueError as exc:
        raise MudiError(f"{path}: cannot read this mask ({exc}). Save it as an 8-bit grayscale PNG.") from None
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise MudiError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its photo is {size[0]}x{size[1]}. "
            "A mask must have exactly the size of its photo."
        )
    mask = arr >= MASK_THRESHOLD
    if not allow_empty and not mask.any():
        raise MudiError(
            f"{path}: the mask is empty (no pixel >= {MASK_THRESHOLD}). "
            "Masks are 0 for background and 255 for the subject."
        )
    return mask


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Bool mask → 8-bit 'L' image (0 / 255)."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted), ignoring hidden files and mask files."""
    folder = Path(folder)
    if not folder.exists():
        raise MudiError(f"{folder}: folder not found.")
    if not folder.is_dir():
        raise MudiError(f"{folder}: expected a folder of photos, found a file.")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    return files


#: Parsers of the structured files users hand to mudi: format -> (parse, its error type).
_PARSERS = {"JSON": (json.loads, json.JSONDecodeError), "TOML": (tomllib.loads, tomllib.TOMLDecodeError)}


def read_user_file(path: str | Path, what: str, fmt: str = "JSON") -> Any:
    """A user's JSON or TOML file (``what`` names it in messages: "boxes", "config"); MudiError
    when it is missing, a folder or not valid ``fmt``."""
    path = Path(path)
    if not path.exists():
        raise MudiError(f"{path}: {what} file not found.")
    if not path.is_file():
        raise MudiError(f"{path}: expected a {fmt} {what} file, found a folder.")
    parse, error = _PARSERS[fmt]
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (error, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: not valid {fmt} ({exc}).") from None


def read_json(path: str | Path, what: str) -> Any:
    """A user's JSON file: :func:`read_user_file` with ``fmt="JSON"``."""
    return read_user_file(path, what, "JSON")


# ---------------------------------------------------------------- atomic writes

def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def save_image_atomic(img: Image.Image | np.ndarray, path: str | Path, **save_kwargs) -> Path:
    """Save a PIL image (or uint8 / bool array) atomically; format from the suffix."""
    if isinstance(img, np.ndarray):
        img = mask_to_image(img) if img.dtype == bool else Image.fromarray(img)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    return _atomic_write(path, lambda fh: img.save(fh, format=fmt, **save_kwargs))


def claim_output_dir(
    path: str | Path,
    *,
    overwrite: bool = False,
    resume: bool | None = None,
    what: str = "output",
    option: str = "--out",
    create: bool = False,
) -> Path:
    """The one output-folder policy of every stage: check that ``path`` may be written.

    - a file at ``path`` is refused;
    - a folder with content is refused unless ``overwrite`` (files are then replaced one by one,
      nothing is deleted wholesale) or ``resume`` (the stage continues its own run there);
    - a path below an existing file is refused.

    ``resume`` is ``None`` for stages that cannot resume, ``False``/``True`` for stages that can
    (the error then suggests ``--resume``). Nothing is created unless ``create``; validate
    first, create when writing starts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    where = f"the {what} folder" + (f" ({option})" if option else "")
    if path.exists() and not path.is_dir():
        raise MudiError(f"{path}: {where} is a file; choose a folder path.")
    if path.is_dir() and not (overwrite or resume) and any(path.iterdir()):
        how = f"Choose another {option or 'folder'}, or pass --overwrite to write into it anyway."
        if resume is not None:
            how = f"Pass --resume to continue that run, --overwrite to start over in it, or choose another {option or 'folder'}."
        raise MudiError(f"{path}: {where} already has content. {how}")
    anchor = path.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise MudiError(f"{path}: cannot create {where}, {anchor} is a file.")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_output(out: str | Path, *, overwrite: bool = False, what: str = "output",
                  option: str = "--out") -> Iterator[Path]:
    """Write a stage's outputs all at once: yield a fresh staging folder; on success move its
    files to ``out``, on error delete it (so a failed run leaves nothing behind).

    ``out`` is checked with :func:`claim_output_dir` before and after the block. The staging
    folder lives beside ``out`` (same file system), so the final step is a rename (new or empty
    ``out``) or per-file replacements (``overwrite`` into a non-empty ``out``).
    """
    out = claim_output_dir(out, overwrite=overwrite, what=what, option=option)
    anchor = out.parent
    while not anchor.exists():
        anchor = anchor.parent
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=anchor))
    except OSError as exc:
        raise MudiError(f"{out}: cannot write there ({exc.strerror or exc}). Choose another {option or 'folder'}.") from None
    try:
        yield stage
        claim_output_dir(out, overwrite=overwrite, what=what, option=option)  # nobody wrote there meanwhile
        _move_into(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _move_into(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out`` (new or empty) or move its files into ``out`` one by one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(stage, out)
        return
    for f in sorted(stage.iterdir()):
        target = out / f.name
        if target.is_dir() and not f.is_dir():
            raise MudiError(f"{target}: is a folder in the output; cannot replace it with a file.")
        os.replace(f, target)
    shutil.rmtree(stage, ignore_errors=True)
