"""`mudi train`: DreamBooth-LoRA with Seg-Mix (METHOD.md §2–§3) on SD 1.x/2.x or SDXL.

Options come from METHOD.md defaults, then ``--config run.toml`` (any TrainConfig field), then
flags. The resolved config is saved as OUT/config.toml; ``--resume`` continues OUT from its
latest checkpoint with that saved config.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HELP = "train a multi-subject LoRA with Seg-Mix (DreamBooth-LoRA; SD 1.x/2.x and SDXL)"

#: flag dest -> TrainConfig field
_FIELDS = {
    "subjects": "subjects",
    "base": "base",
    "out": "out",
    "vae": "vae",
    "steps": "max_train_steps",
    "resolution": "resolution",
    "rank": "rank",
    "alpha": "alpha",
    "lr": "learning_rate",
    "lr_scheduler": "lr_scheduler",
    "lr_warmup_steps": "lr_warmup_steps",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "batch_size": "train_batch_size",
    "gradient_accumulation": "gradient_accumulation_steps",
    "mix": "mix",
    "p": "p",
    "k": "k",
    "relative_sizes": "relative_sizes",
    "loss_alpha": "loss_alpha",
    "prior_dir": "prior_dir",
    "prior_weight": "prior_weight",
    "mixed_precision": "mixed_precision",
    "gradient_checkpointing": "gradient_checkpointing",
    "use_8bit_adam": "use_8bit_adam",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "validate_every": "validate_every",
    "validation_prompt": "validation_prompts",
    "validation_steps": "validation_inference_steps",
    "seed": "seed",
    "device": "device",
    "stop_after": "stop_after",
    "resume": "resume",
    "overwrite": "overwrite",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=(
            "Fine-tune a UNet LoRA on a subject set with Seg-Mix (METHOD.md defaults: rank 32, AdamW 1e-4, "
            "batch 1 x accumulation 2, 2010 steps, p=0.3, seed 42). --mix none is the DreamBooth baseline, "
            "--mix cutmix the Cut-Mix baseline. Continue a stopped or killed run with `mudi train --out OUT --resume`. "
            "Multi-GPU: `accelerate launch -m mudi.cli train ...` (no code change)."
        ),
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--subjects", metavar="DIR", help="subject-set folder (from `mudi prepare`)")
    g.add_argument("--base", metavar="MODEL", help="base SD/SDXL pipeline: local folder or hub id")
    g.add_argument("--out", metavar="OUT", help="output folder (new or empty; see --resume/--overwrite)")
    g.add_argument("--config", metavar="TOML", help="run config file (any TrainConfig field); flags override it")
    g.add_argument("--vae", metavar="MODEL",
                   help="VAE override (default: the base model's own VAE, kept in fp32 when its config says "
                        "force_upcast, as the SDXL base VAE does). METHOD.md trains SDXL in fp16 with "
                        "--vae madebyollin/sdxl-vae-fp16-fix (runs in fp16: faster, less memory)")
    g.add_argument("--resolution", type=int, help="training resolution (default: the model's, 1024 SDXL / 512 SD)")
    g = p.add_argument_group("Seg-Mix")
    g.add_argument("--mix", choices=["segmix", "cutmix", "none"], help="composition (default segmix)")
    g.add_argument("--p", type=float, help="composite probability (default 0.3)")
    g.add_argument("--k", type=int, help="subjects per composite (default 2)")
    g.add_argument("--relative-sizes", metavar="NAME=C,...", help="fixed relative Seg-Mix sizes, e.g. a=1,b=0.6")
    g.add_argument("--loss-alpha", type=float, help="mask loss weighting alpha (1 = off, default)")
    g = p.add_argument_group("prior preservation")
    g.add_argument("--prior-dir", metavar="DIR", help="class set from `mudi priors` (default: none)")
    g.add_argument("--prior-weight", type=float, help="prior loss weight (default 1.0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="optimizer steps (default 2010)")
    g.add_argument("--rank", type=int, help="LoRA rank (default 32)")
    g.add_argument("--alpha", type=float, help="LoRA alpha (default 32)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    g.add_argument("--lr-scheduler", choices=["constant", "constant_with_warmup", "linear", "cosine"])
    g.add_argument("--lr-warmup-steps", type=int)
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping norm (default 1.0)")
    g.add_argument("--batch-size", type=int, help="examples per micro-batch (default 1)")
    g.add_argument("--gradient-accumulation", type=int, help="micro-batches per optimizer step (default 2)")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], help="default auto: fp16 on CUDA")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--use-8bit-adam", action=argparse.BooleanOptionalAction, default=None,
                   help="bitsandbytes AdamW8bit (needs bitsandbytes)")
    g.add_argument("--seed", type=int, help="seed of everything (default 42)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default auto)")
    g = p.add_argument_group("checkpoints and validation")
    g.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default 500; 0 = only at the end)")
    g.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (default 2)")
    g.add_argument("--validate-every", type=int,
                   help="validation grid every N steps (default 500; 0 = only at the end; -1 = never)")
    g.add_argument("--validation-prompt", action="append", metavar="PROMPT",
                   help="validation prompt (repeatable); {a}, {b}, ... are replaced by the subjects' phrases "
                        "(default: 'a photo of a {a} and a {b}' and each subject alone)")
    g.add_argument("--validation-steps", type=int, help="sampling steps of validation images (default 25)")
    g.add_argument("--stop-after", type=int, metavar="STEP", help="stop after this step (resume later)")
    g.add_argument("--resume", action="store_true", default=None, help="continue OUT from its latest checkpoint")
    g.add_argument("--overwrite", action="store_true", default=None, help="start over in a non-empty OUT")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """TrainConfig from defaults, --config and flags (flags win)."""
    from mudi.train.config import TrainConfig

    cfg = TrainConfig.from_toml(args.config) if getattr(args, "config", None) else TrainConfig()
    values = {}
    for dest, name in _FIELDS.items():
        v = getattr(args, dest, None)
        if v is not None:
            values[name] = v
    if getattr(args, "no_progress", False):
        values["progress"] = False
    return cfg.updated(values)


def run(args: argparse.Namespace) -> int:
    from mudi.train.recipe import SUMMARY_NAME, train

    cfg = build_config(args)
    out = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`: report once
        return 0
    summary_path = Path(out) / SUMMARY_NAME
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("finished"):
        print(f"mudi train: LoRA written to {out}/pytorch_lora_weights.safetensors "
              f"({summary.get('step')} steps, text-encoder calls per step: {summary.get('text_encoder_calls_per_step')}).")
        print(f"  load it with: pipe.load_lora_weights({str(out)!r})")
    else:
        print(f"mudi train: stopped after step {summary.get('step')} of {summary.get('max_train_steps')}; "
              f"continue with: mudi train --out {out} --resume")
    return 0
