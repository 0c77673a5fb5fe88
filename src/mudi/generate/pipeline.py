"""Batch generation with a personalized model and mean-shifted initialization (METHOD.md §4).

The flow for one ``mudi generate`` run (:func:`generate`):

1. Validate everything that can be wrong *before* sampling: options, the subject set, the
   LoRA folder (and its fit to the base model), the prompts' subjects (identifiers), layout
   files, the resolution, the output folder (never silently overwritten).
2. Plan one :class:`ImageJob` per image: prompt, per-image seed ``seed + index``, the
   reference photo per subject and the layout — all drawn from that per-image seed, so any
   image can be regenerated alone with ``--seed <its seed> --n 1``.
3. For each job: initial latents from :func:`mudi.generate.init.mean_shifted_latents` (``--init mudi``)
   or the pipeline's own noise (``--init none``), sample, write ``0000.png`` + ``0000.json``
   (the sidecar) and optionally ``0000_init.png`` (the init canvas).
4. A contact sheet of all images (``contact_sheet.png``; ``init_sheet.png`` with the canvases
   and their boxes when ``--save-init``) and ``generate_config.json`` with the run's settings.

Subjects of a prompt: the subject set's identifiers that occur in the prompt as words, in
order of appearance (:meth:`~mudi.subjects.SubjectSet.subjects_in_prompt`). Placeholders
``{key}``, ``{identifier}`` or ``{identifier class}`` are expanded to the subject's phrase
(``"a photo of {a} and {b}"`` → ``"a photo of olis corgi and hta chow chow"``). Errors:
a placeholder naming no subject of the set, a word that is a known identifier token
(:data:`mudi.subjects.DEFAULT_IDENTIFIERS`, e.g. ``ult``) but not one of this set's, and a
prompt naming no subject at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from mudi.train.config import read_train_table
from mudi.errors import MudiError
from mudi.io import prepare_output_dir, save_image_atomic, write_json_atomic
from mudi.generate.init import DEFAULT_GAMMA, mean_shifted_latents, vae_scale_factor
from mudi.generate.layout import (
    DEFAULT_FILL,
    DEFAULT_JITTER,
    LayoutProviderError,
    LayoutWarning,
    LLMLayoutProvider,
    Placement,
    auto_layout,
    fit_layout,
    layout_to_json,
    load_layout_file,
)
from mudi.subjects import DEFAULT_IDENTIFIERS, SegmentedPhoto, Subject, SubjectSet, mask_bbox

#: METHOD.md §4 default negative prompt.
NEGATIVE_PROMPT = "sticker, collage, cartoon, abstract glitch, blurry"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "mudi"
INIT_MODES = ("mudi", "none")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

#: --scheduler names → (diffusers class name, extra config).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {}),
    "dpm_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

#: Sidecar keys that must match for ``--resume`` to keep an existing image.
class GenerateWarning(UserWarning):
    """Something about the run looks unintended but generation goes on."""


RESUME_KEYS = (
    "prompt", "negative_prompt", "seed", "subjects", "gamma", "init", "base", "lora", "lora_scale",
    "steps", "guidance_scale", "height", "width", "scheduler", "layout_mode", "subject_set",
)


@dataclass
class GenerateConfig:
    """Everything that defines a ``mudi generate`` run.

    ``base`` may be empty when ``lora`` is a ``mudi train`` output with a ``config.toml``
    (its base model is used; likewise ``subjects`` and ``vae``). ``resolution = 0`` means the
    model's default (``unet.config.sample_size × vae_scale_factor``: 1024 SDXL, 512 SD 1.5).
    """

    prompts: list[str] = field(default_factory=list)
    out: str = ""
    base: str = ""
    lora: str = ""
    subjects: str = ""
    n: int = 4
    batch_size: int = 1  # images per pipeline call
    init: str = "mudi"
    gamma: float = DEFAULT_GAMMA
    layout: str = "auto"  # "auto", "llm" or a JSON file of boxes
    sizes: dict[str, float] = field(default_factory=dict)  # relative sizes (auto layout)
    fill: float = DEFAULT_FILL
    jitter: float = DEFAULT_JITTER
    photo: int = -1  # reference photo index per subject; -1 = random (per-image seed)
    steps: int = 30
    resolution: int = 0
    seed: int = 0
    guidance: float = 7.5
    negative_prompt: str = NEGATIVE_PROMPT
    scheduler: str = "default"
    lora_scale: float = 1.0
    vae: str = ""
    save_init: bool = False
    overwrite: bool = False
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"
    llm_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout: float = 60.0
    progress: bool = True

    def check(self) -> None:
        """Validate options that need no model or file; raise MudiError on the first problem."""
        if not self.prompts:
            raise MudiError("no prompt given: pass --prompt \"a photo of olis corgi and hta chow chow\" or --prompts FILE.")
        if not self.out:
            raise MudiError("no output folder given: pass --out DIR.")
        if self.n < 1:
            raise MudiError(f"--n must be >= 1 (images per prompt), got {self.n}.")
        if self.batch_size < 1:
            raise MudiError(f"--batch-size must be >= 1, got {self.batch_size}.")
        if self.init not in INIT_MODES:
            raise MudiError(f"--init must be one of {', '.join(INIT_MODES)}, got {self.init!r}.")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise MudiError(f"--gamma must be a number >= 0, got {self.gamma}.")
        if self.steps < 1:
            raise MudiError(f"--steps must be >= 1, got {self.steps}.")
        if self.resolution < 0:
            raise MudiError(f"--resolution must be > 0 (or 0 for the model's default), got {self.resolution}.")
        if not (0 <= self.seed < 2**63 - 2**32):
            raise MudiError(f"--seed must be in [0, 2**63), got {self.seed}.")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise MudiError(f"--guidance must be >= 0, got {self.guidance}.")
        if not math.isfinite(self.lora_scale):
            raise MudiError(f"--lora-scale must be a number, got {self.lora_scale}.")
        if self.scheduler not in ("default", *SCHEDULERS):
            raise MudiError(f"--scheduler must be one of default, {', '.join(SCHEDULERS)}; got {self.scheduler!r}.")
        if self.device != "auto" and not re.match(r"^(cpu|cuda(:\d+)?|mps)$", self.device):
            raise MudiError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}.")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise MudiError(f"--dtype must be auto, fp32, fp16 or bf16; got {self.dtype!r}.")
        if self.resume and self.overwrite:
            raise MudiError("--resume and --overwrite exclude each other: resume keeps finished images, overwrite redoes them.")
        if self.sizes and self.layout != "auto":
            raise MudiError("--sizes (relative sizes) works with --layout auto only.")
        if not 0 < self.fill <= 1:
            raise MudiError(f"--fill must be in (0, 1], got {self.fill}.")
        if not 0 <= self.jitter < 0.5:
            raise MudiError(f"--jitter must be in [0, 0.5), got {self.jitter}.")
        if self.llm_timeout <= 0:
            raise MudiError(f"--llm-timeout must be > 0 seconds, got {self.llm_timeout}.")
        for p in self.prompts:
            if not p.strip():
                raise MudiError("an empty prompt was given.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("llm_api_key", None)  # never write secrets next to the outputs
        return d


@dataclass
class ImageJob:
    """One image to generate (everything needed to reproduce it alone)."""

    index: int
    prompt: str  # as sent to the model (placeholders expanded)
    seed: int
    subjects: list[str]  # keys, order of appearance in the prompt
    phrases: list[str]
    photos: dict[str, int]  # key -> photo index used on the init canvas
    layout: list[Placement]
    layout_source: str
    source_prompt: str = ""

    @property
    def stem(self) -> str:
        return f"{self.index:04d}"


# ------------------------------------------------------------------------------- prompts

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def resolve_prompt(sset: SubjectSet, prompt: str, *, where: str = "") -> tuple[str, list[Subject]]:
    """Expand ``{placeholders}`` and find the prompt's subjects; MudiError on unknown names.

    Returns:
        ``(prompt, subjects)`` with the placeholders replaced by phrases and the subjects in
        order of appearance (1 <= k <= K).
    """
    where = where or f"prompt {prompt!r}"
    known = ", ".join(f"{s.identifier} ({s.phrase}, key {s.key})" for s in sset.subjects)

    def expand(m: re.Match) -> str:
        name = m.group(1).strip()
        for s in sset.subjects:
            if name in (s.key, s.identifier, s.phrase) or name.lower() == s.phrase.lower():
                return s.phrase
        raise MudiError(f"{where}: placeholder {{{name}}} names no subject of the set; known subjects: {known}.")

    text = _PLACEHOLDER.sub(expand, prompt)
    own = {s.identifier.lower() for s in sset.subjects}
    foreign = sorted({w for w in re.findall(r"[A-Za-z0-9_\-]+", text)
                      if w.lower() in DEFAULT_IDENTIFIERS and w.lower() not in own})
    if foreign:
        raise MudiError(
            f"{where}: {', '.join(repr(w) for w in foreign)} looks like a subject identifier but is not in "
            f"this subject set; known subjects: {known}."
        )
    subjects = sset.subjects_in_prompt(text)
    if not subjects:
        raise MudiError(
            f"{where}: names none of the subjects; write their identifiers (e.g. "
            f"\"a photo of {' and '.join(s.phrase for s in sset.subjects[:2])}\") or placeholders like "
            f"{{{sset.subjects[0].key}}}. Known subjects: {known}."
        )
    return text, subjects


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped) or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise MudiError(f"{path}: prompts file not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MudiError(f"{path}: not a UTF-8 text file.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MudiError(f"{path}: not valid JSON ({exc.msg}).") from None
        if not isinstance(data, list) or not all(isinstance(p, str) and p.strip() for p in data):
            raise MudiError(f"{path}: expected a JSON list of non-empty prompt strings.")
        prompts = [p.strip() for p in data]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise MudiError(f"{path}: contains no prompts (one prompt per line).")
    return prompts


def parse_sizes(spec: str | dict | None, sset: SubjectSet | None = None) -> dict[str, float]:
    """``"olis=1,hta=0.6"`` (subjects by key, identifier or phrase) → ``{key: size}``."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(spec).split(",") if part.strip()
    )
    out: dict[str, float] = {}
    for name, val in items:
        try:
            v = float(val)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise MudiError(f"--sizes: expected NAME=NUMBER pairs like \"olis=1,hta=0.6\", got {name!r}={val!r}.") from None
        if not (math.isfinite(v) and v > 0):
            raise MudiError(f"--sizes: size of {name!r} must be a positive number, got {val}.")
        key = sset.subject(str(name).strip()).key if sset is not None else str(name).strip()
        out[key] = v
    return out


