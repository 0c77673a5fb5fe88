"""`mudi ui`: the local web app for the whole workflow (library: :mod:`mudi.ui`)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from mudi.settings import add_arguments, given_values
from mudi.ui.config import UIConfig

HELP = "local web app: subjects, composites, training with live progress, layout, generation, D&C"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ui`` verb (flags from :class:`~mudi.ui.config.UIConfig`)."""
    p = subparsers.add_parser(
        "ui",
        help=HELP,
        description=(
            "Serve a web app (Gradio; pip install 'mudi[ui]') for the whole workflow: upload subject photos "
            "and fix masks, preview Seg-Mix composites, train in the background with live progress, stop and "
            "resume, drag a layout and generate, evaluate with Detect-and-Compare. Without --base it runs on "
            "the toy world, offline. Binds 127.0.0.1; any other --host needs --auth."
        ),
    )
    add_arguments(p, UIConfig, [f.name for f in fields(UIConfig)])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mudi ui`` until interrupted; returns the exit status."""
    from mudi.ui.app import serve

    serve(UIConfig().updated(given_values(args, UIConfig)))
    return 0
