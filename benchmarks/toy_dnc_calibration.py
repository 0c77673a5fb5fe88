"""Calibrate the demo's D&C success threshold for the toy detector and embedder.

Scores images whose truth is known, with the demo's subject set and prompt:

- ``pair``: both demo subjects rendered by the toy world, apart (gap >= 2 px), random
  backgrounds, sizes and positions -- a perfect image;
- ``pair_vae``: the same images after an encode/decode round trip through the base model's VAE
  -- a perfect image at the fidelity the base model can reach at best;
- ``both_a`` / ``both_b`` (and their ``_vae`` versions): one subject drawn twice -- identity
  mixing; a success threshold must reject these.

Prints mean D&C, percentiles, and the pass rate at a few thresholds per set.

    python benchmarks/toy_dnc_calibration.py [--n 60] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

THRESHOLDS = (0.6, 0.65, 0.7, 0.75, 0.8)


def pair_images(kind: str, n: int, seed: int, gap: float = 2.0) -> list[Image.Image]:
    """`n` renders of two demo subjects (kind: pair | both_a | both_b), `gap` px apart or more."""
    from mudi.toy import world

    a, b = world.SUBJECTS
    first, second = {"pair": (a, b), "both_a": (a, a), "both_b": (b, b)}[kind]
    rng = np.random.default_rng(seed)
    out: list[Image.Image] = []
    while len(out) < n:
        bg = str(rng.choice(sorted(world.BACKGROUNDS)))
        s1, s2 = rng.uniform(18, 30, 2)
        x1, y1 = rng.uniform(s1 / 2 + 1, 64 - s1 / 2 - 1, 2)
        x2, y2 = rng.uniform(s2 / 2 + 1, 64 - s2 / 2 - 1, 2)
        if np.hypot(x1 - x2, y1 - y2) < (s1 + s2) / 2 + gap:
            continue
        objs = (world.subject_object(first, float(x1), float(y1), float(s1)),
                world.subject_object(second, float(x2), float(y2), float(s2)))
        img, _ = world.render_scene(world.Scene(objs, bg, int(rng.integers(1 << 30)), 64))
        out.append(Image.fromarray(img))
    return out


def vae_round_trip(vae, images: list[Image.Image]) -> list[Image.Image]:
    import torch

    x = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    y = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in y]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="images per set")
    ap.add_argument("--model", default="", help="toy base model folder (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL

    from mudi import toy
    from mudi.evaluate import evaluate_images
    from mudi.subjects import SubjectSet

    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(os.path.join(args.model or str(toy.base_model_path()), "vae")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        sset_dir = os.path.join(tmp, "subjects")
        from mudi.prepare import import_subjects

        toy.make_subject_set(os.path.join(tmp, "raw"), seed=0)
        import_subjects(os.path.join(tmp, "raw"), sset_dir)
        sset = SubjectSet.load(sset_dir)
        prompt = toy.DEMO_PROMPTS[0]
        print(f"{'set':<12} {'n':>3} {'mean':>6} {'p10':>6} {'p50':>6} {'max':>6} {'count ok':>9}  "
              + "  ".join(f"pass@{t:.2f}" for t in THRESHOLDS))
        for kind in ("pair", "both_a", "both_b"):
            rendered = pair_images(kind, args.n, args.seed)
            for name, images in ((kind, rendered), (kind + "_vae", vae_round_trip(vae, rendered))):
                ev = evaluate_images(images, sset, toy.ToyDetector(), toy.ToyEmbedder(), prompts=prompt)
                sc = np.array([r.dnc.score for r in ev.results])
                ok = np.array([r.dnc.count_ok for r in ev.results])
                passes = "  ".join(f"{np.mean(ok & (sc >= t)):>9.0%}" for t in THRESHOLDS)
                print(f"{name:<12} {len(sc):>3} {sc.mean():>6.3f} {np.percentile(sc, 10):>6.2f} "
                      f"{np.percentile(sc, 50):>6.2f} {sc.max():>6.2f} {ok.mean():>9.0%}  {passes}")


if __name__ == "__main__":
    main()
