"""`mudi demo`: prepare, train (DreamBooth / Cut-Mix / Seg-Mix), generate, evaluate on the toy world."""

from __future__ import annotations

import argparse

from mudi.toy.demo import METHODS, DemoConfig


def register(subparsers) -> None:
    d = DemoConfig()
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on the shipped toy model and write report.html",
        description=(
            "Run MuDI end to end on the toy world shipped with mudi (offline, CPU, minutes): prepare two "
            "similar toy subjects, train LoRAs with --mix none (DreamBooth), cutmix and segmix, generate "
            "with and without mean-shifted initialization, evaluate with Detect-and-Compare, and write "
            "OUT/report.html and OUT/summary.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--base", default="", help="toy-world base model folder (default: the one shipped with mudi)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for everything (same seed, same numbers)")
    p.add_argument("--train-steps", type=int, default=d.train_steps, help="optimizer steps per LoRA")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    p.add_argument("--p", type=float, default=d.p, help="Seg-Mix / Cut-Mix probability")
    p.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt, help="images per prompt and method")
    p.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    p.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance scale")
    p.add_argument("--gamma", type=float, default=d.gamma, help="initialization strength γ")
    p.add_argument("--fill", type=float, default=d.fill,
                   help="initialization layout: each subject's box fills this fraction of its slot")
    p.add_argument("--success-threshold", type=float, default=d.success_threshold,
                   help="D&C at or above which an image with the right count is a success (toy embedder)")
    p.add_argument("--methods", default=",".join(d.methods),
                   help="comma-separated subset of: " + ", ".join(m.name for m in METHODS))
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from mudi.toy.demo import run_demo

    cfg = DemoConfig(
        out=args.out, seed=args.seed, base=args.base, train_steps=args.train_steps, rank=args.rank, learning_rate=args.lr,
        p=args.p, images_per_prompt=args.images_per_prompt, steps=args.steps, guidance=args.guidance, gamma=args.gamma,
        fill=args.fill, success_threshold=args.success_threshold,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
    )
    summary = run_demo(cfg)
    print(f"{'method':<18} {'mean D&C':>9} {'success':>8} {'count errors':>13}")
    for name, s in summary["methods"].items():
        dnc = "n/a" if s["dnc_mean"] is None else f"{s['dnc_mean']:.3f}"
        succ = "n/a" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f} %"
        print(f"{name:<18} {dnc:>9} {succ:>8} {s['count_errors']:>13}")
    print(f"report: {cfg.out}/report.html")
    return 0
