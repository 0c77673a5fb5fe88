"""``mudi train``: DreamBooth-LoRA with Seg-Mix (METHOD.md §2–§3) for SD 1.x/2.x and SDXL.

:class:`LoRATrainer` is a recipe with a fixed life cycle, each step a named method:

1. :meth:`~LoRATrainer.setup`: the runtime (device, accelerator, precision), the model (pipeline,
   family, resolution, LoRA targets), the output folder (resolved config), the LoRA and the
   optimizer, the caches (text embeddings, plain-photo latents), the data, the resume,
2. :meth:`~LoRATrainer.train`: the loop over optimizer steps; each example, its noise and its
   timestep are a pure function of ``(seed, example number)``, so a checkpoint only needs the
   LoRA weights, the optimizer state and the step: a resumed run is bitwise identical to an
   uninterrupted one (CPU),
3. :meth:`~LoRATrainer.save`: the LoRA (diffusers + kohya formats), the last validation grid, the
   loss curve and ``summary.json``,
4. :meth:`~LoRATrainer.cleanup`: hooks removed, the caller's random state and pipeline settings
   restored.

The method lives in the data (:class:`mudi.compose.Composer`); the loop is plain DreamBooth.

Output folder::

    OUT/pytorch_lora_weights.safetensors   diffusers format: pipe.load_lora_weights(OUT) (with
                                           --train-text-encoder also text_encoder.* / text_encoder_2.*)
    OUT/lora_kohya.safetensors             kohya/ComfyUI/A1111 copy (lora_unet_* keys, lora_te*_ keys, alpha tensors)
    OUT/config.toml                        the fully resolved run (mudi train --config OUT/config.toml)
    OUT/train_log.jsonl                    per step: step, loss (instance, prior; with DCO: loss = the DCO
                                           loss, loss_instance = the LoRA's MSE, loss_reference = the
                                           base model's MSE), lr, grad_norm, time,
                                           step_time, step_cpu_time, data_time, kinds, text_encoder_calls
    OUT/loss.png                           loss curve (written at validations and at the end)
    OUT/validation/step_XXXXXX.png         validation grids (prompts x images)
    OUT/summary.json                       counters: cached captions/latents, text-encoder calls, timing
    OUT/checkpoints/step_XXXXXX/           lora.safetensors, optimizer.safetensors (+ torch RNG), state.json,
                                           pytorch_lora_weights.safetensors (this step's LoRA, diffusers format)
    OUT/tensorboard/                       scalars, when the tensorboard package is installed
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mudi.models.text_lora import AdapterSwitch
from mudi.settings import RunOptions
from mudi.train.checkpoints import CONFIG_NAME, training_rngs
from mudi.train.config import TrainConfig
from mudi.train.optim import make_optimizer, optimizer_name
from mudi.train.outputs import SUMMARY_NAME, export_lora, write_summary
from mudi.train.performance import decide_gradient_checkpointing, tf32_enabled
from mudi.train.plan import RunPlan, prepare_run
from mudi.train.setup import (make_objective, place_frozen_parts, restored_pipeline_settings, setup_caches,
                              setup_checkpointer, setup_data, setup_logger, setup_lora, setup_model,
                              setup_output_folder, setup_runtime, setup_text_encoder_lora, setup_validator)
from mudi.train.step import StepResult, TrainStep



@dataclass
class TrainResult:
    """What :func:`train` made: the output folder, its ``summary.json`` content and the main files."""

    out: Path
    summary: dict[str, Any]
    lora: Path | None = None  # OUT/pytorch_lora_weights.safetensors (None until the run finished)
    kohya: Path | None = None
    config: Path | None = None

    @property
    def finished(self) -> bool:
        return bool(self.summary.get("finished"))


@dataclass
class RunCounters:
    """Counters reported in summary.json."""

    start_step: int = 0
    step: int = 0
    text_encoder_calls_setup: int = 0
    text_encoder_calls_training: int = 0
    captions_cached: int = 0
    latents_cached: int = 0
    vae_encodes_training: int = 0
    encodes_after_cache: int = 0
    step_times: list[float] = field(default_factory=list)
    dco_rows: list[tuple[float, float, float]] = field(default_factory=list)  # (DCO loss, LoRA MSE, base MSE)


class LoRATrainer:
    """One training run: ``setup()``, ``train()``, ``save()``, ``cleanup()`` (see the module docstring)."""

    def __init__(self, plan: RunPlan, *, pipeline=None, on_step: Callable[[int, dict], None] | None = None,
                 stop_after: int = 0):
        self.plan, self.cfg, self.options = plan, plan.config, plan.options
        self.out = plan.out
        self.given_pipeline, self.on_step = pipeline, on_step
        self.end_step = min(self.cfg.max_train_steps, stop_after) if stop_after else self.cfg.max_train_steps
        self.counters = RunCounters()
        self.t_start = time.time()
        self._scope = contextlib.ExitStack()

    # ================================================================== 1. setup
    def setup(self) -> None:
        """Build every component, in this order (the order fixes the random streams)."""
        self._scope.enter_context(restored_pipeline_settings(self.given_pipeline))
        self.accelerator, self.precision = setup_runtime(self.cfg, self.options)  # 1.1 device, precision
        self.pipe, self.family, cfg = setup_model(self.plan, self.cfg, self.precision, self.given_pipeline)  # 1.2
        self.cfg = setup_output_folder(cfg, self.options, self.accelerator, self.precision)  # 1.3 resolved config
        self.objective = make_objective(self.pipe, self.family, self.cfg)  # noising, target, denoiser call
        self.offload_hooks = place_frozen_parts(self.pipe, self.accelerator.device, self.precision.dtype,
                                                self.cfg.offload_vae)
        self.tf32 = self._scope.enter_context(tf32_enabled(self.cfg.tf32, self.accelerator.device))  # until cleanup
        self.checkpointing = decide_gradient_checkpointing(self.cfg.gradient_checkpointing, self.accelerator.device)
        if self.accelerator.is_main_process:
            print(f"mudi train: {self.checkpointing[1]}", file=sys.stderr)
        self._scope.enter_context(training_rngs(self.cfg.seed))  # 1.4 LoRA init under the run's seed
        self.params = setup_lora(self.family.denoiser(self.pipe), self.cfg, self.checkpointing[0])
        self.text_encoders, text_params = setup_text_encoder_lora(self.pipe, self.family, self.cfg,
                                                                  self.checkpointing[0])
        self.optimizer = make_optimizer(self.params, self.cfg, text_params)
        self.optimizer_name = optimizer_name(self.optimizer)
        self.text, self.latents, self.plain_examples = setup_caches(self)  # 1.5 captions and plain latents
        # 1.6 DDP, placement; self.unet is the denoiser (a UNet or a transformer)
        self.unet, self.optimizer = self.accelerator.prepare(self.family.denoiser(self.pipe), self.optimizer)
        self.batches, self.schedule, use_prior = setup_data(self)  # 1.7 examples
        self.step_fn = TrainStep(unet=self.unet, optimizer=self.optimizer, params=self.params, batches=self.batches,
                                 objective=self.objective, text_cache=self.text,
                                 precision=self.precision, accelerator=self.accelerator, cfg=self.cfg,
                                 use_prior=use_prior, dco=self.cfg.reg == "dco",
                                 text_encoders=[AdapterSwitch(e) for e in self.text_encoders.values()],
                                 text_params=text_params)
        self.checkpointer = setup_checkpointer(self)  # 1.8 resume
        self.counters.start_step = self.checkpointer.restore_latest() if self.options.resume else 0
        self.logger = setup_logger(self)
        self.validator = setup_validator(self)

    # ================================================================== 2. train loop
    def train(self) -> None:
        """Optimizer steps from the resumed step to the end (or ``stop_after``)."""
        from tqdm.auto import tqdm

        start, main = self.counters.start_step, self.accelerator.is_main_process
        bar = tqdm(total=self.cfg.max_train_steps, initial=start, desc="mudi train", unit="step",
                   disable=not (self.options.progress and main), dynamic_ncols=True)
        if main and start == 0 and self.cfg.validate_every > 0:
            self.validate(0)
        self.step_fn.prefetch(start, self.end_step)  # micro-batches built in a background thread, in order
        try:
            for step in range(start, self.end_step):
                t0, c0 = time.perf_counter(), time.process_time()
                result = self.step_fn.run(step)  # 2.1 forward, backward, clip, optimizer step
                done = step + 1
                row = self.log_row(done, result, time.perf_counter() - t0, time.process_time() - c0)
                self.logger.log(done, row)  # 2.2 log
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                bar.update(1)
                if self.on_step is not None and self.on_step(done, row) is True:
                    self.end_step = done  # a stop asked by the caller: checkpoint here, then leave
                self.maybe_checkpoint(done)  # 2.3 checkpoint
                self.maybe_validate(done)  # 2.4 validation grid
                self.accelerator.wait_for_everyone()
                if done >= self.end_step:
                    break
        finally:
            self.step_fn.close()
            bar.close()
            self.logger.close_log()
        self.counters.vae_encodes_training = self.latents.encodes - self.counters.encodes_after_cache
        self.text.close()

    def log_row(self, done: int, result: StepResult, dt: float, cpu: float) -> dict:
        """The train_log.jsonl row of optimizer step ``done``."""
        c = self.counters
        c.step_times.append(dt)
        c.step = done
        c.text_encoder_calls_training += result.text_encoder_calls
        row = {"step": done, "loss": result.loss, "loss_instance": result.loss_instance, "lr": result.lr,
               "grad_norm": result.grad_norm, "time": round(time.time() - self.t_start, 4),
               "step_time": round(dt, 4), "step_cpu_time": round(cpu, 4), "data_time": round(result.data_time, 4),
               "kinds": result.kinds, "text_encoder_calls": c.text_encoder_calls_training}
        if self.step_fn.use_prior:
            row["loss_prior"] = result.loss_prior
        if result.loss_reference is not None:  # DCO: loss is the DCO loss, loss_instance the LoRA's MSE
            row["loss_reference"] = result.loss_reference
            c.dco_rows.append((result.loss, result.loss_instance, result.loss_reference))
        return row

    def maybe_checkpoint(self, done: int) -> None:
        """Checkpoint every ``checkpoint_every`` steps and at the last step of this invocation."""
        every = self.cfg.checkpoint_every
        if self.accelerator.is_main_process and (done == self.end_step or (every and done % every == 0)):
            examples = done * self.accelerator.num_processes * self.cfg.gradient_accumulation_steps
            self.checkpointer.save(done, self.schedule.state(examples * self.cfg.train_batch_size))

    def maybe_validate(self, done: int) -> None:
        """A validation grid (and the loss curve) every ``validate_every`` steps before the end."""
        every = self.cfg.validate_every
        if every > 0 and done % every == 0 and done != self.cfg.max_train_steps:
            self.validate(done)
            self.logger.plot()

    def validate(self, step: int) -> None:
        """Write the validation grid of ``step`` (main process; cached prompt embeddings)."""
        if not self.accelerator.is_main_process:
            return
        calls_before = self.text.calls
        self.validator.run(step, self.accelerator.unwrap_model(self.unet))
        self.counters.text_encoder_calls_training += self.text.calls - calls_before

    # ================================================================== 3. save
    def save(self) -> TrainResult:
        """Export the LoRA of a finished run, the last grid, the loss curve and summary.json."""
        c = self.counters
        finished = c.step == self.cfg.max_train_steps or c.start_step >= self.cfg.max_train_steps
        paths: dict[str, Path] = {}
        summary: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            if finished:
                paths = export_lora(self.accelerator.unwrap_model(self.unet), self.pipe, self.family, self.cfg, self.out,
                                    self.text_encoders)
                if self.cfg.validate_every >= 0:
                    self.validate(self.cfg.max_train_steps)
            self.logger.plot()
            summary = write_summary(self, finished)
        self.logger.close()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return TrainResult(self.out, summary, paths.get("lora"), paths.get("kohya"), self.out / CONFIG_NAME)

    # ================================================================== 4. cleanup
    def cleanup(self) -> None:
        """Remove hooks, restore the caller's random state and pipeline settings (also after an error)."""
        for part in ("step_fn", "text"):
            if getattr(self, part, None) is not None:
                getattr(self, part).close()
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        for hook in getattr(self, "offload_hooks", []):
            hook.remove()
        self._scope.close()
        gc.collect()


