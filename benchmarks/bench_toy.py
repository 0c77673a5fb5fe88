"""Figures for the toy world: detector/embedder quality on renders and on base-model samples,
and base-model sampling time.

    python benchmarks/bench_toy.py [--model FOLDER] [--n 24]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image


def detector_on_renders(n: int = 300, seed: int = 7) -> dict:
    from mudi.toy import CLASSES, ToyDetector, world

    det = ToyDetector()
    rng = np.random.default_rng(seed)
    count_ok = names_ok = 0
    for _ in range(n):
        sc = world.sample_scene(rng)
        img, _ = world.render_scene(sc)
        d = det.detect([Image.fromarray(img)], list(CLASSES), 0.4)[0]
        count_ok += len(d) == len(sc.objects)
        names_ok += sorted(CLASSES[x.label] for x in d) == sorted(o.shape for o in sc.objects)
    return {"scenes": n, "count_acc": count_ok / n, "count_and_class_acc": names_ok / n}


def embedder_on_subjects(seeds=range(5)) -> dict:
    from mudi.toy import ToyEmbedder, make_subject_set

    emb = ToyEmbedder()
    same, cross = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for s in seeds:
            out = make_subject_set(Path(tmp) / str(s), seed=s)
            photos = [Image.open(out / f"{k}{i:02d}.png") for k in "ab" for i in range(5)]
            e = emb.embed(photos)
            m = e @ e.T
            off = ~np.eye(5, dtype=bool)
            same += [m[:5, :5][off].mean(), m[5:, 5:][off].mean()]
            cross.append(m[:5, 5:].mean())
    return {"same_subject_cos": float(np.mean(same)), "cross_subject_cos": float(np.mean(cross))}


def on_generated(model: Path, n: int) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline

    from mudi.toy import CLASSES, ToyDetector, ToyEmbedder, make_subject_set

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    det, emb = ToyDetector(), ToyEmbedder()
    g = torch.Generator().manual_seed(0)
    # sampling time (one image, 20 steps, CFG), after a warm-up call
    pipe("a photo of a red circle on grass", num_inference_steps=20, height=64, width=64, generator=g)
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        pipe("a photo of a red circle on grass", num_inference_steps=20, height=64, width=64, generator=g)
    sec_per_image = (time.perf_counter() - t) / reps
    # detection: prompts with known classes and counts
    rng = np.random.default_rng(0)
    ok = 0
    for i in range(n):
        k = int(rng.integers(1, 3))
        shapes = list(rng.choice(CLASSES, k, replace=False))
        prompt = "a photo of " + " and ".join(f"a {s}" for s in shapes) + str(rng.choice([" on grass", ", simple background", " on sand"]))
        img = pipe(prompt, num_inference_steps=20, height=64, width=64, generator=g).images[0]
        d = det.detect([img], list(CLASSES), 0.4)[0]
        ok += sorted(CLASSES[x.label] for x in d) == sorted(shapes)
    # markings: striped vs dotted yellow circles, nearest subject by embedding
    with tempfile.TemporaryDirectory() as tmp:
        out = make_subject_set(Path(tmp) / "s", seed=0)
        refs = emb.embed([Image.open(out / f"{k}{i:02d}.png") for k in "ab" for i in range(5)])
    ra, rb = refs[:5].mean(0), refs[5:].mean(0)
    right = 0
    sims = []
    for i in range(n):
        tex, want = ("striped", 0) if i % 2 == 0 else ("dotted", 1)
        img = pipe(f"a photo of a {tex} yellow circle on grass", num_inference_steps=20, height=64,
                   width=64, generator=g).images[0]
        e = emb.embed([img])[0]
        sa, sb = float((e @ refs[:5].T).mean()), float((e @ refs[5:].T).mean())
        sims.append((sa, sb) if want == 0 else (sb, sa))
        right += (e @ ra > e @ rb) == (want == 0)
    sims = np.array(sims)
    return {
        "sec_per_image_20_steps_cfg": sec_per_image,
        "generated_count_and_class_acc": ok / n,
        "generated_marking_acc": right / n,
        "generated_cos_to_own_subject": float(sims[:, 0].mean()),
        "generated_cos_to_other_subject": float(sims[:, 1].mean()),
    }


def main() -> None:
    import torch

    from mudi.toy import base_model_path

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--n", type=int, default=24)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("detector on renders:", detector_on_renders())
    print("embedder on subject photos:", embedder_on_subjects())
    print("on base-model samples:", on_generated(args.model or base_model_path(), args.n))


if __name__ == "__main__":
    main()
