"""`mudi priors`: generate and segment the class images used for prior preservation (METHOD.md §3).

For every distinct class of the subject set, generate N images with the base model from
"a photo of a {class}, simple background, full body view, award winning photography, highly
detailed", segment them like reference photos (detector threshold 0.4, SAM) and write a
class-set folder that `mudi train --prior-dir` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generate segmented class images for prior preservation (mudi train --prior-dir)"


def register(subparsers: argparse._SubParsersAction) -> None:
    from mudi.train.config import PRIOR_PROMPT

    p = subparsers.add_parser(
        "priors",
        help=HELP,
        description=(
            "Generate N class images per subject class with the base model and segment them "
            "(OWLv2 at threshold 0.4 + SAM) into a class-set folder for `mudi train --prior-dir`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--base", required=True, metavar="MODEL", help="base SD/SDXL pipeline (folder or hub id)")
    p.add_argument("--subjects", required=True, type=Path, metavar="DIR", help="subject set whose classes to generate")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="class-set output folder (new or empty)")
    p.add_argument("--n", type=int, default=50, help="images per class")
    p.add_argument("--detector", default=None, metavar="ID|DIR|none",
                   help="OWLv2 detector (default google/owlv2-base-patch16-ensemble); 'none' = central box")
    p.add_argument("--segmenter", default=None, metavar="ID|DIR|grabcut",
                   help="SAM segmenter (default facebook/sam-vit-huge) or grabcut (weight-free)")
    p.add_argument("--threshold", type=float, default=0.4, help="detector score threshold")
    p.add_argument("--prompt", default=PRIOR_PROMPT, help="class prompt template ({cls} = the class)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--batch-size", type=int, default=1, help="images per pipeline call")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--vae", default=None, metavar="MODEL", help="VAE override (e.g. madebyollin/sdxl-vae-fp16-fix)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mudi.errors import MudiError
    from mudi.io import prepare_output_dir
    from mudi.subjects import SubjectSet

    # everything cheap first
    if args.n < 1:
        raise MudiError(f"--n must be >= 1 (got {args.n}).")
    if not 0 < args.threshold <= 1:
        raise MudiError(f"--threshold must be in (0, 1] (got {args.threshold}).")
    if args.steps < 1 or args.batch_size < 1:
        raise MudiError("--steps and --batch-size must be >= 1.")
    if "{cls}" not in args.prompt:
        raise MudiError(f"--prompt must contain {{cls}} (got {args.prompt!r}).")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise MudiError(f"{out}: the output folder already has content. Choose another --out or pass --overwrite.")
    sset = SubjectSet.load(args.subjects)
    from mudi.models.loading import inspect_model
    from mudi.runtime import pick_device

    info = inspect_model(args.base)
    if info is not None and args.resolution:
        info.check_resolution(args.resolution)
    device = pick_device(args.device)

    from mudi.prepare import load_models

    no_detector = str(args.detector).lower() == "none"
    detector, segmenter = load_models(
        None if no_detector else args.detector, args.segmenter, not no_detector, True,
        device="cuda" if device.type == "cuda" else "cpu",
    )
    from mudi.models.loading import load_pipeline
    from mudi.train.priors import generate_class_set

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(args.base, dtype=dtype, device=device, vae=args.vae)
    pipe.set_progress_bar_config(disable=True)
    out = prepare_output_dir(out, overwrite=args.overwrite, what="class set")
    failed: list[str] = []
    cset = generate_class_set(
        pipe, sset, out, n=args.n, detector=detector, segmenter=segmenter, threshold=args.threshold,
        prompt=args.prompt, resolution=args.resolution, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
        progress=not args.no_progress, on_image=lambda cls, i, why: failed.append(f"{cls} #{i}: {why}"),
    )
    counts = ", ".join(f"{c}: {len(v)}" for c, v in cset.photos.items())
    print(f"mudi priors: class set written to {out} ({counts}); {len(failed)} generated image(s) "
          "could not be segmented and were replaced.")
    short = [c for c, v in cset.photos.items() if len(v) < args.n]
    if short:
        print(f"  warning: fewer than {args.n} images for {', '.join(short)} (segmentation failed too often).")
    print(f"  use it with: mudi train --prior-dir {out} ...")
    return 0