# ------------------------------------------------------------------------------- LoRA

def lora_weights_file(lora: str | Path) -> Path:
    """The LoRA safetensors file of a ``mudi train`` folder (or the file itself)."""
    p = Path(lora)
    if not p.exists():
        raise MudiError(f"{p}: LoRA not found. Pass the output folder of `mudi train` (it holds {LORA_WEIGHTS}).")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise MudiError(f"{p}: a LoRA must be a .safetensors file or a folder holding {LORA_WEIGHTS}.")
        return p
    f = p / LORA_WEIGHTS
    if f.is_file():
        return f
    others = sorted(p.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    raise MudiError(
        f"{p}: no {LORA_WEIGHTS} in this folder. Pass the output folder of a finished `mudi train` run "
        "or a LoRA .safetensors file."
    )


def read_train_config(lora: str | Path) -> dict[str, Any]:
    """The ``config.toml`` written by ``mudi train`` next to the LoRA ({} if there is none)."""
    p = Path(lora)
    folder = p if p.is_dir() else p.parent
    for cand in (folder / "config.toml", folder.parent / "config.toml"):
        if cand.is_file():
            data = read_train_table(cand)
            data["_path"] = str(cand)
            return data
    return {}


def _lora_modules(weights: Path) -> dict[str, set[str]]:
    """Module names per pipeline component that a LoRA file holds weights for."""
    from safetensors import safe_open

    out: dict[str, set[str]] = {}
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # noqa: BLE001 - any safetensors parse error is the user's file
        raise MudiError(f"{weights}: not a readable safetensors file ({exc}).") from None
    for k in keys:
        comp, _, rest = k.partition(".")
        if comp not in ("unet", "text_encoder", "text_encoder_2") or ".lora" not in rest:
            continue
        out.setdefault(comp, set()).add(rest[: rest.index(".lora")])
    if not keys:
        raise MudiError(f"{weights}: the LoRA file is empty.")
    return out


@contextlib.contextmanager
def _quiet_diffusers():
    """Silence diffusers/peft log output (we report LoRA problems ourselves, as one clear error)."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _drop_adapter(pipe) -> None:
    """Remove a (partly) loaded LoRA so a caller's pipeline is left as it was."""
    try:
        with _quiet_diffusers():
            pipe.unload_lora_weights()
    except Exception:  # noqa: BLE001 - best effort; the caller reports the real error
        pass


def load_lora(pipe, lora: str | Path, *, scale: float = 1.0, base: str = "") -> Path:
    """Load a LoRA into ``pipe`` and check that every weight found a module of the right shape.

    Raises:
        MudiError: the file is missing or unreadable, or the LoRA does not fit the base model
            (shape mismatch, modules the model does not have).
    """
    weights = lora_weights_file(lora)
    expected = _lora_modules(weights)
    hint = (
        f" It was probably trained on another base model than {base!r}; pass the --base it was trained on"
        if base else " It was probably trained on another base model"
    )
    cfg = read_train_config(lora)
    if cfg.get("base"):
        hint += f" (its config.toml says base = {cfg['base']!r})"
    try:
        with _quiet_diffusers():
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=ADAPTER_NAME)
    except Exception as exc:  # noqa: BLE001 - diffusers/peft raise RuntimeError, ValueError, KeyError, ...
        _drop_adapter(pipe)
        first = str(exc).strip().splitlines()
        detail = " ".join(first[:2])[:400]
        raise MudiError(f"{lora}: the LoRA does not fit the base model ({type(exc).__name__}: {detail}).{hint}.") from None
    for comp, names in expected.items():
        model = getattr(pipe, comp, None)
        if model is None:
            _drop_adapter(pipe)
            raise MudiError(f"{lora}: the LoRA has weights for {comp}, which this base model lacks.{hint}.")
        have = {n for n, m in model.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in getattr(m, "lora_A", {})}
        missing = sorted(names - have)
        if missing:
            _drop_adapter(pipe)
            raise MudiError(
                f"{lora}: {len(missing)} of the LoRA's {len(names)} {comp} modules do not exist in the base model "
                f"(e.g. {missing[0]!r}).{hint}."
            )
    if scale != 1.0:
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
    return weights


