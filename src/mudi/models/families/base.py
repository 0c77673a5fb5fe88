"""The model-family seam: what differs between diffusion model families lives in one class each.

A :class:`UNetFamily` describes a family of UNet latent-diffusion pipelines (Stable Diffusion
1.x/2.x, SDXL). The trainer, the mean-shifted initialization and generation call its methods
and never ask which family they hold:

- recognizing a pipeline folder from its ``model_index.json`` and reading what training needs
  before any weights are loaded (:meth:`UNetFamily.inspect` → :class:`ModelInfo`),
- encoding prompts into one :class:`TextEmbeds` value (SDXL adds pooled embeddings),
- the latent normalization in both directions (:meth:`UNetFamily.to_latents`,
  :meth:`UNetFamily.from_latents`),
- the training target (epsilon / v-prediction) and the denoiser call (SDXL adds its
  ``added_cond_kwargs``),
- the default LoRA targets, the pipeline class, default sampling settings, the kohya/ComfyUI
  key scheme, and the sizes (VAE scale factor, size multiple, native resolution).

A family subclass overrides only what is specific to it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from mudi.errors import MudiError
from mudi.models.families.parts import FamilyParts, denormalize_latents, normalize_latents


@dataclass(frozen=True)
class TextEmbeds:
    """Prompt embeddings of a batch: the per-token states, the pooled embedding (SDXL, FLUX.1,
    SD3) and, for text encoders whose prompts differ in length (Qwen-Image), the padding mask
    (B, L) of the token states (1 = a real token)."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def _map(self, fn, pooled_fn=None, mask_fn=None) -> "TextEmbeds":
        pooled = None if self.pooled is None else (pooled_fn or fn)(self.pooled)
        mask = None if self.mask is None else (mask_fn or fn)(self.mask)
        return TextEmbeds(fn(self.tokens), pooled, mask)

    def row(self, i: int) -> "TextEmbeds":
        """The embeddings of prompt ``i`` (batch dimension kept)."""
        return self._map(lambda x: x[i : i + 1])

    def repeat(self, n: int) -> "TextEmbeds":
        """The batch repeated ``n`` times (one prompt → ``n`` images)."""
        return self._map(lambda x: x.repeat(n, 1, 1), lambda x: x.repeat(n, 1), lambda x: x.repeat(n, 1))

    def zeros_like(self) -> "TextEmbeds":
        """All-zero embeddings of the same shapes (the padding mask kept)."""
        return self._map(torch.zeros_like, mask_fn=lambda x: x)

    def to(self, device, dtype) -> "TextEmbeds":
        """Moved and cast (the padding mask only moved)."""
        return self._map(lambda x: x.to(device, dtype), mask_fn=lambda x: x.to(device))

    @staticmethod
    def cat(items: list["TextEmbeds"]) -> "TextEmbeds":
        """Concatenate along the batch dimension; with padding masks, shorter token states are
        zero-padded (mask 0) to the longest."""
        pooled = None if items[0].pooled is None else torch.cat([x.pooled for x in items])
        if items[0].mask is None:
            return TextEmbeds(torch.cat([x.tokens for x in items]), pooled)
        n = max(x.tokens.shape[1] for x in items)
        tokens = torch.cat([torch.nn.functional.pad(x.tokens, (0, 0, 0, n - x.tokens.shape[1])) for x in items])
        mask = torch.cat([torch.nn.functional.pad(x.mask, (0, n - x.mask.shape[1])) for x in items])
        return TextEmbeds(tokens, pooled, mask)


#: METHOD.md §4's negative prompt (the default of SD 1.x/2.x families).
METHOD_NEGATIVE_PROMPT = "sticker, collage, cartoon, abstract glitch, blurry"
#: The negative prompt of the reference code (github agwmon/MuDI: ``utils/pipe.py`` sampling and
#: ``generate_prior.py``), used with SDXL.
REFERENCE_NEGATIVE_PROMPT = "anime, cartoon, graphic, text, painting, crayon, graphite, abstract glitch, blurry"


@dataclass(frozen=True)
class SamplingDefaults:
    """A family's default sampling settings: inference steps, classifier-free guidance scale and
    negative prompt (``mudi generate`` uses them when the user gives none). The base values are
    diffusers' ``StableDiffusionPipeline`` call defaults (50 steps, guidance 7.5)."""

    steps: int = 50
    guidance_scale: float = 7.5
    negative_prompt: str = METHOD_NEGATIVE_PROMPT


