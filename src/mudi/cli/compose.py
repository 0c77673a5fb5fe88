"""`mudi compose`: write the training examples Seg-Mix (or Cut-Mix) would make, so a person sees
what training will see.

Output folder: ``composite_0000.png``, ``composite_0000_mask.png`` (union mask, 0/255), ...,
``captions.jsonl`` (one line per example: file names, caption, subjects, kind, placements) and
``grid.png`` (contact sheet with captions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mudi.errors import MudiError

HELP = "preview training composites (Seg-Mix / Cut-Mix) of a subject set"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compose",
        help=HELP,
        description=(
            "Write N training examples of a subject set as training would see them: Seg-Mix "
            "composites (segmented subjects on white), Cut-Mix composites, or plain photos."
        ),
    )
    p.add_argument("--subjects", required=True, type=Path, metavar="DIR", help="subject-set folder (metadata.jsonl)")
    p.add_argument("--n", type=int, default=16, metavar="N", help="number of examples to write (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="output folder (must be empty or new)")
    p.add_argument("--size", type=int, default=1024, help="canvas side S in pixels (default 1024, the SDXL training size)")
    p.add_argument("--mix", choices=["segmix", "cutmix", "none"], default="segmix", help="composition kind (default segmix)")
    p.add_argument(
        "--p", type=float, default=1.0, dest="p",
        help="probability that an example is a composite (default 1 for this preview; training uses 0.3)",
    )
    p.add_argument("--k", type=int, default=2, help="subjects per composite (default 2)")
    p.add_argument(
        "--relative-sizes", default=None, metavar="NAME=C,...",
        help="fixed relative sizes, e.g. a=1,b=0.6 (scale = m*C, 0 < C <= 1; unlisted subjects get 1)",
    )
    p.add_argument("--low", type=float, default=0.75, help="Seg-Mix scale range low fraction of m (default 0.75)")
    p.add_argument(
        "--margin", type=float, default=None,
        help="Seg-Mix margin in pixels (default 32; S/8 for canvases under 256 px)",
    )
    p.add_argument(
        "--edge-range", type=int, default=None,
        help="Seg-Mix horizontal offset range in pixels (default S/(2k), i.e. S/4 for two subjects)",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mudi.compose.mix import Composer, parse_relative_sizes
    from mudi.io import claim_output_dir, save_image_atomic, write_text_atomic
    from mudi.subjects import SubjectSet
    from mudi.viz import grid

    # ---- validate everything before writing anything
    if args.n <= 0:
        raise MudiError(f"--n must be a positive number of examples (got {args.n}).")
    if args.size < 16:
        raise MudiError(f"--size must be at least 16 pixels (got {args.size}).")
    if not 0 <= args.p <= 1:
        raise MudiError(f"--p must be a probability in [0, 1] (got {args.p}).")
    if args.k < 2:
        raise MudiError(f"--k must be at least 2 subjects per composite (got {args.k}).")
    relative = parse_relative_sizes(args.relative_sizes) if args.relative_sizes else None
    out = claim_output_dir(args.out, overwrite=args.overwrite, what="compose output")
    sset = SubjectSet.load(args.subjects)
    composer = Composer(
        sset, args.size, mix=args.mix, p=args.p, k=args.k, low=args.low, margin=args.margin,
        edge_range=args.edge_range, relative_sizes=relative,
    )

    # ---- write
    out = claim_output_dir(out, overwrite=args.overwrite, what="compose output", create=True)
    rng = np.random.default_rng(args.seed)
    keys = sset.keys
    lines, thumbs, labels = [], [], []
    n_comp = 0
    for i in tqdm(range(args.n), desc="compose", unit="img"):
        key = keys[i % len(keys)]
        index = (i // len(keys)) % len(sset.photos(key))
        ex = composer.example(key, index, rng)
        n_comp += ex.is_composite
        name, mask_name = f"composite_{i:04d}.png", f"composite_{i:04d}_mask.png"
        save_image_atomic(ex.image, out / name)
        save_image_atomic(ex.mask, out / mask_name)
        rec = {"file_name": name, "mask_file": mask_name, **ex.to_dict()}
        rec["phrases"] = [sset.subject(k).phrase for k in ex.subjects]
        lines.append(json.dumps(rec, ensure_ascii=False))
        thumbs.append(ex.image.resize((256, 256)))
        labels.append(f"{i:04d} {ex.caption}")
    write_text_atomic(out / "captions.jsonl", "\n".join(lines) + "\n")
    save_image_atomic(grid(thumbs, labels=labels, cell=256), out / "grid.png")
    print(f"wrote {args.n} examples ({n_comp} composites, mix={args.mix}, k={args.k}, S={args.size}) to {out}")
    print(f"contact sheet: {out / 'grid.png'}")
    return 0
