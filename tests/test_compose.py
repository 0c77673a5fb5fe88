"""Seg-Mix / Cut-Mix / plain composition, pinned to the pixel (METHOD.md §2), and `mudi compose`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.cli import main
from mudi.compose import (
    Composer,
    Crop,
    composite_caption,
    crop_photo,
    cut_mix,
    default_margin,
    loss_weight_map,
    max_scale,
    parse_relative_sizes,
    plain,
    seg_mix,
)
from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto, SubjectSet

RED, BLUE, YELLOW, GREEN, GREY = (220, 20, 30), (10, 40, 230), (240, 220, 0), (0, 255, 0), (128, 128, 128)
WHITE = np.array([255, 255, 255], dtype=np.uint8)


def photo(w: int, h: int, color, *, box=None, ellipse: bool = False, bg=GREEN, caption="a photo") -> SegmentedPhoto:
    """A synthetic photo: background ``bg``, subject of solid ``color`` in ``box`` (default: all)."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = bg
    mask = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box or (0, 0, w, h)
    if ellipse:
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    else:
        mask[y0:y1, x0:x1] = True
    img[mask] = color
    return SegmentedPhoto(img, mask, caption, Path("<memory>"))


def arr(example) -> np.ndarray:
    return np.asarray(example.image)


def assert_outside_white(example) -> None:
    a = arr(example)
    assert a.shape[:2] == example.mask.shape
    assert (a[~example.mask] == 255).all(), "a pixel outside the union mask is not pure white"


# --------------------------------------------------------------------------- captions


def test_caption_text_exact():
    assert composite_caption(["olis corgi", "hta chow chow"]) == (
        "a photo of a olis corgi and a hta chow chow, simple background."
    )
    assert composite_caption(["olis corgi", "hta chow chow", "ult cat"]) == (
        "a photo of a olis corgi, a hta chow chow and a ult cat, simple background."
    )


def test_seg_mix_caption_puts_current_subject_first():
    ps = [photo(30, 40, RED), photo(40, 30, BLUE)]
    for seed in range(10):
        ex = seg_mix(ps, ["olis corgi", "hta chow chow"], 128, np.random.default_rng(seed), keys=["a", "b"])
        assert ex.caption == "a photo of a olis corgi and a hta chow chow, simple background."
        assert ex.subjects == ["a", "b"]
        assert [p.key for p in ex.placements] == ["a", "b"]
        assert ex.kind == "segmix"


# --------------------------------------------------------------------------- Seg-Mix geometry


def test_only_mask_pixels_pasted_everything_else_white():
    # ellipse subjects inside a green photo background: no green, white outside the union
    ps = [photo(60, 80, RED, box=(10, 5, 50, 75), ellipse=True), photo(90, 50, BLUE, box=(5, 10, 85, 45), ellipse=True)]
    for seed in range(30):
        ex = seg_mix(ps, ["x a", "y b"], 256, np.random.default_rng(seed))
        assert_outside_white(ex)
        a = arr(ex)
        assert not (a == np.array(GREEN, dtype=np.uint8)).all(-1).any(), "photo background was pasted"
        assert ex.mask.sum() > 0
        # the union mask is exactly the union of the two subjects' pasted masks, each inside its box
        for p in ex.placements:
            x0, y0, x1, y1 = p.box
            assert ex.mask[y0:y1, x0:x1].any()
        outside_boxes = np.ones_like(ex.mask)
        for p in ex.placements:
            x0, y0, x1, y1 = p.box
            outside_boxes[y0:y1, x0:x1] = False
        assert not ex.mask[outside_boxes].any()


def test_real_photos_outside_union_is_white(data_dir):
    sset = SubjectSet.load(data_dir / "subjects" / "dog6_and_dog2")
    comp = Composer(sset, 192, p=1.0)
    rng = np.random.default_rng(3)
    for i in range(10):
        ex = comp.example("ab"[i % 2], i, rng)
        assert ex.kind == "segmix"
        assert ex.image.size == (192, 192) and ex.image.mode == "RGB"
        assert ex.mask.dtype == bool and ex.mask.shape == (192, 192)
        assert_outside_white(ex)
        assert 0.02 < ex.mask.mean() < 0.9


