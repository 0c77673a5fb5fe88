"""`mudi tiny-models`: write tiny random-weight models for offline smoke tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from mudi.io import claim_output_dir, write_text_atomic
from mudi.models.tiny import ALL_PARTS, TINY_IMAGE_SIZE, TINY_PIPELINE_RESOLUTION, build_tiny_models, parse_parts

_README = """\
Tiny random-weight models written by `mudi tiny-models` (seed {seed}).

They have the real architectures and the real CLIP tokenizer vocabulary but random weights:
outputs are noise. Use them only to check that a mudi command runs end to end offline, e.g.

  mudi train --subjects SET --base {root}/sdxl --out LORA --steps 4 --resolution {res}
  mudi generate --base {root}/sdxl --lora LORA --subjects SET --prompt "..." --resolution {res} --steps 2 --out OUT
  mudi prepare --subject "olis corgi=DIR" ... --detector {root}/owlv2 --segmenter {root}/sam --out SET
  mudi evaluate --images OUT --subjects SET --detector {root}/owlv2 --embedder {root}/dinov2 --clip {root}/clip --out EVAL

Parts: {parts}
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tiny-models`` verb."""
    p = subparsers.add_parser(
        "tiny-models",
        help="write tiny random-weight models (SDXL, SD, OWLv2, SAM, DINOv2, CLIP) for offline smoke tests",
        description=(
            "Build tiny random-weight models from config objects (no download) and save each as an "
            "ordinary local model folder OUT/<part>, usable wherever mudi accepts a model name. "
            f"Pipelines are meant for {TINY_PIPELINE_RESOLUTION}x{TINY_PIPELINE_RESOLUTION} px."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (one subfolder per part)")
    p.add_argument(
        "--parts",
        default=",".join(ALL_PARTS),
        help=f"comma-separated parts to build (default: all of {','.join(ALL_PARTS)})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=run)


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run(args: argparse.Namespace) -> int:
    """Build the requested tiny models into ``args.out`` and print what was written."""
    parts = parse_parts(args.parts)
    out = claim_output_dir(args.out, overwrite=args.overwrite, what="tiny models", create=True)
    print(f"Building tiny random-weight models {', '.join(parts)} into {out} ...", flush=True)
    written = build_tiny_models(out, parts=parts, seed=args.seed)
    write_text_atomic(
        out / "README.txt",
        _README.format(seed=args.seed, root=out, res=TINY_PIPELINE_RESOLUTION, parts=", ".join(written)),
    )
    for part, folder in written.items():
        size = _folder_size(folder) / 2**20
        note = (
            f"pipeline, run at {TINY_PIPELINE_RESOLUTION}px"
            if part in ("sdxl", "sd")
            else f"inputs resized to {TINY_IMAGE_SIZE[part]}px"
        )
        print(f"  {part:7s} {folder}  ({size:.1f} MB; {note})")
    print(f"Done. Pass a folder above as a model name, e.g. --model {written[parts[0]]}")
    return 0
