"""What the diffusion-transformer (DiT) families trained with flow matching share.

:class:`FlowFamily` implements :class:`~mudi.models.families.base.ModelFamily` for pipelines whose
denoiser is ``pipe.transformer`` and whose scheduler is a ``FlowMatch*`` one (FLUX.1, SD3.5, and
the families built on this seam). A subclass names its pipeline and transformer classes, its text
encoders, its LoRA targets and sampling defaults, and implements the text encoding and the
transformer call (:meth:`FlowFamily.encode_text`, :meth:`FlowFamily.denoise`); latents enter and
leave :meth:`FlowFamily.denoise` as (B, C, h, w) grids, so the trainer's losses, masks and
Seg-Mix data are those of the UNet families. Training is the velocity objective of
:class:`~mudi.models.families.objectives.FlowObjective`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from mudi.errors import MudiError
from mudi.models.families.base import FamilyParts, ModelInfo, SamplingDefaults, TextEmbeds, read_config


class FlowFamily(FamilyParts):
    """Base of the flow-matching DiT families (see the module docstring)."""

    name: ClassVar[str] = ""
    #: the ``_class_name`` values of ``model_index.json`` this family loads, the first one is used
    pipeline_names: ClassVar[tuple[str, ...]] = ()
    transformer_class_name: ClassVar[str] = ""
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizer_names: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    sampling: ClassVar[SamplingDefaults] = SamplingDefaults(28, 3.5, "")
    denoiser_name: ClassVar[str] = "transformer"
    writes_kohya: ClassVar[bool] = False
    default_init: ClassVar[str] = "none"
    #: σ density when ``weighting_scheme = auto`` (the family's diffusers DreamBooth script default)
    default_weighting_scheme: ClassVar[str] = "none"
    #: the pipeline's default image side in latent cells (``default_sample_size``)
    default_sample_size: ClassVar[int] = 128

    # ------------------------------------------------------------------ recognizing
    @classmethod
    def matches(cls, index: dict) -> bool:
        """True when a ``model_index.json`` names one of this family's pipeline classes."""
        return str(index.get("_class_name", "")) in cls.pipeline_names

    def pipeline_class(self):
        """The diffusers pipeline class of this family."""
        import diffusers

        return getattr(diffusers, self.pipeline_names[0])

    def transformer_class(self):
        """The diffusers transformer class of this family."""
        import diffusers

        return getattr(diffusers, self.transformer_class_name)

    def inspect(self, folder: Path, index: dict, base: str) -> ModelInfo:
        """Read a local pipeline folder's configs (no weights) into a :class:`ModelInfo`."""
        for sub in ("transformer", "vae"):
            if sub not in index:
                raise MudiError(f"{base}: a {index.get('_class_name', 'diffusers')} pipeline without a {sub}; the "
                                "base model folder is incomplete.")
            read_config(folder / sub / "config.json", f"the {sub}")
            if not any((folder / sub).glob("*.safetensors")):
                raise MudiError(f"{folder / sub}: no .safetensors weights; mudi loads safetensors checkpoints only.")
        transformer = read_config(folder / "transformer" / "config.json", "the transformer")
        vae = read_config(folder / "vae" / "config.json", "the VAE")
        sched = read_config(folder / "scheduler" / "scheduler_config.json", "the scheduler")
        self.check_scheduler(sched, base)
        try:
            return self._info(base, transformer, vae, folder)
        except (KeyError, TypeError) as exc:
            raise MudiError(f"{folder}: transformer/VAE config lacks {exc}; the base model folder is damaged.") from None

    def _info(self, path: str, transformer, vae, folder: Path | None = None) -> ModelInfo:
        vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        patch = self.patch_size(transformer)
        return ModelInfo(path, self, vae_factor, patch, self.default_sample_size * vae_factor, "flow_matching", folder)

    def patch_size(self, transformer_config) -> int:
        """Latent cells per token side (2: FLUX packs 2×2 cells, SD3 patchifies 2×2)."""
        return int(transformer_config.get("patch_size", 2) or 2)

    def info_of(self, pipe, base: str) -> ModelInfo:
        """The :class:`ModelInfo` of a loaded pipeline."""
        self.check_scheduler(dict(pipe.scheduler.config, _class_name=type(pipe.scheduler).__name__), base)
        return self._info(base, pipe.transformer.config, pipe.vae.config)

    def check_scheduler(self, config, base: str) -> None:
        """Refuse a scheduler that is not a flow-matching one (the objective would be wrong)."""
        cls = str(config.get("_class_name", "") or "")
        if not cls.startswith("FlowMatch"):
            raise MudiError(f"{base}: the scheduler is {cls or 'unknown'}; the {self.name} family trains with "
                            "flow matching and needs its FlowMatchEulerDiscreteScheduler.")

    def meta_denoiser(self, folder: Path) -> torch.nn.Module:
        """The folder's transformer built from its config on the meta device (module names, no weights)."""
        cls = self.transformer_class()
        config = cls.load_config(str(folder / "transformer"))
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return cls.from_config(config)

    # ------------------------------------------------------------------ sizes
    def vae_scale_factor(self, pipe) -> int:
        """Pixels per latent cell (8 for FLUX.1 and SD3)."""
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def size_multiple(self, pipe) -> int:
        """Pixel multiple a resolution must have: VAE factor × patch size."""
        return self.vae_scale_factor(pipe) * self.patch_size(pipe.transformer.config)

    def default_resolution(self, pipe) -> int:
        """The pipeline's default image side (1024 for FLUX.1 and SD3.5)."""
        return int(getattr(pipe, "default_sample_size", self.default_sample_size)) * self.vae_scale_factor(pipe)

    def image_seq_len(self, pipe, height: int, width: int | None = None) -> int:
        """Image tokens of a ``height`` × ``width`` image (square by default): what the sampler's
        dynamic shift reads."""
        cell = self.vae_scale_factor(pipe) * self.patch_size(pipe.transformer.config)
        return (height // cell) * ((width or height) // cell)

    def latent_channels(self, pipe) -> int:
        """Channels of the latent grid (16 for FLUX.1 and SD3)."""
        return int(pipe.vae.config.latent_channels)

    def sampler_start(self, pipe, scheduler, steps: int, height: int, width: int, device, sigma_start: float):
        """Sampling entered at ``sigma_start`` (:func:`~mudi.models.families.starts.flow_start`), with
        the resolution-dependent ``mu`` the pipeline uses when its scheduler shifts dynamically."""
        from mudi.models.families.objectives import dynamic_shift_mu
        from mudi.models.families.starts import flow_start

        cfg = scheduler.config
        mu = dynamic_shift_mu(cfg, self.image_seq_len(pipe, height, width)) if cfg.get("use_dynamic_shifting") else None
        return flow_start(scheduler, steps, sigma_start, mu, device)

    # ------------------------------------------------------------------ text
    def encode_text(self, pipe, prompts: list[str], device) -> TextEmbeds:
        """Per-token states and the pooled embedding of ``prompts``."""
        raise NotImplementedError

    def pipeline_embeds(self, cond: TextEmbeds, uncond: TextEmbeds) -> dict[str, torch.Tensor]:
        """``pipe(...)`` keyword arguments that pass precomputed embeddings."""
        return {"prompt_embeds": cond.tokens, "pooled_prompt_embeds": cond.pooled,
                "negative_prompt_embeds": uncond.tokens, "negative_pooled_prompt_embeds": uncond.pooled}

    # ------------------------------------------------------------------ denoiser
    def denoiser(self, pipe) -> torch.nn.Module:
        """The network the LoRA trains (the transformer)."""
        return pipe.transformer

    def training_objective(self, pipe, resolution: int, flow: Any = None):
        """Flow matching on a fresh copy of the model's scheduler (see
        :class:`~mudi.models.families.objectives.FlowObjective`)."""
        from mudi.models.families.objectives import FlowObjective, FlowSettings

        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        return FlowObjective(self, scheduler, resolution, flow or FlowSettings(),
                             image_seq_len=self.image_seq_len(pipe, resolution),
                             guidance=self.uses_guidance(pipe.transformer))

    def uses_guidance(self, transformer) -> bool:
        """Whether the transformer takes a guidance embedding (guidance-distilled models)."""
        return False

    def denoise(self, transformer, noisy: torch.Tensor, t: torch.Tensor, embeds: TextEmbeds, resolution: int,
                guidance: float | None = None) -> torch.Tensor:
        """The velocity prediction for (B, C, h, w) noisy latents at σ = ``t``."""
        raise NotImplementedError

    def sampling_steps(self, scheduler, steps: int) -> int:
        """Denoiser calls of one image at ``steps`` inference steps (one per step)."""
        return int(steps)

    # ------------------------------------------------------------------ LoRA files
    def kohya_block_layers(self, unet) -> int | None:
        """Not used: no kohya copy is written for a DiT family (:attr:`writes_kohya`)."""
        return None

    def kohya_base_version(self, unet) -> str:
        return self.name

    def is_v2(self, unet) -> bool:
        return False


__all__ = ["FlowFamily"]
