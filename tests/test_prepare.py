"""mudi prepare: box geometry, the exactly-one-box rule, OWLv2/SAM/GrabCut wrappers, the
preparation pipeline and the CLI (import, segmentation, user masks/alpha/boxes, bad input)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mudi.cli import main
from mudi.errors import MudiError
from mudi.geometry import enlarge_box
from mudi.prepare import (
    DEFAULT_BOX_MARGIN,
    PhotoResult,
    PrepareConfig,
    SubjectSpec,
    import_subjects,
    pick_single_box,
    prepare,
    segment_photo,
)
from mudi.settings import RunOptions
from mudi.protocols import Detection, Detector, Segmenter
from mudi.subjects import SubjectSet, mask_bbox

PHOTO_SIDE = 96  # the real photos are copied at this size to keep GrabCut/SAM fast


# ----------------------------------------------------------------------------- fakes


class FakeDetector:
    """Returns fixed detections per call and records what it was asked."""

    def __init__(self, detections_per_image):
        self.detections_per_image = detections_per_image  # list or callable(image) -> list
        self.calls = []

    def detect(self, images, queries, threshold):
        self.calls.append((len(images), list(queries), threshold))
        out = []
        for im in images:
            dets = self.detections_per_image(im) if callable(self.detections_per_image) else self.detections_per_image
            out.append([d for d in dets if d.score >= threshold])
        return out


class FakeSegmenter:
    """Records the prompt box; the mask is the box (rounded inwards)."""

    def __init__(self):
        self.boxes = []

    def segment(self, image, box):
        self.boxes.append(tuple(box))
        mask = np.zeros((image.height, image.width), bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[y0:y1, x0:x1] = True
        return mask


def test_fakes_implement_the_protocols():
    assert isinstance(FakeDetector([]), Detector)
    assert isinstance(FakeSegmenter(), Segmenter)


# ----------------------------------------------------------------------------- geometry


def test_enlarge_box_adds_five_percent_of_image_size_per_side():
    # 400 x 300 image: 5 % = 20 px horizontally, 15 px vertically
    assert DEFAULT_BOX_MARGIN == 0.05
    assert enlarge_box((100, 100, 200, 200), (400, 300), DEFAULT_BOX_MARGIN) == (80.0, 85.0, 220.0, 215.0)
    assert enlarge_box((100, 100, 200, 200), (400, 300), margin=0.1) == (60.0, 70.0, 240.0, 230.0)
    assert enlarge_box((100, 100, 200, 200), (400, 300), margin=0.0) == (100.0, 100.0, 200.0, 200.0)


def test_enlarge_box_is_clamped_to_the_image():
    assert enlarge_box((5, 10, 395, 290), (400, 300), 0.05) == (0.0, 0.0, 400.0, 300.0)
    assert enlarge_box((30, 0, 390, 120), (400, 300), 0.05) == (10.0, 0.0, 400.0, 135.0)


def test_segment_photo_prompts_the_segmenter_with_the_enlarged_box():
    image = Image.new("RGB", (200, 100))
    det = FakeDetector([Detection((50.0, 40.0, 150.0, 80.0), 0.9, 0)])
    seg = FakeSegmenter()
    mask, reason = segment_photo(image, "corgi", det, seg)
    assert reason == ""
    # 5 % of 200 = 10 px left/right, 5 % of 100 = 5 px top/bottom
    assert seg.boxes == [(40.0, 35.0, 160.0, 85.0)]
    assert det.calls == [(1, ["corgi"], 0.2)]
    assert mask.shape == (100, 200) and mask.dtype == bool
    assert mask_bbox(mask) == (40, 35, 160, 85)


def test_segment_photo_clamps_the_prompt_box():
    image = Image.new("RGB", (200, 100))
    seg = FakeSegmenter()
    segment_photo(image, "corgi", FakeDetector([Detection((2.0, 1.0, 195.0, 99.0), 0.5, 0)]), seg, margin=0.05)
    assert seg.boxes == [(0.0, 0.0, 200.0, 100.0)]


@pytest.mark.parametrize(
    "dets, expected",
    [
        ([], "no box above 0.2"),
        ([Detection((0, 0, 5, 5), 0.1, 0)], "no box above 0.2"),
        ([Detection((0, 0, 5, 5), 0.5, 0), Detection((10, 10, 20, 20), 0.3, 0)],
         "2 boxes: ambiguous, supply a mask or a box"),
        ([Detection((0, 0, 5, 5), 0.5, 0)] * 3, "3 boxes: ambiguous, supply a mask or a box"),
    ],
)
def test_exactly_one_box_rule(dets, expected):
    image = Image.new("RGB", (64, 64))
    seg = FakeSegmenter()
    mask, reason = segment_photo(image, "corgi", FakeDetector(dets), seg, threshold=0.2)
    assert mask is None
    assert reason == expected
    assert seg.boxes == []  # never segmented
    det, why = pick_single_box(dets, 0.2)
    assert det is None and why == expected


def test_boxes_below_the_threshold_do_not_count():
    dets = [Detection((0, 0, 30, 30), 0.15, 0), Detection((10, 10, 40, 40), 0.45, 0)]
    det, reason = pick_single_box(dets, 0.2)
    assert reason == "" and det.score == 0.45
    det, reason = pick_single_box(dets, 0.5)
    assert det is None and reason == "no box above 0.5"


# ----------------------------------------------------------------------------- model wrappers


class _StubOwl:
    """Stands in for Owlv2ForObjectDetection with fixed normalized boxes (cx, cy, w, h) relative
    to the padded square, to pin the box mapping."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, boxes, scores):
        self.boxes = torch.tensor(boxes, dtype=torch.float32)
        p = torch.tensor(scores, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        self.logits = torch.log(p / (1 - p))

    def __call__(self, **inputs):
        n = inputs["pixel_values"].shape[0]
        return SimpleNamespace(
            logits=self.logits[None, :, None].repeat(n, 1, 1),
            pred_boxes=self.boxes[None].repeat(n, 1, 1),
        )


def test_owlv2_boxes_are_mapped_from_the_padded_square_and_clamped(tiny_models):
    from transformers import Owlv2Processor

    from mudi.prepare.detect import Owlv2Detector

    processor = Owlv2Processor.from_pretrained(tiny_models / "owlv2")
    stub = _StubOwl(
        boxes=[
            [0.25, 0.20, 0.30, 0.20],  # inside: (20, 20, 80, 60) on a 200-px square
            [0.50, 0.50, 0.40, 0.40],  # runs into the bottom padding: y clamped to 100
            [0.50, 0.90, 0.20, 0.10],  # entirely in the padding (y 170..190): dropped
            [0.80, 0.20, 0.10, 0.10],  # below the threshold
        ],
        scores=[0.9, 0.6, 0.95, 0.1],
    )
    det = Owlv2Detector((stub, processor), nms_iou=None)
    image = Image.new("RGB", (200, 100), (120, 60, 30))  # W=200, H=100: padded to 200x200
    (dets,) = det.detect([image], ["corgi"], threshold=0.2)
    boxes = [tuple(round(v, 3) for v in d.box) for d in dets]
    assert boxes == [(20.0, 20.0, 80.0, 60.0), (60.0, 60.0, 140.0, 100.0)]
    assert [round(d.score, 3) for d in dets] == [0.9, 0.6]
    assert all(d.label == 0 for d in dets)

    # tall image: padded at the right; a box in the right padding is dropped
    tall = Image.new("RGB", (50, 200))
    stub2 = _StubOwl(boxes=[[0.1, 0.5, 0.2, 0.2], [0.8, 0.5, 0.2, 0.2]], scores=[0.8, 0.8])
    (dets,) = Owlv2Detector((stub2, processor)).detect([tall], ["robot"], 0.2)
    assert [tuple(round(v, 3) for v in d.box) for d in dets] == [(0.0, 80.0, 40.0, 120.0)]


def test_owlv2_nms_merges_duplicate_boxes(tiny_models):
    from transformers import Owlv2Processor

    from mudi.prepare.detect import Owlv2Detector

    processor = Owlv2Processor.from_pretrained(tiny_models / "owlv2")
    stub = _StubOwl(boxes=[[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.15, 0.15, 0.1, 0.1]],
                    scores=[0.7, 0.8, 0.5])
    image = Image.new("RGB", (100, 100))
    merged = Owlv2Detector((stub, processor)).detect([image], ["dog"], 0.2)[0]
    raw = Owlv2Detector((stub, processor), nms_iou=None).detect([image], ["dog"], 0.2)[0]
    assert len(raw) == 3 and len(merged) == 2
    assert [round(d.score, 3) for d in merged] == [0.8, 0.5]


def test_owlv2_tiny_model_batches_and_stays_inside_images(tiny_models):
    from mudi.prepare.detect import Owlv2Detector

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in
              [(120, 60), (50, 90), (64, 64)]]
    det1 = Owlv2Detector(str(tiny_models / "owlv2"), batch_size=1, nms_iou=None)
    det3 = Owlv2Detector((det1.model, det1.processor), batch_size=3, nms_iou=None)
    one = det1.detect(images, ["corgi", "chow chow"], threshold=0.0)
    three = det3.detect(images, ["corgi", "chow chow"], threshold=0.0)
    assert len(one) == len(three) == 3
    for im, a, b in zip(images, one, three):
        assert len(a) == len(b)
        for da, db in zip(a, b):
            assert np.allclose(da.box, db.box, atol=1e-3) and abs(da.score - db.score) < 1e-4
        for d in a:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height
            assert d.label in (0, 1) and 0.0 <= d.score <= 1.0


