"""Detect-and-Compare throughput: cached reference embeddings + batched crops vs a naive loop.

    python benchmarks/bench_evaluate.py [--subjects DIR] [--n 20] [--batch-size 8] [--threads 1]

K = 2 subjects with 5 reference photos each (the real dog photos), ``--n`` generated images
(512², made from the photos). The embedder is DINOv2 with a reduced random-weight config
(hidden 384, 6 layers, 6 heads, patch 14, 224 px — the ViT-S/14 shape with half its depth), so
the cost per embedding is meaningful; weights are random because no hub is reachable, which
does not change the timing. The detector is a stand-in that returns the two subject boxes of
each image (OWLv2 costs the same in both variants, so it is left out of the ratio).

Printed figures (images per second of D&C):

- ``naive``: for every image, embed the 10 reference photos again, compute S_GT, embed the two
  crops, score — what a straightforward per-image loop does;
- ``mudi``: :class:`mudi.evaluate.DetectAndCompare` — references embedded once per subject set
  (timed: it is part of the run), S_GT once per subject combination, crops of ``--batch-size``
  images embedded together;
- ``mudi (full evaluate_images)``: the same through the public API (results and summary; the
  report's thumbnails are drawn later, by :mod:`mudi.report`).

The target is ``mudi / naive >= 4`` on 20 images. Scores of both variants are checked to agree.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DEFAULT_SUBJECTS = Path(__file__).resolve().parents[1] / "examples" / "subjects" / "dog6_and_dog2"


def reduced_dinov2(out: Path, hidden: int = 384, layers: int = 6, heads: int = 6, size: int = 224) -> Path:
    """Save a random-weight DINOv2 of a reduced config as a local model folder."""
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, patch_size=14, image_size=518)
    Dinov2Model(cfg).eval().save_pretrained(out, safe_serialization=True)
    BitImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                         do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225], do_convert_rgb=True).save_pretrained(out)
    return out


class BoxDetector:
    """Stand-in detector: the boxes each image was composed with (looked up by its unique
    top-left background pixel)."""

    def __init__(self, boxes: dict[tuple, list[tuple[float, float, float, float]]]):
        self.boxes = boxes

    def detect(self, images, queries, threshold):
        from mudi.protocols import Detection

        return [[Detection(b, 0.9, j) for j, b in enumerate(self.boxes[im.getpixel((0, 0))])] for im in images]


def make_images(sset, n: int, rng: np.random.Generator):
    """``n`` 512² images with one photo of each subject pasted side by side (boxes known)."""
    photos = {k: sset.photos(k) for k in sset.keys}
    images, boxes = [], {}
    for i in range(n):
        background = (100 + i % 150, 100 + (i // 150) % 150, int(rng.integers(120, 255)))  # unique per image
        canvas = Image.new("RGB", (512, 512), background)
        bxs = []
        for j, k in enumerate(sset.keys[:2]):
            p = photos[k][int(rng.integers(len(photos[k])))]
            x0, y0, x1, y1 = p.bbox
            crop = Image.fromarray(p.image[y0:y1, x0:x1])
            crop.thumbnail((230, 300))
            x, y = 10 + 256 * j, int(rng.integers(40, 512 - crop.height))
            canvas.paste(crop, (x, y))
            bxs.append((x, y, x + crop.width, y + crop.height))
        images.append(canvas)
        boxes[background] = bxs
    return images, boxes


def naive_dnc(images, sset, detector, embedder, keys):
    """Per image: re-embed every reference photo, then the crops (what we avoid)."""
    from mudi.evaluate.dnc import crop_box, detect_and_compare_embeddings

    out = []
    for im in images:
        refs = [embedder.embed([Image.fromarray(p.image) for p in sset.photos(k)]) for k in keys]
        dets = detector.detect([im], [sset.subject(k).cls for k in keys], 0.4)[0]
        crops = embedder.embed([crop_box(im, d.box) for d in dets])
        out.append(detect_and_compare_embeddings(crops, refs, boxes=[d.box for d in dets]).score)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=Path, default=DEFAULT_SUBJECTS)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/mudi_bench_dinov2_s6"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from mudi.evaluate.embed import Dinov2Embedder
    from mudi.evaluate import DetectAndCompare, evaluate_images
    from mudi.subjects import SubjectSet

    if not (args.model_dir / "config.json").exists():
        reduced_dinov2(args.model_dir)
    sset = SubjectSet.load(args.subjects)
    keys = sset.keys[:2]
    n_refs = sum(len(sset.photos(k)) for k in keys)
    images, boxes = make_images(sset, args.n, np.random.default_rng(0))
    detector = BoxDetector(boxes)
    embedder = Dinov2Embedder(args.model_dir, batch_size=args.batch_size)
    print(f"K={len(keys)}, {n_refs} reference photos, {args.n} images of 512², DINOv2 hidden "
          f"{embedder.model.config.hidden_size} x {embedder.model.config.num_hidden_layers} layers @ 224 px, "
          f"{args.threads} thread(s), batch {args.batch_size}")
    embedder.embed(images[:2])  # warm-up

    t = time.perf_counter()
    naive = naive_dnc(images, sset, detector, embedder, keys)
    t_naive = time.perf_counter() - t

    engine = DetectAndCompare(sset, detector, embedder)
    t = time.perf_counter()
    fast = []
    for i in range(0, len(images), args.batch_size):
        chunk = images[i:i + args.batch_size]
        fast += [r.score for r, _ in engine.score(chunk, [keys] * len(chunk))]
    t_fast = time.perf_counter() - t
    np.testing.assert_allclose(fast, naive, atol=1e-4)

    t = time.perf_counter()
    ev = evaluate_images(images, sset, detector, embedder, subjects=[keys] * len(images), batch_size=args.batch_size)
    t_full = time.perf_counter() - t
    np.testing.assert_allclose([r.score for r in ev.results], naive, atol=1e-4)

    r_naive, r_fast, r_full = args.n / t_naive, args.n / t_fast, args.n / t_full
    print(f"naive (re-embed references per image): {r_naive:7.2f} images/s  ({t_naive:.2f} s)")
    print(f"mudi DetectAndCompare (cached refs):   {r_fast:7.2f} images/s  ({t_fast:.2f} s)")
    print(f"mudi evaluate_images (full API):     {r_full:7.2f} images/s  ({t_full:.2f} s)")
    print(f"speed-up: {r_fast / r_naive:.2f}x (D&C), {r_full / r_naive:.2f}x (full API); target >= 4x")


if __name__ == "__main__":
    main()
