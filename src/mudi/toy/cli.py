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
            "(--subjects 3 or 4: more) similar toy subjects, train LoRAs with --mix none (DreamBooth), cutmix and segmix "
            "and the paper's extensions (per-subject LoRAs merged, with and without a Seg-Mix fine-tune; one round "
            "of iterative training), generate with and without mean-shifted initialization, evaluate with "
            "Detect-and-Compare, and write "
            "OUT/report.html and OUT/summary.json; --full adds success rate vs number of subjects, mean D&C vs "
            "γ and the comparison over three seeds. Methods: " + ", ".join(m.name for m in METHODS) + "."
        ),
    )
    add_arguments(p, DemoConfig, [f.name for f in fields(DemoConfig) if f.name != "gradient_accumulation_steps"])
    add_arguments(p, RunOptions, ["overwrite", "resume", "progress"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mudi.toy.demo import run_demo

    cfg = DemoConfig().updated(given_values(args, DemoConfig))
    if cfg.full:
        return _run_full(cfg, args)
    summary = run_demo(cfg, run_options(args))
    print(f"{'method':<18} {'mean D&C':>9} {'success':>8} {'count errors':>13}")
    for name, s in summary["methods"].items():
        dnc = "n/a" if s["dnc_mean"] is None else f"{s['dnc_mean']:.3f}"
        succ = "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"
        print(f"{name:<18} {dnc:>9} {succ:>8} {s['count_errors']:>13}")
    print(f"report: {cfg.out}/report.html")
    return 0


def _run_full(cfg: DemoConfig, args: argparse.Namespace) -> int:
    from mudi.toy.demo_full import run_full_demo

    summary = run_full_demo(cfg, run_options(args))
    print(f"over seeds {', '.join(map(str, summary['seeds']))} (mean ± std):")
    print(f"{'method':<18} {'mean D&C':>15} {'success':>13}")
    for name, r in summary["spread"].items():
        dnc = "n/a" if r["dnc_mean_mean"] is None else f"{r['dnc_mean_mean']:.3f} ± {r['dnc_mean_std'] or 0:.3f}"
        succ = "n/a" if r["success_rate_mean"] is None else \
            f"{100 * r['success_rate_mean']:.0f} ± {100 * (r['success_rate_std'] or 0):.0f} %"
        print(f"{name:<18} {dnc:>15} {succ:>13}")
    print("success rate vs number of subjects: " + "; ".join(
        f"{n}: " + ", ".join(f"{m} {100 * v['success_rate']:.0f} %" for m, v in ms.items() if v["success_rate"] is not None)
        for n, ms in summary["success_vs_subjects"].items()))
    print("mean D&C vs γ: " + ", ".join(f"{g}: {v['dnc_mean']:.3f}" for g, v in summary["dnc_vs_gamma"].items()
                                       if v["dnc_mean"] is not None))
    print(f"report: {cfg.out}/report.html")
    return 0
