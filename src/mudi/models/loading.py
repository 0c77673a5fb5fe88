"""The one place that turns a model name (hub id or local folder) into loaded objects.

Every model mudi uses is reached through this module:

- :func:`~mudi.models.hub.resolve_model` (in :mod:`mudi.models.hub`) maps a name to something
  ``from_pretrained`` can open without surprises: an existing local folder (validated), a
  snapshot in the local Hugging Face cache, or -- only when the hub is reachable -- the hub id
  itself. Offline, an uncached hub id fails at once with
  :class:`~mudi.errors.ModelNotAvailableError`; nothing ever hangs retrying the network.
- :func:`inspect_model` reads what training needs from a local pipeline folder (no weights);
  the model family (:mod:`mudi.models.families`) decides the pipeline class.
- ``load_*`` functions load a Stable Diffusion (XL) pipeline, OWLv2, SAM, DINOv2 and CLIP,
  always with safetensors weights and never with ``trust_remote_code``.

Notes for callers (transformers 5 / diffusers 0.42):

- Without torchvision, image processors are the ``*ImageProcessorPil`` classes; they behave
  like the old "slow" processors (PIL in, numpy/torch out).
- ``CLIPModel.get_image_features`` / ``get_text_features`` return a
  ``BaseModelOutputWithPooling``; the projected embedding is ``.pooler_output`` (use
  :func:`clip_image_embeds` / :func:`clip_text_embeds` to get plain tensors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mudi.errors import MudiError
from mudi.models.families import ModelInfo, family_for_index, read_config
from mudi.models.hub import REQUIRED_FILE, hub_offline, resolve_model
from mudi.models.variants import (AUTO, NONE, check_variant_files, choose_variant, folder_variants, hub_variants,
                                  weighted_components)

DEFAULT_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_SDXL_VAE = "madebyollin/sdxl-vae-fp16-fix"
DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_SEGMENTER = "facebook/sam-vit-huge"
DEFAULT_DINO = "facebook/dinov2-base"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"

#: A real CLIP tokenizer has 49408 tokens; anything this small is a broken/placeholder one.
MIN_TOKENIZER_VOCAB = 1000
#: transformers sets model_max_length to this huge value when the tokenizer config lacks it.
_UNSET_MAX_LENGTH = 10**9


def _is_local(path: str) -> bool:
    return Path(path).is_dir()


def _load_error(kind: str, name: str, exc: BaseException) -> MudiError:
    return MudiError(
        f"Could not load the {kind} model from '{name}': {exc.__class__.__name__}: {exc}. "
        f"Check that the folder is a complete save_pretrained checkpoint with .safetensors weights."
    )


# ---------------------------------------------------------------------------------------------
# tokenizers


def validate_tokenizer(tokenizer: Any, where: str) -> None:
    """Raise MudiError if ``tokenizer`` is missing, nearly empty, or lacks ``model_max_length``.

    Offline, transformers can silently build a CLIP tokenizer with a 3-token placeholder
    vocabulary when the vocab/merges files are missing; prompts then all map to
    ``<|endoftext|>`` and training "works" but learns nothing. This catches that.
    """
    if tokenizer is None:
        raise MudiError(f"{where}: the tokenizer is missing. Use a complete model folder.")
    size = len(tokenizer)
    if size < MIN_TOKENIZER_VOCAB:
        raise MudiError(
            f"{where}: the tokenizer has only {size} tokens (a CLIP tokenizer has 49408); its "
            f"vocabulary files (vocab.json/merges.txt or tokenizer.json) are missing or broken. "
            f"Use a complete model folder (or rebuild tiny models with `mudi tiny-models`)."
        )
    max_len = getattr(tokenizer, "model_max_length", None)
    if not isinstance(max_len, int) or max_len <= 0 or max_len >= _UNSET_MAX_LENGTH:
        raise MudiError(
            f"{where}: the tokenizer has no usable model_max_length ({max_len!r}); set "
            f"\"model_max_length\" (77 for CLIP text encoders) in its tokenizer_config.json."
        )


# ---------------------------------------------------------------------------------------------
# pipelines


def _read_model_index(path: str) -> dict:
    if _is_local(path):
        return read_config(Path(path) / "model_index.json", "the pipeline")
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(path))
    except (OSError, ValueError) as exc:  # e.g. a hub repo with only a single-file checkpoint
        raise MudiError(
            f"'{path}' is not a diffusers pipeline on the hub (no usable model_index.json: "
            f"{exc.__class__.__name__}). Pass a diffusers SD/SDXL pipeline id or folder."
        ) from None


def inspect_model(base: str, *, variant: str = AUTO) -> ModelInfo | None:
    """What training needs from a local pipeline folder, read from its configs (no weights).

    The weights files that ``variant`` will load (:mod:`mudi.models.variants`) must exist for
    every component. ``None`` for a hub id (its configs are read after loading:
    ``family.info_of(pipe, base)``); its scheduler is checked now, from its config alone.
    """
    path = resolve_model(base, "pipeline")
    folder = Path(path)
    if not folder.is_dir():
        _check_hub_scheduler(path, base)
        return None
    index = read_config(folder / "model_index.json", "the pipeline")
    info = family_for_index(index, base).inspect(folder, index, base)
    check_variant_files(variant, folder_variants(folder, weighted_components(index)), base)
    return info


def _check_hub_scheduler(path: str, base: str) -> None:
    """Refuse a hub pipeline whose scheduler its family does not train, before any weights are
    downloaded (only the two small configs are read)."""
    from diffusers import DDPMScheduler

    family = family_for_index(_read_model_index(path), base)
    try:
        config = dict(DDPMScheduler.load_config(path, subfolder="scheduler"))
    except (OSError, ValueError):
        return  # no scheduler config to read: info_of checks the loaded one
    family.check_scheduler(config, base)


def _available_variants(path: str, components: list[str]) -> dict[str, set[str]] | None:
    """Each component's weights variants: from the folder, or from the hub's file list (None if unknown)."""
    if _is_local(path):
        return folder_variants(Path(path), components)
    try:
        from huggingface_hub import HfApi

        siblings = HfApi().model_info(path, timeout=10).siblings or []
    except Exception:  # the hub did answer resolve_model a moment ago; without a list, use the plain files
        return None
    return hub_variants((s.rfilename for s in siblings), components)


def pick_variant(path: str, components: list[str], requested: str, dtype: torch.dtype | None) -> str | None:
    """The ``variant`` to pass to ``from_pretrained`` for these components (see :mod:`mudi.models.variants`)."""
    if requested not in (AUTO, NONE):
        return requested
    available = _available_variants(path, components) if requested == AUTO else None
    return choose_variant(requested, available, dtype) if available is not None else None


def _force_upcast(path: str, subfolder: str | None, dtype: torch.dtype) -> bool:
    """True when a float16 load asks for a VAE whose config says it overflows in float16 (SDXL's own)."""
    if dtype != torch.float16:
        return False
    from diffusers import AutoencoderKL

    try:
        return bool(AutoencoderKL.load_config(path, subfolder=subfolder).get("force_upcast", False))
    except (OSError, ValueError):
        return False  # loading reports the problem


def _inputs_to_weight_dtype(module, args):
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def keep_vae_inputs_in_its_dtype(vae) -> None:
    """Cast what enters a float32 VAE (from a float16 pipeline) to float32: the encoder's images
    and the decoder's latents, so ``pipe(...)`` decodes with an fp32 VAE next to an fp16 UNet."""
    first_decode = vae.post_quant_conv if getattr(vae, "post_quant_conv", None) is not None else vae.decoder
    for part in (vae.encoder, first_decode):
        part.register_forward_pre_hook(_inputs_to_weight_dtype)


def _load_autoencoder(path: str, subfolder: str | None, name: str, dtype: torch.dtype, variant: str):
    from diffusers import AutoencoderKL

    upcast = _force_upcast(path, subfolder, dtype)
    dtype = torch.float32 if upcast else dtype
    chosen = pick_variant(path, [subfolder or ""], variant, dtype)
    try:
        vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, dtype=dtype, use_safetensors=True,
                                            variant=chosen)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error("VAE", name, exc) from exc
    if vae.dtype != dtype:  # a diffusers release older than `dtype=` (it ignores the argument)
        vae.to(dtype=dtype)
    if upcast:
        keep_vae_inputs_in_its_dtype(vae)
    return vae