def test_crop_to_mask_bbox():
    ph = photo(100, 80, RED, box=(20, 10, 70, 60))
    cr = crop_photo(ph)
    assert cr.size == (50, 50)
    assert cr.offset == (20, 10)
    assert (np.asarray(cr.mask) == 255).all()
    assert (np.asarray(cr.image) == np.array(RED, dtype=np.uint8)).all()


@pytest.mark.parametrize("size,n_seeds", [(256, 400), (1024, 150)])
def test_scale_range_and_box_sizes(size, n_seeds):
    w_a, h_a, w_b, h_b = 40, 90, 120, 50
    ps = [photo(w_a + 10, h_a + 10, RED, box=(5, 5, 5 + w_a, 5 + h_a)), photo(w_b, h_b, BLUE)]
    dims = [(w_a, h_a), (w_b, h_b)]
    ratios = {0: [], 1: []}
    for seed in range(n_seeds):
        ex = seg_mix(ps, ["x a", "y b"], size, np.random.default_rng(seed))
        for i, p in enumerate(ex.placements):
            w, h = dims[i]
            m = min((size / 2 - 32) / w, (size - 32) / h)
            assert m == pytest.approx(max_scale(w, h, size))
            assert 0.75 * m - 1e-9 <= p.scale <= m + 1e-9
            x0, y0, x1, y1 = p.box
            assert (x1 - x0, y1 - y0) == (round(w * p.scale), round(h * p.scale))
            assert x1 - x0 <= size / 2 - 32 and y1 - y0 <= size - 32
            ratios[i].append(p.scale / m)
    for i in (0, 1):
        r = np.array(ratios[i])
        assert r.min() < 0.76 and r.max() > 0.99  # both endpoints approached
        assert abs(r.mean() - 0.875) < 0.02  # uniform in [0.75, 1]


def test_low_fraction_and_margin_are_parameters():
    ps = [photo(50, 50, RED), photo(50, 50, BLUE)]
    for seed in range(50):
        ex = seg_mix(ps, ["x a", "y b"], 256, np.random.default_rng(seed), low=0.5, margin=64)
        m = min((128 - 64) / 50, (256 - 64) / 50)
        for p in ex.placements:
            assert 0.5 * m - 1e-9 <= p.scale <= m + 1e-9


def test_horizontal_edges_and_vertical_range():
    S = 256
    ps = [photo(30, 60, RED), photo(50, 40, BLUE)]
    lefts, rights, tops_rel, left_is_first = [], [], [], []
    for seed in range(800):
        ex = seg_mix(ps, ["x a", "y b"], S, np.random.default_rng(seed))
        by_slot = {p.slot: p for p in ex.placements}
        assert set(by_slot) == {0, 1}
        left, right = by_slot[0], by_slot[1]
        assert 1 <= left.box[0] <= S // 4
        assert S - S // 4 <= right.box[2] <= S - 1
        lefts.append(left.box[0])
        rights.append(S - right.box[2])
        left_is_first.append(ex.placements[0].slot == 0)
        for p in ex.placements:
            h = p.box[3] - p.box[1]
            assert 0 <= p.box[1] and p.box[3] <= S
            tops_rel.append(p.box[1] / (S - h))
    assert min(lefts) == 1 and max(lefts) == S // 4
    assert min(rights) == 1 and max(rights) == S // 4
    assert min(tops_rel) < 0.02 and max(tops_rel) > 0.98
    assert 0.4 < np.mean(left_is_first) < 0.6  # a random one goes left