def test_sam_tiny_mask_has_the_photo_size(tiny_models):
    from mudi.prepare.segment import SamSegmenter

    seg = SamSegmenter(str(tiny_models / "sam"))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 130, 3), dtype=np.uint8))
    mask = seg.segment(image, (10.0, 5.0, 90.0, 60.0))
    assert mask.shape == (70, 130) and mask.dtype == bool


def test_grabcut_finds_a_square_on_a_plain_background():
    from mudi.prepare.segment import GrabCutSegmenter

    rng = np.random.default_rng(0)
    arr = np.full((100, 120, 3), 235, np.uint8) + rng.integers(0, 15, (100, 120, 3), dtype=np.uint8)
    arr[30:70, 40:90] = (150, 30, 20) + rng.integers(0, 20, (40, 50, 3), dtype=np.uint8)
    truth = np.zeros((100, 120), bool)
    truth[30:70, 40:90] = True
    mask = GrabCutSegmenter().segment(Image.fromarray(arr), (30, 20, 100, 80))
    assert mask.shape == (100, 120) and mask.dtype == bool
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    assert not mask[:20].any() and not mask[:, :30].any()  # nothing outside the box


def test_grabcut_is_deterministic(data_dir):
    from mudi.prepare.segment import GrabCutSegmenter

    image = _small(data_dir / "subjects" / "dog6_and_dog2" / "a00.jpg", 128)
    seg = GrabCutSegmenter()
    first = seg.segment(image, (10, 10, 110, 120))
    for _ in range(3):
        assert np.array_equal(seg.segment(image, (10, 10, 110, 120)), first)


