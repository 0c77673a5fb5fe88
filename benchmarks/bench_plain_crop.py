"""Benchmark: the cost of random crops of plain photos (``--plain-crop random``, the default) against
one cached centre crop (``--plain-crop center``, the old default).

With random crops a plain photo that is not square has a new S×S crop per example, so its latent is
encoded by the VAE at every use instead of once. This trains the reduced SD model of
``benchmarks/bench_train.py`` (128 px) on the example pair with its photos made landscape (512×352),
``--mix none`` (every example plain: the worst case) and ``--reg none`` (no DCO pass, so the VAE
share is not diluted), both crop modes interleaved over ``--rounds`` rounds in this process (one
thread), and prints per mode the median optimizer-step CPU time after ``--warmup`` steps and the VAE
encodes during training. Square photos have one crop: for them both modes are the same run.

Run:  python benchmarks/bench_plain_crop.py [--steps 10] [--warmup 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


def wide_copy(subjects: Path, out: Path) -> Path:
    """The subject set with every photo and mask resized to 512×352."""
    from PIL import Image

    shutil.copytree(subjects, out)
    for f in sorted(out.glob("*.jpg")) + sorted(out.glob("mask_*.png")):
        Image.open(f).resize((512, 352), Image.NEAREST if f.suffix == ".png" else Image.BICUBIC).save(f)
    return out


def run(model: Path, subjects: Path, out: Path, steps: int, crop: str) -> dict:
    from mudi.settings import RunOptions
    from mudi.train import TrainConfig, train

    res = train(TrainConfig(subjects=str(subjects), base=str(model), out=str(out), resolution=128, mix="none",
                            reg="none", plain_crop=crop, max_train_steps=steps, validate_every=-1, checkpoint_every=0),
                RunOptions(progress=False))
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    return {"cpu": [r["step_cpu_time"] for r in rows], "encodes": res.summary["vae_encodes_training"],
            "cached": res.summary["latents_cached"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from bench_train import build_model

    with tempfile.TemporaryDirectory(prefix="mudi-crop-") as tmp:
        model = Path(tmp) / "model"
        build_model(model)
        subjects = wide_copy(here.parent / "examples" / "subjects" / "dog6_and_dog2", Path(tmp) / "wide")
        results: dict[str, list[dict]] = {"center": [], "random": []}
        for r in range(args.rounds):
            for crop in ("center", "random"):
                results[crop].append(run(model, subjects, Path(tmp) / f"{crop}{r}", args.steps, crop))
    med = {c: statistics.median(t for res in rs for t in res["cpu"][args.warmup:]) for c, rs in results.items()}
    print(f"plain crops, reduced SD at 128 px, --mix none, batch 1 x 2 micro-batches, {args.steps} steps x {args.rounds} rounds")
    for crop, rs in results.items():
        print(f"  --plain-crop {crop:6s}: median step CPU time {med[crop] * 1000:7.1f} ms, "
              f"latents cached {rs[0]['cached']}, VAE encodes in training {rs[0]['encodes']}")
    print(f"  random / center: {med['random'] / med['center']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
