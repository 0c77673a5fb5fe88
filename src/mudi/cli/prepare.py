"""`mudi prepare`: build a segmented subject set, from raw photos or from an existing set.

    mudi prepare --from DIR --out OUT
    mudi prepare --subject "olis corgi=photos/corgi" --subject "hta chow chow=photos/chow" --out OUT

Output folder OUT: the subject set (metadata.jsonl, photos, mask_*.png), contact_sheet.png,
failures.json (photos left out, with reasons) and prepare.json (settings and per-photo details).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mudi.errors import MudiError

HELP = "segment reference photos into a subject set (OWLv2 + SAM, or your masks/boxes), or import a set"

_EPILOG = """\
Masks for a photo, in order of precedence: a mask file (mask_<name>.png next to the photo, or
<name>.png / mask_<name>.png in --masks DIR), the photo's alpha channel (RGBA), a box from
--boxes (JSON {"a00.jpg": [x0, y0, x1, y1], ...}, pixels of the upright photo; skips detection),
else OWLv2 detection with the subject's class as the query: exactly one box above --threshold
is required, otherwise the photo fails and is listed with the reason. Boxes are enlarged by
--margin of the image size per side and segmented with SAM (one box prompt, one mask).
--segmenter grabcut uses OpenCV GrabCut instead: a weight-free fallback with rougher masks.
Captions: "a photo of a <identifier class>", or <name>.txt next to the photo, or --captions JSON.
Failed photos are left out (exit 0 with a warning) unless --strict; a subject with no usable
photo is an error. Nothing is written when the command fails.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` verb."""
    p = subparsers.add_parser(
        "prepare",
        help=HELP,
        description=(
            "Make a subject set (metadata.jsonl + photos + masks) from raw photos (detect with OWLv2,\n"
            "segment with SAM; METHOD.md §1), or validate and copy an existing set (--from). Writes\n"
            "contact_sheet.png to check every mask at a glance, failures.json and prepare.json."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("input (one of)")
    src.add_argument("--from", dest="src", type=Path, metavar="DIR",
                     help="import an existing subject-set folder (metadata.jsonl with masks)")
    src.add_argument("--subject", action="append", default=[], metavar="'IDENTIFIER CLASS=FOLDER'",
                     help="a subject: its phrase and its photo folder, e.g. \"olis corgi=photos/corgi\" "
                          "(repeat, at least twice; the identifier is the first word)")
    p.add_argument("--out", required=True, type=Path, metavar="OUT", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (files are replaced one by one)")
    seg = p.add_argument_group("segmenting raw photos (--subject)")
    seg.add_argument("--detector", default=None, metavar="ID|DIR",
                     help="OWLv2 checkpoint: hub id or local folder (default google/owlv2-base-patch16-ensemble)")
    seg.add_argument("--segmenter", default=None, metavar="ID|DIR|grabcut",
                     help="SAM checkpoint: hub id or local folder (default facebook/sam-vit-huge), or "
                          "'grabcut' for the weight-free OpenCV GrabCut fallback (rougher masks)")
    seg.add_argument("--threshold", type=float, default=None,
                     help="detector score threshold (default 0.2); exactly one box must pass it")
    seg.add_argument("--nms-iou", type=float, default=0.5, metavar="IOU",
                     help="overlapping detector boxes with IoU above this count as one box (default 0.5; "
                          "1 keeps the raw boxes)")
    seg.add_argument("--margin", type=float, default=None,
                     help="box enlargement per side, as a fraction of the image size (default 0.05)")
    seg.add_argument("--boxes", type=Path, default=None, metavar="FILE",
                     help="JSON mapping photo file names to [x0, y0, x1, y1] boxes (skips detection for them)")
    seg.add_argument("--masks", type=Path, default=None, metavar="DIR",
                     help="folder of mask files named like the photos (<name>.png or mask_<name>.png)")
    seg.add_argument("--captions", type=Path, default=None, metavar="FILE",
                     help="JSON mapping photo file names to captions (default \"a photo of a <phrase>\")")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="where to run the models (default: cuda if available)")
    seg.add_argument("--strict", action="store_true",
                     help="fail (write nothing) if any photo fails, instead of leaving it out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise MudiError("--device cuda: no CUDA GPU is available; use --device cpu.")
    return name


def run(args: argparse.Namespace) -> int:
    """Run ``mudi prepare``; returns the exit status."""
    from mudi.prepare import pipeline as prep

    if args.src is not None and args.subject:
        raise MudiError("give either --from DIR (import a set) or --subject ... (segment photos), not both.")
    if args.src is None and not args.subject:
        raise MudiError(
            "nothing to prepare: give --from DIR to import a subject set, or at least two "
            "--subject \"IDENTIFIER CLASS=FOLDER\" to segment photos."
        )
    if args.src is not None:
        unused = [flag for flag, v in (
            ("--detector", args.detector), ("--segmenter", args.segmenter), ("--threshold", args.threshold),
            ("--margin", args.margin), ("--boxes", args.boxes), ("--masks", args.masks),
            ("--captions", args.captions),
        ) if v is not None]
        if unused:
            raise MudiError(f"{', '.join(unused)}: only used with --subject, not with --from.")
        report = prep.import_set(args.src, args.out, overwrite=args.overwrite)
        n = sum(len(s.photos) for s in report.subject_set)
        print(prep.results_table(report.results))
        print(
            f"Imported {len(report.subject_set)} subjects ({n} photos) from {args.src} into {report.out}; "
            f"contact sheet: {report.out / prep.CONTACT_SHEET}"
        )
        return 0

    specs = [prep.SubjectSpec.parse(s) for s in args.subject]
    threshold = prep.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    margin = prep.DEFAULT_BOX_MARGIN if args.margin is None else args.margin
    device = _device(args.device)
    report = prep.prepare_from_photos(
        specs, args.out,
        detector=args.detector, segmenter=args.segmenter,
        threshold=threshold, margin=margin,
        boxes=args.boxes, masks_dir=args.masks, captions=args.captions,
        device=device, nms_iou=args.nms_iou, overwrite=args.overwrite, strict=args.strict,
        progress=not args.no_progress,
    )
    print(prep.results_table(report.results))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    n_ok = len(report.results) - len(report.failures)
    print(
        f"Wrote {len(report.subject_set)} subjects ({n_ok} photos) to {report.out}; "
        f"contact sheet: {report.out / prep.CONTACT_SHEET}"
    )
    if (args.segmenter or "").lower() == "grabcut":
        print("note: masks were made with --segmenter grabcut, a weight-free fallback (OpenCV GrabCut), "
              "not SAM; they are rougher: check the contact sheet.", file=sys.stderr)
    if report.failures:
        print(
            f"warning: {len(report.failures)} photo(s) failed and were left out "
            f"(listed in {report.out / prep.FAILURES}):\n{prep.failure_table(report.results)}\n"
            "Supply a mask (mask_<name>.png, --masks DIR) or a box (--boxes FILE) for them, "
            "or use --strict to make this an error.",
            file=sys.stderr,
        )
    return 0
