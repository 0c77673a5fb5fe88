"""`mudi priors`: generate and segment the class images used for prior preservation (METHOD.md §3).

For every distinct class of the subject set, generate N images with the base model from
"a photo of a {class}, simple background, full body view, award winning photography, highly
detailed", segment them like reference photos (detector threshold 0.4, SAM) and write a
class-set folder that `mudi train --prior-dir` reads.
"""

from __future__ import annotations

import argparse

from mudi.settings import RUN_OPTION_NAMES, RunOptions, add_arguments, add_config_argument, given_values, resolve, run_options

HELP = "generate segmented class images for prior preservation (mudi train --prior-dir)"

#: The PriorsConfig fields that are flags, in ``--help`` order.
FLAGS = ("base", "subjects", "out", "n", "detector", "segmenter", "threshold", "margin", "prompt", "negative_prompt",
         "caption", "resolution", "steps", "guidance_scale", "batch_size", "seed", "vae", "max_tries")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``priors`` verb."""
    from mudi.train.priors import PriorsConfig

    p = subparsers.add_parser(
        "priors",
        help=HELP,
        description=(
            "Generate N class images per subject class with the base model and segment them "
            "(OWLv2 at threshold 0.4 + SAM) into a class-set folder for `mudi train --prior-dir`."
        ),
    )
    add_config_argument(p, PriorsConfig)
    add_arguments(p, PriorsConfig, FLAGS)
    add_arguments(p.add_argument_group("how to run"), RunOptions, [n for n in RUN_OPTION_NAMES if n != "resume"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the class set; print where it is."""
    from mudi.train.priors import PriorsConfig, make_class_set

    config = resolve(PriorsConfig, run_file=args.config, values=given_values(args, PriorsConfig))
    failed: list[str] = []
    cset = make_class_set(config, run_options(args), on_image=lambda cls, i, why: failed.append(f"{cls} #{i}: {why}"))
    counts = ", ".join(f"{c}: {len(v)}" for c, v in cset.photos.items())
    print(f"mudi priors: class set written to {config.out} ({counts}); {len(failed)} generated image(s) "
          "could not be segmented and were replaced.")
    short = [c for c, v in cset.photos.items() if len(v) < config.n]
    if short:
        print(f"  warning: fewer than {config.n} images for {', '.join(short)} (segmentation failed too often).")
    print(f"  use it with: mudi train --prior-dir {config.out} ...")
    return 0
