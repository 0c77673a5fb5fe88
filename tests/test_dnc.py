"""Exact tests of the Detect-and-Compare math (METHOD.md §6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mudi.evaluate.dnc import (
    box_similarity,
    crop_box,
    detect_and_compare,
    detect_and_compare_embeddings,
    dnc_score,
    greedy_match,
    ground_truth_similarity,
    matrix_norm,
    pad_to_square,
)

S_GT = np.array([[0.78, 0.28], [0.28, 0.71]])


# ----------------------------------------------------------------------------- paper examples

@pytest.mark.parametrize(
    "s_dc, expected",
    [
        ([[0.72, 0.26], [0.29, 0.71]], 0.93),  # good
        ([[0.64, 0.28], [0.32, 0.70]], 0.86),  # slightly mixed
        ([[0.27, 0.74], [0.25, 0.71]], 0.31),  # one subject drawn twice
    ],
)
def test_paper_worked_examples(s_dc, expected):
    # The figure's matrices are rounded to 2 decimals, so the score is reproduced within ~0.01.
    assert dnc_score(S_GT, np.array(s_dc)) == pytest.approx(expected, abs=0.01)
    # The same through the full rule (S_DC there is already matched: rows are subjects).
    res = detect_and_compare(np.array(s_dc), S_GT)
    assert res.count_ok and res.matched == [0, 1]
    assert res.score == pytest.approx(expected, abs=0.01)


def test_paper_examples_exact_values():
    fro = {"norm": "fro"}  # the sums of squares below are the Frobenius norm's
    assert dnc_score(S_GT, np.array([[0.72, 0.26], [0.29, 0.71]]), **fro) == pytest.approx(1 - np.sqrt(0.0041))
    assert dnc_score(S_GT, np.array([[0.27, 0.74], [0.25, 0.71]]), **fro) == pytest.approx(1 - np.sqrt(0.4726))


def test_paper_count_error_is_zero():
    raw = np.array([[0.72, 0.26], [0.29, 0.71], [0.70, 0.27]])  # 3 boxes for 2 subjects
    res = detect_and_compare(raw, S_GT, boxes=[(0, 0, 1, 1)] * 3)
    assert res.score == 0.0
    assert not res.count_ok and res.count_error == "duplicate" and res.n_boxes == 3
    assert res.s_dc is None and res.matched is None and res.matched_boxes is None
    assert res.s_dc_raw.shape == (3, 2)  # kept for diagnosis


@pytest.mark.parametrize("m", [0, 1])
def test_missing_subject_is_zero(m):
    raw = np.array([[0.72, 0.26]])[:m]
    res = detect_and_compare(raw, S_GT)
    assert res.score == 0.0 and res.count_error == "missing" and res.n_boxes == m


def test_matching_recovers_box_order():
    # Boxes found in the other order: greedy matching puts subject k's box in row k again.
    raw = np.array([[0.29, 0.71], [0.72, 0.26]])
    res = detect_and_compare(raw, S_GT, boxes=[(10, 0, 20, 10), (0, 0, 10, 10)])
    assert res.matched == [1, 0]
    np.testing.assert_allclose(res.s_dc, [[0.72, 0.26], [0.29, 0.71]])
    assert res.matched_boxes == [(0, 0, 10, 10), (10, 0, 20, 10)]
    assert res.score == pytest.approx(0.936, abs=1e-3)
    assert res.identities_ok


# ----------------------------------------------------------------------------- greedy matching

def test_greedy_differs_from_optimal_assignment():
    from scipy.optimize import linear_sum_assignment

    # Subject 0 prefers box 0 (0.90) although box 1 is almost as good for it (0.85), and box 0
    # is the only good box for subject 1. Greedy column-by-column gives subject 0 box 0.
    raw = np.array([[0.90, 0.80], [0.85, 0.10]])
    assert greedy_match(raw) == [0, 1]
    rows, cols = linear_sum_assignment(-raw)  # optimal: subject 0 -> box 1, subject 1 -> box 0
    optimal = [int(rows[list(cols).index(k)]) for k in range(2)]
    assert optimal == [1, 0]
    res = detect_and_compare(raw, np.eye(2))
    np.testing.assert_allclose(res.s_dc, raw)  # greedy rows, not the optimal ones
    assert res.score == pytest.approx(1 - np.linalg.norm(np.eye(2) - raw, 2))  # spectral by default


def test_greedy_is_column_by_column_in_subject_order():
    # Subject 1's best box (0.99) is box 0, but subject 0 takes box 0 first (0.5 > 0.4).
    raw = np.array([[0.5, 0.99], [0.4, 0.2]])
    assert greedy_match(raw) == [0, 1]
    raw3 = np.array([[0.9, 0.9, 0.9], [0.1, 0.8, 0.7], [0.2, 0.3, 0.95]])
    assert greedy_match(raw3) == [0, 1, 2]
    assert greedy_match(np.array([[0.3, 0.3], [0.3, 0.3]])) == [0, 1]  # ties: lower index


def test_greedy_needs_enough_boxes():
    with pytest.raises(ValueError):
        greedy_match(np.zeros((1, 2)))
    assert greedy_match(np.array([[0.1, 0.2], [0.9, 0.1], [0.5, 0.8]])) == [1, 2]


# ----------------------------------------------------------------------------- matrices

def test_ground_truth_includes_self_pairs():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # two orthogonal photos of subject 0
    b = np.array([[1.0, 0.0, 0.0]])
    gt = ground_truth_similarity([a, b])
    # mean over the 2x2 pairs (1, 0, 0, 1) -> 0.5: self-pairs count
    assert gt[0, 0] == pytest.approx(0.5)
    assert gt[1, 1] == pytest.approx(1.0)
    assert gt[0, 1] == gt[1, 0] == pytest.approx(0.5)


def test_box_similarity_is_mean_over_references_and_normalises():
    refs = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 3.0]])]
    boxes = np.array([[2.0, 0.0], [1.0, 1.0]])
    s = box_similarity(boxes, refs)
    np.testing.assert_allclose(s, [[0.5, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]])


def test_embeddings_to_score():
    rng = np.random.default_rng(0)
    ra, rb = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    boxes = np.stack([rb[0], ra[0]])  # box 0 is subject b, box 1 is subject a
    res = detect_and_compare_embeddings(boxes, [ra, rb], boxes=[(0, 0, 2, 2), (2, 2, 4, 4)])
    assert res.matched == [1, 0] and res.count_ok
    assert res.score == pytest.approx(dnc_score(ground_truth_similarity([ra, rb]), res.s_dc))
    json.dumps(res.to_dict())  # JSON-ready


def test_spectral_norm_option():
    d = S_GT - np.array([[0.27, 0.74], [0.25, 0.71]])
    assert matrix_norm(d, "spectral") == pytest.approx(np.linalg.svd(d, compute_uv=False)[0])
    res = detect_and_compare(np.array([[0.27, 0.74], [0.25, 0.71]]), S_GT, norm="spectral")
    assert res.score == pytest.approx(1 - np.linalg.svd(d, compute_uv=False)[0])
    with pytest.raises(ValueError):
        dnc_score(S_GT, S_GT, norm="nuclear")


def test_perfect_match_scores_one():
    assert dnc_score(S_GT, S_GT) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- crops

def test_crop_pads_white_to_square():
    img = Image.new("RGB", (100, 60), (10, 20, 30))
    crop = crop_box(img, (10.4, 5.0, 50.0, 25.0))
    assert crop.size == (40, 40)  # 40 x 20 box -> 40 x 40
    arr = np.asarray(crop)
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 255).all()  # padding is white
    assert (arr[20, 20] == [10, 20, 30]).all()  # content centred
    assert (arr[10:30, :] == [10, 20, 30]).all()


def test_crop_clips_boxes_to_image():
    assert crop_box(Image.new("RGB", (100, 60)), (-5, -5, 500, 500)).size == (100, 100)
    assert crop_box(Image.new("RGB", (100, 60)), (99.5, 59.5, 99.6, 59.7)).size == (1, 1)  # never empty
    assert pad_to_square(Image.new("L", (3, 7))).mode == "RGB"
