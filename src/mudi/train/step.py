"""One optimizer step of DreamBooth-LoRA: micro-batches, loss, backward, clipping, update.

The loss is the denoising MSE of instance examples (mask-weighted with ``loss_alpha < 1``) plus
``prior_weight`` × that of the class examples (prior preservation). Gradients of the
micro-batches of one step are accumulated; under DDP only the last one synchronizes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from mudi.train.config import TrainConfig
from mudi.train.optim import set_learning_rate


@dataclass
class StepResult:
    """What one optimizer step reports (averaged over micro-batches, and processes under DDP)."""

    loss: float
    loss_instance: float
    loss_prior: float
    lr: float
    grad_norm: float | None
    kinds: list[str]
    data_time: float
    text_encoder_calls: int


class TrainStep:
    """Runs optimizer step ``step``: its micro-batches are numbered globally over processes, so
    every process (and a resumed run) draws exactly its own examples."""

    def __init__(self, *, unet, optimizer, params, batches, family, noise_scheduler, text_cache, precision,
                 accelerator, cfg: TrainConfig, use_prior: bool):
        self.unet, self.optimizer, self.params, self.batches = unet, optimizer, params, batches
        self.family, self.noise_scheduler, self.text = family, noise_scheduler, text_cache
        self.precision, self.accelerator, self.cfg, self.use_prior = precision, accelerator, cfg, use_prior
        self.device = accelerator.device

    def micro_batches(self, step: int) -> list[int]:
        """The global numbers of the micro-batches of optimizer step ``step`` on this process."""
        accum, acc = self.cfg.gradient_accumulation_steps, self.accelerator
        return [(step * acc.num_processes + acc.process_index) * accum + j for j in range(accum)]

    def prefetch(self, start: int, end: int, depth: int = 2) -> None:
        """Build the micro-batches of steps ``start`` to ``end - 1`` in a background thread
        (:class:`~mudi.train.data.BatchPrefetcher`); :meth:`close` stops it."""
        from mudi.train.data import BatchPrefetcher

        self.close()
        order = (g for step in range(start, end) for g in self.micro_batches(step))
        self._prefetcher = BatchPrefetcher(self.batches.build, order, depth)

    def close(self) -> None:
        """Stop the background batch builder, if any."""
        prefetcher, self._prefetcher = getattr(self, "_prefetcher", None), None
        if prefetcher is not None:
            prefetcher.close()

    def _batch(self, g: int):
        prefetcher = getattr(self, "_prefetcher", None)
        return prefetcher.get(g) if prefetcher is not None else self.batches.build(g)

    def run(self, step: int) -> StepResult:
        """Learning rate, accumulated micro-batches, clipping, optimizer update.

        The losses stay on the device until the step is over: one transfer per optimizer step,
        not a synchronization per micro-batch.
        """
        cfg, acc = self.cfg, self.accelerator
        lr = set_learning_rate(self.optimizer, step, cfg)
        numbers = self.micro_batches(step)
        losses: list[torch.Tensor] = []
        kinds: list[str] = []
        self._data_time, self._calls = 0.0, 0
        for j, g in enumerate(numbers):
            a, b, k = self.micro_step(g, sync=j == len(numbers) - 1)
            losses += [a, b]
            kinds += k
        grad_norm = self.precision.clip(self.optimizer, self.params, cfg.max_grad_norm)
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        values = torch.stack([v.float() for v in losses] + [torch.as_tensor(grad_norm, device=self.device).float()])
        *pairs, norm = values.tolist()  # the one device-to-host transfer of the step
        li = lp = 0.0
        for a, b in zip(pairs[0::2], pairs[1::2]):  # summed as before: the logged values are unchanged
            li += a / len(numbers)
            lp += b / len(numbers)
        if acc.num_processes > 1:  # log the mean over processes
            li, lp = (float(v) for v in acc.reduce(torch.tensor([li, lp], device=self.device), "mean"))
        loss = li + (cfg.prior_weight * lp if self.use_prior else 0.0)
        return StepResult(loss, li, lp, lr, norm, kinds, self._data_time, self._calls)

    def micro_step(self, g: int, sync: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Forward and backward of micro-batch ``g``; returns (instance loss, prior loss, kinds),
        the losses as detached tensors on the device."""
        t_data = time.perf_counter()
        batch = self._batch(g)
        self._data_time += time.perf_counter() - t_data
        x0 = torch.cat(batch.latents).to(self.device)
        eps = torch.cat(batch.noise).to(self.device)
        t = torch.cat(batch.timesteps).to(self.device)
        noisy = self.noise_scheduler.add_noise(x0, eps, t)
        target = self.family.training_target(self.noise_scheduler, x0, eps, t)
        calls_before = self.text.calls
        embeds = self.text.get(batch.captions)
        self._calls += self.text.calls - calls_before
        no_sync = not sync and self.accelerator.num_processes > 1
        with self.accelerator.no_sync(self.unet) if no_sync else contextlib.nullcontext():
            with self.precision.autocast():
                pred = self.family.denoise(self.unet, noisy.to(self.precision.dtype), t, embeds, self.cfg.resolution)
            loss_inst, loss_prior = self.losses(pred, target, batch)
            loss = loss_inst + self.cfg.prior_weight * loss_prior if self.use_prior else loss_inst
            self.precision.backward(loss / self.cfg.gradient_accumulation_steps)
        return loss_inst.detach(), loss_prior.detach(), batch.kinds

    def losses(self, pred: torch.Tensor, target: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance loss (mask-weighted when the batch has weights) and prior loss (0 without prior)."""
        err = (pred.float() - target.float()) ** 2
        inst = torch.tensor([r == "instance" for r in batch.roles], device=self.device)
        if batch.weights:
            loss_inst = (err[inst] * torch.cat(batch.weights).to(self.device)).mean()
        else:
            loss_inst = err[inst].mean()
        loss_prior = err[~inst].mean() if self.use_prior else torch.zeros((), device=self.device)
        return loss_inst, loss_prior


__all__ = ["StepResult", "TrainStep"]
