"""``compose()``: write the training examples Seg-Mix (or Cut-Mix) would make, so a person sees
what training will see.

Output folder: ``composite_0000.png``, ``composite_0000_mask.png`` (union mask, 0/255), ...,
``captions.jsonl`` (one line per example: file names, caption, subjects, kind, placements),
``grid.png`` (contact sheet with captions) and ``config.toml`` (the resolved ``[compose]`` table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mudi.compose.composer import Composer, parse_relative_sizes
from mudi.compose.config import ComposeConfig
from mudi.compose.examples import Example
from mudi.io import claim_output_dir, save_image_atomic, write_text_atomic
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet

CAPTIONS = "captions.jsonl"
GRID = "grid.png"
CONFIG = "config.toml"
THUMB = 256


@dataclass
class ComposeResult:
    """What :func:`compose` wrote: the folder, one record per example (as in captions.jsonl)."""

    out: Path
    records: list[dict] = field(default_factory=list)

    @property
    def n_composites(self) -> int:
        """How many of the examples are composites (Seg-Mix or Cut-Mix)."""
        return sum(r["kind"] in ("segmix", "cutmix") for r in self.records)


def compose(config: ComposeConfig, options: RunOptions | None = None) -> ComposeResult:
    """Write ``config.n`` training examples of a subject set (see the module docstring).

    Example ``i`` is made for subject ``i mod K`` (its photos in turn) with one random generator
    seeded with ``config.seed``, so the same config gives the same files. Everything is checked
    before anything is written; user mistakes raise :class:`~mudi.errors.MudiError`.
    """
    options = options or RunOptions()
    # 1. check the config, the subject set and the output folder
    config.check()
    relative = parse_relative_sizes(config.relative_sizes) if config.relative_sizes else None
    out = claim_output_dir(config.out, overwrite=options.overwrite, what="compose output")
    sset = SubjectSet.load(config.subjects)
    # 2. the composer (validates the Seg-Mix parameters against the set)
    composer = Composer(
        sset, config.size, mix=config.mix, p=config.p, k=config.k, low=config.low,
        margin=config.margin_px, edge_range=config.edge_range_px, relative_sizes=relative,
    )
    # 3. compose and write the examples
    claim_output_dir(out, overwrite=options.overwrite, what="compose output", create=True)
    result = ComposeResult(out)
    thumbs, labels = [], []
    for i, ex in enumerate(_examples(composer, sset, config, options.progress)):
        result.records.append(_write_example(out, i, ex, sset))
        thumbs.append(ex.image.resize((THUMB, THUMB)))
        labels.append(f"{i:04d} {ex.caption}")
    # 4. captions, contact sheet and the resolved config
    _write_summary(out, result.records, thumbs, labels, config)
    return result


def _examples(composer: Composer, sset: SubjectSet, config: ComposeConfig, progress: bool):
    """The examples in order: subject ``i mod K``, its photos in turn, one generator."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    keys = sset.keys
    for i in tqdm(range(config.n), desc="compose", unit="img", disable=not progress):
        key = keys[i % len(keys)]
        index = (i // len(keys)) % len(sset.photos(key))
        yield composer.example(key, index, rng)


def _write_example(out: Path, i: int, ex: Example, sset: SubjectSet) -> dict:
    """Save example ``i`` (image and mask); its captions.jsonl record."""
    name, mask_name = f"composite_{i:04d}.png", f"composite_{i:04d}_mask.png"
    save_image_atomic(ex.image, out / name)
    save_image_atomic(ex.mask, out / mask_name)
    rec = {"file_name": name, "mask_file": mask_name, **ex.to_dict()}
    rec["phrases"] = [sset.subject(k).phrase for k in ex.subjects]
    return rec


def _write_summary(out: Path, records: list[dict], thumbs: list, labels: list[str], config: ComposeConfig) -> None:
    """captions.jsonl, grid.png and config.toml."""
    from mudi.viz import grid

    write_text_atomic(out / CAPTIONS, "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    save_image_atomic(grid(thumbs, labels=labels, cell=THUMB), out / GRID)
    write_text_atomic(out / CONFIG, config.to_toml(title="mudi compose: the settings that made these examples"))


__all__ = ["CAPTIONS", "CONFIG", "GRID", "ComposeResult", "compose"]