def test_default_margin_is_32_and_shrinks_on_tiny_canvases():
    assert default_margin(1024) == 32 and default_margin(512) == 32 and default_margin(256) == 32
    assert default_margin(64) == 8
    ps = [photo(30, 60, RED), photo(50, 40, BLUE)]
    for seed in range(30):
        ex = seg_mix(ps, ["x a", "y b"], 64, np.random.default_rng(seed))
        for p, (w, h) in zip(ex.placements, [(30, 60), (50, 40)]):
            m = min((32 - 8) / w, (64 - 8) / h)
            assert 0.75 * m - 1e-9 <= p.scale <= m + 1e-9
        assert_outside_white(ex)


def test_edge_range_parameter():
    ps = [photo(30, 60, RED), photo(50, 40, BLUE)]
    for seed in range(100):
        ex = seg_mix(ps, ["x a", "y b"], 256, np.random.default_rng(seed), edge_range=5)
        by_slot = {p.slot: p for p in ex.placements}
        assert 1 <= by_slot[0].box[0] <= 5
        assert 256 - 5 <= by_slot[1].box[2] <= 255


def test_overlap_rule_top_subject_chosen_by_coin():
    # big solid rectangles on a small canvas overlap often; check the overlap pixel by pixel
    S = 256
    ps = [photo(100, 100, RED), photo(100, 100, BLUE)]
    colors = [np.array(RED, dtype=np.uint8), np.array(BLUE, dtype=np.uint8)]
    tops, overlaps = [], 0
    for seed in range(200):
        ex = seg_mix(ps, ["x a", "y b"], S, np.random.default_rng(seed))
        a = arr(ex)
        assert_outside_white(ex)
        zs = sorted(p.z for p in ex.placements)
        assert zs == [0, 1]
        top = max(range(2), key=lambda i: ex.placements[i].z)
        bottom = 1 - top
        tops.append(top)
        bt, bb = ex.placements[top].box, ex.placements[bottom].box
        # every pixel of the top subject's box has the top colour
        assert (a[bt[1]:bt[3], bt[0]:bt[2]] == colors[top]).all()
        # the bottom box shows the bottom colour exactly where the top box is absent
        sub = a[bb[1]:bb[3], bb[0]:bb[2]]
        inside_top = np.zeros(sub.shape[:2], dtype=bool)
        ix0, iy0 = max(bt[0], bb[0]), max(bt[1], bb[1])
        ix1, iy1 = min(bt[2], bb[2]), min(bt[3], bb[3])
        if ix0 < ix1 and iy0 < iy1:
            overlaps += 1
            inside_top[iy0 - bb[1]:iy1 - bb[1], ix0 - bb[0]:ix1 - bb[0]] = True
        assert (sub[inside_top] == colors[top]).all()
        assert (sub[~inside_top] == colors[bottom]).all()
        # union mask = both boxes
        expect = np.zeros((S, S), dtype=bool)
        for b in (bt, bb):
            expect[b[1]:b[3], b[0]:b[2]] = True
        assert (ex.mask == expect).all()
    assert overlaps > 20
    assert 0.35 < np.mean(tops) < 0.65  # a fair coin decides which is on top


def test_determinism_for_a_seed():
    ps = [photo(60, 80, RED, box=(10, 5, 50, 75), ellipse=True), photo(90, 50, BLUE)]
    a = seg_mix(ps, ["x a", "y b"], 128, np.random.default_rng(7))
    b = seg_mix(ps, ["x a", "y b"], 128, np.random.default_rng(7))
    c = seg_mix(ps, ["x a", "y b"], 128, np.random.default_rng(8))
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.mask == b.mask).all()
    assert [p.to_dict() for p in a.placements] == [p.to_dict() for p in b.placements]
    assert a.image.tobytes() != c.image.tobytes()
    # a precomputed Crop gives the same result as the photo
    d = seg_mix([crop_photo(p) for p in ps], ["x a", "y b"], 128, np.random.default_rng(7))
    assert isinstance(crop_photo(ps[0]), Crop)
    assert d.image.tobytes() == a.image.tobytes()


