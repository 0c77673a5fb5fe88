"""Sampling: the scheduler, one pipeline call for a batch of jobs, and the progress bar.

Each image has its own ``torch.Generator`` seeded with its job's seed; with ``init = "mudi"``
the initial latents come from :func:`mudi.generate.init.mean_shifted_latents` (ε drawn first
from that generator, then the VAE sample), otherwise the pipeline draws its own noise.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image

from mudi.generate.config import SCHEDULERS, GenerateConfig
from mudi.generate.init import mean_shifted_latents
from mudi.generate.jobs import ImageJob
from mudi.models.families import family_of
from mudi.runtime import generator
from mudi.subjects import SubjectSet


def set_scheduler(pipe, name: str) -> str:
    """Replace the pipeline's scheduler by ``name`` (same config); return the class name in use."""
    if name != "default":
        import diffusers

        cls_name, extra = SCHEDULERS[name]
        cls = getattr(diffusers, cls_name)
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return type(pipe.scheduler).__name__


def generate_batch(
    pipe,
    jobs: Sequence[ImageJob],
    sset: SubjectSet,
    config: GenerateConfig,
    *,
    height: int,
    width: int,
    callback: Callable | None = None,
) -> list[tuple[Image.Image, Any]]:
    """Sample several images in one pipeline call; returns ``[(image, InitLatents | None), ...]``.

    Each image has its own generator seeded with its job's seed (used for ε, the VAE sample
    and any sampler noise), so an image does not depend on the others in its batch (up to
    floating-point differences of batched kernels).
    """
    config = config.with_sampling_defaults(family_of(pipe).sampling)  # unset steps/guidance/negative prompt
    gens = [generator(job.seed) for job in jobs]
    inits: list[Any] = [None] * len(jobs)
    latents, extra = None, {}
    if config.init == "mudi":
        for i, (job, gen) in enumerate(zip(jobs, gens)):
            photos = {k: sset.photos(k)[idx] for k, idx in job.photos.items()}
            inits[i] = mean_shifted_latents(
                pipe, photos, job.layout, gamma=config.gamma, generator=gen, height=height, width=width,
                num_inference_steps=config.steps, sigma_start=config.init_sigma,
            )
        latents = torch.cat([init.latents for init in inits])
        extra = inits[0].pipeline_kwargs  # flow matching: the schedule entered at σ_start (same for the batch)
    single = len(jobs) == 1
    kwargs: dict[str, Any] = dict(
        prompt=jobs[0].prompt if single else [job.prompt for job in jobs],
        negative_prompt=(config.negative_prompt if single else [config.negative_prompt] * len(jobs))
        if config.negative_prompt else None,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=height,
        width=width,
        generator=gens[0] if single else gens,
        latents=latents,
        output_type="pil",
        **extra,
    )
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    with torch.no_grad():
        result = pipe(**family_of(pipe).call_kwargs(pipe, kwargs))
    return list(zip(result.images, inits))


def generate_image(
    pipe,
    job: ImageJob,
    sset: SubjectSet,
    config: GenerateConfig,
    *,
    height: int,
    width: int,
    callback: Callable | None = None,
) -> tuple[Image.Image, Any]:
    """Sample one image; returns ``(image, InitLatents | None)``."""
    return generate_batch(pipe, [job], sset, config, height=height, width=width, callback=callback)[0]


class StepProgress:
    """A progress bar counted in image-steps, fed by the pipeline's ``callback_on_step_end``.

    Call :meth:`start_batch` before each pipeline call; the instance itself is the callback
    (one step of a batch of n images advances the bar by n).
    """

    def __init__(self, total_images: int, steps_per_image: int, *, enabled: bool = True,
                 desc: str = "mudi generate") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_images * steps_per_image, desc=desc, unit="img-step", disable=not enabled)
        self.batch_size = 1
        self.done = 0  # image-steps so far

    @classmethod
    def for_pipeline(cls, pipe, total_images: int, steps: int, *, enabled: bool = True) -> "StepProgress":
        """A bar for ``total_images`` images of ``steps`` steps on ``pipe``'s scheduler (which may
        run a different number of model steps than asked, e.g. PNDM)."""
        steps_per_image = family_of(pipe).sampling_steps(pipe.scheduler, steps)
        return cls(total_images, steps_per_image, enabled=enabled)

    def start_batch(self, jobs: Sequence[ImageJob]) -> None:
        """The next pipeline call samples ``jobs``."""
        self.batch_size = len(jobs)
        self.bar.set_postfix_str(f"image {jobs[0].stem}" + (f"-{jobs[-1].stem}" if len(jobs) > 1 else ""))

    def __call__(self, _pipe, _step: int, _timestep, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.done += self.batch_size
        self.bar.update(self.batch_size)
        return kwargs

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
