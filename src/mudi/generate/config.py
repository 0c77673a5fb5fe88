"""The settings of a ``mudi generate`` run (:class:`GenerateConfig`) and their checks."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mudi.errors import MudiError
from mudi.generate.init import DEFAULT_GAMMA
from mudi.generate.layout import DEFAULT_FILL, DEFAULT_JITTER

#: METHOD.md §4 default negative prompt.
NEGATIVE_PROMPT = "sticker, collage, cartoon, abstract glitch, blurry"
INIT_MODES = ("mudi", "none")
DTYPE_NAMES = ("fp32", "float32", "fp16", "float16", "bf16", "bfloat16")

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
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
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