def test_relative_size_mode_scales_exactly_m_times_c():
    S = 512
    ps = [photo(40, 90, RED), photo(120, 50, BLUE)]
    for seed in range(20):
        ex = seg_mix(ps, ["x a", "y b"], S, np.random.default_rng(seed), relative=[1.0, 0.6])
        ma, mb = max_scale(40, 90, S), max_scale(120, 50, S)
        assert ex.placements[0].scale == pytest.approx(ma, abs=1e-12)
        assert ex.placements[1].scale == pytest.approx(0.6 * mb, abs=1e-12)
        assert ex.placements[1].box[2] - ex.placements[1].box[0] == round(120 * 0.6 * mb)
    with pytest.raises(MudiError, match="relative size"):
        seg_mix(ps, ["x a", "y b"], S, np.random.default_rng(0), relative=[1.0, 1.5])
    assert parse_relative_sizes("a=1, b=0.6") == {"a": 1.0, "b": 0.6}
    for bad in ("a", "a=x", "a=0", "a=2", ""):
        with pytest.raises(MudiError):
            parse_relative_sizes(bad)


def test_three_subjects():
    S = 384
    ps = [photo(40, 80, RED), photo(60, 60, BLUE), photo(80, 40, YELLOW)]
    E = S // 6
    slot_starts = {0: [], 1: [], 2: []}
    for seed in range(300):
        ex = seg_mix(ps, ["a x", "b y", "c z"], S, np.random.default_rng(seed), keys=["a", "b", "c"])
        assert ex.caption == "a photo of a a x, a b y and a c z, simple background."
        assert sorted(p.slot for p in ex.placements) == [0, 1, 2]
        assert sorted(p.z for p in ex.placements) == [0, 1, 2]
        assert_outside_white(ex)
        for p, (w, h) in zip(ex.placements, [(40, 80), (60, 60), (80, 40)]):
            m = min((S / 3 - 32) / w, (S - 32) / h)
            assert 0.75 * m - 1e-9 <= p.scale <= m + 1e-9
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 and x1 <= S and 0 <= y0 and y1 <= S
            if p.slot == 0:
                assert 1 <= x0 <= E
                slot_starts[0].append(x0)
            elif p.slot == 2:
                assert S - E <= x1 <= S - 1
                slot_starts[2].append(S - x1)
            else:
                centre = (x0 + x1) / 2
                assert abs(centre - S / 2) <= E // 2 + 1
                slot_starts[1].append(centre - S / 2)
    assert min(slot_starts[0]) == 1 and max(slot_starts[0]) == E
    assert min(slot_starts[2]) == 1 and max(slot_starts[2]) == E
    assert min(slot_starts[1]) < -E / 4 and max(slot_starts[1]) > E / 4


def test_fixed_slots_and_tops():
    ps = [photo(40, 80, RED), photo(60, 60, BLUE)]
    ex = seg_mix(ps, ["x a", "y b"], 256, np.random.default_rng(0), slots=[1, 0], y_tops=[10, 5000])
    assert [p.slot for p in ex.placements] == [1, 0]
    assert ex.placements[0].box[1] == 10
    assert ex.placements[1].box[3] == 256  # clamped so it fits


def test_bad_parameters():
    ps = [photo(40, 80, RED), photo(60, 60, BLUE)]
    rng = np.random.default_rng(0)
    with pytest.raises(MudiError):
        seg_mix(ps[:1], ["x a"], 256, rng)
    with pytest.raises(MudiError):
        seg_mix(ps, ["x a"], 256, rng)
    with pytest.raises(MudiError, match="too small"):
        seg_mix(ps, ["x a", "y b"], 64, rng, margin=32)
    with pytest.raises(MudiError):
        seg_mix(ps, ["x a", "y b"], 256, rng, low=0)


# --------------------------------------------------------------------------- Cut-Mix and plain