# ---------------------------------------------------------------------------- pipeline

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MudiError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def set_scheduler(pipe, name: str) -> str:
    """Replace the pipeline's scheduler by ``name`` (same config); return the class name in use."""
    if name != "default":
        import diffusers

        cls_name, extra = SCHEDULERS[name]
        cls = getattr(diffusers, cls_name)
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return type(pipe.scheduler).__name__


def size_multiple(pipe) -> int:
    """Pixel multiple a resolution must have: VAE factor × 2^(UNet down-samplings)."""
    n_down = max(0, len(getattr(pipe.unet.config, "down_block_types", ())) - 1)
    return vae_scale_factor(pipe) * 2**n_down


def default_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size) * vae_scale_factor(pipe)


# ------------------------------------------------------------------------------ planning

def _photo_dims(photo: SegmentedPhoto) -> tuple[int, int]:
    x0, y0, x1, y1 = mask_bbox(photo.mask)
    return x1 - x0, y1 - y0


def _resolve_key_fn(sset: SubjectSet, where: str = "") -> Callable[[str], str]:
    """Subject name (key, identifier or phrase) → key; MudiError for unknown names."""

    def resolve(name: str) -> str:
        return sset.subject(name).key

    return resolve


def plan_jobs(
    config: GenerateConfig,
    sset: SubjectSet,
    width: int,
    height: int,
    *,
    llm: LLMLayoutProvider | None = None,
) -> list[ImageJob]:
    """One job per image with its seed, photos and layout; validates layouts up front."""
    jobs: list[ImageJob] = []
    file_cache: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {}
    llm_cache: dict[str, tuple[list[tuple[str, tuple[int, int, int, int]]] | None, str]] = {}
    for p_i, raw in enumerate(config.prompts):
        prompt, subjects = resolve_prompt(sset, raw)
        keys = [s.key for s in subjects]
        if config.layout not in ("auto", "llm") and config.init == "mudi":
            file_cache[prompt] = load_layout_file(
                config.layout, width, height, keys, _resolve_key_fn(sset, config.layout), prompt=raw
            )
        for j in range(config.n):
            index = p_i * config.n + j
            seed = config.seed + index
            rng = np.random.default_rng(seed)
            photos: dict[str, int] = {}
            for s in subjects:
                count = len(sset.subject(s.key).photos)
                photos[s.key] = (config.photo % count) if config.photo >= 0 else int(rng.integers(count))
            dims = {k: _photo_dims(sset.photos(k)[photos[k]]) for k in keys}
            layout: list[Placement] = []
            source = "none"
            if config.init == "mudi":
                if config.layout == "auto":
                    layout = auto_layout([(k, dims[k]) for k in keys], width, height, rng,
                                         fill=config.fill, jitter=config.jitter, sizes=config.sizes or None)
                    source = "auto"
                elif config.layout == "llm":
                    assert llm is not None
                    if prompt not in llm_cache:  # one request per prompt; boxes are regions
                        try:
                            llm_cache[prompt] = (llm.propose(prompt, {k: sset.subject(k).phrase for k in keys},
                                                             width, height), "llm")
                        except LayoutProviderError as exc:
                            warnings.warn(f"LLM layout failed for prompt {prompt!r} ({exc}); using the automatic "
                                          "layout instead.", LayoutWarning, stacklevel=2)
                            llm_cache[prompt] = (None, f"auto (llm failed: {exc})")
                    regions, source = llm_cache[prompt]
                    if regions is not None:
                        layout = fit_layout(regions, dims)
                    else:
                        layout = auto_layout([(k, dims[k]) for k in keys], width, height, rng,
                                             fill=config.fill, jitter=config.jitter)
                else:
                    layout = fit_layout(file_cache[prompt], dims)
                    source = f"file:{config.layout}"
            jobs.append(ImageJob(index, prompt, seed, keys, [sset.subject(k).phrase for k in keys],
                                 photos, list(layout), source, raw))
    return jobs


