"""Planning a ``mudi generate`` run: one :class:`ImageJob` per image, its sidecar, and resume.

Every image is fully described by its job: the prompt as sent to the model, the per-image seed
``seed + index``, the reference photo per subject and the layout, all drawn from a numpy
generator seeded with that per-image seed (photos first, then the layout). So any image can be
regenerated alone with ``--seed <its seed> --n 1``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mudi.errors import MudiError
from mudi.generate.config import GenerateConfig
from mudi.generate.layout import LayoutBox, LayoutWarning, auto_layout, fit_layout, layout_to_json, load_layout_file
from mudi.generate.llm_layout import LayoutProviderError, LLMLayoutProvider
from mudi.generate.prompts import resolve_prompt
from mudi.subjects import SegmentedPhoto, Subject, SubjectSet

#: Sidecar keys that must match for ``--resume`` to keep an existing image.
RESUME_KEYS = (
    "prompt", "negative_prompt", "seed", "subjects", "gamma", "init", "base", "lora", "lora_scale",
    "steps", "guidance_scale", "height", "width", "scheduler", "layout_mode", "subject_set",
)

Regions = list[tuple[str, tuple[int, int, int, int]]]


@dataclass
class ImageJob:
    """One image to generate (everything needed to reproduce it alone)."""

    index: int
    prompt: str  # as sent to the model (placeholders expanded)
    seed: int
    subjects: list[str]  # keys, order of appearance in the prompt
    phrases: list[str]
    photos: dict[str, int]  # key -> photo index used on the init canvas
    layout: list[LayoutBox]
    layout_source: str
    source_prompt: str = ""

    @property
    def stem(self) -> str:
        """File name stem of the image and its sidecar (``0007``)."""
        return f"{self.index:04d}"


@dataclass(frozen=True)
class ResolvedRun:
    """What a run resolved beyond its config (written into every sidecar).

    Attributes:
        base: the base model actually used (``--base``, the LoRA's ``config.toml``, or the given
            pipeline's name).
        subject_set: the subject-set folder; lora: the LoRA given ("" for none).
        scheduler: class name of the sampler; height, width: the image size; dtype: of the UNet.
        lora_fused: the LoRA was merged into the weights for sampling (same images up to rounding).
    """

    base: str
    subject_set: str
    lora: str
    scheduler: str
    height: int
    width: int
    dtype: torch.dtype
    lora_fused: bool = False

    @property
    def dtype_name(self) -> str:
        """``float32``, ``float16``, ..."""
        return str(self.dtype).replace("torch.", "")


class LayoutPlanner:
    """Decides where each image's subjects go: automatic slots, a layout file, or a language model.

    A layout file is read and checked once per prompt (:meth:`add_prompt`); a language model is
    asked once per prompt (its boxes are regions, fitted to each image's photos); a failed answer
    falls back to the automatic layout with a :class:`~mudi.generate.layout.LayoutWarning`.
    """

    def __init__(self, config: GenerateConfig, sset: SubjectSet, width: int, height: int, *,
                 sizes: dict[str, float] | None = None, llm: LLMLayoutProvider | None = None) -> None:
        self.config, self.sset, self.width, self.height = config, sset, width, height
        self.sizes = sizes or None
        self.llm = llm
        if config.init == "none":  # "auto" is resolved by generate(); as given here it counts as mudi
            self.mode = "none"
        else:
            self.mode = config.layout if config.layout in ("auto", "llm") else "file"
        self._file_regions: dict[str, Regions] = {}
        self._llm_answers: dict[str, tuple[Regions | None, str]] = {}

    def subject_key(self, name: str) -> str:
        """Subject name (key, identifier or phrase) → key; MudiError for unknown names."""
        return self.sset.subject(name).key

    def add_prompt(self, raw: str, prompt: str, keys: Sequence[str]) -> None:
        """Read and check the layout file's boxes for one prompt (file mode only)."""
        if self.mode == "file":
            self._file_regions[prompt] = load_layout_file(
                self.config.layout, self.width, self.height, list(keys), self.subject_key, prompt=raw
            )

    def layout(self, prompt: str, keys: Sequence[str], dims: dict[str, tuple[int, int]],
               rng: np.random.Generator) -> tuple[list[LayoutBox], str]:
        """The layout of one image and where it came from (``auto``, ``llm``, ``file:PATH``, ...)."""
        if self.mode == "none":
            return [], "none"
        if self.mode == "auto":
            return self._auto(keys, dims, rng, self.sizes), "auto"
        if self.mode == "llm":
            regions, source = self._ask_llm(prompt, keys)
            if regions is None:
                return self._auto(keys, dims, rng, None), source
            return fit_layout(regions, dims), source
        return fit_layout(self._file_regions[prompt], dims), f"file:{self.config.layout}"

    def _auto(self, keys, dims, rng, sizes) -> list[LayoutBox]:
        return auto_layout([(k, dims[k]) for k in keys], self.width, self.height, rng,
                           fill=self.config.fill, jitter=self.config.jitter, sizes=sizes)

    def _ask_llm(self, prompt: str, keys: Sequence[str]) -> tuple[Regions | None, str]:
        if prompt not in self._llm_answers:  # one request per prompt; boxes are regions
            assert self.llm is not None
            phrases = {k: self.sset.subject(k).phrase for k in keys}
            try:
                self._llm_answers[prompt] = (self.llm.propose(prompt, phrases, self.width, self.height), "llm")
            except LayoutProviderError as exc:
                warnings.warn(f"LLM layout failed for prompt {prompt!r} ({exc}); using the automatic "
                              "layout instead.", LayoutWarning, stacklevel=4)
                self._llm_answers[prompt] = (None, f"auto (llm failed: {exc})")
        return self._llm_answers[prompt]


def photo_dims(photo: SegmentedPhoto) -> tuple[int, int]:
    """Size (w, h) of the bounding box of a photo's mask."""
    x0, y0, x1, y1 = photo.bbox
    return x1 - x0, y1 - y0


def choose_photos(sset: SubjectSet, subjects: Sequence[Subject], photo: int, rng: np.random.Generator) -> dict[str, int]:
    """The reference photo index per subject: ``photo`` (modulo the count) or drawn from ``rng``."""
    photos: dict[str, int] = {}
    for s in subjects:
        count = len(sset.subject(s.key).photos)
        photos[s.key] = (photo % count) if photo >= 0 else int(rng.integers(count))
    return photos


def plan_jobs(config: GenerateConfig, sset: SubjectSet, width: int, height: int, *,
              sizes: dict[str, float] | None = None, llm: LLMLayoutProvider | None = None) -> list[ImageJob]:
    """One job per image with its seed, photos and layout; validates layout files up front.

    Args:
        sizes: relative subject sizes by key for the automatic layout (already resolved).
        llm: the provider for ``layout = "llm"``.
    """
    planner = LayoutPlanner(config, sset, width, height, sizes=sizes, llm=llm)
    jobs: list[ImageJob] = []
    for p_i, raw in enumerate(config.prompts):
        prompt, subjects = resolve_prompt(sset, raw)
        keys = [s.key for s in subjects]
        planner.add_prompt(raw, prompt, keys)
        for j in range(config.n):
            index = p_i * config.n + j
            seed = config.seed + index
            rng = np.random.default_rng(seed)
            photos = choose_photos(sset, subjects, config.photo, rng)
            dims = {k: photo_dims(sset.photos(k)[photos[k]]) for k in keys}
            layout, source = planner.layout(prompt, keys, dims, rng)
            jobs.append(ImageJob(index, prompt, seed, keys, [sset.subject(k).phrase for k in keys],
                                 photos, list(layout), source, raw))
    return jobs


def check_layout_file(config: GenerateConfig, sset: SubjectSet, resolution: int) -> None:
    """Check a layout file against every prompt at ``resolution`` (before the slow model load)."""
    planner = LayoutPlanner(config, sset, resolution, resolution)
    for raw in config.prompts:
        prompt, subjects = resolve_prompt(sset, raw)
        planner.add_prompt(raw, prompt, [s.key for s in subjects])


def sidecar(job: ImageJob, config: GenerateConfig, run: ResolvedRun, sset: SubjectSet) -> dict[str, Any]:
    """The ``NNNN.json`` written beside an image: everything that made it (see RESUME_KEYS)."""
    from mudi.version import __version__

    layout_mode = config.layout if config.layout in ("auto", "llm") else "file"
    return {
        "prompt": job.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": job.seed,
        "subjects": job.subjects,
        "phrases": job.phrases,
        "subject_set": run.subject_set,
        "layout": layout_to_json(job.layout),
        "gamma": float(config.gamma),
        "init": config.init,
        "base": run.base,
        "lora": run.lora,
        "steps": config.steps,
        "guidance_scale": float(config.guidance),
        "height": run.height,
        "width": run.width,
        "scheduler": run.scheduler,
        # extras
        "index": job.index,
        "image": f"{job.stem}.png",
        "init_image": f"{job.stem}_init.png" if (config.save_init and config.init == "mudi") else None,
        "init_sigma": float(config.init_sigma),
        "layout_mode": layout_mode,
        "layout_source": job.layout_source,
        "reference_photos": {k: str(sset.subject(k).photos[i].image_path) for k, i in job.photos.items()},
        "lora_scale": float(config.lora_scale),
        "lora_fused": run.lora_fused,
        "batch_size": config.batch_size,
        "source_prompt": job.source_prompt,
        "dtype": run.dtype_name,
        "mudi_version": __version__,
    }


def is_finished(out: Path, stem: str, expected: dict[str, Any]) -> bool:
    """True when OUT already holds this image with a sidecar of the same settings.

    Raises:
        MudiError: the sidecar exists but was made with other settings (``--resume`` only
            continues the same run).
    """
    png, js = out / f"{stem}.png", out / f"{stem}.json"
    if not (png.is_file() and js.is_file()):
        return False
    try:
        old = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    diff = [k for k in RESUME_KEYS if old.get(k) != expected.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {expected.get(k)!r}" for k in diff[:3])
        raise MudiError(
            f"{js}: this image was made with other settings ({shown}). --resume only continues the same run; "
            "use another --out, or --overwrite to redo it."
        )
    return True


__all__ = ["ImageJob", "LayoutPlanner", "RESUME_KEYS", "ResolvedRun", "check_layout_file", "choose_photos",
           "is_finished", "photo_dims", "plan_jobs", "sidecar"]
