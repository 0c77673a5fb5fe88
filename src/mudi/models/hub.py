"""Model names to local folders: local folders are validated, hub ids come from the cache or
(only when the hub is reachable) are passed on for download. Offline, an uncached hub id fails at
once with :class:`~mudi.errors.ModelNotAvailableError`; nothing ever hangs retrying the network."""

from __future__ import annotations

import os
from pathlib import Path

from mudi.errors import ModelNotAvailableError, MudiError

#: File that must exist at the top of a model folder, per kind of model.
REQUIRED_FILE: dict[str, str] = {
    "pipeline": "model_index.json",
    "vae": "config.json",
    "owlv2": "config.json",
    "sam": "config.json",
    "dinov2": "config.json",
    "clip": "config.json",
    "transformers": "config.json",
}

_HUB_TIMEOUT_S = 10.0


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` and friends)."""
    truthy = {"1", "true", "yes", "on"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in truthy:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always present with diffusers
        return False


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _not_available(name: str, kind: str, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"Model '{name}' ({kind}) is not available {why}. "
        f"Pass a local model folder instead (a directory saved with save_pretrained, e.g. a "
        f"downloaded copy of '{name}'), download it once into the Hugging Face cache while "
        f"online, or for a smoke test build tiny random models with "
        f"`mudi tiny-models --out DIR` and pass DIR/<part>."
    )


def _validate_folder(folder: Path, kind: str, name: str) -> None:
    required = REQUIRED_FILE[kind]
    if not (folder / required).is_file():
        hint = ""
        if kind != "pipeline" and (folder / "model_index.json").is_file():
            hint = " It looks like a diffusers pipeline folder, not a single model."
        elif kind == "pipeline" and (folder / "config.json").is_file():
            hint = " It looks like a single model folder, not a full diffusers pipeline."
        raise MudiError(
            f"{name}: '{folder}' is not a {kind} model folder: {required} is missing.{hint} "
            f"Pass a folder saved with save_pretrained (it must contain {required})."
        )


def resolve_model(name: str | os.PathLike[str], kind: str) -> str:
    """Resolve a model name to a local folder or a reachable hub id.

    Args:
        name: a local folder, or a Hugging Face hub id such as ``"facebook/sam-vit-huge"``.
        kind: one of :data:`REQUIRED_FILE` (``"pipeline"``, ``"vae"``, ``"owlv2"``, ``"sam"``,
            ``"dinov2"``, ``"clip"``, ``"transformers"``); decides which file must be present.

    Returns:
        A local folder path (a given folder, or the cached hub snapshot), or the hub id itself
        when the hub is online and reachable (``from_pretrained`` then downloads it).

    Raises:
        MudiError: a local folder that does not look like this kind of model, or a path that
            does not exist.
        ModelNotAvailableError: a hub id that is neither cached nor downloadable (offline or
            hub unreachable). Raised immediately, without retries.
    """
    if kind not in REQUIRED_FILE:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(REQUIRED_FILE)}")
    name = os.fspath(name)
    if not name.strip():
        raise MudiError(f"Empty model name given for the {kind} model.")
    local = Path(name).expanduser()
    if local.is_dir():
        _validate_folder(local, kind, name)
        return str(local)
    if local.exists():
        raise MudiError(f"Model path '{name}' is a file; pass the model folder that contains it.")
    if _looks_like_path(name):
        raise MudiError(f"Model folder '{name}' does not exist. Check the path.")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if not hub_offline():
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(name, timeout=_HUB_TIMEOUT_S)
            return name
        except GatedRepoError as exc:
            raise MudiError(
                f"Model '{name}' is gated on the Hugging Face hub: accept its licence on the hub "
                f"and log in (`hf auth login`), or pass a local folder. ({exc.__class__.__name__})"
            ) from None
        except RepositoryNotFoundError:
            raise MudiError(
                f"Model '{name}' does not exist on the Hugging Face hub (or is private). "
                f"Check the id, or pass a local model folder."
            ) from None
        except HFValidationError:
            raise MudiError(
                f"'{name}' is neither an existing folder nor a valid hub id (owner/name)."
            ) from None
        except Exception:  # network down, DNS, timeout: fall back to the cache below
            why = "locally and the Hugging Face hub is unreachable"
    else:
        why = "offline (HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache"

    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except HFValidationError:
        raise MudiError(
            f"'{name}' is neither an existing folder nor a valid hub id (owner/name)."
        ) from None
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise _not_available(name, kind, why) from None
    if not (snapshot / REQUIRED_FILE[kind]).is_file():
        raise _not_available(name, kind, why + f" (the cached copy lacks {REQUIRED_FILE[kind]})")
    return str(snapshot)


__all__ = ["REQUIRED_FILE", "hub_offline", "resolve_model"]
