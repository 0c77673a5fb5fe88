"""Where sampling starts: the first step of the schedule a pipeline will run, and how a latent is
noised to enter it there (the mean-shifted initialization, :mod:`mudi.generate.init`).

- :class:`DiffusionStart` (the UNet families): the pipeline's own schedule (``set_timesteps`` on a
  copy of its scheduler, as the pipeline calls it); ``x = scheduler.add_noise(sample, ε, t_first)``,
  handed over divided by ``init_noise_sigma`` (the SD/SDXL pipelines multiply given latents by it).
- :class:`FlowStart` (flow-matching families): the sampler is entered at ``σ_start`` instead of
  σ = 1 (where a flow sampler's input holds no signal at all); ``x = (1 − σ_start)·sample +
  σ_start·ε``, and the pipeline gets the ``sigmas`` whose shifted schedule starts exactly there:
  ``u·linspace(1, 1/N, N)`` with ``u`` the unshifted value of ``σ_start`` (the pipeline's own
  default is ``u = 1``), so all N steps run from ``σ_start`` down. A scheduler that stretches its
  schedule to a terminal σ (``shift_terminal``) gets its ``u`` by bisection.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def schedule_start(scheduler, num_inference_steps: int, device: torch.device | str | None = None):
    """A copy of ``scheduler`` set up exactly as the pipeline sets it up, its first timestep and
    its ``init_noise_sigma``.

    The SD/SDXL pipelines call ``scheduler.set_timesteps(num_inference_steps, device=device)``
    before ``prepare_latents``; ``init_noise_sigma`` of sigma-space schedulers depends on it.
    """
    sch = copy.deepcopy(scheduler)
    params = inspect.signature(sch.set_timesteps).parameters
    if "device" in params:
        sch.set_timesteps(num_inference_steps, device=device)
    else:  # pragma: no cover - every diffusers scheduler we use accepts device
        sch.set_timesteps(num_inference_steps)
    t_first = sch.timesteps[0]
    sigma = sch.init_noise_sigma
    sigma = float(sigma.item() if torch.is_tensor(sigma) else sigma)
    return sch, t_first, sigma


def add_noise_at(scheduler_copy, sample: torch.Tensor, noise: torch.Tensor, t_first) -> torch.Tensor:
    """``scheduler.add_noise(sample, noise, t_first)`` on a scheduler copy after set_timesteps."""
    t = t_first if torch.is_tensor(t_first) else torch.tensor(t_first)
    t = t.reshape(1).to(sample.device).repeat(sample.shape[0])
    return scheduler_copy.add_noise(sample, noise, t)


@dataclass
class DiffusionStart:
    """The first step of a DDPM-family schedule (see the module docstring)."""

    scheduler: Any
    timestep: Any
    init_noise_sigma: float
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    sigma: float | None = None

    def noised(self, sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``add_noise(sample, ε, t_first)``."""
        return add_noise_at(self.scheduler, sample, noise, self.timestep)


@dataclass
class FlowStart:
    """The first step of a flow-matching schedule entered at σ_start (see the module docstring)."""

    scheduler: Any
    timestep: Any
    sigma: float
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    init_noise_sigma: float = 1.0

    def noised(self, sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``(1 − σ)·sample + σ·ε`` at the schedule's first σ."""
        return (1.0 - self.sigma) * sample + self.sigma * noise


def unshifted_sigma(config, sigma: float, mu: float | None) -> float:
    """The σ a ``FlowMatchEulerDiscreteScheduler`` with ``config`` shifts to ``sigma``: the inverse
    of its dynamic (exponential or linear, with ``mu``) or fixed (``shift``) time shift."""
    ratio = 1.0 / sigma - 1.0
    if mu is not None:
        scale = mu if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)
        return 1.0 / (1.0 + scale * ratio)
    shift = float(config.get("shift", 1.0))
    return sigma / (shift - (shift - 1.0) * sigma)


def flow_start(scheduler, num_inference_steps: int, sigma_start: float, mu: float | None,
               device: torch.device | str | None = None) -> FlowStart:
    """The :class:`FlowStart` of ``num_inference_steps`` steps from ``sigma_start``: the ``sigmas``
    the pipeline gets and the first σ / timestep of the schedule they make, read from a copy of
    ``scheduler`` set up with the same ``set_timesteps`` call the pipeline makes."""
    base = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    extra = {"mu": mu} if mu is not None else {}

    def first_sigma(u: float):
        sch = copy.deepcopy(scheduler)
        sch.set_timesteps(sigmas=u * base, device=device, **extra)
        return sch, float(sch.sigmas[0])

    u = unshifted_sigma(scheduler.config, sigma_start, mu)
    if scheduler.config.get("shift_terminal") and sigma_start < 1.0:
        u = _terminal_stretched_u(first_sigma, sigma_start)
    sigmas = u * base
    sch, first = first_sigma(u)
    return FlowStart(sch, sch.timesteps[0], first, {"sigmas": sigmas})


def _terminal_stretched_u(first_sigma, sigma_start: float, iterations: int = 60) -> float:
    """The ``u`` whose schedule starts at ``sigma_start`` on a scheduler with ``shift_terminal``
    (Qwen-Image's): the stretch to the terminal σ depends on the schedule's last σ, so the first σ
    is found by bisection on ``u`` (it grows with ``u``; ``u = 1`` gives σ = 1)."""
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if first_sigma(mid)[1] < sigma_start else (lo, mid)
    return hi


__all__ = ["DiffusionStart", "FlowStart", "add_noise_at", "flow_start", "schedule_start", "unshifted_sigma"]
