"""SAM's mask candidates (mudi.prepare.mask_candidates): what a user chooses from when a mask is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mudi.errors import MudiError
from mudi.io import mask_to_image
from mudi.prepare import PrepareConfig, mask_candidates, prepare
from mudi.settings import RunOptions


def _photo(seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (70, 130, 3), dtype=np.uint8))


def test_tiny_sam_gives_three_candidates_best_first(tiny_models):
    masks, scores = mask_candidates(_photo(), (10, 5, 90, 60), str(tiny_models / "sam"))
    assert masks.shape == (3, 70, 130) and masks.dtype == bool
    assert scores.shape == (3,) and np.all(np.diff(scores) <= 0)
    assert len({m.tobytes() for m in masks}) == 3  # three different masks, not one repeated


def test_a_segmenter_without_candidates_gives_its_one_mask():
    class Box:
        def segment(self, image, box):
            mask = np.zeros((image.height, image.width), bool)
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1, x0:x1] = True
            return mask

    masks, scores = mask_candidates(_photo(), (10, 10, 50, 40), Box(), margin=0.0)
    assert masks.shape == (1, 70, 130) and np.isnan(scores[0])
    assert masks[0].sum() == 40 * 30
    masks, scores = mask_candidates(_photo(), (10, 10, 50, 40), "grabcut")
    assert masks.shape == (1, 70, 130) and np.isnan(scores[0])
    with pytest.raises(MudiError, match="--margin"):
        mask_candidates(_photo(), (10, 10, 50, 40), Box(), margin=0.7)


def test_choosing_candidate_k_writes_exactly_that_mask(tiny_models, tmp_path):
    photos = {"a": tmp_path / "a", "b": tmp_path / "b"}
    for i, folder in enumerate(photos.values()):
        folder.mkdir()
        _photo(i).save(folder / f"{folder.name}0.png")
    masks, _ = mask_candidates(Image.open(photos["a"] / "a0.png"), (10, 5, 90, 60), str(tiny_models / "sam"))
    k = 2
    chosen = tmp_path / "masks"
    chosen.mkdir()
    mask_to_image(masks[k]).save(chosen / "a0.png")
    mask_to_image(masks[0]).save(chosen / "b0.png")
    out = tmp_path / "set"
    prepare(PrepareConfig(subjects=[f"wip cat={photos['a']}", f"jam dog={photos['b']}"], out=str(out),
                          masks=str(chosen)), RunOptions(progress=False))
    from mudi.subjects import SubjectSet

    sset = SubjectSet.load(out)
    got = sset.subjects[0].photos[0].load().mask
    assert np.array_equal(got, masks[k]) and not np.array_equal(got, masks[0])
