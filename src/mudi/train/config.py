"""Training configuration: every METHOD.md §3 default in one dataclass, TOML in and out.

A run is fully described by a :class:`TrainConfig`. It loads from a TOML file
(``mudi train --config run.toml``), command-line flags override single fields, and the
fully resolved config (model-dependent defaults filled in) is saved as ``OUT/config.toml``
so every result says how it was made. :meth:`TrainConfig.check` validates every option
without touching a model, so mistakes surface before any heavy work.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mudi.errors import MudiError

MIX_MODES = ("segmix", "cutmix", "none")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")

#: METHOD.md §3 prior-preservation prompt ({cls} is the subject's descriptive class).
PRIOR_PROMPT = (
    "a photo of a {cls}, simple background, full body view, award winning photography, highly detailed"
)
#: Default validation-image negative prompt (METHOD.md §4).
NEGATIVE_PROMPT = "sticker, collage, cartoon, abstract glitch, blurry"

#: Fields that may differ between the saved config of a run and a ``--resume`` of it: they do
#: not change what the optimizer sees up to a given step.
RESUME_SAFE_FIELDS = frozenset(
    {
        "max_train_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "validate_every",
        "validation_inference_steps",
        "log_every",
        "stop_after",
        "device",
        "overwrite",
        "resume",
        "progress",
        "out",
    }
)


def read_train_table(path: Path) -> dict[str, Any]:
    """The training settings in a TOML file: its ``[train]`` table, or its top-level keys."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: not valid TOML ({exc}).") from None
    if set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    return data


