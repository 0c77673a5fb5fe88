"""Memory-lean decoding of a batch of latents: one image at a time through the VAE on a GPU.

A batched pipeline call decodes its whole batch at once, and a force-upcast VAE (SDXL) does so
in float32: about 3 GB of activations per 1024² image. :func:`sliced_decode` makes a VAE that
runs on a GPU decode the images one by one, and puts the VAE's setting back afterwards (a
pipeline passed in by a caller is left as it was). On the CPU the batch is still decoded at once:
batched and per-image convolutions round differently there (~1e-5), and CPU results stay bitwise
what they were.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def vae_device_type(vae) -> str:
    """``cpu``, ``cuda``, ``mps``, ``meta``... of a VAE's weights (``cpu`` when it cannot tell)."""
    device = getattr(vae, "device", None)
    return str(getattr(device, "type", device or "cpu"))


@contextlib.contextmanager
def sliced_decode(pipe, *, force: bool = False) -> Iterator[bool]:
    """Inside the block ``pipe.vae`` decodes one image at a time when it is off the CPU (or
    ``force``); yields whether it does. A VAE without diffusers' ``use_slicing`` switch is left
    alone. The previous setting is restored on exit, also after an error."""
    vae = getattr(pipe, "vae", None)
    on = vae is not None and hasattr(vae, "use_slicing") and (force or vae_device_type(vae) != "cpu")
    old = getattr(vae, "use_slicing", None)
    if on:
        vae.use_slicing = True
    try:
        yield on
    finally:
        if on:
            vae.use_slicing = old


__all__ = ["sliced_decode", "vae_device_type"]
