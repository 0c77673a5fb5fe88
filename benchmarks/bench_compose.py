"""Seg-Mix throughput at 1024² on one core, with the real dog photos.

    python benchmarks/bench_compose.py [--subjects DIR] [--size 1024] [--n 200] [--k 2]

Prints composites per second for Seg-Mix (the figure to compare with the >= 20/s target, so
composition never limits a GPU training step), Cut-Mix and plain examples, and a per-stage
breakdown of one Seg-Mix composite (resize photo, resize+threshold mask, paste).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mudi.compose import RESAMPLE, WHITE, Composer, binary_mask, paste_crop  # noqa: E402
from mudi.subjects import SubjectSet  # noqa: E402

DEFAULT_SUBJECTS = Path(__file__).resolve().parents[1] / "examples" / "subjects" / "dog6_and_dog2"


def rate(composer: Composer, keys: list[str], n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    for i in range(4):  # warm the crop cache and PIL
        composer.example(keys[i % len(keys)], i, rng)
    t = time.perf_counter()
    for i in range(n):
        composer.example(keys[i % len(keys)], i // len(keys), rng)
    return n / (time.perf_counter() - t)


def stages(composer: Composer, n: int) -> dict[str, float]:
    """Mean milliseconds per composite of each Seg-Mix stage, for the sizes Seg-Mix draws."""
    rng = np.random.default_rng(1)
    exs = [composer.composite(composer.keys[i % len(composer.keys)], i, rng) for i in range(n)]
    S = composer.size
    tot = {"new canvas": 0.0, "resize photo (bicubic)": 0.0, "resize+threshold mask": 0.0,
           "paste_crop (both resizes + paste)": 0.0}
    for ex in exs:
        t0 = time.perf_counter()
        canvas = Image.new("RGB", (S, S), WHITE)
        union = np.zeros((S, S), dtype=bool)
        t1 = time.perf_counter()
        tot["new canvas"] += t1 - t0
        for p in sorted(ex.placements, key=lambda p: p.z):
            crop = composer.crop(p.key, p.photo)
            size = (p.box[2] - p.box[0], p.box[3] - p.box[1])
            t0 = time.perf_counter()
            crop.image.resize(size, RESAMPLE)
            t1 = time.perf_counter()
            binary_mask(crop.mask, size)
            t2 = time.perf_counter()
            paste_crop(canvas, union, crop, p.box)
            t3 = time.perf_counter()
            tot["resize photo (bicubic)"] += t1 - t0
            tot["resize+threshold mask"] += t2 - t1
            tot["paste_crop (both resizes + paste)"] += t3 - t2
    return {k: 1000 * v / n for k, v in tot.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=Path, default=DEFAULT_SUBJECTS)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--k", type=int, default=2)
    args = ap.parse_args()
    try:  # one core: pin the process if the OS lets us
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass

    sset = SubjectSet.load(args.subjects)
    keys = sset.keys
    print(f"subjects: {args.subjects} ({', '.join(s.phrase for s in sset)}), canvas {args.size}², k={args.k}, "
          f"threads=1")
    seg = rate(Composer(sset, args.size, "segmix", p=1.0, k=args.k), keys, args.n)
    print(f"Seg-Mix : {seg:7.1f} composites/s  ({1000 / seg:.1f} ms each; target >= 20/s: "
          f"{'OK' if seg >= 20 else 'BELOW TARGET'})")
    cut = rate(Composer(sset, args.size, "cutmix", p=1.0, k=args.k), keys, max(20, args.n // 4))
    print(f"Cut-Mix : {cut:7.1f} composites/s")
    pl = rate(Composer(sset, args.size, "none"), keys, max(20, args.n // 4))
    print(f"plain   : {pl:7.1f} examples/s")
    st = stages(Composer(sset, args.size, "segmix", p=1.0, k=args.k), max(20, args.n // 4))
    print("Seg-Mix stages (ms per composite): " + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))


if __name__ == "__main__":
    main()