@dataclass
class TrainConfig:
    """Everything that defines a ``mudi train`` run (METHOD.md §2–§3 defaults).

    Paths are stored as strings so the config round-trips through TOML unchanged.
    ``resolution = 0`` and ``mixed_precision = "auto"`` are resolved from the model and the
    device at the start of a run (1024 for SDXL, 512 for SD 1.x/2.x; fp16 on CUDA, none on CPU).
    """

    # data and model
    subjects: str = ""
    base: str = ""
    out: str = ""
    vae: str = ""  # optional VAE override, e.g. madebyollin/sdxl-vae-fp16-fix ("" = the base's)
    resolution: int = 0  # 0 = model default (1024 SDXL, 512 SD)
    # Seg-Mix (METHOD §2)
    mix: str = "segmix"
    p: float = 0.3
    k: int = 2
    loss_alpha: float = 1.0  # mask loss weighting w = M(1-α)+α; 1 = off
    segmix_margin: float = -1.0  # Seg-Mix margin in px; -1 = compose's default (32 px, S/8 below 256 px)
    relative_sizes: str = ""  # "a=1,b=0.6": fixed relative Seg-Mix scales ("" = random scales)
    # prior preservation (METHOD §3)
    prior_dir: str = ""  # class set from `mudi priors` ("" = no prior preservation)
    prior_weight: float = 1.0
    # LoRA
    rank: int = 32
    alpha: float = 32.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lora_dropout: float = 0.0
    # optimisation
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    use_8bit_adam: bool = False
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 2
    max_train_steps: int = 2010
    seed: int = 42
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 500  # 0 = only at the end; -1 = never
    validation_prompts: list[str] = field(default_factory=list)  # [] = built from the subjects
    validation_negative_prompt: str = NEGATIVE_PROMPT
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5
    validation_images: int = 2  # images per prompt
    log_every: int = 1
    stop_after: int = 0  # stop (as if killed) after this optimizer step; 0 = run to the end
    device: str = "auto"
    progress: bool = True
    resume: bool = False  # continue OUT from its newest checkpoint (wins over overwrite when OUT holds a run)
    overwrite: bool = False  # start over in a non-empty OUT (with resume: only when OUT holds no run)

    # ------------------------------------------------------------------ TOML
    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """Read a config file; unknown keys and wrong types are reported with the file name."""
        path = Path(path)
        if not path.is_file():
            raise MudiError(f"{path}: config file not found.")
        return cls().updated(read_train_table(path), where=str(path))

    def updated(self, values: dict[str, Any], *, where: str = "") -> "TrainConfig":
        """A copy with ``values`` applied (type-checked; ``None`` values are ignored)."""
        known = {f.name: f for f in fields(self)}
        out = dataclasses.replace(self)
        prefix = f"{where}: " if where else ""
        for key, value in values.items():
            key = key.replace("-", "_")
            if value is None:
                continue
            if key not in known:
                close = [k for k in known if k.split("_")[0] == key.split("_")[0]]
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise MudiError(f"{prefix}unknown option {key!r}.{hint}")
            setattr(out, key, _coerce(key, value, getattr(self, key), prefix))
        return out

    def to_toml(self) -> str:
        """The config as TOML text (every field, in declaration order)."""
        lines = ["# mudi train: fully resolved run configuration", ""]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------- validation
    def check(self) -> None:
        """Validate every option that does not need the model; raise MudiError on the first problem."""

        def bad(name: str, value: Any, want: str) -> MudiError:
            return MudiError(f"option {name} = {value!r} is out of range: {want}.")

        if not self.subjects:
            raise MudiError("no subject set given: pass --subjects DIR (a folder made by `mudi prepare`).")
        if not self.base:
            raise MudiError("no base model given: pass --base MODEL (a diffusers SD/SDXL folder or hub id).")
        if not self.out:
            raise MudiError("no output folder given: pass --out DIR.")
        if self.mix not in MIX_MODES:
            raise bad("mix", self.mix, f"choose one of {', '.join(MIX_MODES)}")
        if not (0.0 <= self.p <= 1.0) or math.isnan(self.p):
            raise bad("p", self.p, "the Seg-Mix probability must be in [0, 1]")
        if self.k < 2:
            raise bad("k", self.k, "a composite holds at least 2 subjects")
        if not (0.0 <= self.loss_alpha <= 1.0):
            raise bad("loss_alpha", self.loss_alpha, "must be in [0, 1] (1 = no mask weighting)")
        if self.segmix_margin < -1 or (self.segmix_margin < 0 and self.segmix_margin != -1):
            raise bad("segmix_margin", self.segmix_margin, "must be >= 0 (or -1 = automatic)")
        if self.prior_weight < 0 or math.isnan(self.prior_weight):
            raise bad("prior_weight", self.prior_weight, "must be >= 0")
        if self.rank < 1:
            raise bad("rank", self.rank, "the LoRA rank must be >= 1")
        if not self.alpha > 0:
            raise bad("alpha", self.alpha, "the LoRA alpha must be > 0")
        if not self.target_modules:
            raise bad("target_modules", self.target_modules, "name at least one module (e.g. to_q)")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise bad("lora_dropout", self.lora_dropout, "must be in [0, 1)")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise bad("learning_rate", self.learning_rate, "must be > 0")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise bad("lr_scheduler", self.lr_scheduler, f"choose one of {', '.join(LR_SCHEDULERS)}")
        if self.lr_warmup_steps < 0:
            raise bad("lr_warmup_steps", self.lr_warmup_steps, "must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise bad("adam_beta1/adam_beta2", (self.adam_beta1, self.adam_beta2), "must be in [0, 1)")
        if not self.adam_epsilon > 0:
            raise bad("adam_epsilon", self.adam_epsilon, "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", self.weight_decay, "must be >= 0")
        if not self.max_grad_norm > 0:
            raise bad("max_grad_norm", self.max_grad_norm, "must be > 0")
        if self.train_batch_size < 1:
            raise bad("train_batch_size", self.train_batch_size, "must be >= 1")
        if self.gradient_accumulation_steps < 1:
            raise bad("gradient_accumulation_steps", self.gradient_accumulation_steps, "must be >= 1")
        if self.max_train_steps < 1:
            raise bad("max_train_steps (--steps)", self.max_train_steps, "must be >= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", self.mixed_precision, f"choose one of {', '.join(MIXED_PRECISION)}")
        if self.resolution < 0 or (self.resolution and self.resolution < 64):
            raise bad("resolution", self.resolution, "must be >= 64 (0 = the model's default)")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", self.checkpoint_every, "must be >= 0 (0 = only at the end)")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        if self.validate_every < -1:
            raise bad("validate_every", self.validate_every, "must be >= -1 (-1 = never, 0 = at the end)")
        if self.validation_inference_steps < 1:
            raise bad("validation_inference_steps", self.validation_inference_steps, "must be >= 1")
        if self.validation_images < 1:
            raise bad("validation_images", self.validation_images, "must be >= 1")
        if self.log_every < 1:
            raise bad("log_every", self.log_every, "must be >= 1")
        if self.stop_after < 0:
            raise bad("stop_after", self.stop_after, "must be >= 0")
        if self.seed < 0 or self.seed >= 2**63:
            raise bad("seed", self.seed, "must be in [0, 2**63)")


def _coerce(key: str, value: Any, default: Any, prefix: str) -> Any:
    """Convert ``value`` to the type of the field's default, or raise MudiError."""
    want = type(default)
    try:
        if want is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if want is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if want is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if want is list:
            if isinstance(value, str):
                return [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return list(value)
        if want is str:
            if isinstance(value, Path):
                return str(value)
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise MudiError(f"{prefix}option {key!r} must be a {want.__name__}, got {value!r}.")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {True: "inf", False: "-inf"}[value > 0] if math.isinf(value) else "nan"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


__all__ = ["LR_SCHEDULERS", "MIXED_PRECISION", "MIX_MODES", "NEGATIVE_PROMPT", "PRIOR_PROMPT", "TrainConfig"]