def _sidecar(job: ImageJob, config: GenerateConfig, sset_path: str, scheduler: str, height: int, width: int,
             sset: SubjectSet, base: str, lora: str, dtype: torch.dtype) -> dict[str, Any]:
    from mudi import __version__

    return {
        "prompt": job.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": job.seed,
        "subjects": job.subjects,
        "phrases": job.phrases,
        "subject_set": sset_path,
        "layout": layout_to_json(job.layout),
        "gamma": float(config.gamma),
        "init": config.init,
        "base": base,
        "lora": lora,
        "steps": config.steps,
        "guidance_scale": float(config.guidance),
        "height": height,
        "width": width,
        "scheduler": scheduler,
        # extras
        "index": job.index,
        "image": f"{job.stem}.png",
        "init_image": f"{job.stem}_init.png" if (config.save_init and config.init == "mudi") else None,
        "layout_mode": "auto" if config.layout == "auto" else ("llm" if config.layout == "llm" else "file"),
        "layout_source": job.layout_source,
        "reference_photos": {k: str(sset.subject(k).photos[i].image_path) for k, i in job.photos.items()},
        "lora_scale": float(config.lora_scale),
        "batch_size": config.batch_size,
        "source_prompt": job.source_prompt,
        "dtype": str(dtype).replace("torch.", ""),
        "mudi_version": __version__,
    }


