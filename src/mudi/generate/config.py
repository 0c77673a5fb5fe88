"""The settings of a ``mudi generate`` run (:class:`GenerateConfig`) and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from mudi.errors import MudiError
from mudi.generate.init import DEFAULT_GAMMA, DEFAULT_SIGMA_START
from mudi.generate.layout import DEFAULT_FILL, DEFAULT_JITTER
from mudi.generate.llm_layout import DEFAULT_LLM_TIMEOUT
from mudi.models.families.base import METHOD_NEGATIVE_PROMPT, SamplingDefaults
from mudi.runtime import DTYPES
from mudi.settings import Settings, setting

#: METHOD.md §4 negative prompt (the SD 1.x/2.x family default; SDXL uses the reference code's).
NEGATIVE_PROMPT = METHOD_NEGATIVE_PROMPT
#: ``negative_prompt`` value meaning "the model family's default negative prompt".
FAMILY_DEFAULT = "default"
INIT_MODES = ("auto", "mudi", "none")
#: --fuse-lora choices.
FUSE_MODES = ("auto", "on", "off")

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


class GenerateWarning(UserWarning):
    """Something about the run looks unintended but generation goes on."""


@dataclass
class GenerateConfig(Settings):
    """Everything that defines a ``mudi generate`` run (the ``[generate]`` table of a run file).

    ``base`` may be empty when ``lora`` is a ``mudi train`` output with a ``config.toml``
    (its base model is used; likewise ``subjects``, ``vae`` and ``resolution``). How to run it
    (resume, overwrite, device, progress) is a :class:`~mudi.settings.RunOptions`, not part of it.
    """

    SECTION: ClassVar[str] = "generate"

    prompts: list[str] = setting([], "prompt naming subjects by identifier (\"olis corgi\") or placeholder "
                                 "({a}, {olis}); repeatable", flag="--prompt", metavar="TEXT")
    out: str = setting("", "output folder", metavar="DIR")
    base: str = setting("", "base model (diffusers SD/SDXL folder or hub id); default: the base in "
                        "--lora's config.toml", metavar="MODEL")
    lora: str = setting("", "LoRA folder from `mudi train` (holds pytorch_lora_weights.safetensors) or a "
                        ".safetensors file; omit to sample the base model", metavar="DIR|FILE")
    subjects: str = setting("", "subject-set folder (default: the one in --lora's config.toml)", metavar="DIR")
    n: int = setting(4, "images per prompt")
    batch_size: int = setting(1, "images per pipeline call (raise it on a GPU)")
    init: str = setting("auto", "mean-shifted init (mudi) or plain noise (none); auto = the model family's "
                        "default: mudi for SD/SDXL, none for the flow-matching families", choices=INIT_MODES)
    gamma: float = setting(DEFAULT_GAMMA, "γ, strength of the init shift")
    init_sigma: float = setting(DEFAULT_SIGMA_START, "flow-matching families with --init mudi: the σ sampling "
                                "starts at, from (1-σ)·γ·z_m + σ·noise (0.93: the signal-to-noise ratio of SDXL's first step)")
    layout: str = setting("auto", "auto, llm, or a JSON file of boxes", metavar="auto|llm|FILE")
    sizes: str = setting("", "relative subject sizes for the auto layout, e.g. olis=1,hta=0.6", metavar="SPEC")
    fill: float = setting(DEFAULT_FILL, "auto layout: share of a slot a subject fills")
    jitter: float = setting(DEFAULT_JITTER, "auto layout: random shift of a box, share of its slot")
    photo: int = setting(-1, "reference photo index per subject on the canvas (-1: random per image)")
    steps: int = setting(0, "inference steps (0: the model family's default, 50 for SD and SDXL as their "
                         "diffusers pipelines; the old default was 30)")
    resolution: int = setting(0, "image side in pixels (0: the LoRA's training resolution, else the "
                              "model's: 1024 SDXL, 512 SD 1.5)")
    seed: int = setting(0, "seed of image 0; image i uses seed + i")
    guidance: float = setting(-1.0, "classifier-free guidance scale (-1: the model family's default, 5.0 for "
                              "SDXL and 7.5 for SD; the old default was 7.5)")
    negative_prompt: str = setting(FAMILY_DEFAULT, "negative prompt (\"\" for none; default: the model family's, "
                                   "for SDXL the reference code's, for SD METHOD.md's \"sticker, collage, ...\")")
    scheduler: str = setting("default", "sampler (default: the model's own)", choices=("default", *SCHEDULERS))
    lora_scale: float = setting(1.0, "LoRA strength")
    fuse_lora: str = setting("auto", "merge the LoRA into the weights while sampling (faster): auto = when the "
                             "model runs on a GPU; never in a pipeline passed to generate(pipe=...)",
                             choices=FUSE_MODES)
    vae: str = setting("", "VAE override (e.g. madebyollin/sdxl-vae-fp16-fix)", metavar="MODEL")
    save_init: bool = setting(False, "also save each init canvas (0000_init.png, init_sheet.png)")
    dtype: str = setting("auto", "weights dtype (auto: fp16 on CUDA, fp32 otherwise)", choices=("auto", *DTYPES))
    llm_url: str = setting("", "OpenAI-compatible endpoint for --layout llm", metavar="URL")
    llm_model: str = setting("", "model name for --layout llm", metavar="NAME")
    llm_api_key: str = setting("", "API key for --layout llm (never written to the outputs; prefer "
                               "MUDI_LLM_API_KEY)", metavar="KEY")
    llm_timeout: float = setting(DEFAULT_LLM_TIMEOUT, "seconds to wait for the LLM")

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
        if not 0 < self.init_sigma <= 1:
            raise MudiError(f"--init-sigma must be in (0, 1], got {self.init_sigma}.")
        if self.steps < 0:
            raise MudiError(f"--steps must be >= 1 (or 0 for the model's default), got {self.steps}.")
        if self.resolution < 0:
            raise MudiError(f"--resolution must be > 0 (or 0 for the model's default), got {self.resolution}.")
        if not (0 <= self.seed < 2**63 - 2**32):
            raise MudiError(f"--seed must be in [0, 2**63), got {self.seed}.")
        if not math.isfinite(self.guidance) or (self.guidance < 0 and self.guidance != -1):
            raise MudiError(f"--guidance must be >= 0 (or -1 for the model's default), got {self.guidance}.")
        if not math.isfinite(self.lora_scale):
            raise MudiError(f"--lora-scale must be a number, got {self.lora_scale}.")
        if self.fuse_lora not in FUSE_MODES:
            raise MudiError(f"--fuse-lora must be one of {', '.join(FUSE_MODES)}; got {self.fuse_lora!r}.")
        if self.scheduler not in ("default", *SCHEDULERS):
            raise MudiError(f"--scheduler must be one of default, {', '.join(SCHEDULERS)}; got {self.scheduler!r}.")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise MudiError(f"--dtype must be auto or one of {', '.join(DTYPES)}; got {self.dtype!r}.")
        if not isinstance(self.sizes, str):
            raise MudiError(f"--sizes must be text like \"olis=1,hta=0.6\", got {self.sizes!r}.")
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

    def with_sampling_defaults(self, defaults: SamplingDefaults) -> "GenerateConfig":
        """A copy whose unset sampling values (``steps`` 0, ``guidance`` -1, ``negative_prompt``
        "default") are the model family's ``defaults`` (``family.sampling``); set values stay."""
        return self.updated({
            "steps": self.steps or defaults.steps,
            "guidance": defaults.guidance_scale if self.guidance == -1 else self.guidance,
            "negative_prompt": defaults.negative_prompt if self.negative_prompt == FAMILY_DEFAULT
            else self.negative_prompt,
        })

    def for_family(self, family) -> "GenerateConfig":
        """The config with ``init = "auto"`` resolved to the model family's default."""
        return self.updated({"init": family.default_init}) if self.init == "auto" else self

    def to_dict(self) -> dict[str, Any]:
        """Every field except the LLM API key."""
        d = super().to_dict()
        d.pop("llm_api_key", None)  # never write secrets next to the outputs
        return d

