"""Box and mask geometry (mudi.geometry) and the per-subject value parser (mudi.subjects)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mudi.errors import MudiError
from mudi.geometry import box_iou, clamp_box, enlarge_box, fit_box, mask_bbox, pixel_box
from mudi.subjects import SubjectSet, parse_subject_values


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes: no division by zero


def test_clamp_box_clamps_every_coordinate():
    assert clamp_box((-5, -1, 120, 50), (100, 40)) == (0.0, 0.0, 100.0, 40.0)
    assert clamp_box((150, 10, 160, 20), (100, 40)) == (100.0, 10.0, 100.0, 20.0)  # outside: empty
    assert clamp_box((1.5, 2.5, 3.5, 4.5), (100, 40)) == (1.5, 2.5, 3.5, 4.5)


def test_pixel_box_rounds_outward_and_keeps_one_pixel():
    assert pixel_box((-5, -5, 500, 500), (100, 60)) == (0, 0, 100, 60)
    assert pixel_box((99.5, 59.5, 99.6, 59.7), (100, 60)) == (99, 59, 100, 60)
    assert pixel_box((10.2, 3.7, 20.1, 9.0), (100, 60)) == (10, 3, 21, 9)
    assert pixel_box((30, 30, 10, 10), (100, 60)) == (30, 30, 31, 31)  # inverted: one pixel


def test_enlarge_box_margin_is_a_fraction_of_the_image_and_clamped():
    assert enlarge_box((100, 100, 200, 200), (400, 300), 0.05) == (80.0, 85.0, 220.0, 215.0)
    assert enlarge_box((5, 10, 395, 290), (400, 300), 0.05) == (0.0, 0.0, 400.0, 300.0)


def test_fit_box_keeps_aspect_centred():
    assert fit_box((0, 0, 100, 100), (50, 100)) == (25, 0, 75, 100)
    assert fit_box((10, 20, 210, 120), (400, 100)) == (10, 45, 210, 95)


def test_mask_bbox_is_exclusive_and_refuses_empty():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mask_bbox(m) == (3, 2, 9, 5)
    with pytest.raises(ValueError):
        mask_bbox(np.zeros((4, 4), bool))


def _sset() -> SubjectSet:
    img = np.zeros((4, 4, 3), np.uint8)
    mask = np.ones((4, 4), bool)
    return SubjectSet.from_arrays([("a", "olis corgi", [(img, mask, "c")]), ("b", "hta chow chow", [(img, mask, "c")])])


def test_parse_subject_values_ranges_and_names():
    assert parse_subject_values("a=1, b=0.6", low=0, high=1) == {"a": 1.0, "b": 0.6}
    assert parse_subject_values("olis=2,hta chow chow=0.5", _sset()) == {"a": 2.0, "b": 0.5}
    assert parse_subject_values({"hta": 3}, _sset()) == {"b": 3.0}
    assert parse_subject_values(None) == {} and parse_subject_values("  ") == {}
    with pytest.raises(MudiError, match=r"--relative-sizes: a=2 must be in \(0, 1\]"):
        parse_subject_values("a=2", low=0, high=1, option="--relative-sizes")
    with pytest.raises(MudiError, match=r"--sizes: a=0 must be > 0"):
        parse_subject_values("a=0", high=math.inf)
    for bad, needle in (("a", "not NAME=NUMBER"), ("=1", "not NAME=NUMBER"), ("a=x", "not a number"),
                        ("a=inf", "finite"), ("a=nan", "finite"), (",", "no NAME=NUMBER")):
        with pytest.raises(MudiError, match=needle):
            parse_subject_values(bad, option="--sizes")
    with pytest.raises(MudiError, match="--sizes: unknown subject 'zzz'"):
        parse_subject_values("zzz=1", _sset())