def test_cut_mix_geometry():
    S = 64
    # wide photo, subject near the right end: the slot window is centred on it
    a = photo(400, 100, YELLOW, box=(300, 30, 340, 70), bg=GREY)
    b = photo(50, 50, BLUE)
    seen = set()
    for seed in range(20):
        ex = cut_mix([a, b], ["x a", "y b"], S, np.random.default_rng(seed), keys=["a", "b"])
        assert ex.kind == "cutmix"
        assert ex.caption == "a photo of a x a and a y b, simple background."
        assert ex.mask.all()  # the slots tile the canvas
        px = arr(ex)
        slot_a, slot_b = ex.placements[0].slot, ex.placements[1].slot
        seen.add(slot_a)
        assert {slot_a, slot_b} == {0, 1}
        boxes = {p.slot: p.box for p in ex.placements}
        assert boxes == {0: (0, 0, 32, 64), 1: (32, 0, 64, 64)}
        xa = boxes[slot_a]
        tile_a = px[:, xa[0]:xa[2]]
        yellow = (np.abs(tile_a.astype(int) - YELLOW).sum(-1) < 30)
        assert yellow.sum() > 0.2 * yellow.size  # subject in view
        assert yellow[:, 8:24].any(axis=0).all()  # ...and centred in its strip
        xb = boxes[slot_b]
        assert (px[:, xb[0]:xb[2]] == np.array(BLUE, dtype=np.uint8)).all()
    assert seen == {0, 1}


def test_plain_example_resize_and_center_crop():
    # 80x40 photo: left half red subject, right half blue background
    img = np.empty((40, 80, 3), dtype=np.uint8)
    img[:, :40] = RED
    img[:, 40:] = BLUE
    mask = np.zeros((40, 80), dtype=bool)
    mask[:, :40] = True
    ph = SegmentedPhoto(img, mask, "a photo of a olis corgi on a sofa", Path("<memory>"))
    ex = plain(ph, 32, key="a", photo_index=3)
    assert ex.kind == "plain" and ex.subjects == ["a"]
    assert ex.caption == "a photo of a olis corgi on a sofa"
    assert ex.image.size == (32, 32)
    # shortest side 40 -> 32 (scale 0.8): 64x32, crop x in [16, 48): boundary at canvas x = 16
    assert ex.mask[:, :15].all() and not ex.mask[:, 17:].any()
    a = arr(ex)
    assert (a[:, :14] == np.array(RED, dtype=np.uint8)).all()
    assert (a[:, 18:] == np.array(BLUE, dtype=np.uint8)).all()
    assert ex.placements[0].photo == 3 and ex.placements[0].scale == pytest.approx(0.8)
    # tall photo, square canvas larger than the photo (upscaling)
    ex2 = plain(photo(30, 60, RED, box=(0, 0, 30, 30)), 90)
    assert ex2.image.size == (90, 90)
    # 30x60 -> 90x180, crop y in [45, 135): mask (top half, y < 90) covers canvas rows < 45
    assert ex2.mask[:44].all() and not ex2.mask[46:].any()


def test_loss_weight_map():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32, :] = True
    assert (loss_weight_map(mask, 1.0, 8) == 1).all()
    w = loss_weight_map(mask, 0.25, (8, 8))
    assert w.shape == (8, 8) and w.dtype == np.float32
    assert np.allclose(w[:4], 1.0) and np.allclose(w[4:], 0.25)
    w0 = loss_weight_map(mask, 0.0)
    assert w0.shape == (64, 64) and (w0 == mask).all()
    with pytest.raises(MudiError):
        loss_weight_map(mask, 1.5)


# --------------------------------------------------------------------------- Composer


def synthetic_set(n_subjects: int = 2, n_photos: int = 3) -> SubjectSet:
    colors = [RED, BLUE, YELLOW, GREY]
    idents = ["olis", "hta", "ult", "amg"]
    classes = ["corgi", "chow chow", "cat", "robot toy"]
    subjects = []
    for s in range(n_subjects):
        photos = []
        for j in range(n_photos):
            ph = photo(40 + 10 * j, 50, colors[s], box=(5, 5, 35 + 10 * j, 45), ellipse=True,
                       caption=f"a photo of a {idents[s]} {classes[s]} #{j}")
            photos.append((ph.image, ph.mask, ph.caption))
        subjects.append(("abcd"[s], f"{idents[s]} {classes[s]}", photos))
    return SubjectSet.from_arrays(subjects)