def test_grabcut_downscales_large_photos_and_returns_full_size_masks():
    from mudi.prepare.segment import GrabCutSegmenter

    arr = np.full((300, 200, 3), 240, np.uint8)
    arr[100:200, 50:150] = (20, 40, 160)
    mask = GrabCutSegmenter(max_side=100).segment(Image.fromarray(arr), (30, 80, 170, 220))
    assert mask.shape == (300, 200)
    assert mask[150, 100] and not mask[20, 20]


# ----------------------------------------------------------------------------- fixtures


def _small(path: Path, side: int = PHOTO_SIDE) -> Image.Image:
    return Image.open(path).convert("RGB").resize((side, side), Image.BILINEAR)


def _small_mask(path: Path, side: int = PHOTO_SIDE) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((side, side), Image.NEAREST)) >= 128


@pytest.fixture
def photos(tmp_path, data_dir):
    """Small copies of two photos per dog: tmp/corgi/a00.jpg, a01.jpg; tmp/chow/b00.jpg, b01.jpg.

    Returns (root, {name: reference mask}, {name: mask bbox})."""
    src = data_dir / "subjects" / "dog6_and_dog2"
    masks, boxes = {}, {}
    for sub, names in (("corgi", ["a00", "a01"]), ("chow", ["b00", "b01"])):
        (tmp_path / sub).mkdir()
        for n in names:
            _small(src / f"{n}.jpg").save(tmp_path / sub / f"{n}.jpg", quality=95)
            masks[n] = _small_mask(src / f"mask_{n}.png")
            boxes[f"{n}.jpg"] = list(mask_bbox(masks[n]))
    return tmp_path, masks, boxes


def _subjects(root: Path) -> list[str]:
    return ["--subject", f"olis corgi={root / 'corgi'}", "--subject", f"hta chow chow={root / 'chow'}"]


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


# ----------------------------------------------------------------------------- CLI: import


def test_cli_import_existing_set(tmp_path, data_dir, capsys):
    src = data_dir / "subjects" / "dog6_and_dog2"
    out = tmp_path / "set"
    rc, stdout, _ = _run(["prepare", "--from", str(src), "--out", str(out)], capsys)
    assert rc == 0
    assert "Imported 2 subjects (10 photos)" in stdout
    sset = SubjectSet.load(out)
    assert [s.phrase for s in sset] == ["olis corgi", "hta chow chow"]
    assert sum(len(s.photos) for s in sset) == 10
    # photos copied byte for byte, masks identical after thresholding, captions kept
    assert (out / "a00.jpg").read_bytes() == (src / "a00.jpg").read_bytes()
    ref = SubjectSet.load(src)
    for key in sset.keys:
        for a, b in zip(sset.photos(key), ref.photos(key)):
            assert np.array_equal(a.mask, b.mask) and a.caption == b.caption
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 500 and sheet.height > 500
    assert json.loads((out / "failures.json").read_text()) == []
    assert json.loads((out / "prepare.json").read_text())["mode"] == "import"
    assert not list(tmp_path.glob(".*staging*"))  # staging folder renamed away


