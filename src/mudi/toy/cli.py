"""`mudi demo`: prepare, train (DreamBooth / Cut-Mix / Seg-Mix), generate, evaluate on the toy world.

Registered through the ``mudi.commands`` entry point (pyproject.toml), so the product's CLI never
imports the toy world.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from mudi.settings import RunOptions, add_arguments, given_values, run_options
from mudi.toy.demo import METHODS, DemoConfig

HELP = "run the whole pipeline offline on the shipped toy model and write report.html"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help=HELP,
        description=(
            "Run MuDI end to end on the toy world shipped with mudi (offline, CPU, minutes): prepare two "
            "similar toy subjects, train LoRAs with --mix none (DreamBooth), cutmix and segmix, generate "
            "with and without mean-shifted initialization, evaluate with Detect-and-Compare, and write "
            "OUT/report.html and OUT/summary.json. Methods: " + ", ".join(m.name for m in METHODS) + "."
        ),
    )
    add_arguments(p, DemoConfig, [f.name for f in fields(DemoConfig) if f.name != "gradient_accumulation_steps"])
    add_arguments(p, RunOptions, ["overwrite", "resume", "progress"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mudi.toy.demo import run_demo

    cfg = DemoConfig().updated(given_values(args, DemoConfig))
    summary = run_demo(cfg, run_options(args))
    print(f"{'method':<18} {'mean D&C':>9} {'success':>8} {'count errors':>13}")
    for name, s in summary["methods"].items():
        dnc = "n/a" if s["dnc_mean"] is None else f"{s['dnc_mean']:.3f}"
        succ = "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"
        print(f"{name:<18} {dnc:>9} {succ:>8} {s['count_errors']:>13}")
    print(f"report: {cfg.out}/report.html")
    return 0
