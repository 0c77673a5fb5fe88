"""Training configuration: every METHOD.md §3 default in one dataclass whose fields carry their help.

A run is fully described by a :class:`TrainConfig`. It loads from the ``[train]`` table of a run
file (or the top-level keys of a file without stage tables: ``mudi train --config run.toml``),
command-line flags (made from the same fields by :func:`mudi.settings.add_arguments`) override
single fields, and the fully resolved config (model-dependent defaults filled in) is saved as
``OUT/config.toml`` so every result says how it was made. How a run is *invoked* (resume,
overwrite, device, progress) is a :class:`mudi.settings.RunOptions`, never saved.
:meth:`TrainConfig.check` validates every option without touching a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mudi.compose.composer import CLASS_LAYOUTS
from mudi.errors import MudiError
from mudi.models.families.base import UNetFamily
from mudi.models.families.objectives import TIMESTEP_SHIFTS, WEIGHTING_SCHEMES, FlowSettings
from mudi.models.text_lora import TEXT_ENCODER_TARGETS
from mudi.settings import Settings, setting

MIX_MODES = ("segmix", "cutmix", "none")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
GRADIENT_CHECKPOINTING = ("auto", "on", "off")
REGULARIZATIONS = ("auto", "dco", "prior", "none")
QUANTIZE = ("none", "nf4", "int8")  # mudi.models.quantize.QUANTIZE_CHOICES
LOSS_MASKS = ("composites", "instance")
PLAIN_CROPS = ("random", "center")

#: METHOD.md §3 prior-preservation prompt ({cls} is the subject's descriptive class).
PRIOR_PROMPT = (
    "a photo of a {cls}, simple background, full body view, award winning photography, highly detailed"
)
#: Default validation-image negative prompt (METHOD.md §4).
NEGATIVE_PROMPT = "sticker, collage, cartoon, abstract glitch, blurry"

#: Fields that may differ between the saved config of a run and a ``--resume`` of it: they do
#: not change what the optimizer sees up to a given step.
RESUME_SAFE_FIELDS = frozenset(
    {"max_train_steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_inference_steps",
     "log_every", "out", "gradient_checkpointing", "tf32", "memory_budget", "offload_vae"}
)


@dataclass
class TrainConfig(Settings):
    """Everything that defines a ``mudi train`` run (METHOD.md §2–§3 defaults).

    Paths are stored as strings so the config round-trips through TOML unchanged.
    ``resolution = 0`` and ``mixed_precision = "auto"`` are resolved from the model and the
    device at the start of a run (1024 for SDXL, 512 for SD 1.x/2.x; fp16 on CUDA, none on CPU).
    """

    SECTION: ClassVar[str] = "train"

    # data and model
    subjects: str = setting("", "subject-set folder (from `mudi prepare`)", metavar="DIR")
    base: str = setting("", "base SD/SDXL pipeline: local folder or hub id", metavar="MODEL")
    out: str = setting("", "output folder (new or empty; see --resume/--overwrite)", metavar="OUT")
    vae: str = setting("", "VAE override (default: the base model's own, kept in fp32 when its config says "
                           "force_upcast); METHOD.md trains SDXL in fp16 with madebyollin/sdxl-vae-fp16-fix",
                       metavar="MODEL")
    resolution: int = setting(0, "training resolution (0 = the model's: 1024 SDXL, 512 SD)")
    only: list[str] = setting([], "train on these subjects of the set only (repeatable; e.g. one LoRA per subject "
                                  "for `mudi merge`); empty = every subject", metavar="KEY")
    extra_examples: list[str] = setting([], "folder of extra whole-image examples (examples.jsonl: image, mask, "
                                             "caption), e.g. the images an iterative round kept (repeatable)",
                                        metavar="DIR")
    init_lora: str = setting("", "start from this LoRA (a `mudi merge` or `mudi train` folder) instead of a fresh "
                                 "one; its rank, alpha and targets replace --rank/--alpha/--target-modules",
                             metavar="DIR")
    plain_crop: str = setting("random", "S×S crop of plain (non-composite) photos after resizing the shortest side "
                                        "to S: random = a new crop per example, drawn from the example number "
                                        "(the reference trainer; latents of non-square photos are encoded per "
                                        "step), center = one centre crop, encoded once (the old default)",
                              choices=PLAIN_CROPS)
    # Seg-Mix (METHOD §2)
    mix: str = setting("segmix", "composition: segmix (MuDI), cutmix or none (DreamBooth)", choices=MIX_MODES)
    p: float = setting(0.3, "probability that an example is a composite")
    k: int = setting(2, "subjects per composite")
    loss_alpha: float = setting(1.0, "mask loss weighting w = M(1-alpha)+alpha (1 = off)")
    loss_mask: str = setting("composites", "which rows --loss-alpha weights: composites = every composite, instance "
                                           "and class alike, plain photos unweighted (the reference trainer); instance "
                                           "= every instance row, class rows unweighted (the old default)",
                             choices=LOSS_MASKS)
    segmix_margin: float = setting(-1.0, "Seg-Mix margin in px (-1 = automatic: 32 px, S/8 below 256 px)")
    relative_sizes: str = setting("", "fixed relative Seg-Mix sizes, e.g. a=1,b=0.6 (empty = random sizes)",
                                  metavar="NAME=C,...")
    segmix_start_step: int = setting(0, "composites only from this optimizer step on (0 = from the start; "
                                        "the reference trainer's segmix_start_step)", metavar="N")
    # regularization: prior preservation (METHOD §3) or DCO (the reference trainer's default)
    reg: str = setting("auto", "regularization: prior = prior preservation with --prior-dir; dco = Direct "
                               "Consistency Optimization against the base model (LoRA disabled), the reference "
                               "trainer's default; none = unregularized (the old default); auto = prior with "
                               "--prior-dir, else dco", choices=REGULARIZATIONS)
    dco_beta: float = setting(1000.0, "DCO beta: loss = -log sigmoid(-beta (MSE_lora - MSE_base))")
    prior_dir: str = setting("", "class set from `mudi priors` (empty = no prior preservation)", metavar="DIR")
    prior_weight: float = setting(1.0, "prior-preservation loss weight")
    class_layout: str = setting("reference", "class composites: reference = class A left, one shared random "
                                "height, random scales (the reference trainer); instance = the instance composite's "
                                "slots and heights (the old default)", choices=CLASS_LAYOUTS)
    # LoRA
    rank: int = setting(32, "LoRA rank")
    alpha: float = setting(32.0, "LoRA alpha")
    target_modules: list[str] = setting([], "denoiser modules that get a LoRA (repeatable; none = the model "
                                        f"family's: {','.join(UNetFamily.default_lora_targets)} for SD/SDXL, "
                                        "attention + feed-forward for FLUX.1, attention for SD3)", metavar="NAME")
    lora_dropout: float = setting(0.0, "LoRA dropout")
    # flow matching (FLUX.1, SD3.5; ignored by SD/SDXL)
    weighting_scheme: str = setting("auto", "flow matching: σ density / loss weighting (auto = the family's "
                                    "diffusers script default: none for FLUX.1, logit_normal for SD3)",
                                    choices=WEIGHTING_SCHEMES)
    logit_mean: float = setting(0.0, "flow matching: mean of the logit-normal σ density")
    logit_std: float = setting(1.0, "flow matching: std of the logit-normal σ density")
    mode_scale: float = setting(1.29, "flow matching: scale of the mode σ density")
    timestep_shift: str = setting("auto", "flow matching: shift training σ as the sampler does (auto: the "
                                  "scheduler's shift, resolution-dependent for FLUX.1) or not (none)",
                                  choices=TIMESTEP_SHIFTS)
    guidance_embed: float = setting(3.5, "flow matching: guidance-embedding value while training a "
                                    "guidance-distilled model (FLUX.1 [dev])")
    train_text_encoder: bool = setting(False, "LoRA on the text encoder(s) too (same rank and alpha; the reference "
                                              "trainer's --train_text_encoder): captions are encoded at every step")
    text_encoder_lr: float = setting(5e-6, "learning rate of the text encoders' LoRA (the reference trainer's "
                                           "--text_encoder_lr default)")
    text_encoder_target_modules: list[str] = setting(list(TEXT_ENCODER_TARGETS),
                                                     "text-encoder modules that get a LoRA with --train-text-encoder "
                                                     "(repeatable)", metavar="NAME")
    # optimisation
    learning_rate: float = setting(1e-4, "AdamW learning rate", flag="--lr")
    lr_scheduler: str = setting("constant", "learning-rate schedule", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = setting(0, "warm-up steps of the schedule")
    adam_beta1: float = setting(0.9, "AdamW beta1")
    adam_beta2: float = setting(0.999, "AdamW beta2")
    adam_epsilon: float = setting(1e-8, "AdamW epsilon")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    use_8bit_adam: bool = setting(False, "bitsandbytes AdamW8bit (needs bitsandbytes)")
    train_batch_size: int = setting(1, "examples per micro-batch", flag="--batch-size")
    gradient_accumulation_steps: int = setting(2, "micro-batches per optimizer step", flag="--gradient-accumulation")
    max_train_steps: int = setting(2010, "optimizer steps", flag="--steps")
    seed: int = setting(42, "seed of everything (examples, noise, LoRA initialisation)")
    mixed_precision: str = setting("auto", "auto = fp16 on CUDA, no elsewhere", choices=MIXED_PRECISION)
    gradient_checkpointing: str = setting(
        "auto", "recompute UNet activations in the backward pass (less memory, ~20-30% slower); "
                "auto = on for CUDA devices below 48 GB, off elsewhere", choices=GRADIENT_CHECKPOINTING)
    tf32: bool = setting(True, "TF32 matmuls/convolutions on CUDA (Ampere and later; no effect on other devices)")
    variant: str = setting("auto", "weights variant of the base model: auto = fp16 when training in fp16 and the "
                                   "folder has *.fp16.safetensors files (or when it has only those), none = the "
                                   "plain files, or a variant name such as fp16", metavar="NAME")
    # iterative training (METHOD §5): run by mudi.iterate / `mudi train --rounds N`
    rounds: int = setting(0, "iterative training: after training, N rounds of generate (with initialization) -> "
                             "D&C -> keep the good images -> fine-tune on them too (0 = off)")
    round_steps: int = setting(200, "optimizer steps of each round's fine-tune")
    round_images: int = setting(8, "images generated per round prompt")
    round_prompts: list[str] = setting([], "prompt of the round images, {a}, {b}, ... for the subjects (repeatable; "
                                           "default: the multi-subject validation prompt)", flag="--round-prompt",
                                       metavar="PROMPT")
    keep_threshold: float = setting(-1.0, "keep round images with D&C >= this and no count error (-1 = the images "
                                          "the evaluation counts as successes)")
    # memory
    quantize: str = setting("none", "frozen denoiser weights quantized: nf4 (bitsandbytes 4-bit, CUDA; pip install "
                                    "'mudi[nf4]') or int8 (torchao weight-only; pip install 'mudi[int8]'); the LoRA "
                                    "stays float32", choices=QUANTIZE)
    offload_vae: bool = setting(False, "keep the VAE in CPU memory, its layers moved to the device only while it "
                                       "encodes/decodes (saves its weights on the GPU; slower composites/validation)")
    memory_budget: float = setting(0.0, "device memory in GB the run may use: the estimate printed before training "
                                        "must fit it, or the run stops with the options that would (0 = the CUDA "
                                        "device's total memory; no check on other devices)", metavar="GB")
    # bookkeeping
    checkpoint_every: int = setting(500, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = setting(2, "checkpoints kept")
    validate_every: int = setting(500, "validation grid every N steps (0 = only at the end; -1 = never)")
    validation_prompts: list[str] = setting(
        [], "validation prompt (repeatable); {a}, {b}, ... are replaced by the subjects' phrases "
            "(empty: 'a photo of a {a} and a {b}' and each subject alone)", flag="--validation-prompt", metavar="PROMPT")
    validation_negative_prompt: str = setting(NEGATIVE_PROMPT, "negative prompt of the validation images")
    validation_inference_steps: int = setting(25, "sampling steps of validation images", flag="--validation-steps")
    validation_guidance_scale: float = setting(7.5, "guidance scale of validation images")
    validation_images: int = setting(2, "validation images per prompt")
    log_every: int = setting(1, "write a train_log.jsonl row every N steps")

    def updated(self, values, *, where: str = ""):
        """:meth:`Settings.updated`; a true/false ``gradient_checkpointing`` (configs written before
        it had ``auto``) reads as on/off."""
        values = {k: ({True: "on", False: "off"}[v] if str(k).replace("-", "_") == "gradient_checkpointing"
                      and isinstance(v, bool) else v) for k, v in values.items()}
        return super().updated(values, where=where)

    def with_model_defaults(self, info) -> "TrainConfig":
        """The model-dependent defaults filled in from a :class:`~mudi.models.families.ModelInfo`:
        ``resolution = 0`` → the model's, no ``target_modules`` → the family's LoRA targets."""
        values = {}
        if self.resolution == 0:
            values["resolution"] = info.default_resolution
        if not self.target_modules:
            values["target_modules"] = list(info.family.default_lora_targets)
        return self.updated(values) if values else self

    def flow_settings(self) -> FlowSettings:
        """The flow-matching options (FLUX.1, SD3.5)."""
        return FlowSettings(self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale,
                            self.guidance_embed, self.timestep_shift)

    def resolved_reg(self) -> str:
        """The regularization the run uses: ``auto`` is ``prior`` with a class set, else ``dco`` (the
        reference trainer's default, ``train_segmix_lora_sdxl.py``: ``dco_beta`` 1000)."""
        if self.reg == "auto":
            return "prior" if self.prior_dir else "dco"
        return self.reg

    # ------------------------------------------------------------- validation
    def check(self) -> None:
        """Validate every option that does not need the model; raise MudiError on the first problem."""
        self._check_required()
        for name, ok, want in self._rules():
            if not ok:
                value = getattr(self, name.split(" ")[0])
                raise MudiError(f"option {name} = {value!r} is out of range: {want}.")

    def _check_required(self) -> None:
        if not self.subjects:
            raise MudiError("no subject set given: pass --subjects DIR (a folder made by `mudi prepare`).")
        if not self.base:
            raise MudiError("no base model given: pass --base MODEL (a diffusers SD/SDXL folder or hub id).")
        if not self.out:
            raise MudiError("no output folder given: pass --out DIR.")
        if self.resolution < 0 or (self.resolution and self.resolution < 64):
            raise MudiError(f"option resolution = {self.resolution} is out of range: must be >= 64 "
                            "(0 = the model's default).")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise MudiError(f"option adam_beta1/adam_beta2 = {(self.adam_beta1, self.adam_beta2)} is out of range: "
                            "must be in [0, 1).")
        self._check_regularization()

    def _check_regularization(self) -> None:
        if self.reg == "prior" and not self.prior_dir:
            raise MudiError("--reg prior needs a class set: pass --prior-dir DIR (made by `mudi priors`), "
                            "or choose --reg dco (no class images needed) or --reg none.")
        if self.reg in ("dco", "none") and self.prior_dir:
            raise MudiError(f"--prior-dir {self.prior_dir} is given with --reg {self.reg}: the class set is used "
                            "only with --reg prior (or auto). Drop --prior-dir, or use --reg prior.")

    def _rules(self) -> list[tuple[str, bool, str]]:
        """(option, holds, what it must be) for every range rule."""
        return [
            ("mix", self.mix in MIX_MODES, f"choose one of {', '.join(MIX_MODES)}"),
            ("p", 0.0 <= self.p <= 1.0, "the Seg-Mix probability must be in [0, 1]"),
            ("k", self.k >= 2, "a composite holds at least 2 subjects"),
            ("loss_alpha", 0.0 <= self.loss_alpha <= 1.0, "must be in [0, 1] (1 = no mask weighting)"),
            ("plain_crop", self.plain_crop in PLAIN_CROPS, f"choose one of {', '.join(PLAIN_CROPS)}"),
            ("loss_mask", self.loss_mask in LOSS_MASKS, f"choose one of {', '.join(LOSS_MASKS)}"),
            ("segmix_margin", self.segmix_margin >= 0 or self.segmix_margin == -1, "must be >= 0 (or -1 = automatic)"),
            ("segmix_start_step", self.segmix_start_step >= 0, "must be >= 0 (0 = composites from the start)"),
            ("reg", self.reg in REGULARIZATIONS, f"choose one of {', '.join(REGULARIZATIONS)}"),
            ("dco_beta", self.dco_beta > 0 and math.isfinite(self.dco_beta), "must be > 0"),
            ("prior_weight", self.prior_weight >= 0, "must be >= 0"),
            ("rank", self.rank >= 1, "the LoRA rank must be >= 1"),
            ("alpha", self.alpha > 0, "the LoRA alpha must be > 0"),
            ("weighting_scheme", self.weighting_scheme in WEIGHTING_SCHEMES, f"choose one of {', '.join(WEIGHTING_SCHEMES)}"),
            ("logit_std", self.logit_std > 0 and math.isfinite(self.logit_std), "must be > 0"),
            ("timestep_shift", self.timestep_shift in TIMESTEP_SHIFTS, f"choose one of {', '.join(TIMESTEP_SHIFTS)}"),
            ("guidance_embed", self.guidance_embed >= 0 and math.isfinite(self.guidance_embed), "must be >= 0"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "must be in [0, 1)"),
            ("text_encoder_lr", self.text_encoder_lr > 0 and math.isfinite(self.text_encoder_lr), "must be > 0"),
            ("text_encoder_target_modules", bool(self.text_encoder_target_modules), "name at least one module (e.g. q_proj)"),
            ("learning_rate", self.learning_rate > 0 and math.isfinite(self.learning_rate), "must be > 0"),
            ("lr_scheduler", self.lr_scheduler in LR_SCHEDULERS, f"choose one of {', '.join(LR_SCHEDULERS)}"),
            ("lr_warmup_steps", self.lr_warmup_steps >= 0, "must be >= 0"),
            ("adam_epsilon", self.adam_epsilon > 0, "must be > 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be > 0"),
            ("train_batch_size", self.train_batch_size >= 1, "must be >= 1"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, "must be >= 1"),
            ("max_train_steps (--steps)", self.max_train_steps >= 1, "must be >= 1"),
            ("quantize", self.quantize in QUANTIZE, f"choose one of {', '.join(QUANTIZE)}"),
            ("memory_budget", self.memory_budget >= 0 and math.isfinite(self.memory_budget),
             "must be >= 0 GB (0 = the CUDA device's memory)"),
            ("mixed_precision", self.mixed_precision in MIXED_PRECISION, f"choose one of {', '.join(MIXED_PRECISION)}"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0 (0 = only at the end)"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "must be >= 1"),
            ("validate_every", self.validate_every >= -1, "must be >= -1 (-1 = never, 0 = at the end)"),
            ("validation_inference_steps", self.validation_inference_steps >= 1, "must be >= 1"),
            ("validation_images", self.validation_images >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("rounds", self.rounds >= 0, "must be >= 0 (0 = no iterative rounds)"),
            ("round_steps", self.round_steps >= 1, "must be >= 1"),
            ("round_images", self.round_images >= 1, "must be >= 1"),
            ("keep_threshold", self.keep_threshold == -1 or -1 < self.keep_threshold <= 1,
             "a D&C value in (-1, 1], or -1 = the evaluation's successes"),
            ("seed", 0 <= self.seed < 2**63, "must be in [0, 2**63)"),
            ("variant", bool(self.variant) and "/" not in self.variant and "." not in self.variant,
             "auto, none or a weights variant name such as fp16"),
        ]


__all__ = ["GRADIENT_CHECKPOINTING", "LOSS_MASKS", "LR_SCHEDULERS", "MIXED_PRECISION", "MIX_MODES", "NEGATIVE_PROMPT", "PLAIN_CROPS", "PRIOR_PROMPT", "QUANTIZE", "REGULARIZATIONS",
           "RESUME_SAFE_FIELDS", "TrainConfig"]