def test_import_subjects_api_refuses_nonempty_out(tmp_path, data_dir):
    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MudiError, match="already has content"):
        import_subjects(data_dir / "subjects" / "dog6_and_dog2", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    report = import_subjects(data_dir / "subjects" / "dog6_and_dog2", out, RunOptions(overwrite=True))
    assert (out / "keep.txt").read_text() == "mine"  # overwrite replaces files, deletes nothing
    assert len(report.results) == 10 and (out / "metadata.jsonl").exists()


# ----------------------------------------------------------------------------- CLI: segmenting


def _check_detection_outcomes(report: dict, threshold: float) -> None:
    """Every detected photo's outcome must agree with the boxes the detector returned."""
    for p in report["photos"]:
        if p["method"] != "detected":
            continue
        n = len(p["detections"])
        assert all(d["score"] >= threshold for d in p["detections"])
        if n == 0:
            assert not p["ok"] and p["reason"] == f"no box above {threshold:g}"
        elif n > 1:
            assert not p["ok"] and p["reason"] == f"{n} boxes: ambiguous, supply a mask or a box"
        else:
            assert p["ok"] or p["reason"].startswith("segmentation produced an empty mask")
            if p["ok"]:
                assert p["box"] == p["detections"][0]["box"]


def test_cli_tiny_owlv2_and_sam_end_to_end(photos, tiny_models, capsys):
    """Real OWLv2 + SAM code on tiny random models: a00/b00 get user boxes (detection skipped),
    a01/b01 go through detection with the class as the query. The random detector's outcome is
    arbitrary, so the test checks that every outcome is consistent with what it returned, that
    failures are listed with their reason, and that the set holds exactly the usable photos."""
    root, _, boxes = photos
    box_file = root / "boxes.json"
    box_file.write_text(json.dumps({"a00.jpg": boxes["a00.jpg"], "chow/b00.jpg": boxes["b00.jpg"]}))
    out = root / "out"
    threshold = 0.6
    rc, stdout, stderr = _run(
        ["prepare", *_subjects(root), "--out", str(out), "--detector", str(tiny_models / "owlv2"),
         "--segmenter", str(tiny_models / "sam"), "--threshold", str(threshold), "--boxes", str(box_file),
         "--device", "cpu", "--no-progress"],
        capsys,
    )
    if rc != 0:  # every photo of a subject failed (random weights): an error, nothing written
        assert rc == 2 and "has no usable photo" in stderr and not out.exists()
        return
    report = json.loads((out / "prepare.json").read_text())
    failures = json.loads((out / "failures.json").read_text())
    by_name = {Path(p["photo"]).name: p for p in report["photos"]}
    assert by_name["a00.jpg"]["method"] == "user box" and by_name["b00.jpg"]["method"] == "user box"
    assert by_name["a01.jpg"]["method"] == "detected" and by_name["b01.jpg"]["method"] == "detected"
    assert report["detector"].endswith("owlv2") and report["threshold"] == threshold
    _check_detection_outcomes(report, threshold)
    assert [f["photo"] for f in failures] == [p["photo"] for p in report["photos"] if not p["ok"]]
    for f in failures:
        assert f["reason"] and f["reason"] in stderr
    assert ("warning:" in stderr) == bool(failures)
    sset = SubjectSet.load(out)
    assert sum(len(s.photos) for s in sset) == sum(p["ok"] for p in report["photos"])
    # user box: the SAM prompt is the box enlarged by 5 % of 96 px = 4.8 px per side, clamped
    x0, y0, x1, y1 = boxes["a00.jpg"]
    expect = [max(0, x0 - 4.8), max(0, y0 - 4.8), min(96, x1 + 4.8), min(96, y1 + 4.8)]
    assert np.allclose(by_name["a00.jpg"]["prompt_box"], expect, atol=0.01)
    assert Image.open(out / "contact_sheet.png").size[0] > 0


def test_cli_tiny_detector_low_threshold_runs(photos, tiny_models, capsys):
    """At threshold 0 the tiny detector returns boxes; every photo is either segmented or failed
    with one of the documented reasons."""
    root, _, _ = photos
    out = root / "out"
    rc, _, stderr = _run(
        ["prepare", *_subjects(root), "--out", str(out), "--detector", str(tiny_models / "owlv2"),
         "--segmenter", str(tiny_models / "sam"), "--threshold", "0", "--no-progress"],
        capsys,
    )
    if rc == 0:
        report = json.loads((out / "prepare.json").read_text())
        assert all(p["method"] == "detected" for p in report["photos"])
        _check_detection_outcomes(report, 0.0)
    else:
        assert rc == 2 and "has no usable photo" in stderr and not out.exists()


def test_prepare_api_with_fake_models_reports_failures(photos):
    """One photo per subject has no box: it is left out and listed; the rest are written."""
    root, _, _ = photos

    def dets(image):
        # the fake "finds" a box unless the photo's top-left pixel is dark-ish: decide per photo
        return [] if dets.n in (1, 3) else [Detection((10.0, 10.0, 60.0, 70.0), 0.8, 0)]

    class CountingDetector(FakeDetector):
        def detect(self, images, queries, threshold):
            out = []
            for im in images:
                out.append(dets(im))
                dets.n += 1
            return out

    dets.n = 0
    seg = FakeSegmenter()
    out = root / "out"
    config = PrepareConfig(subjects=[f"olis corgi={root / 'corgi'}", f"hta chow chow={root / 'chow'}"], out=str(out))
    quiet = RunOptions(progress=False, device="cpu")
    report = prepare(config, quiet, detector=CountingDetector([]), segmenter=seg)
    assert [r.path.name for r in report.failures] == ["a01.jpg", "b01.jpg"]
    assert all(r.reason == "no box above 0.2" for r in report.failures)
    assert seg.boxes == [pytest.approx((5.2, 5.2, 64.8, 74.8))] * 2  # 10 - 4.8, 60 + 4.8 on 96-px photos
    sset = SubjectSet.load(out)
    assert [len(s.photos) for s in sset] == [1, 1]
    assert sset.photos("a")[0].caption == "a photo of a olis corgi"
    assert mask_bbox(sset.photos("a")[0].mask) == (5, 5, 65, 75)
    failures = json.loads((out / "failures.json").read_text())
    assert [(Path(f["photo"]).name, f["reason"]) for f in failures] == [
        ("a01.jpg", "no box above 0.2"), ("b01.jpg", "no box above 0.2")]

    # --strict: the same failures are an error and nothing is written
    dets.n = 0
    with pytest.raises(MudiError, match="failed"):
        prepare(config.updated({"out": str(root / "strict"), "strict": True}), quiet,
                detector=CountingDetector([]), segmenter=FakeSegmenter())
    assert not (root / "strict").exists()


def test_subject_without_any_usable_photo_is_an_error(photos, capsys):
    root, _, _ = photos
    two = [Detection((1.0, 1.0, 30.0, 30.0), 0.9, 0), Detection((50.0, 50.0, 90.0, 90.0), 0.8, 0)]
    with pytest.raises(MudiError) as exc:
        prepare(PrepareConfig(subjects=[f"olis corgi={root / 'corgi'}", f"hta chow chow={root / 'chow'}"],
                              out=str(root / "out")),
                RunOptions(progress=False), detector=FakeDetector(two), segmenter=FakeSegmenter())
    msg = str(exc.value)
    assert "'olis corgi'" in msg and "has no usable photo" in msg
    assert "a00.jpg" in msg and "2 boxes: ambiguous, supply a mask or a box" in msg
    assert not (root / "out").exists()
    assert not list(root.glob(".*staging*"))


def test_cli_user_mask_files_need_no_model(photos, capsys):
    """mask_<name>.png next to the photos: no detector/segmenter is loaded (the default hub ids
    are unavailable offline, so loading one would fail)."""
    root, masks, _ = photos
    for sub in ("corgi", "chow"):
        for p in (root / sub).glob("*.jpg"):
            Image.fromarray(masks[p.stem].astype(np.uint8) * 255).save(p.parent / f"mask_{p.stem}.png")
    out = root / "out"
    rc, stdout, _ = _run(["prepare", *_subjects(root), "--out", str(out)], capsys)
    assert rc == 0, stdout
    sset = SubjectSet.load(out)
    assert [len(s.photos) for s in sset] == [2, 2]  # mask files are not taken for photos
    for key, names in (("a", ["a00", "a01"]), ("b", ["b00", "b01"])):
        for seg, n in zip(sset.photos(key), names):
            assert np.array_equal(seg.mask, masks[n])
    assert "mask file" in stdout


def test_cli_masks_dir(photos, capsys):
    root, masks, _ = photos
    mdir = root / "masks"
    mdir.mkdir()
    for n, m in masks.items():
        Image.fromarray(m.astype(np.uint8) * 255).save(mdir / f"{n}.png")
    out = root / "out"
    rc, _, _ = _run(["prepare", *_subjects(root), "--masks", str(mdir), "--out", str(out)], capsys)
    assert rc == 0
    assert np.array_equal(SubjectSet.load(out).photos("b")[1].mask, masks["b01"])


def test_cli_rgba_alpha_is_the_mask(photos, capsys):
    root, masks, _ = photos
    for sub in ("corgi", "chow"):
        for p in list((root / sub).glob("*.jpg")):
            rgba = Image.open(p).convert("RGBA")
            rgba.putalpha(Image.fromarray(masks[p.stem].astype(np.uint8) * 255))
            rgba.save(p.with_suffix(".png"))
            p.unlink()
    out = root / "out"
    rc, stdout, _ = _run(["prepare", *_subjects(root), "--out", str(out)], capsys)
    assert rc == 0
    assert "alpha channel" in stdout
    sset = SubjectSet.load(out)
    seg = sset.photos("a")[0]
    assert np.array_equal(seg.mask, masks["a00"])
    assert (seg.image[~seg.mask] == 255).all()  # transparent parts are white in the stored photo


def test_cli_boxes_with_grabcut(photos, capsys):
    root, masks, boxes = photos
    box_file = root / "boxes.json"
    box_file.write_text(json.dumps(boxes))
    out = root / "out"
    rc, stdout, stderr = _run(
        ["prepare", *_subjects(root), "--boxes", str(box_file), "--segmenter", "grabcut", "--out", str(out)], capsys
    )
    assert rc == 0
    assert "weight-free fallback" in stderr
    report = json.loads((out / "prepare.json").read_text())
    assert "GrabCut" in report["segmenter"] and "fallback" in report["segmenter"]
    assert report["detector"] == "none"
    sset = SubjectSet.load(out)
    ious = []
    for key, names in (("a", ["a00", "a01"]), ("b", ["b00", "b01"])):
        for seg, n in zip(sset.photos(key), names):
            ref = masks[n]
            ious.append((seg.mask & ref).sum() / (seg.mask | ref).sum())
            assert ious[-1] > 0.4, (n, ious[-1])  # rough on 96-px JPEGs, but the dog
            x0, y0, x1, y1 = mask_bbox(seg.mask)
            bx0, by0, bx1, by1 = boxes[f"{n}.jpg"]
            assert x0 >= bx0 - 5 and y0 >= by0 - 5 and x1 <= bx1 + 5 and y1 <= by1 + 5  # inside the prompt box
    assert np.mean(ious) > 0.7, ious


def test_cli_offline_default_models_fail_fast(photos, capsys):
    root, _, _ = photos
    out = root / "out"
    rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    assert "--detector" in stderr and "google/owlv2-base-patch16-ensemble" in stderr
    assert not out.exists()
    # detector given but segmenter default: the error names the segmenter and suggests grabcut
    rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(out), "--detector", "/nonexistent/owl"], capsys)
    assert rc == 2 and "--detector" in stderr and "does not exist" in stderr
    assert not out.exists()