def _resume_state(out: Path, stem: str, expected: dict[str, Any]) -> bool:
    """True when OUT already holds this image with a sidecar of the same settings."""
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


# ------------------------------------------------------------------------------ sampling

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
    gens = [torch.Generator(device="cpu").manual_seed(job.seed) for job in jobs]
    inits: list[Any] = [None] * len(jobs)
    latents = None
    if config.init == "mudi":
        for i, (job, gen) in enumerate(zip(jobs, gens)):
            photos = {k: sset.photos(k)[idx] for k, idx in job.photos.items()}
            inits[i] = mean_shifted_latents(
                pipe, photos, job.layout, gamma=config.gamma, generator=gen, height=height, width=width,
                num_inference_steps=config.steps,
            )
        latents = torch.cat([init.latents for init in inits])
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
    )
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    with torch.no_grad():
        result = pipe(**kwargs)
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


def _thumbnail(path: Path, side: int) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        return im


def write_contact_sheets(out: Path, jobs: Sequence[ImageJob], sset: SubjectSet, *, with_init: bool) -> None:
    """``contact_sheet.png`` (images labelled with index, seed, prompt) and, with init canvases,
    ``init_sheet.png`` (canvases with their layout boxes)."""
    from mudi.viz import draw_boxes, grid

    cell = 256 if len(jobs) <= 64 else 128
    labels = {j.index: f"{j.stem} s{j.seed}: {j.prompt}" for j in jobs}
    images = [_thumbnail(out / f"{j.stem}.png", cell) for j in jobs]
    save_image_atomic(grid(images, labels=[labels[j.index] for j in jobs], cell=cell), out / "contact_sheet.png")
    if not with_init:
        return
    canvases, init_labels = [], []
    for j in jobs:
        p = out / f"{j.stem}_init.png"
        if p.is_file():
            with Image.open(p) as im:
                canvas = im.convert("RGB")
            boxed = draw_boxes(canvas, [pl.box for pl in j.layout],
                               [sset.subject(pl.key).identifier for pl in j.layout], width=max(1, canvas.width // 256))
            boxed.thumbnail((cell, cell))
            canvases.append(boxed)
            init_labels.append(labels[j.index])
    if canvases:
        save_image_atomic(grid(canvases, labels=init_labels, cell=cell), out / "init_sheet.png")


def generate(config: GenerateConfig, *, pipe=None) -> list[Path]:
    """Run a whole ``mudi generate`` job; returns the image paths (in index order).

    Args:
        config: the run's settings (see :class:`GenerateConfig`).
        pipe: an already loaded base pipeline to use instead of loading ``config.base``
            (its scheduler is replaced if ``config.scheduler`` asks; a LoRA is loaded into it
            and unloaded again at the end).
    """
    from tqdm.auto import tqdm

    config = dataclasses.replace(config)  # never modify the caller's object
    config.check()
    # ---- files and folders (cheap checks first)
    train_cfg: dict[str, Any] = {}
    if config.lora:
        lora_weights_file(config.lora)
        train_cfg = read_train_config(config.lora)
    base = config.base or str(train_cfg.get("base") or "")
    if pipe is None and not base:
        raise MudiError(
            "no base model: pass --base MODEL (a diffusers SD/SDXL folder or hub id)"
            + (f"; {config.lora} has no config.toml from `mudi train` to take it from." if config.lora else ".")
        )
    subjects_dir = config.subjects or str(train_cfg.get("subjects") or "")
    if not subjects_dir:
        raise MudiError("no subject set: pass --subjects DIR (the folder made by `mudi prepare`).")
    if config.base and train_cfg.get("base") and str(train_cfg["base"]) != config.base:
        warnings.warn(
            f"--base {config.base} differs from the base the LoRA was trained on ({train_cfg['base']}).",
            GenerateWarning,
            stacklevel=2,
        )
    sset = SubjectSet.load(subjects_dir)
    for p in config.prompts:
        resolve_prompt(sset, p)
    if config.sizes:
        config.sizes = parse_sizes(config.sizes, sset)
    llm = None
    if config.init == "mudi" and config.layout == "llm":
        llm = LLMLayoutProvider.from_env(config.llm_url or None, config.llm_model or None,
                                         config.llm_api_key or None, config.llm_timeout)
    elif config.init == "mudi" and config.layout not in ("auto", "llm") and not Path(config.layout).is_file():
        raise MudiError(f"{config.layout}: layout file not found (give --layout auto, llm or a JSON file of boxes).")
    early_res = config.resolution or int(train_cfg.get("resolution") or 0)
    if early_res and config.init == "mudi" and config.layout not in ("auto", "llm"):
        for p in config.prompts:  # layout-file errors before the (slow) model load
            text, subjects = resolve_prompt(sset, p)
            load_layout_file(config.layout, early_res, early_res, [s.key for s in subjects],
                             _resolve_key_fn(sset, config.layout), prompt=p)
    out = Path(config.out)
    if config.resume:
        if out.exists() and not out.is_dir():
            raise MudiError(f"{out}: the output path is a file; choose a folder path.")
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output_dir(out, overwrite=config.overwrite, what="generate output")

    # ---- model
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    own_pipe = pipe is None
    if own_pipe:
        from mudi.models.loading import load_pipeline

        vae = config.vae or str(train_cfg.get("vae") or "") or None
        pipe = load_pipeline(base, dtype=dtype, device=device, vae=vae)
    else:
        dtype = pipe.unet.dtype
        device = pipe.device
        base = base or str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", ""))
    res = config.resolution or int(train_cfg.get("resolution") or 0) or default_resolution(pipe)
    mult = size_multiple(pipe)
    if res % mult:
        raise MudiError(
            f"--resolution {res} is not a multiple of {mult} (VAE factor {vae_scale_factor(pipe)} × the UNet's "
            f"down-sampling); try {max(mult, round(res / mult) * mult)}."
        )
    height = width = res
    lora_loaded = False
    old_scheduler = pipe.scheduler
    try:
        scheduler_name = set_scheduler(pipe, config.scheduler)
        if config.lora:
            load_lora(pipe, config.lora, scale=config.lora_scale, base=base)
            lora_loaded = True
        jobs = plan_jobs(config, sset, width, height, llm=llm)
        sset_path = str(Path(subjects_dir))
        lora_str = str(config.lora) if config.lora else ""
        sidecars = {j.index: _sidecar(j, config, sset_path, scheduler_name, height, width, sset, base, lora_str, dtype)
                    for j in jobs}
        todo = [j for j in jobs if not (config.resume and _resume_state(out, j.stem, sidecars[j.index]))]
        write_json_atomic(out / "generate_config.json", {
            **config.to_dict(), "base": base, "subjects": sset_path, "resolution": res,
            "scheduler_class": scheduler_name, "dtype": str(dtype).replace("torch.", ""),
        })

        # ---- sample
        pipe.set_progress_bar_config(disable=True)
        from mudi.generate.init import schedule_start

        steps_per_image = len(schedule_start(pipe.scheduler, config.steps, "cpu")[0].timesteps)
        bs = config.batch_size
        batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
        bar = tqdm(total=len(todo) * steps_per_image, desc="mudi generate", unit="img-step",
                   disable=not config.progress)
        current: list[int] = [1]

        def on_step(_pipe, _i, _t, kwargs):
            bar.update(current[0])
            return kwargs

        for batch in batches:
            current[0] = len(batch)
            bar.set_postfix_str(f"image {batch[0].stem}" + (f"-{batch[-1].stem}" if len(batch) > 1 else ""))
            results = generate_batch(pipe, batch, sset, config, height=height, width=width, callback=on_step)
            for job, (image, init) in zip(batch, results):
                if init is not None and config.save_init:
                    save_image_atomic(init.canvas, out / f"{job.stem}_init.png")
                save_image_atomic(image, out / f"{job.stem}.png")
                write_json_atomic(out / f"{job.stem}.json", sidecars[job.index])
        bar.close()
    finally:
        if lora_loaded and not own_pipe:
            pipe.unload_lora_weights()
        if not own_pipe:
            pipe.scheduler = old_scheduler

    # ---- contact sheets
    write_contact_sheets(out, jobs, sset, with_init=config.save_init and config.init == "mudi")
    return [out / f"{j.stem}.png" for j in jobs]


__all__ = [
    "GenerateConfig",
    "GenerateWarning",
    "ImageJob",
    "NEGATIVE_PROMPT",
    "SCHEDULERS",
    "default_resolution",
    "generate",
    "generate_batch",
    "generate_image",
    "write_contact_sheets",
    "load_lora",
    "lora_weights_file",
    "parse_sizes",
    "plan_jobs",
    "read_prompts_file",
    "read_train_config",
    "resolve_prompt",
    "set_scheduler",
    "size_multiple",
]
