"""Sweep the demo's sampling settings on the LoRAs of a finished ``mudi demo`` run.

Regenerates the demo prompts with each combination of guidance scale, γ and layout fill, for
the chosen methods (same seeds for all), evaluates them with the toy detector and embedder,
and prints one row per setting: mean D&C, success rate, missing/duplicate count errors.
This is how the demo's defaults (guidance 1, γ 5, fill 0.8) were chosen; nothing is tuned per
method: every row applies the same setting to every method.

    mudi demo --out runs/demo
    python benchmarks/toy_demo_sweep.py runs/demo --guidance 1,4 --gamma 3,5 --fill 0.7,0.8 \\
        [--methods dreambooth,dreambooth_init,mudi] [--images-per-prompt 8] [--out runs/sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="folder of a finished `mudi demo` run (its LoRAs and subjects are used)")
    ap.add_argument("--guidance", type=floats, default=[1.0, 4.0])
    ap.add_argument("--gamma", type=floats, default=[3.0, 5.0])
    ap.add_argument("--fill", type=floats, default=[0.7, 0.8])
    ap.add_argument("--methods", default="dreambooth,cutmix,segmix,dreambooth_init,mudi")
    ap.add_argument("--images-per-prompt", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="keep the images here (default: a temporary folder)")
    args = ap.parse_args()

    import torch

    from mudi.runtime import quiet_libraries

    torch.set_num_threads(1)
    with quiet_libraries():
        run_sweep(args)


def run_sweep(args) -> None:
    """One table row per (guidance, γ, fill) and method."""
    from mudi import toy
    from mudi.toy.demo import METHODS, DemoConfig, evaluate_method, generation_config, generation_options
    from mudi.generate import generate
    from mudi.models.loading import load_pipeline
    from mudi.subjects import SubjectSet

    demo = Path(args.demo)
    methods = [m for m in METHODS if m.name in args.methods.split(",")]
    base = toy.base_model_path()
    pipe = load_pipeline(str(base), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    sset = SubjectSet.load(demo / "subjects")
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mudi-sweep-"))
    print(f"{'guidance':>8} {'gamma':>6} {'fill':>5} {'method':<16} {'mean D&C':>9} {'success':>8} "
          f"{'missing':>8} {'dup':>4}", flush=True)
    for g, gamma, fill in itertools.product(args.guidance, args.gamma, args.fill):
        # the demo's own settings with this row's guidance, γ and fill, for every method alike
        cfg = dataclasses.replace(DemoConfig(), guidance=g, gamma=gamma, fill=fill, seed=args.seed,
                                  images_per_prompt=args.images_per_prompt, steps=args.steps)
        for m in methods:
            if m.init == "none" and (gamma, fill) != (args.gamma[0], args.fill[0]):
                continue  # γ and fill only matter with initialization
            out = out_root / f"g{g}_gamma{gamma}_fill{fill}" / m.name
            generate(generation_config(cfg, m, demo, out, base), generation_options(), pipe=pipe)
            s = evaluate_method(cfg, out, sset, m.name).summary
            print(f"{g:>8} {gamma:>6} {fill:>5} {m.name:<16} {s['dnc_mean']:>9.3f} {s['success_rate']:>8.0%} "
                  f"{s['n_missing']:>8} {s['n_duplicate']:>4}", flush=True)
    print(f"images: {out_root}")


if __name__ == "__main__":
    main()