@dataclass
class ModelInfo:
    """What the trainer needs to know about a base model before loading its weights."""

    path: str  # the model as the user named it (folder or hub id)
    family: "ModelFamily"
    vae_scale_factor: int
    unet_downsample: int
    default_resolution: int
    prediction_type: str = "epsilon"
    folder: Path | None = None  # the local pipeline folder (None: not inspected before loading)

    @property
    def multiple(self) -> int:
        """Pixel multiple a resolution must have: VAE factor × UNet down-sampling."""
        return self.vae_scale_factor * self.unet_downsample

    def check_resolution(self, resolution: int, option: str = "--resolution") -> None:
        """Raise MudiError unless ``resolution`` fits the model."""
        m = self.multiple
        if resolution % m or resolution < max(64, 2 * m):
            raise MudiError(
                f"{option} {resolution} does not fit {self.path}: it must be a multiple of {m} (VAE factor "
                f"{self.vae_scale_factor} × UNet downsampling {self.unet_downsample}) and at least "
                f"{max(64, 2 * m)}; the model's native resolution is {self.default_resolution}."
            )


def read_config(path: Path, what: str) -> dict:
    """A JSON config file of a model folder, or MudiError naming the file and what to do."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MudiError(f"{path.parent}: {what} is missing {path.name}; the base model folder is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: unreadable ({exc}); the base model folder is damaged.") from None


@runtime_checkable
class ModelFamily(Protocol):
    """What the trainer, the initialization and generation ask of a model family.

    :class:`UNetFamily` implements it for UNet latent-diffusion pipelines; a family of another
    architecture (a DiT) implements the same methods without inheriting from it.
    """

    name: str
    default_lora_targets: tuple[str, ...]
    sampling: "SamplingDefaults"
    denoiser_name: str  # the pipeline component that gets the LoRA ("unet", "transformer")
    writes_kohya: bool  # whether training also writes the kohya/A1111 copy
    default_init: str  # the generate --init used when none is given ("mudi", "none")

    def matches(self, index: dict) -> bool: ...
    def pipeline_class(self): ...
    def inspect(self, folder: Path, index: dict, base: str) -> "ModelInfo": ...
    def info_of(self, pipe, base: str) -> "ModelInfo": ...
    def check_scheduler(self, config, base: str) -> None: ...
    def meta_denoiser(self, folder: Path) -> torch.nn.Module: ...
    def vae_scale_factor(self, pipe) -> int: ...
    def size_multiple(self, pipe) -> int: ...
    def default_resolution(self, pipe) -> int: ...
    def text_encoders(self, pipe) -> list[torch.nn.Module]: ...
    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds: ...
    def encode_negative(self, pipe, negative: str, device) -> TextEmbeds: ...
    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]: ...
    def to_latents(self, vae, sample: torch.Tensor) -> torch.Tensor: ...
    def from_latents(self, vae, z: torch.Tensor) -> torch.Tensor: ...
    def vae_encode(self, vae, pixels: torch.Tensor) -> Any: ...
    def vae_decode(self, vae, z: torch.Tensor) -> torch.Tensor: ...
    def call_kwargs(self, pipe, kwargs: dict) -> dict: ...
    def denoise(self, unet, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int) -> torch.Tensor: ...
    def denoiser(self, pipe) -> torch.nn.Module: ...
    def training_objective(self, pipe, resolution: int, flow: Any = None) -> Any: ...
    def grid_latents(self, pipe, latents: torch.Tensor, resolution: int) -> torch.Tensor: ...
    def sampling_steps(self, scheduler, steps: int) -> int: ...
    def latent_channels(self, pipe) -> int: ...
    def pipeline_latents(self, pipe, latents: torch.Tensor) -> torch.Tensor: ...
    def grid_noise(self, shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor: ...
    def sampler_start(self, pipe, scheduler, steps: int, height: int, width: int, device, sigma_start: float) -> Any: ...
    def kohya_block_layers(self, unet) -> int | None: ...
    def kohya_base_version(self, unet) -> str: ...
    def is_v2(self, unet) -> bool: ...


class UNetFamily(FamilyParts):
    """Base of the UNet latent-diffusion families: the behaviour they share.

    Subclasses set the class attributes and override the methods that differ
    (:class:`~mudi.models.families.sdxl.SDXLFamily` adds pooled text embeddings and time ids).
    """

    #: short name, stored in summaries ("sd", "sdxl")
    name: ClassVar[str] = ""
    #: the diffusers pipeline class name
    pipeline_class_name: ClassVar[str] = ""
    #: pipeline components holding text encoders / tokenizers
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer",)
    #: METHOD.md §3 LoRA targets (the UNet attention projections)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    sampling: ClassVar[SamplingDefaults] = SamplingDefaults()
    denoiser_name: ClassVar[str] = "unet"
    writes_kohya: ClassVar[bool] = True
    default_init: ClassVar[str] = "mudi"

    # ------------------------------------------------------------------ recognizing
    @classmethod
    def matches(cls, index: dict) -> bool:
        """True when a ``model_index.json`` describes a pipeline of this family."""
        raise NotImplementedError

    def pipeline_class(self):
        """The diffusers pipeline class of this family."""
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def inspect(self, folder: Path, index: dict, base: str) -> ModelInfo:
        """Read a local pipeline folder's configs (no weights) into a :class:`ModelInfo`."""
        if "unet" not in index or "vae" not in index:
            cls = str(index.get("_class_name", ""))
            raise MudiError(
                f"{base}: a {cls or 'diffusers'} pipeline without a UNet/VAE; mudi trains Stable Diffusion "
                "1.x/2.x and SDXL pipelines."
            )
        unet = read_config(folder / "unet" / "config.json", "the UNet")
        vae = read_config(folder / "vae" / "config.json", "the VAE")
        for sub in ("unet", "vae"):
            if not any((folder / sub).glob("*.safetensors")):
                raise MudiError(f"{folder / sub}: no .safetensors weights; mudi loads safetensors checkpoints only.")
        sched = folder / "scheduler" / "scheduler_config.json"
        sched_cfg = read_config(sched, "the scheduler") if sched.exists() else {}
        self.check_scheduler(sched_cfg, base)
        pred = sched_cfg.get("prediction_type", "epsilon")
        try:
            return self._info(base, unet, vae, pred, folder)
        except (KeyError, TypeError) as exc:
            raise MudiError(f"{folder}: UNet/VAE config lacks {exc}; the base model folder is damaged.") from None

    def meta_denoiser(self, folder: Path) -> torch.nn.Module:
        """The folder's UNet built from its config on the meta device (no weights, no memory):
        enough to check module names before anything is loaded or written."""
        from diffusers import UNet2DConditionModel

        config = UNet2DConditionModel.load_config(str(folder / "unet"))
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return UNet2DConditionModel.from_config(config)

    def check_scheduler(self, config, base: str) -> None:
        """Refuse a noise schedule this family does not train: an EDM (Karras σ, e.g. Playground
        v2.5) or flow-matching scheduler, or a prediction type other than epsilon / v-prediction.
        Training them on DDPM defaults would run and learn the wrong target."""
        cls = str(config.get("_class_name", "") or "")
        pred = config.get("prediction_type", "epsilon") or "epsilon"
        kind = ("an EDM" if cls.startswith("EDM") else "a flow-matching" if cls.startswith("FlowMatch") or
                "Flow" in cls else "")
        if kind:
            raise MudiError(f"{base}: the scheduler is {cls}, {kind} noise schedule; the {self.name} family trains "
                            "DDPM-style schedules (epsilon or v-prediction) only. Use a base model with a DDPM/"
                            "Euler/DPM-Solver scheduler (SD 1.x/2.x, SDXL).")
        if pred not in ("epsilon", "v_prediction"):
            raise MudiError(f"{base}: the scheduler's prediction_type is {pred!r}; the {self.name} family trains "
                            "epsilon and v_prediction models only.")

    def info_of(self, pipe, base: str) -> ModelInfo:
        """The :class:`ModelInfo` of a loaded pipeline (for hub models, not inspected before loading)."""
        self.check_scheduler(dict(pipe.scheduler.config, _class_name=type(pipe.scheduler).__name__), base)
        pred = pipe.scheduler.config.get("prediction_type", "epsilon")
        return self._info(base, pipe.unet.config, pipe.vae.config, pred)

    def _info(self, path: str, unet, vae, prediction_type: str, folder: Path | None = None) -> ModelInfo:
        vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        down = 2 ** (len(unet["block_out_channels"]) - 1)
        sample = int(unet.get("sample_size") or 64)
        return ModelInfo(path, self, vae_factor, down, sample * vae_factor, prediction_type, folder)

    # ------------------------------------------------------------------ sizes
    def vae_scale_factor(self, pipe) -> int:
        """Pixels per latent cell (8 for SD/SDXL)."""
        f = getattr(pipe, "vae_scale_factor", None)
        if f:
            return int(f)
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def size_multiple(self, pipe) -> int:
        """Pixel multiple a resolution must have: VAE factor × 2^(UNet down-samplings)."""
        n_down = max(0, len(getattr(pipe.unet.config, "down_block_types", ())) - 1)
        return self.vae_scale_factor(pipe) * 2**n_down

    def default_resolution(self, pipe) -> int:
        """The model's native resolution (UNet sample size × VAE factor: 1024 SDXL, 512 SD 1.5)."""
        return int(pipe.unet.config.sample_size) * self.vae_scale_factor(pipe)

    # ------------------------------------------------------------------ text
    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """Prompt embeddings from the pipeline's own ``encode_prompt`` (no classifier-free guidance)."""
        tokens, _ = pipe.encode_prompt(prompts, device, 1, False)
        return TextEmbeds(tokens)

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """``pipe(...)`` keyword arguments that pass precomputed embeddings."""
        return {"prompt_embeds": cond.tokens, "negative_prompt_embeds": uncond.tokens}

    # ------------------------------------------------------------------ latents
    # ------------------------------------------------------------------ denoiser
    def denoiser(self, pipe) -> torch.nn.Module:
        """The network the LoRA trains (the UNet)."""
        return pipe.unet

    def training_objective(self, pipe, resolution: int, flow: Any = None):
        """The run's noising rule, target and denoiser call: a DDPM objective on the base model's
        noise schedule (``flow``, the flow-matching settings, does not apply to UNet families)."""
        from diffusers import DDPMScheduler

        from mudi.models.families.objectives import DDPMObjective

        return DDPMObjective(self, DDPMScheduler.from_config(pipe.scheduler.config), resolution)

    def latent_channels(self, pipe) -> int:
        """Channels of the latent grid the sampler starts from."""
        return int(pipe.unet.config.in_channels)

    def sampler_start(self, pipe, scheduler, steps: int, height: int, width: int, device, sigma_start: float):
        """Where the pipeline's sampling of ``steps`` steps starts (its first timestep; ``sigma_start``
        is for flow-matching families): :class:`~mudi.models.families.starts.DiffusionStart`."""
        from mudi.models.families.starts import DiffusionStart, schedule_start

        return DiffusionStart(*schedule_start(scheduler, steps, device))

    def sampling_steps(self, scheduler, steps: int) -> int:
        """Denoiser calls of one image at ``steps`` inference steps (PNDM runs more than asked)."""
        sch = copy.deepcopy(scheduler)
        sch.set_timesteps(steps, device="cpu")
        return len(sch.timesteps)

    def training_target(self, scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return scheduler.get_velocity(x0, noise, t)
        raise MudiError(f"unsupported prediction type {kind!r} in the base model's scheduler.")

    def denoise(self, unet, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int) -> torch.Tensor:
        """The denoiser's prediction for a batch of noisy latents."""
        return unet(noisy, t, encoder_hidden_states=embeds.tokens, **self.unet_kwargs(embeds, resolution)).sample

    def unet_kwargs(self, embeds: TextEmbeds, resolution: int) -> dict[str, Any]:
        """Extra UNet conditioning (none for SD 1.x/2.x)."""
        return {}

    # ------------------------------------------------------------------ LoRA files
    def kohya_block_layers(self, unet) -> int | None:
        """``layers_per_block`` when kohya names this family's blocks after the original UNet, else None."""
        return None

    def kohya_base_version(self, unet) -> str:
        """The ``ss_base_model_version`` A1111 reads to tell base models apart."""
        return "sd_v2" if self.is_v2(unet) else "sd_v1"

    def is_v2(self, unet) -> bool:
        """SD 2.x (OpenCLIP-H text encoder: cross-attention dim 1024)."""
        return int(getattr(unet.config, "cross_attention_dim", 768) or 768) == 1024


__all__ = ["METHOD_NEGATIVE_PROMPT", "REFERENCE_NEGATIVE_PROMPT", "FamilyParts", "ModelFamily", "ModelInfo",
           "SamplingDefaults", "TextEmbeds", "UNetFamily", "denormalize_latents", "normalize_latents", "read_config"]
