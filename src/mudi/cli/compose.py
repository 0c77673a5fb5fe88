"""`mudi compose`: write the training examples Seg-Mix (or Cut-Mix) would make, so a person sees
what training will see (library: :func:`mudi.compose.compose`)."""

from __future__ import annotations

import argparse

from mudi.compose import ComposeConfig, compose
from mudi.settings import RunOptions, add_arguments, add_config_argument, given_values, resolve, run_options

HELP = "preview training composites (Seg-Mix / Cut-Mix) of a subject set"
_OPTIONS = ("subjects", "n", "seed", "out", "size", "mix", "p", "k", "relative_sizes", "low",
            "segmix_margin", "edge_range")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compose`` verb (flags from :class:`~mudi.compose.ComposeConfig`)."""
    p = subparsers.add_parser(
        "compose",
        help=HELP,
        description=(
            "Write N training examples of a subject set as training would see them: Seg-Mix "
            "composites (segmented subjects on white), Cut-Mix composites, or plain photos."
        ),
    )
    add_config_argument(p, ComposeConfig)
    add_arguments(p, ComposeConfig, _OPTIONS)
    add_arguments(p, RunOptions, ("overwrite", "progress"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mudi compose``; returns the exit status."""
    config = resolve(ComposeConfig, run_file=args.config, values=given_values(args, ComposeConfig))
    result = compose(config, run_options(args))
    print(f"wrote {config.n} examples ({result.n_composites} composites, mix={config.mix}, k={config.k}, "
          f"S={config.size}) to {result.out}")
    print(f"contact sheet: {result.out / 'grid.png'}")
    return 0
