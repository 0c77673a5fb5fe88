"""Step 1 of a training run: validate everything that needs no weights, before anything is written.

:func:`prepare_run` turns a config and the invocation options into a :class:`RunPlan`: the
resume decision, the merged config of a resumed run, the output-folder policy, the subject set,
the class set, the base model's folder (family, resolution) and the LoRA target modules. Every
user mistake is a :class:`~mudi.errors.MudiError` raised here, while the output folder is untouched.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from mudi.errors import MudiError
from mudi.models.families import ModelInfo
from mudi.settings import RunOptions
from mudi.train.checkpoints import CONFIG_NAME, resolve_resume
from mudi.train.config import TrainConfig
from mudi.train.precision import check_launch_environment


@dataclass
class RunPlan:
    """A validated run: its config (resolution filled in when known) and what was loaded to check it."""

    config: TrainConfig
    options: RunOptions  # ``resume`` is what will happen (resume with overwrite: only when OUT holds a run)
    subject_set: object
    class_photos: dict | None = None
    class_names: dict | None = None
    model: ModelInfo | None = None  # None for a hub id: read after loading
    extra: list = dataclasses.field(default_factory=list)  # ExtraExample of --extra-examples

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def _resume_decision(cfg: TrainConfig, options: RunOptions) -> RunOptions:
    """What ``--resume`` means here: continue the run in OUT, or start one when OUT does not exist
    or is empty (as diffusers' ``--resume_from_checkpoint latest`` does), with a one-line note."""
    out = Path(cfg.out)
    if options.resume and options.overwrite and not (out / CONFIG_NAME).is_file():
        return dataclasses.replace(options, resume=False)  # "resume if there is a run, else start over"
    if options.resume:
        if not cfg.out:
            raise MudiError("--resume needs --out: the folder of the run to continue.")
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            print(f"mudi train: nothing to resume in {out}: starting a new run.", file=sys.stderr)
            return dataclasses.replace(options, resume=False)
    return options


def _check_output_folder(out: Path, options: RunOptions) -> None:
    from mudi.io import claim_output_dir

    claim_output_dir(out, overwrite=options.overwrite, resume=options.resume, what="training output")


def _load_data(cfg: TrainConfig):
    """The subject set (checked against k and the relative sizes) and the class set, if any."""
    from mudi.subjects import SubjectSet

    sset = SubjectSet.load(cfg.subjects)
    if cfg.only:
        picked = list(dict.fromkeys(sset.subject(name).key for name in cfg.only))
        sset = SubjectSet([sset.subject(key) for key in picked], sset.root)
    if cfg.mix != "none" and cfg.k > len(sset):
        hint = " (one subject per LoRA: add --mix none)" if len(sset) == 1 else ""
        picked = f" (--only picks {len(sset)})" if cfg.only else ""
        raise MudiError(f"--k {cfg.k} subjects per composite, but {cfg.subjects} has only {len(sset)} "
                        f"subject{'s' if len(sset) != 1 else ''}{picked}{hint}.")
    if cfg.relative_sizes:
        from mudi.compose import parse_relative_sizes

        for name in parse_relative_sizes(cfg.relative_sizes):
            sset.subject(name)
    if not cfg.prior_dir:
        return sset, None, None
    from mudi.train.priors import ClassSet

    cset = ClassSet.load(cfg.prior_dir)
    return sset, cset.for_subjects(sset), cset.class_names(sset)


def _check_model(cfg: TrainConfig) -> tuple[TrainConfig, ModelInfo | None]:
    """Inspect a local base model: resolution and LoRA targets (on a weightless UNet)."""
    from mudi.models.loading import inspect_model, resolve_model
    from mudi.models.lora import check_lora_targets

    info = inspect_model(cfg.base, variant=cfg.variant)
    if cfg.vae and not (Path(cfg.vae) / "vae").is_dir():  # a VAE folder/hub id (or a pipeline's vae/)
        resolve_model(cfg.vae, "vae")
    if info is not None:
        cfg = cfg.with_model_defaults(info)
        info.check_resolution(cfg.resolution)
        check_lora_targets(info.family.meta_denoiser(info.folder), cfg.target_modules, where=cfg.base)
    return cfg, info


def init_lora_shape(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the rank, alpha and UNet targets of its ``--init-lora`` (checked: a readable
    UNet LoRA of the same base model); a note when they replace other values."""
    from mudi.models.lora_files import lora_file, read_diffusers_lora
    from mudi.settings import read_section

    weights = lora_file(cfg.init_lora, "--init-lora")
    table = read_diffusers_lora(weights)
    other = sorted({n.split(".", 1)[0] for n in table.modules} - {"unet"})
    if other:
        raise MudiError(f"--init-lora {cfg.init_lora}: it holds {', '.join(other)} LoRA weights; only a UNet LoRA "
                        "can start a run.")
    saved = weights.parent / "config.toml"
    base = read_section(saved, TrainConfig.SECTION).get("base") if saved.is_file() else None
    if base and str(base) != cfg.base and Path(str(base)).resolve() != Path(cfg.base).resolve():
        raise MudiError(f"--init-lora {cfg.init_lora} was made on base model {base!r}, not --base {cfg.base!r}; "
                        "pass the base it was trained on.")
    ranks = {m.rank for m in table.modules.values()}
    if len(ranks) != 1:
        raise MudiError(f"--init-lora {cfg.init_lora}: its modules have different ranks {sorted(ranks)}.")
    meta = table.adapter_config("unet")
    rank = ranks.pop()
    shape = {"rank": rank, "alpha": float(meta.get("lora_alpha", rank)),
             "target_modules": sorted(meta.get("target_modules") or cfg.target_modules)}
    changed = [f"{k} {getattr(cfg, k)} -> {v}" for k, v in shape.items()
               if (sorted(getattr(cfg, k)) if k == "target_modules" else getattr(cfg, k)) != v]
    if changed:
        print(f"mudi train: from --init-lora: {'; '.join(map(str, changed))}.", file=sys.stderr)
    return cfg.updated(shape)


def _check_memory(cfg: TrainConfig, options: RunOptions, info: ModelInfo | None, *, prior: bool) -> None:
    """The quantization backend and the memory estimate of a local base model (a hub model's
    estimate comes after loading, :func:`~mudi.train.setup.setup_model`)."""
    from mudi.models.quantize import check_quantize
    from mudi.runtime import pick_device

    device = pick_device(options.device)
    check_quantize(cfg.quantize, device)
    if info is not None and info.folder is not None:
        from mudi.train.memory import meta_parts
        from mudi.train.memory_check import check_run_memory

        check_run_memory(cfg, device, meta_parts(info.folder), prior=prior)


def prepare_run(config: TrainConfig, options: RunOptions | None = None) -> RunPlan:
    """Validate a run without loading weights and without writing anything.

    Raises MudiError for every user mistake: options, output folder, subject set, class set,
    base model folder, resolution, LoRA target modules, a missing quantization backend, a run
    whose estimated memory does not fit the device (or ``--memory-budget``).
    """
    check_launch_environment()
    if config.rounds:
        raise MudiError(f"rounds = {config.rounds}: iterative training runs through mudi.iterate(config) "
                        "(or `mudi train --rounds N`), not train().")
    options = _resume_decision(config, options or RunOptions())
    cfg = resolve_resume(config) if options.resume else config
    cfg.check()
    _check_output_folder(Path(cfg.out), options)
    if cfg.init_lora:
        cfg = init_lora_shape(cfg)
    sset, class_photos, class_names = _load_data(cfg)
    cfg, info = _check_model(cfg)
    _check_memory(cfg, options, info, prior=class_photos is not None and cfg.prior_weight > 0)
    extra = []
    if cfg.extra_examples:
        from mudi.train.extra import load_extra

        extra = load_extra(cfg.extra_examples, sset.keys)
    return RunPlan(cfg, options, sset, class_photos, class_names, info, extra)


__all__ = ["RunPlan", "prepare_run"]
