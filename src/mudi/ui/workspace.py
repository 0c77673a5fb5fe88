"""The app's working folder: one subfolder per kind of output, safe names, checked uploads.

Everything the page makes lives under the workdir (``subjects/NAME``, ``composites/NAME``,
``runs/NAME``, ``gen/NAME``, ``eval/NAME``, ``uploads/NAME``, ``candidates/NAME``, ``layouts/``), so a page never
writes elsewhere, a name typed in the page cannot point outside it, and a run found on disk is
shown again after the browser (or the server) restarts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mudi.errors import MudiError
from mudi.io import write_bytes_atomic

KINDS = ("subjects", "uploads", "candidates", "composites", "runs", "gen", "eval", "layouts")
#: Photo and mask types the page accepts.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_PIXELS = 40_000_000


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a safe folder or file name (letters, digits, ``._-``; no path), else MudiError."""
    name = (name or "").strip()
    if not _NAME.match(name) or name in (".", "..") or ".." in name:
        raise MudiError(f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                        "or digit; no '/' or '..').")
    return name


class Workspace:
    """The folders under ``root`` the app reads and writes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def folder(self, kind: str) -> Path:
        """``root/kind`` (not created)."""
        if kind not in KINDS:
            raise ValueError(kind)
        return self.root / kind

    def path(self, kind: str, name: str, what: str = "name") -> Path:
        """``root/kind/name`` for a checked ``name``; never outside ``root``."""
        path = (self.folder(kind) / check_name(name, what)).resolve()
        if self.root not in path.parents:
            raise MudiError(f"{what} {name!r}: resolves outside the work folder {self.root}.")
        return path

    def names(self, kind: str) -> list[str]:
        """The non-empty folders of one kind, sorted by name."""
        folder = self.folder(kind)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.iterdir()))

    def fresh_name(self, kind: str, stem: str) -> str:
        """``stem`` if ``root/kind/stem`` is free, else ``stem-2``, ``stem-3``, ..."""
        stem = check_name(stem)
        name, i = stem, 1
        while (self.folder(kind) / name).exists():
            i += 1
            name = f"{stem}-{i}"
        return name


def upload_name(path: str | Path) -> str:
    """The safe file name of an upload (its base name, checked): MudiError for a name that is not."""
    name = Path(str(path).replace("\\", "/")).name
    return check_name(name, "uploaded file")


def check_upload(path: str | Path, max_bytes: int) -> tuple[str, bytes]:
    """Read one uploaded image and check it: type, size, that it decodes, a safe name.

    Returns:
        ``(file name, bytes)``.

    Raises:
        MudiError: naming the file and what is wrong with it.
    """
    path = Path(path)
    name = upload_name(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MudiError(f"{name}: not an image type the app takes ({', '.join(IMAGE_SUFFIXES)}).")
    size = path.stat().st_size
    if size > max_bytes:
        raise MudiError(f"{name}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB upload limit "
                        "(--max-upload-mb).")
    data = path.read_bytes()
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise MudiError(f"{name}: {img.width}x{img.height} pixels is too large for a photo.")
            img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise MudiError(f"{name}: the file does not decode as an image ({exc.__class__.__name__}).") from None
    return name, data


def store_uploads(paths: list[str | Path], dest: Path, max_bytes: int, what: str) -> list[Path]:
    """Check every upload first, then copy them into ``dest`` (a new folder): all or nothing.

    Raises:
        MudiError: a bad file or two uploads with the same name (nothing is written).
    """
    checked: dict[str, bytes] = {}
    for p in paths:
        name, data = check_upload(p, max_bytes)
        if name in checked:
            raise MudiError(f"{what}: two uploads are named {name}; rename one.")
        checked[name] = data
    dest.mkdir(parents=True, exist_ok=True)
    return [write_bytes_atomic(dest / name, data) for name, data in checked.items()]


def replace_folder(path: Path) -> None:
    """Remove a folder the user asked to replace (only ever one under the workdir)."""
    if path.is_dir():
        shutil.rmtree(path)


__all__ = ["IMAGE_SUFFIXES", "KINDS", "Workspace", "check_name", "check_upload", "replace_folder", "store_uploads",
           "upload_name"]
