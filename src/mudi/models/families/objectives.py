"""Training objectives: how a clean latent becomes the denoiser's input and what it must predict.

The trainer holds one objective per run (``family.training_objective(pipe, resolution, flow)``)
and asks it, per example and per micro-batch, for:

- :meth:`draw_timestep` — the example's timestep from the example's own generator (so a resumed
  run draws the same ones),
- :meth:`noisy_input` / :meth:`target` — the noised latents and the regression target,
- :meth:`loss_weight` — a per-example loss weight (``None``: all ones),
- :meth:`denoise` — the denoiser's prediction, as (B, C, h, w) latents like the target.

:class:`DDPMObjective` is the UNet families' (epsilon / v-prediction on the DDPM schedule).
:class:`FlowObjective` is rectified-flow training as diffusers' FLUX / SD3 DreamBooth scripts do it:
``x_σ = (1 − σ)·x0 + σ·ε``, target the velocity ``ε − x0``, σ drawn with a density
(:data:`WEIGHTING_SCHEMES`: uniform, logit-normal, mode) and optional loss weighting
(``sigma_sqrt``, ``cosmap``), then shifted as the model's sampler shifts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

#: σ densities / loss weightings of diffusers' ``compute_density_for_timestep_sampling`` and
#: ``compute_loss_weighting_for_sd3`` ("auto" = the family's own default).
WEIGHTING_SCHEMES = ("auto", "none", "logit_normal", "mode", "cosmap", "sigma_sqrt")
#: How training σ are shifted: "auto" = as the model's sampler does (its fixed ``shift``, or the
#: resolution-dependent shift of a ``use_dynamic_shifting`` scheduler); "none" = unshifted.
TIMESTEP_SHIFTS = ("auto", "none")


@dataclass(frozen=True)
class FlowSettings:
    """The flow-matching options of a training run (ignored by the UNet families)."""

    weighting_scheme: str = "auto"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    guidance: float = 3.5  # the guidance-embedding value of guidance-distilled models (FLUX.1 [dev])
    timestep_shift: str = "auto"


class DDPMObjective:
    """Epsilon / v-prediction on the base model's DDPM noise schedule (the UNet families)."""

    def __init__(self, family, scheduler, resolution: int):
        self.family, self.scheduler, self.resolution = family, scheduler, resolution
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = str(scheduler.config.prediction_type)

    def draw_timestep(self, gen: torch.Generator) -> torch.Tensor:
        """A uniform integer timestep in [0, T)."""
        return torch.randint(0, self.num_train_timesteps, (1,), generator=gen)

    def noisy_input(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε``."""
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise (epsilon) or the velocity (v-prediction)."""
        return self.family.training_target(self.scheduler, x0, noise, t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """No weighting."""
        return None

    def denoise(self, denoiser, noisy: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
        """The UNet's prediction."""
        return self.family.denoise(denoiser, noisy, t, embeds, self.resolution)

    def describe(self) -> dict[str, Any]:
        """What summary.json records about the objective."""
        return {"prediction_type": self.prediction_type}


def sample_u(scheme: str, gen: torch.Generator, settings: FlowSettings) -> float:
    """One draw u ∈ [0, 1) of the σ density ``scheme`` (diffusers' ``compute_density_for_timestep_sampling``
    for one example, drawn from ``gen``): logit-normal = sigmoid(N(mean, std)); mode = the SD3
    paper's mode density with ``mode_scale``; anything else uniform."""
    if scheme == "logit_normal":
        n = torch.randn((1,), generator=gen) * settings.logit_std + settings.logit_mean
        return float(torch.sigmoid(n))
    u = float(torch.rand((1,), generator=gen))
    if scheme == "mode":
        return 1.0 - u - settings.mode_scale * (math.cos(math.pi * u / 2) ** 2 - 1.0 + u)
    return u


def flow_loss_weight(scheme: str, sigma: torch.Tensor) -> torch.Tensor | None:
    """diffusers' ``compute_loss_weighting_for_sd3``: σ⁻² (sigma_sqrt), the cosmap weight, else none."""
    if scheme == "sigma_sqrt":
        return (sigma**-2.0).float()
    if scheme == "cosmap":
        return (2.0 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))).float()
    return None


class FlowObjective:
    """Rectified-flow (velocity) training of a DiT family (see the module docstring).

    ``scheduler`` is a fresh copy of the model's ``FlowMatchEulerDiscreteScheduler``; its training
    σ table (``scheduler.sigmas``, already shifted when the scheduler has a fixed shift) is indexed
    with ``u·T`` as diffusers' scripts do. With ``use_dynamic_shifting`` (FLUX.1) the σ are then
    shifted for the training resolution with the sampler's own ``mu`` (``timestep_shift = auto``).
    """

    prediction_type = "flow_matching"

    def __init__(self, family, scheduler, resolution: int, settings: FlowSettings, *, image_seq_len: int,
                 guidance: bool):
        self.family, self.scheduler, self.resolution, self.settings = family, scheduler, resolution, settings
        scheme = settings.weighting_scheme
        self.scheme = family.default_weighting_scheme if scheme == "auto" else scheme
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.sigma_table = scheduler.sigmas[: self.num_train_timesteps]
        cfg = scheduler.config
        self.mu = None
        if settings.timestep_shift == "auto" and cfg.get("use_dynamic_shifting", False):
            self.mu = dynamic_shift_mu(cfg, image_seq_len)
        self.guidance = settings.guidance if guidance else None

    def draw_timestep(self, gen: torch.Generator) -> torch.Tensor:
        """σ of one example (float32, shape (1,)): ``σ_table[int(u·T)]``, then the resolution shift."""
        u = sample_u(self.scheme, gen, self.settings)
        index = min(int(u * self.num_train_timesteps), self.num_train_timesteps - 1)
        sigma = self.sigma_table[index]
        if self.mu is not None:
            sigma = self.scheduler.time_shift(self.mu, 1.0, float(sigma))  # the sampler's own shift function
        return torch.tensor([float(sigma)], dtype=torch.float32)

    @staticmethod
    def _sigma(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def noisy_input(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(1 − σ)·x0 + σ·ε``."""
        s = self._sigma(t, x0)
        return (1.0 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ``ε − x0``."""
        return noise - x0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-example weights (B, 1, 1, 1) of the weighting scheme (None when uniform)."""
        w = flow_loss_weight(self.scheme, t.float())
        return None if w is None else w.view(-1, 1, 1, 1)

    def denoise(self, denoiser, noisy: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
        """The transformer's velocity prediction as (B, C, h, w) latents."""
        return self.family.denoise(denoiser, noisy, t, embeds, self.resolution, guidance=self.guidance)

    def describe(self) -> dict[str, Any]:
        """What summary.json records about the objective."""
        return {"prediction_type": self.prediction_type, "weighting_scheme": self.scheme,
                "timestep_shift_mu": self.mu, "guidance": self.guidance}


def dynamic_shift_mu(config, image_seq_len: int) -> float:
    """The sampler's resolution-dependent shift ``mu`` for an image of ``image_seq_len`` tokens:
    diffusers' ``calculate_shift`` with the scheduler config's bounds, as FLUX's pipeline calls it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.15)))


__all__ = ["DDPMObjective", "FlowObjective", "FlowSettings", "TIMESTEP_SHIFTS", "WEIGHTING_SCHEMES",
           "dynamic_shift_mu", "flow_loss_weight", "sample_u"]
