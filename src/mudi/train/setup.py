"""The set-up steps of :class:`~mudi.train.recipe.LoRATrainer`, one function each, in run order."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import torch

from mudi.settings import RunOptions
from mudi.train.caches import LatentEncoder, TextCache
from mudi.train.checkpoints import CKPT_DIR, CONFIG_NAME, Checkpointer, abs_if_local
from mudi.train.config import TrainConfig
from mudi.train.data import (ExampleSchedule, MicroBatchBuilder, class_captions, default_validation_prompts,
                             fill_subjects, subject_captions)
from mudi.train.metrics import LOG_NAME, MetricLogger
from mudi.train.precision import Precision, make_accelerator, resolve_mixed_precision
from mudi.train.validation import ValidationSettings, Validator


@contextlib.contextmanager
def restored_pipeline_settings(pipe) -> Iterator[None]:
    """A caller's pipeline gets its progress-bar settings back when training ends."""
    saved = getattr(pipe, "_progress_bar_config", None) if pipe is not None else None
    try:
        yield
    finally:
        if pipe is not None:
            if saved is None:
                pipe.__dict__.pop("_progress_bar_config", None)
            else:
                pipe._progress_bar_config = saved


def setup_runtime(cfg: TrainConfig, options: RunOptions):
    """1.1 The accelerator (device, processes) and the mixed precision of the run."""
    from mudi.runtime import pick_device

    device = pick_device(options.device)
    mode = resolve_mixed_precision(cfg.mixed_precision, device)
    accelerator = make_accelerator(device)
    return accelerator, Precision(mode, accelerator.device)


def setup_model(plan, cfg: TrainConfig, precision: Precision, pipeline=None):
    """1.2 The pipeline (frozen weights in the training dtype), its family, the resolution; the
    LoRA targets checked on the loaded UNet (a hub model was not inspected before) and text encoders."""
    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import check_lora_targets
    from mudi.runtime import quiet_libraries

    if pipeline is None:
        with quiet_libraries():  # frozen weights in the training dtype from the start (no fp32 copy in RAM)
            pipeline = load_pipeline(cfg.base, dtype=precision.dtype, device="cpu", vae=cfg.vae or None,
                                     variant=cfg.variant, quantize=cfg.quantize)
    family = family_of(pipeline)
    if plan.model is None:  # hub model: check the resolution now that the configs are loaded
        info = family.info_of(pipeline, cfg.base)
        cfg = cfg.with_model_defaults(info)
        info.check_resolution(cfg.resolution)
        _check_loaded_memory(plan, cfg, precision, pipeline)
    check_lora_targets(family.denoiser(pipeline), cfg.target_modules, where=cfg.base)
    if cfg.train_text_encoder:
        for name in family.text_encoder_names:
            if getattr(pipeline, name, None) is not None:
                check_lora_targets(getattr(pipeline, name), cfg.text_encoder_target_modules, where=cfg.base, part=name)
    return pipeline, family, cfg


def _check_loaded_memory(plan, cfg: TrainConfig, precision: Precision, pipeline) -> None:
    """The memory estimate of a hub model, from the loaded modules' configs (before anything is written)."""
    from mudi.models.families import family_of
    from mudi.train.memory import PipelineParts, meta_copy
    from mudi.train.memory_check import check_run_memory

    family = family_of(pipeline)
    encoders = {f"text_encoder{'' if i == 0 else f'_{i + 1}'}": meta_copy(e)
                for i, e in enumerate(family.text_encoders(pipeline))}
    parts = PipelineParts(meta_copy(family.denoiser(pipeline)), encoders, meta_copy(pipeline.vae))
    check_run_memory(cfg, precision.device, parts, prior=plan.class_photos is not None and cfg.prior_weight > 0)


def setup_output_folder(cfg: TrainConfig, options: RunOptions, accelerator, precision: Precision) -> TrainConfig:
    """1.3 The resolved config, written to OUT/config.toml before any training (a killed run can
    always be resumed). Returns it: the rest of the run uses the resolved values."""
    from mudi.compose import default_margin
    from mudi.io import claim_output_dir, write_text_atomic

    margin = cfg.segmix_margin if cfg.segmix_margin >= 0 else float(default_margin(cfg.resolution))
    resolved = cfg.updated({
        "subjects": abs_if_local(cfg.subjects), "base": abs_if_local(cfg.base),
        "prior_dir": abs_if_local(cfg.prior_dir), "vae": abs_if_local(cfg.vae), "init_lora": abs_if_local(cfg.init_lora),
        "extra_examples": [abs_if_local(p) for p in cfg.extra_examples],
        "mixed_precision": precision.mode, "segmix_margin": margin, "reg": cfg.resolved_reg(),
    })
    out = Path(cfg.out)
    accelerator.wait_for_everyone()  # every process has validated OUT before the main one writes to it
    if accelerator.is_main_process:
        if not options.resume:
            claim_output_dir(out, overwrite=options.overwrite, resume=False, what="training output", create=True)
            if options.overwrite:  # a fresh start must not resume from the previous run's state
                shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
                (out / LOG_NAME).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / CONFIG_NAME, resolved.to_toml(title="mudi train: fully resolved run configuration"))
    accelerator.wait_for_everyone()
    return resolved


