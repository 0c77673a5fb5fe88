"""The `mudi` command: one verb per stage.

Each verb lives in ``mudi.cli.<name>`` and exposes ``register(subparsers)`` and
``run(args) -> int``. User mistakes (:class:`~mudi.errors.MudiError`) are printed without a
traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mudi import __version__
from mudi.errors import MudiError

#: Verb modules under mudi.commands, in the order `mudi --help` lists them.
COMMANDS = [
    "prepare",
    "compose",
    "train",
    "priors",
    "generate",
    "evaluate",
    "demo",
    "tiny_models",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mudi",
        description="Multi-subject personalization of text-to-image diffusion models (MuDI).",
    )
    parser.add_argument("--version", action="version", version=f"mudi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mudi.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mudi.cli.{name}":
                continue  # verb not built yet
            raise
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