def test_cli_offline_default_segmenter_suggests_grabcut(photos, tiny_models, capsys):
    root, _, _ = photos
    out = root / "out"
    rc, _, stderr = _run(
        ["prepare", *_subjects(root), "--out", str(out), "--detector", str(tiny_models / "owlv2")], capsys
    )
    assert rc == 2 and "--segmenter" in stderr and "grabcut" in stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _bad_zero_byte(root):
    (root / "corgi" / "a02.jpg").write_bytes(b"")
    return "a02.jpg", "empty"


def _bad_corrupt(root):
    (root / "chow" / "b02.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    return "b02.jpg", "not a readable image"


def _bad_text_named_png(root):
    (root / "chow" / "notes.png").write_text("hello")
    return "notes.png", "not a readable image"


def _bad_only_non_images(root):
    for p in (root / "chow").iterdir():
        p.unlink()
    (root / "chow" / "readme.pdf").write_text("x")
    return "chow", "no photos"


def _bad_empty_folder(root):
    for p in (root / "chow").iterdir():
        p.unlink()
    return "chow", "no photos"


def _bad_missing_folder(root):
    for p in (root / "chow").iterdir():
        p.unlink()
    (root / "chow").rmdir()
    return "chow", "not found"


def _bad_mask_wrong_size(root):
    _write_mask(root / "corgi" / "mask_a00.png", np.ones((10, 12), bool))
    return "mask_a00.png", "mask is 12x10 but its photo is 96x96"


def _bad_mask_empty(root):
    _write_mask(root / "corgi" / "mask_a01.png", np.zeros((PHOTO_SIDE, PHOTO_SIDE), bool))
    return "mask_a01.png", "mask is empty"


def _bad_alpha_transparent(root):
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(root / "corgi" / "a09.png")
    return "a09.png", "fully transparent"


def _bad_boxes_unknown(root):
    (root / "boxes.json").write_text(json.dumps({"zz.jpg": [0, 0, 10, 10]}))
    return "zz.jpg", "matches no photo"


def _bad_boxes_invalid(root):
    (root / "boxes.json").write_text(json.dumps({"a00.jpg": [50, 50, 10, 10]}))
    return "a00.jpg", "is empty"


def _bad_boxes_not_json(root):
    (root / "boxes.json").write_text("{not json")
    return "boxes.json", "not valid JSON"


BAD_INPUTS = {
    "zero-byte photo": _bad_zero_byte,
    "corrupt photo": _bad_corrupt,
    "text file named .png": _bad_text_named_png,
    "only non-image files": _bad_only_non_images,
    "empty folder": _bad_empty_folder,
    "missing folder": _bad_missing_folder,
    "mask of wrong size": _bad_mask_wrong_size,
    "empty mask": _bad_mask_empty,
    "fully transparent alpha": _bad_alpha_transparent,
    "box for unknown photo": _bad_boxes_unknown,
    "inverted box": _bad_boxes_invalid,
    "boxes not JSON": _bad_boxes_not_json,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_photo_inputs_exit_2_and_write_nothing(case, photos, capsys):
    root, _, _ = photos
    name, expected = BAD_INPUTS[case](root)
    out = root / "out"
    argv = ["prepare", *_subjects(root), "--out", str(out), "--segmenter", "grabcut"]
    if (root / "boxes.json").exists():
        argv += ["--boxes", str(root / "boxes.json")]
    rc, _, stderr = _run(argv, capsys)
    assert rc == 2
    assert stderr.startswith("mudi prepare: error:")
    assert name in stderr and expected in stderr, stderr
    assert not out.exists()
    assert not list(root.glob(".*staging*"))


@pytest.mark.parametrize(
    "subjects, expected",
    [
        (["olis corgi={corgi}"], "at least 2 subjects"),
        (["olis corgi={corgi}", "olis chow chow={chow}"], "duplicate identifier 'olis'"),
        (["olis corgi={corgi}", "OLIS corgi={chow}"], "duplicate identifier"),
        (["olis corgi={corgi}", "hta corgi={corgi}"], "duplicate folder"),
        (["olis corgi={corgi}", "hta chow chow {chow}"], "expected \"IDENTIFIER CLASS=FOLDER\""),
        (["olis corgi={corgi}", "hta={chow}"], "must be an identifier and a class"),
        (["olis corgi={corgi}", "hta chow chow="], "folder after '=' is empty"),
    ],
)
def test_cli_bad_subject_arguments(subjects, expected, photos, capsys):
    root, _, _ = photos
    argv = ["prepare", "--out", str(root / "out")]
    for s in subjects:
        argv += ["--subject", s.format(corgi=root / "corgi", chow=root / "chow")]
    rc, _, stderr = _run(argv, capsys)
    assert rc == 2 and expected in stderr, stderr
    assert not (root / "out").exists()


def test_cli_bad_settings(photos, capsys):
    root, _, _ = photos
    for extra, expected in (
        (["--threshold", "1.5"], "--threshold"),
        (["--margin", "-0.1"], "--margin"),
        (["--nms-iou", "0"], "--nms-iou"),
        (["--masks", str(root / "nope")], "--masks folder not found"),
    ):
        rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(root / "out"), *extra], capsys)
        assert rc == 2 and expected in stderr, (extra, stderr)
    rc, _, stderr = _run(["prepare", "--out", str(root / "out")], capsys)
    assert rc == 2 and "nothing to prepare" in stderr
    rc, _, stderr = _run(["prepare", "--from", str(root), *_subjects(root), "--out", str(root / "out")], capsys)
    assert rc == 2 and "not both" in stderr
    assert not (root / "out").exists()


