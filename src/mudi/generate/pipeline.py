"""Batch generation with a personalized model and mean-shifted initialization (METHOD.md §4).

:func:`generate` runs one ``mudi generate`` job in numbered steps, each a named function:

1. :func:`check_inputs` — everything that can be wrong before the model is loaded: options,
   the subject set, the LoRA folder, the prompts' subjects (identifiers), layout files, the
   device, the output folder (never silently overwritten). Nothing is written yet, and the
   config is never modified (resolved values go into :class:`RunInputs`). Under ``accelerate
   launch`` every process checks, then waits for the others (:class:`mudi.runtime.Processes`).
2. :func:`load_base_pipeline` (or take the pipeline the caller gives).
3. :func:`sampling_resolution` — the image side, checked against the model; steps, guidance and
   negative prompt not given are the model family's (``family.sampling``: SDXL 50 / 5.0 with the
   reference code's negative prompt, SD 50 / 7.5), recorded in ``config.toml`` and every sidecar.
4. :func:`configured_pipeline` — the scheduler and the LoRA (its fit to the base model checked;
   merged into the weights for sampling when :func:`wants_fused_lora`); undone at the end for a
   pipeline the caller gave (never fused).
5. :func:`~mudi.generate.jobs.plan_jobs` — one job per image: prompt, per-image seed
   ``seed + index``, the reference photo per subject and the layout, all drawn from that seed.
6. :func:`write_run_config` (creates the output folder, writes ``config.toml``; main process
   only) and, with ``--resume``, skip the images already made.
7. :func:`sample_jobs` — this process's share (images i, i+n, ... of n processes), per batch
   (decoded one image at a time on a GPU, :func:`mudi.models.decode.sliced_decode`): initial
   latents (:func:`mudi.generate.init.mean_shifted_latents`
   or the pipeline's own noise), sample, write ``0000.png`` + ``0000.json`` (the sidecar) and
   optionally ``0000_init.png`` (the init canvas).
8. :func:`~mudi.generate.sheets.write_contact_sheets` (``contact_sheet.png``, ``init_sheet.png``),
   by the main process once every process is done.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from mudi.errors import MudiError
from mudi.generate.config import GenerateConfig, GenerateWarning
from mudi.generate.jobs import ImageJob, ResolvedRun, check_layout_file, is_finished, plan_jobs, sidecar
from mudi.generate.llm_layout import LLMLayoutProvider
from mudi.generate.lora_loading import fuse_lora, load_lora, lora_weights_file, read_train_config, unfuse_lora
from mudi.generate.prompts import resolve_prompt
from mudi.generate.sampling import StepProgress, generate_batch, set_scheduler
from mudi.generate.sheets import write_contact_sheets
from mudi.io import claim_output_dir, save_image_atomic, write_json_atomic, write_text_atomic
from mudi.models.decode import sliced_decode
from mudi.models.families import family_of
from mudi.runtime import Processes, pick_device, resolve_dtype
from mudi.runtime import processes as find_processes
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet, parse_subject_values


@dataclass(frozen=True)
class RunInputs:
    """What step 1 resolved from a config and the files it names (the config itself is untouched).

    Attributes:
        base: the base model (``--base`` or the LoRA's ``config.toml``; "" when a pipeline is given
            and neither names one).
        subjects_dir, sset: the subject set.
        sizes: relative sizes by subject key (auto layout).
        llm: the language-model provider for ``layout = "llm"``.
        train_cfg: the LoRA's ``config.toml`` ({} without one).
        vae: the VAE override: ``--vae`` or the one the LoRA was trained with ("" for the model's own).
        out: the output folder; device, dtype: to load the base model with.
    """

    base: str
    subjects_dir: str
    sset: SubjectSet
    out: Path
    device: torch.device
    dtype: torch.dtype
    sizes: dict[str, float] = field(default_factory=dict)
    llm: LLMLayoutProvider | None = None
    train_cfg: dict[str, Any] = field(default_factory=dict)
    vae: str = ""


def check_inputs(config: GenerateConfig, options: RunOptions, *, have_pipe: bool = False,
                 procs: Processes = Processes()) -> RunInputs:
    """Step 1: validate the config, the options and the files they name; MudiError on the first problem."""
    config.check()
    device, dtype = check_run_options(options, config, procs)
    train_cfg: dict[str, Any] = {}
    if config.lora:
        lora_weights_file(config.lora)
        train_cfg = read_train_config(config.lora)
    base = config.base or str(train_cfg.get("base") or "")
    if not have_pipe and not base:
        raise MudiError(
            "no base model: pass --base MODEL (a diffusers SD/SDXL folder or hub id)"
            + (f"; {config.lora} has no config.toml from `mudi train` to take it from." if config.lora else ".")
        )
    subjects_dir = config.subjects or str(train_cfg.get("subjects") or "")
    if not subjects_dir:
        raise MudiError("no subject set: pass --subjects DIR (the folder made by `mudi prepare`).")
    if config.base and train_cfg.get("base") and str(train_cfg["base"]) != config.base:
        warnings.warn(f"--base {config.base} differs from the base the LoRA was trained on ({train_cfg['base']}).",
                      GenerateWarning, stacklevel=3)
    sset = SubjectSet.load(subjects_dir)
    for p in config.prompts:
        resolve_prompt(sset, p)
    sizes = parse_subject_values(config.sizes, sset, option="--sizes", meaning="relative size")
    llm = check_layout_option(config, sset, int(config.resolution or train_cfg.get("resolution") or 0))
    return RunInputs(base=base, subjects_dir=subjects_dir, sset=sset, out=Path(config.out), device=device,
                     dtype=dtype, sizes=sizes, llm=llm, train_cfg=train_cfg,
                     vae=config.vae or str(train_cfg.get("vae") or ""))


def check_layout_option(config: GenerateConfig, sset: SubjectSet, resolution: int) -> LLMLayoutProvider | None:
    """The LLM provider for ``layout = "llm"``; for a layout file: it exists and, when the resolution
    is known before loading the model, its boxes fit every prompt."""
    if config.init == "none" or config.layout == "auto":
        return None
    if config.layout == "llm":
        return LLMLayoutProvider.from_env(config.llm_url or None, config.llm_model or None,
                                          config.llm_api_key or None, config.llm_timeout)
    if not Path(config.layout).is_file():
        raise MudiError(f"{config.layout}: layout file not found (give --layout auto, llm or a JSON file of boxes).")
    if resolution:
        check_layout_file(config, sset, resolution)
    return None


def check_run_options(options: RunOptions, config: GenerateConfig,
                      procs: Processes = Processes()) -> tuple[torch.device, torch.dtype]:
    """The invocation options and the output folder (checked, not created yet); returns the
    device (a bare ``cuda`` is this process's GPU under ``accelerate launch``) and dtype to load
    the model with."""
    if options.resume and options.overwrite:
        raise MudiError("--resume and --overwrite exclude each other: resume keeps finished images, overwrite redoes them.")
    claim_output_dir(config.out, overwrite=options.overwrite, resume=options.resume, what="generate output")
    device = procs.device(pick_device(options.device))
    return device, resolve_dtype(config.dtype, device)


def load_base_pipeline(inputs: RunInputs):
    """Step 2: the base pipeline (with the VAE of ``--vae`` or of the LoRA's ``config.toml``)."""
    from mudi.models.loading import load_pipeline

    return load_pipeline(inputs.base, dtype=inputs.dtype, device=inputs.device, vae=inputs.vae or None)


def pipeline_name(pipe) -> str:
    """The folder or hub id a pipeline was loaded from ("" if unknown)."""
    return str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", ""))


def sampling_resolution(pipe, config: GenerateConfig, inputs: RunInputs) -> int:
    """Step 3: ``--resolution``, the LoRA's training resolution or the model's default; MudiError
    when the UNet cannot take it."""
    family = family_of(pipe)
    res = config.resolution or int(inputs.train_cfg.get("resolution") or 0) or family.default_resolution(pipe)
    mult = family.size_multiple(pipe)
    if res % mult:
        raise MudiError(
            f"--resolution {res} is not a multiple of {mult} (VAE factor {family.vae_scale_factor(pipe)} × the UNet's "
            f"down-sampling); try {max(mult, round(res / mult) * mult)}."
        )
    return res


def wants_fused_lora(config: GenerateConfig, device: torch.device, *, own_pipe: bool) -> bool:
    """Whether to merge the LoRA into the weights for sampling: only in a pipeline mudi loaded
    itself (a caller's pipeline is never changed), with a LoRA, and for ``fuse_lora = "auto"`` only
    on a GPU (on the CPU the images stay bitwise those of the unfused LoRA)."""
    if not (own_pipe and config.lora) or config.fuse_lora == "off":
        return False
    return config.fuse_lora == "on" or torch.device(device).type != "cpu"


@contextlib.contextmanager
def configured_pipeline(pipe, config: GenerateConfig, base: str, *, restore: bool,
                        fuse: bool = False) -> Iterator[tuple[str, bool]]:
    """Step 4: set the scheduler and load the LoRA (merged into the weights with ``fuse``); yields
    the scheduler's class name and whether the LoRA is fused.

    On exit a fused LoRA is unfused and unloaded; with ``restore`` (a pipeline the caller gave) the
    LoRA is unloaded and the scheduler put back; also after an error.
    """
    lora_loaded = fused = False
    old_scheduler = pipe.scheduler
    try:
        scheduler_name = set_scheduler(pipe, config.scheduler)
        if config.lora:
            load_lora(pipe, config.lora, scale=config.lora_scale, base=base)
            lora_loaded = True
            if fuse:
                fuse_lora(pipe)
                fused = True
        yield scheduler_name, fused
    finally:
        if fused:
            unfuse_lora(pipe)
        if (restore or fused) and lora_loaded:
            pipe.unload_lora_weights()
        if restore:
            pipe.scheduler = old_scheduler


def write_run_config(config: GenerateConfig, inputs: RunInputs, run: ResolvedRun, options: RunOptions) -> None:
    """Step 6: create the output folder and write ``config.toml``: a run file whose ``[generate]``
    table is the config with the values the run resolved (base model, subject set, resolution,
    sizes by subject key, dtype), so ``mudi generate --config OUT/config.toml`` repeats the run."""
    claim_output_dir(inputs.out, overwrite=options.overwrite, resume=options.resume, what="generate output",
                     create=True)
    resolved = config.updated({
        "base": run.base, "subjects": run.subject_set, "vae": inputs.vae, "resolution": run.height,
        "dtype": run.dtype_name,
        "sizes": ",".join(f"{key}={value!r}" for key, value in inputs.sizes.items()),
    })
    write_text_atomic(inputs.out / "config.toml", resolved.to_toml(title="mudi generate: the settings of this run"))


def sample_jobs(pipe, jobs: Sequence[ImageJob], config: GenerateConfig, inputs: RunInputs,
                sidecars: dict[int, dict[str, Any]], run: ResolvedRun, *, progress: bool = True) -> None:
    """Step 7: sample ``jobs`` in batches of ``config.batch_size``; write each image, its sidecar
    and (``save_init``) its init canvas as soon as its batch is done."""
    pipe.set_progress_bar_config(disable=True)
    bar = StepProgress.for_pipeline(pipe, len(jobs), config.steps, enabled=progress)
    bs = config.batch_size
    with sliced_decode(pipe):  # a batch goes through the VAE one image at a time (same pixels, less memory)
        for batch in (jobs[i:i + bs] for i in range(0, len(jobs), bs)):
            bar.start_batch(batch)
            results = generate_batch(pipe, batch, inputs.sset, config, height=run.height, width=run.width,
                                     callback=bar)
            for job, (image, init) in zip(batch, results):
                if init is not None and config.save_init:
                    save_image_atomic(init.canvas, inputs.out / f"{job.stem}_init.png")
                save_image_atomic(image, inputs.out / f"{job.stem}.png")
                write_json_atomic(inputs.out / f"{job.stem}.json", sidecars[job.index])
    bar.close()


def generate(config: GenerateConfig, options: RunOptions | None = None, *, pipe=None,
             procs: Processes | None = None) -> list[Path]:
    """Run a whole ``mudi generate`` job; returns the image paths (in index order).

    Args:
        config: the run's settings (see :class:`GenerateConfig`); never modified.
        options: how to run it: ``resume`` (keep the images of OUT made with the same settings),
            ``overwrite`` (write into a non-empty OUT), ``device``, ``progress``.
        pipe: an already loaded base pipeline to use instead of loading ``config.base``
            (its scheduler is replaced if ``config.scheduler`` asks; a LoRA is loaded into it,
            never fused, and unloaded again at the end).
        procs: the processes sharing the run (default: :func:`mudi.runtime.processes`, one unless
            started by ``accelerate launch``/torchrun). Process i samples images i, i+n, ... into
            the one OUT; the main process writes ``config.toml`` and the contact sheets.
    """
    options = options or RunOptions()
    procs = procs or find_processes()
    # 1. Check inputs (nothing loaded or written yet); every process checks OUT before any writes
    inputs = check_inputs(config, options, have_pipe=pipe is not None, procs=procs)
    procs.wait()
    # 2. Base model (or the caller's pipeline)
    own_pipe = pipe is None
    if own_pipe:
        pipe = load_base_pipeline(inputs)
    base = inputs.base if own_pipe else (inputs.base or pipeline_name(pipe))
    config = config.for_family(family_of(pipe))  # init = auto → the family's default
    # 3. Resolution, and the model family's sampling defaults for what the user left unset
    res = sampling_resolution(pipe, config, inputs)
    config = config.with_sampling_defaults(family_of(pipe).sampling)
    # 4. Scheduler and LoRA
    fuse = wants_fused_lora(config, inputs.device, own_pipe=own_pipe)
    with configured_pipeline(pipe, config, base, restore=not own_pipe, fuse=fuse) as (scheduler_name, fused):
        run = ResolvedRun(base=base, subject_set=str(Path(inputs.subjects_dir)), lora=str(config.lora or ""),
                          scheduler=scheduler_name, height=res, width=res,
                          dtype=inputs.dtype if own_pipe else family_of(pipe).denoiser(pipe).dtype, lora_fused=fused)
        # 5. Plan one job per image
        jobs = plan_jobs(config, inputs.sset, run.width, run.height, sizes=inputs.sizes, llm=inputs.llm)
        sidecars = {j.index: sidecar(j, config, run, inputs.sset) for j in jobs}
        # 6. With --resume, skip finished images (every process sees the same folder: nothing sampled
        #    yet); the main process writes the run config
        todo = [j for j in jobs if not (options.resume and is_finished(inputs.out, j.stem, sidecars[j.index]))]
        if procs.is_main:
            write_run_config(config, inputs, run, options)
        procs.wait()
        # 7. Sample this process's share: images i, i+n, ... of the ones to do
        sample_jobs(pipe, procs.share(todo), config, inputs, sidecars, run,
                    progress=options.progress and procs.is_main)
    # 8. Contact sheets, once every process is done
    procs.wait()
    if procs.is_main:
        write_contact_sheets(inputs.out, jobs, inputs.sset, with_init=config.save_init and config.init == "mudi")
    return [inputs.out / f"{j.stem}.png" for j in jobs]