def load_vae(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             variant: str = AUTO):
    """Load an ``AutoencoderKL`` from a VAE folder/hub id, or from a pipeline's ``vae/``.

    A VAE whose config says ``force_upcast`` (SDXL's own: it overflows in float16) is loaded in
    float32 when float16 is asked for, from the start (and its inputs are cast to float32).
    """
    local = Path(os.fspath(name)).expanduser()
    subfolder = None
    if local.is_dir() and not (local / "config.json").is_file() and (local / "vae" / "config.json").is_file():
        path, subfolder = str(local), "vae"
    else:
        path = resolve_model(name, "vae")
    return _load_autoencoder(path, subfolder, name, dtype, variant).to(device)


def load_pipeline(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vae: str | None = None,
    variant: str = AUTO,
    quantize: str = "none",
):
    """Load a text-to-image pipeline of a supported family (SD 1.x/2.x, SDXL, FLUX.1, SD3/3.5).

    The class is the pipeline class of the model's family (:mod:`mudi.models.families`),
    recognized from ``model_index.json``. The safety checker is disabled. Tokenizers are validated
    (:func:`validate_tokenizer`). A ``force_upcast`` VAE stays in float32 (see :func:`load_vae`).

    Args:
        name: local pipeline folder or hub id (e.g. :data:`DEFAULT_SDXL`).
        dtype: weights dtype (float32 on CPU; float16 on GPU with the fp16-fix VAE for SDXL).
        device: where to move the pipeline.
        vae: optional VAE override (folder or hub id, e.g. :data:`DEFAULT_SDXL_VAE`).
        variant: weights variant: ``auto`` (fp16 files for a float16 load when every component
            has them), ``none`` (the plain files) or a name (:mod:`mudi.models.variants`).
        quantize: ``none``, ``nf4`` or ``int8``: the denoiser quantized (:mod:`mudi.models.quantize`).
    """
    from mudi.models.quantize import is_quantized, pipeline_quantization

    path = resolve_model(name, "pipeline")
    index = _read_model_index(path)
    family = family_for_index(index, name)
    cls = family.pipeline_class()
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True)
    chosen = pick_variant(path, weighted_components(index), variant, dtype)
    if chosen:
        kwargs["variant"] = chosen
    kwargs.update(pipeline_quantization(quantize, dtype, index))
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if vae is not None:
        kwargs["vae"] = load_vae(vae, dtype=dtype, device="cpu", variant=variant)
    elif "vae" in index and _force_upcast(path, "vae", dtype):
        kwargs["vae"] = _load_autoencoder(path, "vae", name, dtype, variant)
    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error("pipeline", name, exc) from exc
    # diffusers releases before `dtype=` (mudi allows diffusers >= 0.35) ignore it with a warning
    # and load float32: cast, so fp16 on a GPU really is fp16 (an SDXL pipeline in fp32 is ~14 GB)
    for part in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, part, None)
        if module is not None and part not in kwargs and not is_quantized(module) and next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
    for part in family.tokenizer_names:
        validate_tokenizer(getattr(pipe, part, None), f"{name}: {part}")
    return pipe.to(device)


