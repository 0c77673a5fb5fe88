"""DCO (Direct Consistency Optimization): the regularization of the reference MuDI trainer.

The LoRA model's denoising error is compared with the base model's on the same noisy latents,
timesteps and captions: with ``d = MSE_lora - MSE_base`` (both mask-weighted like the instance
loss, averaged over the micro-batch), the loss is ``-log sigmoid(-beta * d)``. It rewards the
LoRA for denoising the subject photos better than the base model, but saturates once it does,
so the LoRA stays close to the base model instead of overfitting (beta = 1000 in the reference).

The base model's prediction is the same UNet with its LoRA adapter switched off (peft's
adapter switch), in a no-grad forward pass: no second copy of the UNet in memory. With
``--train-text-encoder`` the text encoders' adapters are switched off too: the base model's
prediction uses the base model's caption embeddings.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def dco_loss(loss_lora: torch.Tensor, loss_base: torch.Tensor, beta: float) -> torch.Tensor:
    """``-log sigmoid(-beta * (loss_lora - loss_base))``; ``loss_base`` carries no gradient."""
    return -F.logsigmoid(-beta * (loss_lora - loss_base.detach()))


@contextlib.contextmanager
def lora_disabled(*models) -> Iterator[None]:
    """The models (UNet, text encoders) answer as their base models inside the block (their LoRA
    adapters switched off); they are switched on again afterwards, trainable as before, also after an error."""
    done = []
    try:
        for m in models:
            m.disable_adapters()
            done.append(m)
        yield
    finally:
        for m in done:
            m.enable_adapters()


def base_prediction(denoise, unet, text_encoders=()) -> torch.Tensor:
    """``denoise(unet)`` with the LoRA switched off (the UNet's and the given text encoders') and
    without gradients (the reference prediction)."""
    with torch.no_grad(), lora_disabled(unet, *text_encoders):
        return denoise(unet)


__all__ = ["base_prediction", "dco_loss", "lora_disabled"]
