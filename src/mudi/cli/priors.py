"""`mudi priors`: generate and segment the class images used for prior preservation (METHOD.md §3).

For every distinct class of the subject set, generate N images with the base model from
"a photo of a {class}, simple background, full body view, award winning photography, highly
detailed", segment them like reference photos (detector threshold 0.4, SAM) and write a
class-set folder that `mudi train --prior-dir` reads.
"""

from __future__ import annotations

import argparse

from mudi.settings import RUN_OPTION_NAMES, RunOptions, add_arguments, given_values, run_options

HELP = "generate segmented class images for prior preservation (mudi train --prior-dir)"

#: The PriorsConfig fields that are flags, in ``--help`` order.
FLAGS = ("base", "subjects", "out", "n", "detector", "segmenter", "threshold", "prompt", "resolution", "steps",
         "guidance_scale", "batch_size", "seed", "vae", "max_tries")


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
    add_arguments(p, PriorsConfig, FLAGS)
    add_arguments(p.add_argument_group("how to run"), RunOptions, [n for n in RUN_OPTION_NAMES if n != "resume"])
    p.set_defaults(func=run)


def check_cheap(config, options: RunOptions):
    """Everything that needs no model, before any is loaded: the values, the output folder, the
    subject set, the base model folder (and the resolution against it), the device."""
    from mudi.errors import MudiError
    from mudi.io import claim_output_dir
    from mudi.models.loading import inspect_model
    from mudi.runtime import pick_device
    from mudi.subjects import SubjectSet

    config.check()
    for name in ("base", "subjects", "out"):
        if not getattr(config, name):
            raise MudiError(f"--{name} is required.")
    claim_output_dir(config.out, overwrite=options.overwrite, what="class set")
    sset = SubjectSet.load(config.subjects)
    info = inspect_model(config.base)
    if info is not None and config.resolution:
        info.check_resolution(config.resolution)
    return sset, pick_device(options.device)


def run(args: argparse.Namespace) -> int:
    """Generate the class set; print where it is."""
    from mudi.models.loading import load_pipeline
    from mudi.prepare import load_models
    from mudi.runtime import resolve_dtype
    from mudi.train.priors import PriorsConfig, generate_class_set

    config = PriorsConfig().updated(given_values(args, PriorsConfig))
    options = run_options(args)
    sset, device = check_cheap(config, options)
    no_detector = config.detector.lower() == "none"
    detector, segmenter = load_models(
        None if no_detector else (config.detector or None), config.segmenter or None, not no_detector, True,
        device="cuda" if device.type == "cuda" else "cpu",
    )
    pipe = load_pipeline(config.base, dtype=resolve_dtype("auto", device), device=device, vae=config.vae or None)
    pipe.set_progress_bar_config(disable=True)
    failed: list[str] = []
    cset = generate_class_set(pipe, sset, config, options, detector=detector, segmenter=segmenter,
                              on_image=lambda cls, i, why: failed.append(f"{cls} #{i}: {why}"))
    counts = ", ".join(f"{c}: {len(v)}" for c, v in cset.photos.items())
    print(f"mudi priors: class set written to {config.out} ({counts}); {len(failed)} generated image(s) "
          "could not be segmented and were replaced.")
    short = [c for c, v in cset.photos.items() if len(v) < config.n]
    if short:
        print(f"  warning: fewer than {config.n} images for {', '.join(short)} (segmentation failed too often).")
    print(f"  use it with: mudi train --prior-dir {config.out} ...")
    return 0
