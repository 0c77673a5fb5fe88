"""`mudi prepare`: build a segmented subject set, from raw photos or from an existing set
(library: :func:`mudi.prepare.prepare`).

    mudi prepare --from DIR --out OUT
    mudi prepare --subject "olis corgi=photos/corgi" --subject "hta chow chow=photos/chow" --out OUT

Output folder OUT: the subject set (metadata.jsonl, photos, mask_*.png), contact_sheet.png,
failures.json (photos left out, with reasons), prepare.json (settings and per-photo details) and
config.toml (the resolved [prepare] table).
"""

from __future__ import annotations

import argparse
import sys

from mudi.prepare import CONTACT_SHEET, FAILURES, PrepareConfig, PrepareReport, failure_table, prepare, results_table
from mudi.settings import RunOptions, add_arguments, add_config_argument, given_values, resolve, run_options

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
    """Add the ``prepare`` verb (flags from :class:`~mudi.prepare.PrepareConfig`)."""
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
    add_config_argument(p, PrepareConfig)
    add_arguments(p.add_argument_group("input (one of)"), PrepareConfig, ("source", "subjects"))
    add_arguments(p, PrepareConfig, ("out",))
    add_arguments(p, RunOptions, ("overwrite",))
    seg = p.add_argument_group("segmenting raw photos (--subject)")
    add_arguments(seg, PrepareConfig, ("detector", "segmenter", "threshold", "nms_iou", "margin", "boxes",
                                       "masks", "captions", "strict"))
    add_arguments(seg, RunOptions, ("device",))
    add_arguments(p, RunOptions, ("progress",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mudi prepare``; returns the exit status."""
    config = resolve(PrepareConfig, run_file=args.config, values=given_values(args, PrepareConfig))
    report = prepare(config, run_options(args))
    print(results_table(report.results))
    if config.importing:
        n = sum(len(s.photos) for s in report.subject_set)
        print(f"Imported {len(report.subject_set)} subjects ({n} photos) from {config.source} into {report.out}; "
              f"contact sheet: {report.out / CONTACT_SHEET}")
        return 0
    _print_outcome(config, report)
    return 0


def _print_outcome(config: PrepareConfig, report: PrepareReport) -> None:
    """Notes, the summary line and the warnings of a segmenting run."""
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    n_ok = len(report.results) - len(report.failures)
    print(f"Wrote {len(report.subject_set)} subjects ({n_ok} photos) to {report.out}; "
          f"contact sheet: {report.out / CONTACT_SHEET}")
    if config.uses_grabcut:
        print("note: masks were made with --segmenter grabcut, a weight-free fallback (OpenCV GrabCut), "
              "not SAM; they are rougher: check the contact sheet.", file=sys.stderr)
    if report.failures:
        print(
            f"warning: {len(report.failures)} photo(s) failed and were left out "
            f"(listed in {report.out / FAILURES}):\n{failure_table(report.results)}\n"
            "Supply a mask (mask_<name>.png, --masks DIR) or a box (--boxes FILE) for them, "
            "or use --strict to make this an error.",
            file=sys.stderr,
        )