def train(config: TrainConfig, options: RunOptions | None = None, *, pipeline=None,
          on_step: Callable[[int, dict], None] | None = None, stop_after: int = 0) -> TrainResult:
    """Train a multi-subject LoRA (see the module docstring for the output folder).

    Args:
        config: the run (see :class:`~mudi.train.config.TrainConfig`).
        options: how to run it (resume, overwrite, device, progress); never saved.
        pipeline: optional already-loaded SD/SDXL pipeline to train (its UNet receives the
            LoRA adapter); by default the base model is loaded from ``config.base``.
        on_step: called after every optimizer step with (step, log row); returning True stops the
            run after that step as ``stop_after`` would (checkpoint written, resumable).
        stop_after: stop (as if killed) after this optimizer step; 0 = run to the end.

    Returns:
        :class:`TrainResult` (output folder, summary, file paths).

    Raises:
        MudiError: a user mistake, reported before anything is written to the output folder.
    """
    plan = prepare_run(config, options)
    trainer = LoRATrainer(plan, pipeline=pipeline, on_step=on_step, stop_after=stop_after)
    try:
        trainer.setup()
        trainer.train()
        return trainer.save()
    finally:
        trainer.cleanup()


__all__ = ["LoRATrainer", "SUMMARY_NAME", "TrainResult", "train"]