# ---------------------------------------------------------------------------------------------
# transformers models


def _load_pair(name: str, kind: str, model_cls, processor_cls, dtype, device):
    path = resolve_model(name, kind)
    try:
        model = model_cls.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)
        processor = processor_cls.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _load_error(kind, name, exc) from exc
    model.eval().requires_grad_(False)
    return model.to(device), processor


def load_owlv2(name: str = DEFAULT_DETECTOR, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load an OWLv2 open-vocabulary detector: ``(Owlv2ForObjectDetection, Owlv2Processor)``.

    The model is in eval mode with gradients off. Use
    ``processor.post_process_grounded_object_detection(outputs, threshold=...,
    target_sizes=[(h, w)], text_labels=...)``: in transformers 5 it already accounts for
    OWLv2's pad-to-square (boxes come back in original pixel coordinates; they may extend
    past the image edge, so clamp them).
    """
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model, processor = _load_pair(name, "owlv2", Owlv2ForObjectDetection, Owlv2Processor, dtype, device)
    validate_tokenizer(processor.tokenizer, f"{name}: tokenizer")
    return model, processor


def load_sam(name: str = DEFAULT_SEGMENTER, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load Segment Anything: ``(SamModel, SamProcessor)`` (eval mode, gradients off)."""
    from transformers import SamModel, SamProcessor

    return _load_pair(name, "sam", SamModel, SamProcessor, dtype, device)


