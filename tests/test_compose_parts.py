"""Components of the compose stage: cut-outs and pasting, slots, ComposeConfig and compose()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.compose import ComposeConfig, Crop, binary_mask, compose, crop_photo, paste_crop, slot_bounds
from mudi.compose.slots import anchor, assign_slots
from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.subjects import SegmentedPhoto


def _photo() -> SegmentedPhoto:
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = (0, 200, 0)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    img[mask] = (200, 0, 0)
    return SegmentedPhoto(img, mask, "c", Path("<memory>"))


def test_crop_photo_is_the_mask_bbox():
    crop = crop_photo(_photo())
    assert crop.size == (10, 10) and crop.offset == (10, 5)
    assert (np.asarray(crop.mask) == 255).all()
    assert (np.asarray(crop.image) == (200, 0, 0)).all()


def test_binary_mask_is_thresholded_at_128():
    m = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), "L")
    out = np.asarray(binary_mask(m, (8, 8)))
    assert set(np.unique(out)) <= {0, 255}


def test_paste_crop_copies_mask_pixels_only_and_clips():
    img = np.full((4, 4, 3), 9, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255  # only the top-left quarter is subject
    crop = Crop(Image.fromarray(img, "RGB"), Image.fromarray(mask, "L"))
    canvas = Image.new("RGB", (6, 6), (255, 255, 255))
    union = np.zeros((6, 6), bool)
    paste_crop(canvas, union, crop, (-1, -1, 3, 3))  # hangs over the top-left corner
    got = np.asarray(canvas)
    assert union[0, 0] and not union[0, 1] and not union[2, 2]
    assert (got[0, 0] == 9).all() and (got[~union] == 255).all()
    paste_crop(canvas, union, crop, (10, 10, 14, 14))  # entirely outside: nothing happens
    assert union.sum() == 1


def test_slots_and_anchors():
    assert slot_bounds(100, 3) == [(0, 33), (33, 67), (67, 100)]
    assert [anchor(i, 3) for i in range(3)] == ["left", "center", "right"]
    assert assign_slots(2, np.random.default_rng(0), [1, 0], "x") == [1, 0]
    with pytest.raises(MudiError, match="permutation"):
        assign_slots(2, np.random.default_rng(0), [0, 0], "x")


def test_compose_config_checks_and_round_trips(tmp_path):
    cfg = ComposeConfig(subjects="s", out="o", n=3, relative_sizes="a=1,b=0.5")
    cfg.check()
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    assert ComposeConfig.from_toml(path) == cfg
    assert ComposeConfig().margin_px is None and ComposeConfig(segmix_margin=0.0).margin_px == 0.0
    assert ComposeConfig().edge_range_px is None and ComposeConfig(edge_range=5).edge_range_px == 5
    for bad, needle in ((dict(n=0), "--n"), (dict(size=8), "--size"), (dict(p=2.0), "--p"), (dict(k=1), "--k"),
                        (dict(segmix_margin=-2.0), "--margin"), (dict(edge_range=-1), "--edge-range"),
                        (dict(relative_sizes="a=3"), "--relative-sizes"), (dict(subjects=""), "--subjects"),
                        (dict(out=""), "--out")):
        with pytest.raises(MudiError, match=needle):
            ComposeConfig(**{"subjects": "s", "out": "o", **bad}).check()
    with pytest.raises(MudiError, match="unknown option 'sizee'"):
        ComposeConfig().updated({"sizee": 3})


def test_compose_library_call_writes_examples_and_config(data_dir, tmp_path):
    out = tmp_path / "out"
    cfg = ComposeConfig(subjects=str(data_dir / "subjects" / "dog6_and_dog2"), out=str(out), n=3, size=64, seed=1)
    result = compose(cfg, RunOptions(progress=False))
    assert result.out == out and len(result.records) == 3 and result.n_composites == 3
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert lines == result.records
    assert ComposeConfig.from_toml(out / "config.toml") == cfg
    with pytest.raises(MudiError, match="already has content"):
        compose(cfg)
    again = compose(cfg, RunOptions(overwrite=True, progress=False))
    assert again.records == result.records  # same seed, same examples