def make_objective(pipe, family, cfg: TrainConfig):
    """The run's training objective (:mod:`mudi.models.families.objectives`): DDPM on the base
    model's noise schedule for a UNet family, flow matching with the run's σ options for a DiT."""
    return family.training_objective(pipe, cfg.resolution, cfg.flow_settings())


def _move(module, device: torch.device, dtype: torch.dtype):
    """Move a module; cast only when the dtype really changes (avoids diffusers' upcast warnings)
    and never a quantized one (its weights stay quantized, the rest was loaded in ``dtype``)."""
    from mudi.models.quantize import is_quantized

    module.to(device)
    if not is_quantized(module) and next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    return module


def place_frozen_parts(pipe, device: torch.device, dtype: torch.dtype, offload_vae: bool = False) -> list:
    """Freeze VAE and text encoders and move everything to the device (the VAE stays in CPU memory
    with ``offload_vae``, :func:`~mudi.train.offload.offload_to_cpu`); returns the offload hooks.

    A VAE whose config asks for it (the SDXL base VAE: NaNs in fp16) runs in fp32, whoever chose
    it; the fp16-fix VAE (``force_upcast`` false) runs in the training dtype.
    """
    from mudi.models.families import family_of

    family = family_of(pipe)
    encoders = family.text_encoders(pipe)
    pipe.vae.requires_grad_(False)
    for enc in encoders:
        enc.requires_grad_(False).eval()
    vae_dtype = torch.float32 if getattr(pipe.vae.config, "force_upcast", False) else dtype
    hooks = []
    if offload_vae:
        from mudi.train.offload import offload_to_cpu

        _move(pipe.vae, torch.device("cpu"), vae_dtype).eval()
        hooks = offload_to_cpu(pipe.vae, device)
    else:
        _move(pipe.vae, device, vae_dtype).eval()
    _move(family.denoiser(pipe), device, dtype)
    for enc in encoders:
        _move(enc, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return hooks


def setup_lora(unet, cfg: TrainConfig, checkpointing: bool = False) -> list[torch.nn.Parameter]:
    """1.4 The LoRA adapter on the denoiser ``unet`` (a UNet or a transformer; fp32 weights; drawn
    from the run's seeded RNG scope), gradient checkpointing when decided
    (:func:`~mudi.train.performance.decide_gradient_checkpointing`), the denoiser in train mode."""
    from mudi.models.lora import add_unet_lora

    params = add_unet_lora(unet, rank=cfg.rank, alpha=cfg.alpha, target_modules=cfg.target_modules,
                           dropout=cfg.lora_dropout)
    if cfg.init_lora:  # after the random init, so every later random stream is the same as without it
        load_init_lora(unet, cfg.init_lora)
    for p in params:
        p.data = p.data.float()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return params


def load_init_lora(unet, path: str) -> None:
    """Copy the factors of a LoRA file (``--init-lora``, rank/alpha/targets already taken from it)
    into the freshly attached adapter."""
    from mudi.errors import MudiError
    from mudi.models.lora import load_lora_state_dict
    from mudi.models.lora_files import lora_file, read_diffusers_lora

    table = read_diffusers_lora(lora_file(path, "--init-lora"))
    state = {}
    for name, m in table.modules.items():
        module = name.split(".", 1)[1]
        state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = m.a, m.b
    try:
        load_lora_state_dict(unet, state)
    except ValueError as exc:
        raise MudiError(f"--init-lora {path}: its modules do not fit this UNet ({exc}).") from None


def setup_text_encoder_lora(pipe, family, cfg: TrainConfig, checkpointing: bool = False):
    """1.4b ``--train-text-encoder``: a LoRA on every text encoder (after the UNet's, from the same
    seeded RNG scope), in train mode as the reference trainer has them. Returns (pipeline attribute
    name → encoder, their trainable parameters); nothing without the option."""
    from mudi.models.text_lora import add_text_encoder_lora

    if not cfg.train_text_encoder:
        return {}, []
    encoders = {n: getattr(pipe, n) for n in family.text_encoder_names if getattr(pipe, n, None) is not None}
    params = add_text_encoder_lora(encoders, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                                   target_modules=cfg.text_encoder_target_modules)
    for enc in encoders.values():
        if checkpointing:  # transformers >= 5 names it activation checkpointing
            (getattr(enc, "activation_checkpointing_enable", None) or enc.gradient_checkpointing_enable)()
        enc.train()
    return encoders, params


def setup_caches(trainer):
    """1.5 Text embeddings of every caption (then the text encoders go; with --train-text-encoder
    they stay and captions are encoded per step) and the plain photos' latents."""
    cfg, plan, c = trainer.cfg, trainer.plan, trainer.counters
    sset = plan.subject_set
    text = TextCache(trainer.pipe, trainer.family, trainer.accelerator.device, trainer.precision.dtype,
                     live=cfg.train_text_encoder)
    captions = subject_captions(sset, cfg.k, cfg.mix) + [ex.photo.caption for ex in plan.extra]
    if plan.class_photos is not None:
        captions += class_captions(plan.class_photos, plan.class_names, sset.keys, cfg.k, cfg.mix)
    if text.fill(captions, validation_prompts(trainer), cfg.validation_negative_prompt):
        text.release_encoders(owned=trainer.given_pipeline is None)
    c.text_encoder_calls_setup, c.captions_cached = text.calls, len(text.cond)
    latents = LatentEncoder(trainer.pipe.vae, trainer.family, trainer.accelerator.device)
    plain_examples = latents.cache_plain(sset, cfg.resolution, plan.class_photos, plan.class_names,
                                         every_photo=cfg.plain_crop == "center")
    if plan.extra:
        from mudi.train.extra import plain_extra

        for key, ex in plain_extra(plan.extra, cfg.resolution).items():
            plain_examples[key] = ex
            latents.cached(("instance", *key), ex.image)
    c.latents_cached, c.encodes_after_cache = len(latents.cache), latents.encodes
    return text, latents, plain_examples


def validation_prompts(trainer) -> list[str]:
    """The configured validation prompts with ``{key}`` filled in, or the default ones."""
    sset, cfg = trainer.plan.subject_set, trainer.cfg
    return [fill_subjects(v, sset) for v in cfg.validation_prompts] or default_validation_prompts(sset, cfg.k)


def setup_data(trainer):
    """1.7 The example schedule and the micro-batch builder (Seg-Mix composer, cached plain examples)."""
    from mudi.compose import Composer, parse_relative_sizes

    cfg, plan = trainer.cfg, trainer.plan
    relative = parse_relative_sizes(cfg.relative_sizes) if cfg.relative_sizes else None
    composer = Composer(plan.subject_set, cfg.resolution, mix=cfg.mix, p=cfg.p, k=cfg.k, margin=cfg.segmix_margin,
                        relative_sizes=relative, class_layout=cfg.class_layout)
    schedule = ExampleSchedule(plan.subject_set, cfg.seed, extra=len(plan.extra))
    use_prior = plan.class_photos is not None and cfg.prior_weight > 0
    batches = MicroBatchBuilder(
        composer=composer, schedule=schedule, latents=trainer.latents, plain_examples=trainer.plain_examples,
        batch_size=cfg.train_batch_size, p=cfg.p, mix=cfg.mix, loss_alpha=cfg.loss_alpha,
        loss_mask=cfg.loss_mask, segmix_start_step=cfg.segmix_start_step, plain_crop=cfg.plain_crop,
        examples_per_step=cfg.train_batch_size * cfg.gradient_accumulation_steps * trainer.accelerator.num_processes,
        draw_timestep=trainer.objective.draw_timestep,
        class_photos=plan.class_photos if use_prior else None, class_names=plan.class_names)
    return batches, schedule, use_prior


def setup_checkpointer(trainer) -> Checkpointer:
    """1.8 Checkpoints: LoRA, optimizer (+ scaler) and this step's LoRA in diffusers format."""
    from mudi.models.lora import save_diffusers_lora

    acc, pipe_cls, part = trainer.accelerator, type(trainer.pipe), trainer.family.denoiser_name
    te = trainer.text_encoders
    return Checkpointer(trainer.out, keep=trainer.cfg.keep_checkpoints, unet=trainer.unet,
                        optimizer=trainer.optimizer, scaler=trainer.precision.scaler,
                        export=lambda d: save_diffusers_lora(pipe_cls, acc.unwrap_model(trainer.unet), d, component=part,
                                                             text_encoders=te),
                        extra={"config": trainer.cfg.to_dict()}, text_encoders=te)


def setup_logger(trainer) -> MetricLogger:
    """The metric logger (main process), its log cut back to the resumed step."""
    return MetricLogger(trainer.out, start_step=trainer.counters.start_step, log_every=trainer.cfg.log_every,
                        end_step=trainer.end_step, active=trainer.accelerator.is_main_process)


def setup_validator(trainer) -> Validator:
    """The validation-grid writer (cached prompt embeddings, the run's autocast)."""
    cfg = trainer.cfg
    settings = ValidationSettings(validation_prompts(trainer), cfg.validation_images, cfg.validation_inference_steps,
                                  cfg.validation_guidance_scale, cfg.resolution, cfg.seed)
    return Validator(trainer.pipe, trainer.family, trainer.text, settings, trainer.out, trainer.precision.autocast)


__all__ = ["load_init_lora", "make_objective", "place_frozen_parts", "restored_pipeline_settings", "setup_caches",
           "setup_checkpointer", "setup_data", "setup_logger", "setup_lora", "setup_model", "setup_output_folder",
           "setup_runtime", "setup_text_encoder_lora", "setup_validator", "validation_prompts"]
