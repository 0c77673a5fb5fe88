"""`mudi generate`: sample images with a personalized model and mean-shifted initialization."""

from __future__ import annotations

import argparse
import sys
import warnings

from mudi.generate import GenerateConfig, GenerateWarning, generate, read_prompts_file
from mudi.generate.layout import LayoutWarning
from mudi.runtime import processes
from mudi.settings import RUN_OPTION_NAMES, RunOptions, add_arguments, add_config_argument, given_values, run_options

_EPILOG = """\
examples:
  mudi generate --lora runs/dogs --prompt "a photo of olis corgi and hta chow chow in a garden" --n 8 --out gen
  mudi generate --base stabilityai/stable-diffusion-xl-base-1.0 --lora runs/dogs --subjects data/dogs \\
      --prompts prompts.txt --n 4 --layout boxes.json --gamma 3 --save-init --out gen
  mudi generate ... --layout llm --llm-url http://127.0.0.1:8000/v1 --llm-model qwen2.5-7b-instruct
  mudi generate --config run.toml --out gen      # the [generate] table of a run file; flags override it

Prompts name subjects by identifier ("olis corgi") or by placeholder ({a}, {olis}) which expands to
the subject's phrase. Layout file (JSON, boxes in pixels of the output resolution, or give "size"):
  {"size": 1024, "boxes": [{"key": "olis", "box": [60, 300, 480, 900]}, {"key": "hta", "box": [540, 250, 990, 900]}]}
--layout llm reads MUDI_LLM_URL / MUDI_LLM_MODEL / MUDI_LLM_API_KEY (or OPENAI_BASE_URL / OPENAI_MODEL /
OPENAI_API_KEY) unless --llm-url/--llm-model are given; a failed answer falls back to the automatic layout.
Output: OUT/0000.png + 0000.json (sidecar: prompt, seed, subjects, layout, gamma, init, base, lora, ...),
0000_init.png with --save-init, contact_sheet.png, config.toml (the resolved settings: a run file for
--config). Image i uses seed --seed + i.
"""

#: Flags per help group, in the order ``--help`` shows them (every GenerateConfig field but the API key).
GROUPS = {
    "model and subjects": ("base", "lora", "lora_scale", "fuse_lora", "subjects", "vae"),
    "prompts and output": ("prompts", "n", "batch_size", "out", "negative_prompt", "save_init"),
    "initialization and layout": ("init", "gamma", "init_sigma", "layout", "sizes", "fill", "jitter", "photo", "llm_url",
                                  "llm_model", "llm_timeout"),
    "sampling": ("steps", "resolution", "seed", "guidance", "scheduler", "dtype"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` verb."""
    p = subparsers.add_parser(
        "generate",
        help="generate multi-subject images with a trained LoRA and mean-shifted initialization",
        description=(
            "Generate images of several personalized subjects at once (METHOD.md §4): the sampler starts "
            "from a latent that already holds the segmented subjects placed by a layout (--init mudi)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(p, GenerateConfig)
    p.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                   help="file with one prompt per line (or a JSON list), added to --prompt")
    for title, names in GROUPS.items():
        add_arguments(p.add_argument_group(title), GenerateConfig, names)
    add_arguments(p.add_argument_group("how to run"), RunOptions, RUN_OPTION_NAMES)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    """The :class:`GenerateConfig` of a command line: defaults, then ``--config``'s table, then the
    flags; the prompts of ``--prompts FILE`` are added to the others. Checked."""
    config = GenerateConfig.from_toml(args.config) if args.config else GenerateConfig()
    config = config.updated(given_values(args, GenerateConfig))
    if args.prompts_file:
        config = config.updated({"prompts": config.prompts + read_prompts_file(args.prompts_file)})
    config.check()
    return config


class WarningPrinter:
    """``warnings.showwarning`` that prints the layout and generate warnings as one line
    ("mudi generate: warning: ...") and leaves every other warning to ``fallback``."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, (LayoutWarning, GenerateWarning)):
            print(f"mudi generate: warning: {message}", file=sys.stderr)
        else:
            self.fallback(message, category, filename, lineno, file, line)


def run(args: argparse.Namespace) -> int:
    """Generate the images; print where they are."""
    config = config_from_args(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always", LayoutWarning)
        warnings.simplefilter("always", GenerateWarning)
        warnings.showwarning = WarningPrinter(warnings.showwarning)
        paths = generate(config, run_options(args))
    if not processes().is_main:  # under accelerate launch the main process reports for all
        return 0
    print(f"wrote {len(paths)} image(s) with sidecars to {config.out} (contact sheet: {config.out}/contact_sheet.png)")
    return 0