def test_cli_refuses_nonempty_out_unless_overwrite(photos, capsys):
    root, masks, _ = photos
    for sub in ("corgi", "chow"):
        for p in (root / sub).glob("*.jpg"):
            _write_mask(p.parent / f"mask_{p.stem}.png", masks[p.stem])
    out = root / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(out)], capsys)
    assert rc == 2 and "already has content" in stderr and "--overwrite" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    rc, _, _ = _run(["prepare", *_subjects(root), "--out", str(out), "--overwrite"], capsys)
    assert rc == 0
    assert (out / "precious.txt").read_text() == "keep me"
    assert len(SubjectSet.load(out).subjects) == 2
    # --out pointing at a file
    (root / "afile").write_text("x")
    rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(root / "afile")], capsys)
    assert rc == 2 and "is a file" in stderr
    rc, _, stderr = _run(["prepare", *_subjects(root), "--out", str(root / "afile" / "sub")], capsys)
    assert rc == 2 and "is a file" in stderr


def _copy_set(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _rewrite_metadata(root: Path, edit) -> None:
    lines = [json.loads(ln) for ln in (root / "metadata.jsonl").read_text().splitlines() if ln.strip()]
    lines = edit(lines)
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda L: [L[0] | {"id": {"a": "olis corgi"}}] + [x for x in L[1:] if x["id"] == "a"], "at least 2"),
        (lambda L: [{"id": {"a": "olis corgi", "b": "olis chow chow"}}] + L[1:], "duplicate identifier"),
        (lambda L: [L[0], L[1] | {"file_name": "../outside.jpg"}] + L[2:], "outside the subject-set folder"),
        (lambda L: [L[0], L[1] | {"mask_path": "/etc/passwd"}] + L[2:], "absolute"),
        (lambda L: [L[0], L[1] | {"file_name": "missing.jpg"}] + L[2:], "not found"),
        (lambda L: [L[0], L[1] | {"id": "z"}] + L[2:], "not declared"),
    ],
)
def test_cli_import_bad_sets(edit, expected, tmp_path, data_dir, capsys):
    src = _copy_set(data_dir / "subjects" / "dog6_and_dog2", tmp_path / "src")
    (tmp_path / "outside.jpg").write_bytes((src / "a00.jpg").read_bytes())
    _rewrite_metadata(src, edit)
    out = tmp_path / "out"
    rc, _, stderr = _run(["prepare", "--from", str(src), "--out", str(out)], capsys)
    assert rc == 2 and expected in stderr, stderr
    assert not out.exists()