def test_composer_frequency_is_p():
    sset = synthetic_set()
    comp = Composer(sset, 96, mix="segmix", p=0.3)
    rng = np.random.default_rng(0)
    kinds = [comp.example("a", i, rng).kind for i in range(1500)]
    assert set(kinds) == {"segmix", "plain"}
    assert abs(np.mean([k == "segmix" for k in kinds]) - 0.3) < 0.04
    none = Composer(sset, 96, mix="none", p=1.0)
    assert all(none.example("a", i, rng).kind == "plain" for i in range(20))
    zero = Composer(sset, 96, p=0.0)
    assert all(zero.example("a", i, rng).kind == "plain" for i in range(20))
    one = Composer(sset, 96, mix="cutmix", p=1.0)
    assert all(one.example("a", i, rng).kind == "cutmix" for i in range(20))


def test_composer_example_contents():
    sset = synthetic_set(n_subjects=4)
    comp = Composer(sset, 192, p=1.0, k=3)
    rng = np.random.default_rng(1)
    others_seen = set()
    for i in range(60):
        ex = comp.example("b", i, rng)
        assert ex.subjects[0] == "b" and len(ex.subjects) == 3 and len(set(ex.subjects)) == 3
        assert ex.placements[0].photo == i % 3
        assert all(0 <= p.photo < 3 for p in ex.placements)
        others_seen.update(ex.subjects[1:])
        phrases = [sset.subject(k).phrase for k in ex.subjects]
        assert ex.caption == composite_caption(phrases)
        assert_outside_white(ex)
    assert others_seen == {"a", "c", "d"}
    # a plain example is the photo with its own caption
    plain_ex = Composer(sset, 64, p=0.0).example("c", 1, rng)
    assert plain_ex.caption == "a photo of a ult cat #1"
    # same seed -> same example
    e1 = comp.example("a", 0, np.random.default_rng(5))
    e2 = comp.example("a", 0, np.random.default_rng(5))
    assert e1.image.tobytes() == e2.image.tobytes() and e1.caption == e2.caption


def test_composer_relative_sizes_and_bad_options():
    sset = synthetic_set()
    comp = Composer(sset, 256, p=1.0, relative_sizes={"hta": 0.5})
    ex = comp.example("a", 0, np.random.default_rng(0))
    by_key = {p.key: p for p in ex.placements}
    ca, cb = comp.crop("a", 0), comp.crop("b", by_key["b"].photo)
    assert by_key["a"].scale == pytest.approx(max_scale(*ca.size, 256))
    assert by_key["b"].scale == pytest.approx(0.5 * max_scale(*cb.size, 256))
    with pytest.raises(MudiError, match="k=3"):
        Composer(sset, 256, k=3)
    with pytest.raises(MudiError):
        Composer(sset, 256, p=1.5)
    with pytest.raises(MudiError):
        Composer(sset, 256, mix="blend")
    with pytest.raises(MudiError, match="unknown subject"):
        Composer(sset, 256, relative_sizes={"zzz": 0.5})


