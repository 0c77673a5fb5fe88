"""Weight variants (diffusers' ``variant="fp16"`` naming): which files a pipeline will load.

A model saved with ``save_pretrained(..., variant="fp16")`` names its weights
``diffusion_pytorch_model.fp16.safetensors`` / ``model.fp16.safetensors`` (sharded:
``model.fp16-00001-of-00002.safetensors``); the plain files have no variant part. The
``variant`` option is ``auto`` (the default), ``none`` or a variant name:

- ``auto``: ``fp16`` when the weights dtype is float16 and every weighted component has fp16
  files (half the download of SDXL's fp32 files), the plain files when every component has them,
  else ``fp16`` when only fp16 files exist (they are cast to the requested dtype on loading);
- ``none``: the plain files; a name: that variant's files.

:func:`check_variant_files` says before loading whether the files that will really load exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from mudi.errors import MudiError

#: Pipeline components that hold weights (the safety checker is never loaded).
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
PLAIN = ""  # the variant of a file without a variant part
AUTO, NONE = "auto", "none"


def file_variant(filename: str) -> str | None:
    """The variant of a weights file (:data:`PLAIN` for the plain files); None for other files."""
    name = Path(filename).name
    if not name.endswith(".safetensors"):
        return None
    parts = name[: -len(".safetensors")].split(".")
    return parts[-1].split("-")[0] if len(parts) > 1 else PLAIN


def variants_of(files: Iterable[str]) -> set[str]:
    """Every variant found among ``files`` (:data:`PLAIN` for the plain weights)."""
    return {v for v in (file_variant(f) for f in files) if v is not None}


def folder_variants(folder: Path, components: Iterable[str]) -> dict[str, set[str]]:
    """The variants of each component's ``.safetensors`` files in a local pipeline folder
    (component ``""``: the folder itself)."""
    return {c: variants_of(p.name for p in (folder / c).glob("*.safetensors")) for c in components}


def hub_variants(files: Iterable[str], components: Iterable[str]) -> dict[str, set[str]]:
    """The variants of each component from a hub repository's file list (``sub/name`` paths;
    component ``""``: the files at the top)."""
    files = list(files)
    return {c: variants_of(f.split("/", 1)[1] if c else f for f in files
                           if (f.startswith(c + "/") if c else "/" not in f)) for c in components}


def weighted_components(index: dict) -> list[str]:
    """The components of a ``model_index.json`` that hold weights (present and not null)."""
    return [c for c in WEIGHTED_COMPONENTS if isinstance(index.get(c), (list, tuple)) and index[c][0] is not None]


def choose_variant(requested: str, available: dict[str, set[str]], dtype: torch.dtype | None) -> str | None:
    """The variant to pass to ``from_pretrained`` (None = the plain files); see the module docstring.

    ``dtype`` None (not known yet) picks what ``auto`` can always load: the plain files when
    every component has them, else fp16 when every component has that.
    """
    if requested == NONE:
        return None
    if requested != AUTO:
        return requested
    everywhere = set.intersection(*available.values()) if available else {PLAIN}
    if dtype == torch.float16 and "fp16" in everywhere:
        return "fp16"
    if PLAIN in everywhere or not available:
        return None
    return "fp16" if "fp16" in everywhere else None


def check_variant_files(requested: str, available: dict[str, set[str]], where: str) -> None:
    """MudiError unless the files the ``variant`` option will load exist for every component."""
    want = choose_variant(requested, available, None)
    missing = [c for c, found in available.items() if (want or PLAIN) not in found]
    if not missing:
        return
    label = f"{want}-variant (*.{want}.safetensors)" if want else "plain (*.safetensors without a variant)"
    found = sorted({v or "plain" for vs in available.values() for v in vs})
    if requested == AUTO:
        raise MudiError(f"{where}: the components do not share one weights variant ({', '.join(missing)} lack "
                        f"{label} files; found: {', '.join(found) or 'none'}). Pass --variant NAME for a variant "
                        "every component has, or complete the folder.")
    raise MudiError(f"{where}: --variant {requested} needs {label} weights, but {', '.join(missing)} "
                    f"{'has' if len(missing) == 1 else 'have'} none (found: {', '.join(found) or 'none'}). "
                    "Use --variant auto (or the variant the folder has).")


__all__ = ["AUTO", "NONE", "PLAIN", "WEIGHTED_COMPONENTS", "check_variant_files", "choose_variant", "file_variant",
           "folder_variants", "hub_variants", "variants_of", "weighted_components"]