def test_cli_import_bad_mask_names_the_file(tmp_path, data_dir, capsys):
    src = _copy_set(data_dir / "subjects" / "dog6_and_dog2", tmp_path / "src")
    Image.new("L", (20, 20), 255).save(src / "mask_b03.png")
    rc, _, stderr = _run(["prepare", "--from", str(src), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "mask_b03.png" in stderr and "20x20" in stderr
    (src / "b01.jpg").write_bytes(b"")
    rc, _, stderr = _run(["prepare", "--from", str(src), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "b01.jpg" in stderr and "empty" in stderr
    assert not (tmp_path / "out").exists()


def test_photo_result_record_is_json():
    r = PhotoResult("a", "olis corgi", Path("x.jpg"), Image.new("RGB", (4, 4)), "c", "detected",
                    reason="no box above 0.2", detections=[Detection((0, 0, 1, 1), 0.1, 0)])
    rec = json.loads(json.dumps(r.record()))
    assert rec["ok"] is False and rec["reason"] == "no box above 0.2" and rec["detections"][0]["score"] == 0.1


def test_captions_sidecars_and_json_keys(photos, capsys):
    root, masks, _ = photos
    for sub in ("corgi", "chow"):
        for p in (root / sub).glob("*.jpg"):
            _write_mask(p.parent / f"mask_{p.stem}.png", masks[p.stem])
    (root / "corgi" / "a01.txt").write_text("  olis corgi   on a sofa \n")
    (root / "corgi" / "notes.pdf").write_text("x")
    (root / "captions.json").write_text(json.dumps({"chow/b00.jpg": "hta chow chow in snow"}))
    out = root / "out"
    rc, _, stderr = _run(["prepare", *_subjects(root), "--captions", str(root / "captions.json"),
                          "--out", str(out)], capsys)
    assert rc == 0
    assert "skipped 1 file(s) that are not photos: notes.pdf" in stderr
    sset = SubjectSet.load(out)
    assert [p.caption for p in sset.photos("a")] == ["a photo of a olis corgi", "olis corgi on a sofa"]
    assert [p.caption for p in sset.photos("b")] == ["hta chow chow in snow", "a photo of a hta chow chow"]


def test_ambiguous_names_across_subjects(photos, capsys):
    """Two subjects with a photo of the same name: a plain-name box key or a shared masks-dir
    mask is ambiguous and must be refused; "FOLDER/name" keys work."""
    root, masks, boxes = photos
    Image.open(root / "chow" / "b01.jpg").save(root / "chow" / "a00.jpg")
    (root / "boxes.json").write_text(json.dumps({"a00.jpg": boxes["a00.jpg"]}))
    rc, _, stderr = _run(["prepare", *_subjects(root), "--boxes", str(root / "boxes.json"),
                          "--segmenter", "grabcut", "--out", str(root / "out")], capsys)
    assert rc == 2 and "matches several photos" in stderr and "FOLDER/name" in stderr
    mdir = root / "masks"
    mdir.mkdir()
    _write_mask(mdir / "a00.png", masks["a00"])
    rc, _, stderr = _run(["prepare", *_subjects(root), "--masks", str(mdir), "--segmenter", "grabcut",
                          "--out", str(root / "out")], capsys)
    assert rc == 2 and "would apply to two photos" in stderr
    assert not (root / "out").exists()
