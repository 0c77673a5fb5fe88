"""One optimizer step of DreamBooth-LoRA: micro-batches, loss, backward, clipping, update.

The loss is the denoising MSE of instance examples plus ``prior_weight`` × that of the class
examples (prior preservation), composites mask-weighted with ``loss_alpha < 1`` (``--loss-mask``); with DCO
(:mod:`mudi.train.dco`) it is the DCO loss of the instance loss against the base model's. Gradients of the
micro-batches of one step are accumulated; under DDP only the last one synchronizes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from mudi.train.config import TrainConfig
from mudi.train.dco import base_prediction, dco_loss
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
    loss_reference: float | None = None  # DCO: the base model's (LoRA off) instance loss


class TrainStep:
    """Runs optimizer step ``step``: its micro-batches are numbered globally over processes, so
    every process (and a resumed run) draws exactly its own examples."""

    def __init__(self, *, unet, optimizer, params, batches, objective, text_cache, precision,
                 accelerator, cfg: TrainConfig, use_prior: bool, dco: bool = False, text_encoders=(),
                 text_params=()):
        self.unet, self.optimizer, self.params, self.batches = unet, optimizer, params, batches  # unet: the denoiser
        self.objective, self.text = objective, text_cache  # the family's noising rule, target and denoiser call
        self.precision, self.accelerator, self.cfg, self.use_prior = precision, accelerator, cfg, use_prior
        self.dco = dco  # DCO regularization (mudi.train.dco): the loss compares with the base model
        self.text_encoders = list(text_encoders)  # --train-text-encoder: encoders with a LoRA (live captions)
        self.text_params = list(text_params)  # their LoRA parameters (gradients averaged over processes)
        self.device = accelerator.device
        self._data_time, self._calls = 0.0, 0  # per optimizer step, reset by run()

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
        terms: list[list[torch.Tensor]] = []
        kinds: list[str] = []
        self._data_time, self._calls = 0.0, 0
        for j, g in enumerate(numbers):
            values, k = self.micro_step(g, sync=j == len(numbers) - 1)
            terms.append(values)
            kinds += k
        if self.text_params and acc.num_processes > 1:  # the text encoders are not DDP-wrapped: average here
            for p in self.text_params:
                if p.grad is not None:
                    p.grad = acc.reduce(p.grad, "mean")
        grad_norm = self.precision.clip(self.optimizer, self.params, cfg.max_grad_norm)
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        flat = [v.float() for values in terms for v in values]
        *flat, norm = torch.stack(flat + [torch.as_tensor(grad_norm, device=self.device).float()]).tolist()
        width = len(terms[0])  # the one device-to-host transfer of the step is above
        means = [0.0] * width
        for i in range(0, len(flat), width):  # summed micro-batch by micro-batch: the logged values are unchanged
            for n in range(width):
                means[n] += flat[i + n] / len(numbers)
        if acc.num_processes > 1:  # log the mean over processes
            means = [float(v) for v in acc.reduce(torch.tensor(means, device=self.device), "mean")]
        li, lp, *dco = means
        if self.dco:
            return StepResult(dco[1], li, lp, lr, norm, kinds, self._data_time, self._calls, loss_reference=dco[0])
        loss = li + (cfg.prior_weight * lp if self.use_prior else 0.0)
        return StepResult(loss, li, lp, lr, norm, kinds, self._data_time, self._calls)

    def micro_step(self, g: int, sync: bool) -> tuple[list[torch.Tensor], list[str]]:
        """Forward and backward of micro-batch ``g``; returns its loss terms as detached tensors on
        the device (instance loss, prior loss, and with DCO the base model's loss and the DCO
        loss) and the kinds of its examples."""
        t_data = time.perf_counter()
        batch = self._batch(g)
        self._data_time += time.perf_counter() - t_data
        x0 = torch.cat(batch.latents).to(self.device)
        eps = torch.cat(batch.noise).to(self.device)
        t = torch.cat(batch.timesteps).to(self.device)
        noisy = self.objective.noisy_input(x0, eps, t)
        target = self.objective.target(x0, eps, t)
        weight = self.objective.loss_weight(t)
        calls_before = self.text.calls

        def denoise(unet, live: bool = False):  # live: the captions through the current text encoders
            with self.precision.autocast():
                emb = self.text.get(batch.captions) if live else embeds
                return self.objective.denoise(unet, noisy.to(self.precision.dtype), t, emb)

        no_sync = not sync and self.accelerator.num_processes > 1
        with self.accelerator.no_sync(self.unet) if no_sync else contextlib.nullcontext():
            with self.precision.autocast() if self.text.live else contextlib.nullcontext():
                embeds = self.text.get(batch.captions)  # live (--train-text-encoder): with gradients
            base = None
            if self.dco:
                base = base_prediction(lambda u: denoise(u, live=self.text.live),
                                       self.accelerator.unwrap_model(self.unet), self.text_encoders)
            self._calls += self.text.calls - calls_before
            pred = denoise(self.unet)
            loss_inst, loss_prior = self.losses(pred, target, batch, weight)
            terms = [loss_inst, loss_prior]
            if self.dco:
                loss_base = self.instance_loss(base, target, batch, weight)
                loss = dco_loss(loss_inst, loss_base, self.cfg.dco_beta)
                terms += [loss_base, loss]
            else:
                loss = loss_inst + self.cfg.prior_weight * loss_prior if self.use_prior else loss_inst
            self.precision.backward(loss / self.cfg.gradient_accumulation_steps)
        return [v.detach() for v in terms], batch.kinds

    @staticmethod
    def squared_error(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``(pred − target)²`` per element, times the objective's per-example weight when it has one."""
        err = (pred.float() - target.float()) ** 2
        return err if weight is None else err * weight.to(err.device)

    def _rows_loss(self, pred: torch.Tensor, target: torch.Tensor, batch, role: str,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising MSE of the rows of ``role``, mask-weighted when the batch has weights (every
        row has one then; ``--loss-mask`` decided which are all ones): ``mean(w * err)`` as the reference."""
        err = self.squared_error(pred, target, weight)
        rows = torch.tensor([r == role for r in batch.roles], device=self.device)
        if batch.weights:
            return (err[rows] * torch.cat(batch.weights).to(self.device)[rows]).mean()
        return err[rows].mean()

    def instance_loss(self, pred: torch.Tensor, target: torch.Tensor, batch,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising MSE of the instance rows (mask-weighted when the batch has weights)."""
        return self._rows_loss(pred, target, batch, "instance", weight)

    def losses(self, pred: torch.Tensor, target: torch.Tensor, batch,
               weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance loss and prior (class) loss (0 without prior), each mask-weighted when the batch has weights."""
        loss_inst = self.instance_loss(pred, target, batch, weight)
        if not self.use_prior:
            return loss_inst, torch.zeros((), device=self.device)
        return loss_inst, self._rows_loss(pred, target, batch, "class", weight)


__all__ = ["StepResult", "TrainStep"]