def load_dinov2(name: str = DEFAULT_DINO, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load DINOv2: ``(Dinov2Model, image processor)`` (eval mode, gradients off).

    ``model(**processor(images=..., return_tensors="pt"))`` gives ``last_hidden_state``
    (B, 1 + patches, hidden) and ``pooler_output`` (B, hidden) = the layer-normed CLS token.
    """
    from transformers import AutoImageProcessor, AutoModel

    return _load_pair(name, "dinov2", AutoModel, AutoImageProcessor, dtype, device)


def load_clip(name: str = DEFAULT_CLIP, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load CLIP: ``(CLIPModel, CLIPProcessor)`` (eval mode, gradients off).

    In transformers 5 ``get_image_features``/``get_text_features`` return an output object;
    the projected embedding is ``.pooler_output``. :func:`clip_image_embeds` and
    :func:`clip_text_embeds` return plain L2-normalized tensors.
    """
    from transformers import CLIPModel, CLIPProcessor

    model, processor = _load_pair(name, "clip", CLIPModel, CLIPProcessor, dtype, device)
    validate_tokenizer(processor.tokenizer, f"{name}: tokenizer")
    return model, processor


def model_pair(model: Any, load, *, default: str, kind: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Any, Any, str]:
    """``(model, processor, name)`` from what a caller gave: a model name (hub id or folder;
    ``None`` = ``default``) loaded with ``load`` (e.g. :func:`load_owlv2`), or an already loaded
    ``(model, processor)`` pair (a torch module is put on ``device`` in eval mode). ``name`` says which model it is
    in reports: the given name, else the model's ``_name_or_path``, else ``kind``."""
    if model is None or isinstance(model, (str, bytes, os.PathLike)):
        name = default if model is None else str(model)
        loaded, processor = load(name, dtype=dtype, device=device)
        return loaded, processor, name
    loaded, processor = model
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.to(device).eval()
    return loaded, processor, getattr(getattr(loaded, "config", None), "_name_or_path", "") or kind


def _features_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):  # older transformers returned the tensor directly
        return out
    return out.pooler_output


@torch.no_grad()
def clip_image_embeds(model, processor, images) -> torch.Tensor:
    """L2-normalized CLIP image embeddings, shape (N, projection_dim), float32 on CPU."""
    inputs = processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(model.device, model.dtype)
    feats = _features_tensor(model.get_image_features(pixel_values=pixel_values)).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)


@torch.no_grad()
def clip_text_embeds(model, processor, texts: list[str]) -> torch.Tensor:
    """L2-normalized CLIP text embeddings, shape (N, projection_dim), float32 on CPU."""
    inputs = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    feats = _features_tensor(model.get_text_features(**inputs)).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)


__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DETECTOR",
    "DEFAULT_DINO",
    "DEFAULT_SDXL",
    "DEFAULT_SDXL_VAE",
    "DEFAULT_SEGMENTER",
    "REQUIRED_FILE",
    "clip_image_embeds",
    "clip_text_embeds",
    "hub_offline",
    "inspect_model",
    "keep_vae_inputs_in_its_dtype",
    "load_clip",
    "load_dinov2",
    "load_owlv2",
    "load_pipeline",
    "load_sam",
    "load_vae",
    "pick_variant",
    "resolve_model",
    "validate_tokenizer",
]
