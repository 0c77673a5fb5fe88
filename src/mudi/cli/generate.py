"""`mudi generate`: sample images with a personalized model and mean-shifted initialization."""

from __future__ import annotations

import argparse
import sys
import warnings

from mudi.generate import NEGATIVE_PROMPT, SCHEDULERS, GenerateConfig, GenerateWarning, generate, read_prompts_file
from mudi.generate.init import DEFAULT_GAMMA
from mudi.generate.layout import DEFAULT_FILL, DEFAULT_JITTER, LayoutWarning

_EPILOG = """\
examples:
  mudi generate --lora runs/dogs --prompt "a photo of olis corgi and hta chow chow in a garden" --n 8 --out gen
  mudi generate --base stabilityai/stable-diffusion-xl-base-1.0 --lora runs/dogs --subjects data/dogs \\
      --prompts prompts.txt --n 4 --layout boxes.json --gamma 3 --save-init --out gen
  mudi generate ... --layout llm --llm-url http://127.0.0.1:8000/v1 --llm-model qwen2.5-7b-instruct

Prompts name subjects by identifier ("olis corgi") or by placeholder ({a}, {olis}) which expands to
the subject's phrase. Layout file (JSON, boxes in pixels of the output resolution, or give "size"):
  {"size": 1024, "boxes": [{"key": "olis", "box": [60, 300, 480, 900]}, {"key": "hta", "box": [540, 250, 990, 900]}]}
--layout llm reads MUDI_LLM_URL / MUDI_LLM_MODEL / MUDI_LLM_API_KEY (or OPENAI_BASE_URL / OPENAI_MODEL /
OPENAI_API_KEY) unless --llm-url/--llm-model are given; a failed answer falls back to the automatic layout.
Output: OUT/0000.png + 0000.json (sidecar: prompt, seed, subjects, layout, gamma, init, base, lora, ...),
0000_init.png with --save-init, contact_sheet.png, generate_config.json. Image i uses seed --seed + i.
"""


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
    g = p.add_argument_group("model and subjects")
    g.add_argument("--base", default="", help="base model (diffusers SD/SDXL folder or hub id); default: the "
                   "base in --lora's config.toml")
    g.add_argument("--lora", default="", help="LoRA folder from `mudi train` (holds pytorch_lora_weights.safetensors) "
                   "or a .safetensors file; omit to sample the base model")
    g.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1.0)")
    g.add_argument("--subjects", default="", help="subject-set folder (default: the one in --lora's config.toml)")
    g.add_argument("--vae", default="", help="VAE override (e.g. madebyollin/sdxl-vae-fp16-fix)")
    g = p.add_argument_group("prompts and output")
    g.add_argument("--prompt", action="append", default=[], help="prompt (repeatable)")
    g.add_argument("--prompts", default="", help="file with one prompt per line (or a JSON list)")
    g.add_argument("--n", type=int, default=4, help="images per prompt (default 4)")
    g.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default 1; raise it on a GPU)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--negative-prompt", default=NEGATIVE_PROMPT, help=f"default: {NEGATIVE_PROMPT!r}")
    g.add_argument("--save-init", action="store_true", help="also save each init canvas (0000_init.png, init_sheet.png)")
    g.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (replacing same-named images)")
    g.add_argument("--resume", action="store_true", help="keep images of OUT whose sidecar has the same settings; make the rest")
    g = p.add_argument_group("initialization and layout")
    g.add_argument("--init", choices=("mudi", "none"), default="mudi", help="mean-shifted init (default) or plain noise")
    g.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help=f"γ, strength of the init shift (default {DEFAULT_GAMMA:g})")
    g.add_argument("--layout", default="auto", help="auto (default), llm, or a JSON file of boxes")
    g.add_argument("--sizes", default="", help="relative subject sizes for the auto layout, e.g. olis=1,hta=0.6")
    g.add_argument("--fill", type=float, default=DEFAULT_FILL, help=f"auto layout: share of a slot a subject fills (default {DEFAULT_FILL})")
    g.add_argument("--jitter", type=float, default=DEFAULT_JITTER, help=f"auto layout: random shift (default {DEFAULT_JITTER})")
    g.add_argument("--photo", type=int, default=-1, help="reference photo index per subject on the canvas (default: random per image)")
    g.add_argument("--llm-url", default="", help="OpenAI-compatible endpoint for --layout llm")
    g.add_argument("--llm-model", default="", help="model name for --layout llm")
    g.add_argument("--llm-timeout", type=float, default=60.0, help="seconds to wait for the LLM (default 60)")
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=int, default=30, help="inference steps (default 30)")
    g.add_argument("--resolution", type=int, default=0, help="image side in pixels (default: the model's, 1024 for SDXL)")
    g.add_argument("--seed", type=int, default=0, help="seed of image 0; image i uses seed + i (default 0)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--scheduler", choices=("default", *SCHEDULERS), default="default",
                   help="sampler (default: the model's own)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="weights dtype (auto: fp16 on CUDA, fp32 otherwise)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    """Build a :class:`GenerateConfig` from parsed arguments."""
    prompts = list(args.prompt)
    if args.prompts:
        prompts += read_prompts_file(args.prompts)
    return GenerateConfig(
        prompts=prompts, out=args.out, base=args.base, lora=args.lora, subjects=args.subjects, n=args.n,
        batch_size=args.batch_size, init=args.init, gamma=args.gamma, layout=args.layout, sizes=args.sizes or {},
        fill=args.fill, jitter=args.jitter, photo=args.photo, steps=args.steps, resolution=args.resolution, seed=args.seed,
        guidance=args.guidance, negative_prompt=args.negative_prompt, scheduler=args.scheduler,
        lora_scale=args.lora_scale, vae=args.vae, save_init=args.save_init, overwrite=args.overwrite,
        resume=args.resume, device=args.device, dtype=args.dtype, llm_url=args.llm_url,
        llm_model=args.llm_model, llm_timeout=args.llm_timeout, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Generate the images; print where they are."""
    config = config_from_args(args)

    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (LayoutWarning, GenerateWarning)):
            print(f"mudi generate: warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", LayoutWarning)
        warnings.simplefilter("always", GenerateWarning)
        warnings.showwarning = show
        paths = generate(config)
    print(f"wrote {len(paths)} image(s) with sidecars to {config.out} (contact sheet: {config.out}/contact_sheet.png)")
    return 0
