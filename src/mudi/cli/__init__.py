"""The `mudi` command: one verb per stage.

Each verb lives in ``mudi.cli.<name>`` and exposes ``register(subparsers)`` and
``run(args) -> int``. Other packages add verbs through the ``mudi.commands`` entry-point group
(name = verb, value = a module with the same two functions): the toy world adds ``mudi demo``
that way, so the product never imports it. User mistakes (:class:`~mudi.errors.MudiError`) are
printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

from mudi.version import __version__
from mudi.errors import MudiError

#: Built-in verb modules under mudi.cli, in the order `mudi --help` lists them.
COMMANDS = [
    "prepare",
    "compose",
    "train",
    "merge",
    "priors",
    "generate",
    "evaluate",
    "bench",
    "tiny_models",
    "ui",
]


def _verb_modules():
    """The built-in verb modules, then those other packages register (``mudi.commands`` entry points)."""
    for name in COMMANDS:
        yield importlib.import_module(f"mudi.cli.{name}")
    for entry in sorted(importlib.metadata.entry_points(group="mudi.commands"), key=lambda e: e.name):
        if entry.name not in COMMANDS:
            yield entry.load()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mudi",
        description="Multi-subject personalization of text-to-image diffusion models (MuDI).",
    )
    parser.add_argument("--version", action="version", version=f"mudi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _verb_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MudiError as exc:
        print(f"mudi {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mudi {args.command}: interrupted.", file=sys.stderr)
        return 130

