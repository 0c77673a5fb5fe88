"""Loading DreamSim (D&C-DS) from a folder the user names, with no download and no hub code.

The ``dreamsim`` package, left alone, downloads its checkpoint into ``./models`` of the current
directory and builds its DINO backbone with ``torch.hub.load('facebookresearch/dino:main', ...)``,
which fetches and runs code from GitHub. mudi instead:

- takes the weights only from ``--dreamsim-cache DIR`` (no default: a clear error says how to
  fill the folder) and checks that every file is there before the package is touched;
- builds the DINO ViT-B/16 backbone from the ViT definition that ships inside the ``dreamsim``
  package, with the weights of ``DIR/checkpoints/dino_vitbase16_pretrain.pth`` (the file
  ``torch.hub`` itself would have stored there), loaded with ``torch.load(weights_only=True)``;
- turns every other ``torch.hub`` load or download into an error while DreamSim is built, and
  restores ``torch.hub``'s directory afterwards.

DreamSim's own checkpoints are ``.pth`` files (no safetensors exist); they are read by the
package with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from mudi.errors import MudiError

#: The DreamSim variant mudi uses (the paper's D&C-DS: DINO + CLIP + OpenCLIP ensemble).
DEFAULT_TYPE = "ensemble"
#: Where the DreamSim checkpoints are published (a zip to unpack into the cache folder).
CHECKPOINT_URL = ("https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
                  "dreamsim_{type}_checkpoint.zip")
#: The DINO ViT-B/16 backbone weights (what ``torch.hub`` would download into ``checkpoints/``).
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
DINO_FILE = "checkpoints/dino_vitbase16_pretrain.pth"
#: Files each supported variant needs in the cache folder.
REQUIRED = {
    "ensemble": ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
                 "ensemble_lora/adapter_config.json", DINO_FILE),
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora/adapter_config.json", DINO_FILE),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora/adapter_config.json"),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora/adapter_config.json"),
}
OPTION = "--dreamsim-cache"


def how_to_fill(cache: str, dreamsim_type: str = DEFAULT_TYPE) -> str:
    """What to download into the cache folder, in words."""
    text = (f"download {CHECKPOINT_URL.format(type=dreamsim_type)} and unzip it into {cache}")
    if DINO_FILE in REQUIRED.get(dreamsim_type, ()):
        text += f", and download {DINO_URL} into {cache}/checkpoints/"
    return text


def check_cache(cache_dir: str | Path | None, dreamsim_type: str = DEFAULT_TYPE) -> Path:
    """The cache folder, checked: it is given, it exists and it holds every file of the variant.

    Raises:
        MudiError: naming ``--dreamsim-cache``, what is missing and how to get it.
    """
    if dreamsim_type not in REQUIRED:
        raise MudiError(f"DreamSim variant {dreamsim_type!r} is not supported by mudi (its backbone comes from "
                        f"torch.hub code); choose one of {', '.join(REQUIRED)}.")
    if not cache_dir:
        raise MudiError(f"--embedder dreamsim needs {OPTION} DIR, a folder holding the DreamSim weights (mudi never "
                        f"downloads them): {how_to_fill('DIR', dreamsim_type)}. Or use --embedder dinov2.")
    cache = Path(cache_dir).expanduser()
    if not cache.is_dir():
        raise MudiError(f"{OPTION} {cache_dir}: not a folder. Create it and {how_to_fill(str(cache), dreamsim_type)}.")
    missing = [name for name in REQUIRED[dreamsim_type] if not (cache / name).is_file()]
    if missing:
        raise MudiError(f"{OPTION} {cache}: missing {', '.join(missing)}; {how_to_fill(str(cache), dreamsim_type)}.")
    return cache


def local_dino_vitb16(cache: Path):
    """DINO ViT-B/16 from the ViT that ships with ``dreamsim`` and the weights in ``cache`` (no hub code)."""
    import torch
    from dreamsim.feature_extraction.vision_transformer import vit_base  # type: ignore

    model = vit_base(patch_size=16, num_classes=0)
    state = torch.load(cache / DINO_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


@contextlib.contextmanager
def no_hub(cache: Path):
    """While building DreamSim: ``torch.hub`` loads DINO ViT-B/16 locally and refuses anything else.

    ``torch.hub.set_dir`` (which DreamSim calls) is undone on exit.
    """
    import torch.hub as hub

    def load(repo, model, *args, **kwargs):
        if str(repo).split(":")[0] == "facebookresearch/dino" and model == "dino_vitb16":
            return local_dino_vitb16(cache)
        raise MudiError(f"DreamSim asked torch.hub for {repo}:{model}; mudi runs no code fetched at run time. "
                        f"Use a DreamSim variant among {', '.join(REQUIRED)}.")

    def download(url, *args, **kwargs):
        raise MudiError(f"DreamSim tried to download {url}; mudi loads DreamSim only from {OPTION} ({cache}): "
                        f"{how_to_fill(str(cache))}.")

    saved = {name: getattr(hub, name) for name in ("load", "download_url_to_file", "load_state_dict_from_url")}
    hub_dir = hub.get_dir()
    hub.load, hub.download_url_to_file, hub.load_state_dict_from_url = load, download, download
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(hub, name, value)
        hub.set_dir(hub_dir)


def load_dreamsim(cache_dir: str | Path | None, *, device: str = "cpu", dreamsim_type: str = DEFAULT_TYPE):
    """DreamSim's ``(model, preprocess)`` from ``cache_dir`` on ``device``: no download, no hub code.

    Raises:
        MudiError: no or incomplete cache folder, the ``dreamsim`` package missing or broken, or
            its loading failing (with the error).
    """
    from mudi.runtime import import_optional

    cache = check_cache(cache_dir, dreamsim_type)
    package = import_optional("dreamsim", package="dreamsim", extra="dreamsim", purpose="--embedder dreamsim",
                              instead="use --embedder dinov2")
    try:
        with no_hub(cache), contextlib.redirect_stdout(sys.stderr):  # its "Using cached ..." notes
            return package.dreamsim(pretrained=True, device=str(device), cache_dir=str(cache),
                                    dreamsim_type=dreamsim_type)
    except MudiError:
        raise
    except Exception as exc:
        raise MudiError(f"DreamSim could not be loaded from {OPTION} {cache} ({exc.__class__.__name__}: {exc}); "
                        f"check the folder ({how_to_fill(str(cache), dreamsim_type)}) or use --embedder dinov2.") from exc


__all__ = ["DEFAULT_TYPE", "REQUIRED", "check_cache", "load_dreamsim", "local_dino_vitb16", "no_hub"]
