"""Model families: the registry and how a folder or a loaded pipeline finds its family.

Adding a family = one module with a class implementing :class:`~mudi.models.families.base.ModelFamily`
(a :class:`~mudi.models.families.base.UNetFamily` subclass for UNet pipelines),
an entry in :data:`FAMILIES` (most specific first), and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mudi.errors import MudiError
from mudi.models.families.base import ModelFamily, ModelInfo, SamplingDefaults, TextEmbeds, UNetFamily, read_config
from mudi.models.families.flow import FlowFamily
from mudi.models.families.flux import FluxFamily
from mudi.models.families.flux2 import Flux2KleinFamily
from mudi.models.families.qwen_image import QwenImageFamily
from mudi.models.families.sd import SDFamily
from mudi.models.families.sd3 import SD3Family
from mudi.models.families.sdxl import SDXLFamily

#: Every supported family, tried in this order: the DiT families match their pipeline class
#: exactly; SDXL (a second text encoder) before the looser SD match.
FAMILIES: tuple[ModelFamily, ...] = (FluxFamily(), Flux2KleinFamily(), SD3Family(), QwenImageFamily(), SDXLFamily(), SDFamily())
#: What the error for an unsupported model folder lists.
SUPPORTED = ("Stable Diffusion 1.x/2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), "
             "FLUX.1 [dev]/[schnell] (FluxPipeline), SD3/SD3.5 (StableDiffusion3Pipeline), "
             "FLUX.2 [klein] (Flux2KleinPipeline), Qwen-Image (QwenImagePipeline)")


def family_named(name: str) -> ModelFamily:
    """The family with this short name ("sd", "sdxl", "flux", "sd3", "flux2", "qwen-image")."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise MudiError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}.")


def family_for_index(index: dict, name: str = "") -> ModelFamily:
    """The family of a pipeline described by ``model_index.json`` content, or MudiError."""
    for family in FAMILIES:
        if family.matches(index):
            return family
    class_name = str(index.get("_class_name", "")) or "unknown"
    raise MudiError(f"'{name}' is a {class_name} pipeline; mudi supports these model families: {SUPPORTED}.")


def family_for_folder(path_or_index: str | os.PathLike | dict) -> ModelFamily:
    """The family of a local pipeline folder (read from its ``model_index.json``) or of an index dict."""
    if isinstance(path_or_index, dict):
        return family_for_index(path_or_index)
    folder = Path(path_or_index)
    return family_for_index(read_config(folder / "model_index.json", "the pipeline"), str(folder))


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline (by class, then by components)."""
    for family in FAMILIES:
        if isinstance(pipe, family.pipeline_class()):
            return family
    if getattr(pipe, "text_encoder_2", None) is not None:
        return family_named("sdxl")
    return family_named("sd")


__all__ = [
    "FAMILIES",
    "FlowFamily",
    "Flux2KleinFamily",
    "FluxFamily",
    "ModelFamily",
    "ModelInfo",
    "QwenImageFamily",
    "SD3Family",
    "SDFamily",
    "SDXLFamily",
    "SUPPORTED",
    "SamplingDefaults",
    "TextEmbeds",
    "UNetFamily",
    "family_for_folder",
    "family_for_index",
    "family_named",
    "family_of",
]
