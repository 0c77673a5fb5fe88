"""Mean-shifted initialization (METHOD.md §4): start sampling from the segmented subjects.

For a prompt naming k subjects and a :mod:`mudi.generate.layout`:

1. ``canvas`` = white S×S image with one segmented reference photo per subject pasted into its
   layout box (mask pixels only) — :func:`render_canvas`.
2. ``z = s · VAE.encode(canvas).sample()`` (``s`` = ``vae.config.scaling_factor``), normalized
   by the model family (:meth:`~mudi.models.families.ModelFamily.to_latents`: a VAE with a
   ``shift_factor`` or ``latents_mean``/``latents_std`` the way the pipeline's decoder expects).
3. ``M`` = union mask on the latent grid (area-downsampled, then ``>= 0.5``), ``z_m = z ⊙ M``.
4. ``x_T = scheduler.add_noise(γ · z_m, ε, t_first)`` where ``t_first`` is the first timestep of
   the schedule the pipeline will use for ``num_inference_steps`` (computed on a *copy* of the
   pipeline's scheduler with the same ``set_timesteps`` call the pipeline makes).
5. The diffusers SD/SDXL pipelines multiply latents passed as ``latents=`` by
   ``scheduler.init_noise_sigma`` (``prepare_latents``), so we return ``x_T / init_noise_sigma``:
   the denoising loop then starts from exactly ``x_T``.

This holds for every scheduler with ``add_noise`` — sigma-space ones (Euler: ``x + σ·ε``,
``init_noise_sigma`` = σ_max or sqrt(σ_max² + 1)), and alpha-space ones (DDIM, PNDM,
DPM-Solver: ``α_t·x + σ_t·ε``, ``init_noise_sigma`` = 1).

ε is drawn first from ``generator`` with the same call the pipeline uses for its own initial
noise, so for a given seed ``--init none`` and ``--init mudi`` share ε (the VAE sample is drawn
after it).

**Flow-matching families** (FLUX.1, SD3, FLUX.2 [klein], Qwen-Image;
:mod:`mudi.models.families.starts`). Their sampler starts at σ = 1, where its input is pure noise: step 4 would put no signal in. Instead sampling is
entered at ``σ_start`` (:data:`DEFAULT_SIGMA_START`, ``--init-sigma``):
``x = (1 − σ_start)·γ·z_m + σ_start·ε`` on the model's own interpolation path, and the pipeline
gets ``sigmas = u·linspace(1, 1/N, N)`` where ``u`` is the σ its scheduler shifts to ``σ_start``
(the pipelines' own default is ``u = 1``), so its N steps run from ``σ_start`` down and its first
step sees exactly ``x`` (packed for FLUX.1) at σ_start. ``--init none`` stays their default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mudi.compose.cutout import crop_photo, paste_crop, white_canvas
from mudi.errors import MudiError
from mudi.generate.layout import LayoutBox
from mudi.geometry import fit_box
from mudi.models.families import ModelFamily, family_of
from mudi.models.families.starts import add_noise_at, schedule_start
from mudi.subjects import SegmentedPhoto

#: METHOD.md §4 default γ.
DEFAULT_GAMMA = 3.0
#: Flow-matching families: the σ sampling starts at with ``--init mudi``. 0.93 has the signal-to-noise
#: ratio ((1 − σ)/σ = 0.0762) of SDXL's first timestep at 50 steps (981: √(ᾱ/(1 − ᾱ)) = 0.0762),
#: so γ means what it means for SDXL (``benchmarks/flow_init_sigma.py`` prints the figures).
DEFAULT_SIGMA_START = 0.93


@dataclass
class InitLatents:
    """Result of :func:`mean_shifted_latents`.

    Attributes:
        latents: (1, C, H/f, W/f) tensor to pass as ``pipe(..., latents=latents)``
            (already divided by ``init_noise_sigma``), on the pipeline's device, UNet dtype.
        x_T: the noised latent ``add_noise(γ·z_m, ε, t_first)`` (float32) the loop starts from.
        canvas: the white init canvas (PIL RGB, width × height).
        mask: union subject mask on the canvas (bool, height × width).
        latent_mask: ``M`` on the latent grid (float32 0/1, shape (h, w)).
        noise: ε (float32), timestep: t_first, init_noise_sigma: the pipeline's multiplier.
        layout: the placements actually drawn (boxes fitted to the photos).
    """

    latents: torch.Tensor
    x_T: torch.Tensor
    canvas: Image.Image
    mask: np.ndarray
    latent_mask: torch.Tensor
    noise: torch.Tensor
    z: torch.Tensor
    timestep: Any
    init_noise_sigma: float
    layout: list[LayoutBox]
    sigma: float | None = None  # flow matching: the σ sampling starts at
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)  # flow matching: the ``sigmas`` of the schedule


# ------------------------------------------------------------------------------ canvas

def _one_photo(value: SegmentedPhoto | Sequence[SegmentedPhoto], key: str) -> SegmentedPhoto:
    if isinstance(value, SegmentedPhoto):
        return value
    if isinstance(value, Sequence) and value and isinstance(value[0], SegmentedPhoto):
        return value[0]
    raise MudiError(f"subject {key!r}: expected a SegmentedPhoto (or a non-empty list of them) for the init canvas.")


def render_canvas(
    photos: Mapping[str, SegmentedPhoto | Sequence[SegmentedPhoto]],
    layout: Sequence[LayoutBox | tuple[str, Sequence[int]]],
    width: int,
    height: int | None = None,
) -> tuple[Image.Image, np.ndarray, list[LayoutBox]]:
    """Paste each subject's segmented photo into its layout box on a white canvas.

    The photo is cropped to its mask's bounding box, fitted into the box keeping its aspect
    ratio (centred) and pasted with :func:`mudi.compose.cutout.paste_crop` (mask pixels only;
    the photo resized bicubic with ``reducing_gap`` 3). Later placements are drawn on top.

    Returns:
        ``(canvas, union_mask, placements)`` with the placements' boxes as actually drawn.
    """
    canvas, union = white_canvas(width, height)
    height = canvas.height
    drawn: list[LayoutBox] = []
    for item in layout:
        key, box = item[0], item[1]
        if key not in photos:
            raise MudiError(f"layout names subject {key!r} but no photo was given for it.")
        photo = _one_photo(photos[key], key)
        if not photo.mask.any():
            raise MudiError(f"{photo.path}: the mask is empty; cannot place subject {key!r}.")
        crop = crop_photo(photo)
        fitted = fit_box(box, crop.size)
        if fitted[2] <= 0 or fitted[3] <= 0 or fitted[0] >= width or fitted[1] >= height:
            raise MudiError(f"subject {key!r}: box {list(box)} lies outside the {width}x{height} canvas.")
        paste_crop(canvas, union, crop, fitted, reducing_gap=3.0)  # PIL clips to the canvas
        drawn.append(LayoutBox(key, tuple(int(v) for v in fitted)))
    return canvas, union, drawn


# --------------------------------------------------------------------------- schedule

def _execution_device(pipe) -> torch.device:
    dev = getattr(pipe, "_execution_device", None)
    if dev is None:
        dev = getattr(pipe, "device", torch.device("cpu"))
    return torch.device(dev)


# ---------------------------------------------------------------------------------- VAE

@torch.no_grad()
def encode_canvas(vae, canvas: Image.Image, generator: torch.Generator | None, device: torch.device, *,
                  family: ModelFamily) -> torch.Tensor:
    """``VAE.encode(canvas).latent_dist.sample(generator)`` in float32, normalized by the model
    family the way its pipeline expects latents (:meth:`~mudi.models.families.ModelFamily.to_latents`).

    An fp16 VAE whose config asks for ``force_upcast`` (SDXL's) encodes in float32 and is put back.
    """
    arr = np.asarray(canvas.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(arr).permute(2, 0, 1)[None]
    vae_dtype = next(vae.parameters()).dtype
    upcast = vae_dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        enc_dtype = torch.float32 if upcast else vae_dtype
        dist = family.vae_encode(vae, pixels.to(device=device, dtype=enc_dtype))
        z = dist.sample(generator=generator).float()
    finally:
        if upcast:
            vae.to(vae_dtype)
    return family.to_latents(vae, z)


def latent_mask(mask: np.ndarray, latent_hw: tuple[int, int], device=None) -> torch.Tensor:
    """Union mask → binary (h, w) float32 mask on the latent grid (area average >= 0.5)."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=latent_hw, mode="area")
    return (m[0, 0] >= 0.5).float().to(device)


def initial_noise(shape: tuple[int, ...], generator, device, dtype, noise: torch.Tensor | None = None, *,
                  family: ModelFamily | None = None) -> torch.Tensor:
    """ε (float32): ``noise`` checked, or drawn as the family's pipeline draws it in ``prepare_latents``
    (:meth:`~mudi.models.families.ModelFamily.grid_noise`, so it matches the noise of ``--init none``
    for the same generator)."""
    if noise is None and family is not None:
        noise = family.grid_noise(shape, generator, device, dtype)
    elif noise is None:
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != shape:
        raise MudiError(f"noise has shape {tuple(noise.shape)}, expected {shape}.")
    return noise.to(device=device, dtype=torch.float32)


# ----------------------------------------------------------------------------- the API

@torch.no_grad()
def mean_shifted_latents(
    pipe,
    subjects_photos: Mapping[str, SegmentedPhoto | Sequence[SegmentedPhoto]],
    layout: Sequence[LayoutBox | tuple[str, Sequence[int]]],
    *,
    gamma: float = DEFAULT_GAMMA,
    generator: torch.Generator | None = None,
    height: int,
    width: int,
    num_inference_steps: int,
    scheduler=None,
    noise: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sigma_start: float = DEFAULT_SIGMA_START,
) -> InitLatents:
    """Initial latents for ``pipe(..., latents=...)`` per METHOD.md §4.

    Args:
        pipe: a diffusers SD or SDXL pipeline (any pipeline with ``vae``, ``unet``, ``scheduler``
            whose ``prepare_latents`` multiplies given latents by ``scheduler.init_noise_sigma``).
        subjects_photos: key → the segmented photo to paste (a list: its first photo is used).
        layout: ``(key, box)`` placements, e.g. from :func:`mudi.generate.layout.auto_layout`.
        gamma: γ, the scale of the subjects' latent mean (3 by default; 0 = no shift).
        generator: torch generator; ε is drawn first (as the pipeline would draw its own
            noise), then the VAE posterior sample.
        height, width: output size in pixels (must be what you pass to the pipeline).
        num_inference_steps: the number of steps you pass to the pipeline.
        scheduler: the scheduler the pipeline will use (default ``pipe.scheduler``; never
            modified — a copy is set up).
        noise: optional ε to use instead of drawing it (shape (1, C, h, w)).
        dtype, device: of the returned latents (default: the denoiser's dtype, the pipeline's
            execution device).
        sigma_start: flow-matching families (FLUX.1, SD3, FLUX.2 [klein], Qwen-Image): the σ
            sampling starts at (see the module docstring); the UNet families start at their schedule's first timestep.

    Returns:
        :class:`InitLatents` with ``latents = add_noise(γ·z_m, ε, t_first) / init_noise_sigma``
        (flow matching: ``(1 − σ_start)·γ·z_m + σ_start·ε``, packed as the pipeline takes it, and
        the ``sigmas`` to pass in ``pipeline_kwargs``).
    """
    if gamma < 0 or not np.isfinite(gamma):
        raise MudiError(f"gamma must be a finite number >= 0, got {gamma}.")
    family = family_of(pipe)
    f = family.vae_scale_factor(pipe)
    if height % f or width % f:
        raise MudiError(f"height and width ({height}x{width}) must be multiples of the VAE factor {f}.")
    device = torch.device(device) if device is not None else _execution_device(pipe)
    dtype = dtype or family.denoiser(pipe).dtype
    scheduler = scheduler if scheduler is not None else pipe.scheduler
    channels = family.latent_channels(pipe)
    shape = (1, channels, height // f, width // f)

    noise = initial_noise(shape, generator, device, dtype, noise, family=family)

    canvas, mask, drawn = render_canvas(subjects_photos, layout, width, height)
    z = encode_canvas(pipe.vae, canvas, generator, device, family=family)
    if tuple(z.shape[-2:]) != shape[-2:] or z.shape[1] != channels:
        raise MudiError(f"VAE latent shape {tuple(z.shape)} does not match the denoiser input {shape}.")
    m = latent_mask(mask, shape[-2:], device=device)
    z_m = z * m
    start = family.sampler_start(pipe, scheduler, num_inference_steps, height, width, device, sigma_start)
    x_t = start.noised(float(gamma) * z_m, noise).float()
    latents = family.pipeline_latents(pipe, (x_t / start.init_noise_sigma).to(dtype))
    return InitLatents(
        latents=latents,
        x_T=x_t,
        canvas=canvas,
        mask=mask,
        latent_mask=m,
        noise=noise,
        z=z,
        timestep=start.timestep,
        init_noise_sigma=start.init_noise_sigma,
        layout=drawn,
        sigma=start.sigma,
        pipeline_kwargs=start.pipeline_kwargs,
    )


__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_SIGMA_START",
    "InitLatents",
    "add_noise_at",
    "encode_canvas",
    "latent_mask",
    "mean_shifted_latents",
    "render_canvas",
    "schedule_start",
]
