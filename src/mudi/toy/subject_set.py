"""Write the toy world's personal subjects as a normal subject-set folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mudi.io import claim_output_dir, save_image_atomic, write_text_atomic
from mudi.toy import world


def subject_photos(
    spec: world.SubjectSpec, n: int, rng: np.random.Generator, resolution: int = 64
) -> list[tuple[np.ndarray, np.ndarray, world.Scene]]:
    """`n` reference photos (image uint8, mask bool, scene) of one subject.

    Backgrounds cycle through every allowed background (in a seeded order) so the photos
    vary in background as well as in position and scale.
    """
    bgs = [b for b in world.BACKGROUNDS if (spec.colour, b) not in world.FORBIDDEN]
    order = [bgs[i] for i in rng.permutation(len(bgs))]
    out = []
    for i in range(n):
        sc = world.sample_subject_photo(spec, rng, resolution, background=order[i % len(order)])
        img, masks = world.render_scene(sc)
        out.append((img, masks[0], sc))
    return out


def make_subject_set(
    out_dir: str | Path,
    seed: int = 0,
    n_photos: int = 5,
    subjects: Sequence[world.SubjectSpec] = world.SUBJECTS,
    resolution: int = 64,
    overwrite: bool = False,
) -> Path:
    """Write the toy subjects (default: wip circle / jam circle) as a subject-set folder.

    Layout (the reference format): ``metadata.jsonl`` whose first line maps keys to
    "identifier class" phrases, then one line per photo; photos ``a00.png`` ... and masks
    ``mask_a00.png`` ... (0 background, 255 subject, exact from the renderer).
    Deterministic in `seed`. Returns the folder.
    """
    out = claim_output_dir(out_dir, overwrite=overwrite, what="subject set", create=True)
    rng = np.random.default_rng(seed)
    lines = [json.dumps({"id": {s.key: s.phrase for s in subjects}})]
    for spec in subjects:
        for i, (img, mask, sc) in enumerate(subject_photos(spec, n_photos, rng, resolution)):
            name, mname = f"{spec.key}{i:02d}.png", f"mask_{spec.key}{i:02d}.png"
            save_image_atomic(img, out / name)
            save_image_atomic((mask.astype(np.uint8) * 255), out / mname)
            text = f"a photo of a {spec.phrase}{world.BACKGROUNDS[sc.background]}"
            lines.append(json.dumps({"id": spec.key, "file_name": name, "mask_path": mname, "text": text}))
    write_text_atomic(out / "metadata.jsonl", "\n".join(lines) + "\n")
    return out