def test_mix_like_prior_composite_follows_instance():
    sset = synthetic_set()
    comp = Composer(sset, 256, p=1.0, class_layout="instance")  # the old layout (default: the reference's)
    class_photos = {
        "a": [photo(50, 70, YELLOW, caption="a photo of a corgi, simple background")],
        "b": [photo(70, 50, GREY, caption="a photo of a chow chow, simple background"),
              photo(40, 40, GREY, caption="x")],
    }
    rng = np.random.default_rng(2)
    for i in range(20):
        inst = comp.example("a", i, rng)
        cls = comp.mix_like(class_photos, inst, rng)
        assert cls.kind == "segmix"
        assert cls.caption == "a photo of a corgi and a chow chow, simple background."
        assert cls.subjects == inst.subjects
        for pi, pc in zip(inst.placements, cls.placements):
            assert pc.slot == pi.slot
            h = pc.box[3] - pc.box[1]
            assert pc.box[1] == min(pi.box[1], 256 - h)  # same vertical position (clamped to fit)
        assert_outside_white(cls)
    plain_inst = Composer(sset, 64, p=0.0).example("b", 0, rng)
    cls = comp.mix_like(class_photos, plain_inst, rng)
    assert cls.kind == "plain" and cls.subjects == ["b"]
    with pytest.raises(MudiError, match="class"):
        comp.mix_like({"a": class_photos["a"]}, inst, rng)


# --------------------------------------------------------------------------- CLI


def dogs(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def test_cli_end_to_end(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["compose", "--subjects", str(dogs(data_dir)), "--n", "4", "--seed", "3", "--out", str(out),
               "--size", "128"])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for i, rec in enumerate(lines):
        assert rec["file_name"] == f"composite_{i:04d}.png"
        assert rec["kind"] == "segmix"
        assert rec["caption"] in (
            "a photo of a olis corgi and a hta chow chow, simple background.",
            "a photo of a hta chow chow and a olis corgi, simple background.",
        )
        assert rec["subjects"][0] == "ab"[i % 2]
        assert len(rec["placements"]) == 2 and len(rec["placements"][0]["box"]) == 4
        img = np.asarray(Image.open(out / rec["file_name"]))
        mask = np.asarray(Image.open(out / rec["mask_file"])) >= 128
        assert img.shape == (128, 128, 3) and mask.shape == (128, 128)
        assert (img[~mask] == 255).all()
        assert mask.any()
    assert Image.open(out / "grid.png").size[0] > 256
    # same seed -> same files
    out2 = tmp_path / "out2"
    assert main(["compose", "--subjects", str(dogs(data_dir)), "--n", "4", "--seed", "3", "--out", str(out2),
                 "--size", "128"]) == 0
    assert (out / "composite_0002.png").read_bytes() == (out2 / "composite_0002.png").read_bytes()


def test_cli_cutmix_and_plain(data_dir, tmp_path):
    out = tmp_path / "cut"
    assert main(["compose", "--subjects", str(dogs(data_dir)), "--n", "2", "--out", str(out), "--size", "64",
                 "--mix", "cutmix"]) == 0
    rec = json.loads((out / "captions.jsonl").read_text().splitlines()[0])
    assert rec["kind"] == "cutmix"
    out = tmp_path / "plain"
    assert main(["compose", "--subjects", str(dogs(data_dir)), "--n", "2", "--out", str(out), "--size", "64",
                 "--p", "0"]) == 0
    rec = json.loads((out / "captions.jsonl").read_text().splitlines()[0])
    assert rec["kind"] == "plain" and rec["caption"].startswith("A photo of a olis corgi")


def _bad(capsys, argv, needle):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert needle in err
    return err


def test_cli_bad_input(data_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--out", str(full)], "--overwrite")
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]

    out = tmp_path / "new"
    _bad(capsys, ["compose", "--subjects", str(tmp_path / "missing"), "--out", str(out)], "not found")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--n", "0", "--out", str(out)], "--n")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--n", "-3", "--out", str(out)], "--n")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--k", "3", "--out", str(out)], "k=3")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--relative-sizes", "a=2", "--out", str(out)],
         "(0, 1]")
    _bad(capsys, ["compose", "--subjects", str(dogs(data_dir)), "--p", "1.5", "--out", str(out)], "--p")
    assert not out.exists()  # nothing written on bad input

    # --overwrite writes into the non-empty folder
    assert main(["compose", "--subjects", str(dogs(data_dir)), "--n", "1", "--size", "64", "--out", str(full),
                 "--overwrite"]) == 0
    assert (full / "composite_0000.png").exists() and (full / "keep.txt").read_text() == "mine"
