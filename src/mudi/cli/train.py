"""`mudi train`: DreamBooth-LoRA with Seg-Mix (METHOD.md §2–§3) on SD 1.x/2.x or SDXL.

Options come from the TrainConfig defaults, then ``--config run.toml`` (its ``[train]`` table or
top-level keys), then flags (made from the TrainConfig fields). The resolved config is saved as
OUT/config.toml; ``--resume`` continues OUT from its latest checkpoint with that saved config.
"""

from __future__ import annotations

import argparse
import os

HELP = "train a multi-subject LoRA with Seg-Mix (DreamBooth-LoRA; SD 1.x/2.x and SDXL)"

#: TrainConfig fields as flags, by argument group.
GROUPS = {
    "data and model": ("subjects", "only", "base", "out", "vae", "variant", "resolution", "plain_crop", "init_lora",
                       "extra_examples"),
    "Seg-Mix": ("mix", "p", "k", "relative_sizes", "loss_alpha", "loss_mask", "segmix_margin", "segmix_start_step"),
    "regularization (prior preservation, DCO)": ("reg", "prior_dir", "prior_weight", "class_layout", "dco_beta"),
    "LoRA": ("rank", "alpha", "target_modules", "lora_dropout", "train_text_encoder", "text_encoder_lr",
             "text_encoder_target_modules"),
    "flow matching (FLUX.1, SD3.5)": ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "timestep_shift",
                                      "guidance_embed"),
    "optimisation": ("max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps", "weight_decay",
                     "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "train_batch_size",
                     "gradient_accumulation_steps", "mixed_precision", "gradient_checkpointing", "tf32", "use_8bit_adam",
                     "seed"),
    "iterative training (the run file's [generate] and [evaluate] tables set the rounds' sampling and scoring)":
        ("rounds", "round_steps", "round_images", "round_prompts", "keep_threshold"),
    "checkpoints, validation, logging": ("checkpoint_every", "keep_checkpoints", "validate_every",
                                         "validation_prompts", "validation_negative_prompt",
                                         "validation_inference_steps", "validation_guidance_scale",
                                         "validation_images", "log_every"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from mudi.settings import RUN_OPTION_NAMES, RunOptions, add_arguments, add_config_argument
    from mudi.train.config import TrainConfig

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
    add_config_argument(p, TrainConfig)
    for title, names in GROUPS.items():
        group = p.add_argument_group(title)
        add_arguments(group, TrainConfig, names)
        if "gradient_checkpointing" in names:
            _checkpointing_switches(p, group)
    g = p.add_argument_group("this invocation (not saved)")
    add_arguments(g, RunOptions, RUN_OPTION_NAMES)
    g.add_argument("--stop-after", type=int, metavar="STEP", default=0,
                   help="stop after this optimizer step (continue later with --resume)")
    p.set_defaults(func=run)


def _checkpointing_switches(parser: argparse.ArgumentParser, group) -> None:
    """``--gradient-checkpointing`` alone means on (as when it was a switch); ``--no-gradient-checkpointing`` = off."""
    action = next(a for a in parser._actions if a.dest == "gradient_checkpointing")
    action.nargs, action.const = "?", "on"
    group.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const="off",
                       help="same as --gradient-checkpointing off")


def build_config(args: argparse.Namespace):
    """TrainConfig from defaults, --config and flags (flags win)."""
    from mudi.settings import given_values
    from mudi.train.config import TrainConfig

    cfg = TrainConfig.from_toml(args.config) if getattr(args, "config", None) else TrainConfig()
    return cfg.updated(given_values(args, TrainConfig))


def run(args: argparse.Namespace) -> int:
    from mudi.errors import MudiError
    from mudi.settings import run_options
    from mudi.train import train

    if args.stop_after < 0:
        raise MudiError(f"--stop-after {args.stop_after}: must be >= 0 (0 = run to the end).")
    config, options = build_config(args), run_options(args)
    if config.rounds or (options.resume and _saved_rounds(config.out)):
        return _run_rounds(args, config, options)
    result = train(config, options, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch`: report once
        return 0
    out, summary = result.out, result.summary
    if result.finished:
        print(f"mudi train: LoRA written to {out}/pytorch_lora_weights.safetensors "
              f"({summary.get('step')} steps, text-encoder calls per step: {summary.get('text_encoder_calls_per_step')}).")
        print(f"  load it with: pipe.load_lora_weights({str(out)!r})")
    else:
        print(f"mudi train: stopped after step {summary.get('step')} of {summary.get('max_train_steps')}; "
              f"continue with: mudi train --out {out} --resume")
    return 0


def _saved_rounds(out: str) -> int:
    """The ``rounds`` of the run saved in OUT (0 without one)."""
    from pathlib import Path

    from mudi.settings import read_section

    saved = Path(out) / "config.toml" if out else None
    return int(read_section(saved, "train").get("rounds") or 0) if saved and saved.is_file() else 0


def _run_rounds(args: argparse.Namespace, config, options) -> int:
    """``mudi train --rounds N``: iterative training (:func:`mudi.workflows.iterate`)."""
    from mudi.errors import MudiError
    from mudi.evaluate import EvaluateConfig
    from mudi.generate import GenerateConfig
    from mudi.workflows import iterate

    if args.stop_after:
        raise MudiError("--stop-after does not combine with --rounds; stop the run any time and continue it "
                        "with `mudi train --out OUT --resume`.")
    run_file = getattr(args, "config", None)
    generate = GenerateConfig.from_toml(run_file) if run_file else None
    evaluate = EvaluateConfig.from_toml(run_file) if run_file else None
    result = iterate(config, options, generate=generate, evaluate=evaluate)
    for row in result.rounds:
        print(f"round {row['round']}: {row['images']} images, kept {row['kept']}, mean D&C {row['dnc_mean']}, "
              f"success rate {row['success_rate']}")
    print(f"mudi train: final LoRA written to {result.lora} (rounds under {result.out}/rounds/).")
    return 0
