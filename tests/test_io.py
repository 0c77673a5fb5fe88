"""Robust input: every photo mode a user may bring must load; every broken input must raise a
MudiError that names the file (mudi.io and mudi.subjects)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.errors import MudiError
from mudi.io import (
    claim_output_dir,
    list_images,
    load_mask,
    load_rgb,
    load_rgb_alpha,
    save_image_atomic,
    staged_output,
    write_json_atomic,
    write_text_atomic,
)
from mudi.subjects import SubjectSet, mask_bbox

# ----------------------------------------------------------------------------- photo modes


def _two_colour(w=40, h=20, left=(200, 30, 30), right=(30, 30, 200)) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2:] = right
    return Image.fromarray(arr)


def _assert_rgb8(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)
    return arr


def test_grayscale_jpeg(tmp_path):
    p = tmp_path / "g.jpg"
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (10, 1)), mode="L").save(p, quality=98)
    arr = _assert_rgb8(load_rgb(p), (50, 10))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert abs(int(arr[5, 0, 0]) - 0) <= 4 and abs(int(arr[5, -1, 0]) - 245) <= 4


def test_one_bit_png(tmp_path):
    p = tmp_path / "bw.png"
    Image.fromarray(np.eye(8, dtype=bool)).convert("1").save(p)
    arr = _assert_rgb8(load_rgb(p), (8, 8))
    assert arr[0, 0].tolist() == [255, 255, 255] and arr[0, 1].tolist() == [0, 0, 0]


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    _two_colour().convert("CMYK").save(p, quality=98)
    assert Image.open(p).mode == "CMYK"
    arr = _assert_rgb8(load_rgb(p), (40, 20)).astype(int)
    assert np.abs(arr[10, 5] - [200, 30, 30]).max() < 20
    assert np.abs(arr[10, 35] - [30, 30, 200]).max() < 20


def test_16bit_grayscale_png(tmp_path):
    p = tmp_path / "g16.png"
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)
    Image.fromarray(np.tile(ramp, (4, 1))).save(p)
    assert Image.open(p).mode.startswith("I")
    arr = _assert_rgb8(load_rgb(p), (64, 4))
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255
    assert 120 <= arr[0, 32, 0] <= 135  # mid-grey stays mid-grey (not clipped to white)


def test_16bit_colour_png(tmp_path):
    import cv2

    p = tmp_path / "c16.png"
    bgr = np.zeros((10, 12, 3), np.uint16)
    bgr[:, :6] = (0, 0, 65535)  # red (OpenCV is BGR)
    bgr[:, 6:] = (32768, 0, 0)  # half-intensity blue
    assert cv2.imwrite(str(p), bgr)
    arr = _assert_rgb8(load_rgb(p), (12, 10)).astype(int)
    assert np.abs(arr[5, 2] - [255, 0, 0]).max() <= 2
    assert np.abs(arr[5, 9] - [0, 0, 128]).max() <= 2


def test_float_tiff(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), mode="F").save(p)
    arr = _assert_rgb8(load_rgb(p), (4, 4))
    assert arr[0, 0, 0] == 0 and arr[3, 3, 0] == 255


@pytest.mark.parametrize("fmt", ["webp", "bmp", "tiff", "gif"])
def test_other_formats(tmp_path, fmt):
    p = tmp_path / f"x.{fmt}"
    _two_colour().save(p, **({"lossless": True} if fmt == "webp" else {}))
    arr = _assert_rgb8(load_rgb(p), (40, 20)).astype(int)
    assert np.abs(arr[10, 5] - [200, 30, 30]).max() < 40


def test_rgba_alpha_is_a_mask_and_background_is_white(tmp_path):
    p = tmp_path / "rgba.png"
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (10, 200, 10)
    rgba[5:15, 10:20, 3] = 255
    rgba[0, 0, 3] = 127  # below the 128 threshold: background
    rgba[0, 1, 3] = 128  # at the threshold: subject
    Image.fromarray(rgba, "RGBA").save(p)
    img, alpha = load_rgb_alpha(p)
    arr = _assert_rgb8(img, (30, 20))
    assert alpha.dtype == bool and alpha.shape == (20, 30)
    assert alpha[5:15, 10:20].all() and alpha.sum() == 101
    assert arr[10, 15].tolist() == [10, 200, 10]
    assert arr[19, 29].tolist() == [255, 255, 255]  # fully transparent -> white
    assert np.array_equal(np.asarray(load_rgb(p)), arr)


def test_opaque_rgba_has_no_mask(tmp_path):
    p = tmp_path / "opaque.png"
    _two_colour().convert("RGBA").save(p)
    img, alpha = load_rgb_alpha(p)
    assert alpha is None
    _assert_rgb8(img, (40, 20))


def test_la_and_palette_transparency(tmp_path):
    la = tmp_path / "la.png"
    arr = np.zeros((10, 10, 2), np.uint8)
    arr[..., 0] = 90
    arr[2:5, 2:5, 1] = 255
    Image.fromarray(arr, "LA").save(la)
    img, alpha = load_rgb_alpha(la)
    _assert_rgb8(img, (10, 10))
    assert alpha.sum() == 9

    pal = tmp_path / "p.png"
    p_img = Image.new("P", (10, 10), 0)
    p_img.putpalette([255, 255, 255, 200, 0, 0] + [0] * 762)
    p_img.paste(1, (3, 3, 7, 7))
    p_img.info["transparency"] = 0
    p_img.save(pal, transparency=0)
    img, alpha = load_rgb_alpha(pal)
    arr = _assert_rgb8(img, (10, 10))
    assert alpha is not None and alpha.sum() == 16 and alpha[4, 4]
    assert arr[4, 4].tolist() == [200, 0, 0]


def _exif_jpeg(path: Path, img: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), quality=98)


@pytest.mark.parametrize(
    "orientation, size, top_left_colour",
    [
        (1, (40, 20), "red"),
        (3, (40, 20), "blue"),  # rotated 180°
        (6, (20, 40), "red"),  # stored rotated: display = stored turned 90° clockwise
        (8, (20, 40), "blue"),  # display = stored turned 90° counter-clockwise
    ],
)
def test_exif_rotated_photo_is_upright(tmp_path, orientation, size, top_left_colour):
    p = tmp_path / f"o{orientation}.jpg"
    _exif_jpeg(p, _two_colour(), orientation)
    arr = _assert_rgb8(load_rgb(p), size).astype(int)
    red, blue = np.array([200, 30, 30]), np.array([30, 30, 200])
    want = red if top_left_colour == "red" else blue
    assert np.abs(arr[2, 2] - want).max() < 30


def test_exif_rotated_mask_follows_its_photo(tmp_path):
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :20] = 255
    p = tmp_path / "m.jpg"
    _exif_jpeg(p, Image.fromarray(mask).convert("RGB"), 6)
    m = load_mask(p, (20, 40))
    assert m.shape == (40, 20) and m[:20].all() and not m[21:].any()


# ----------------------------------------------------------------------------- broken files


def _zero(p: Path) -> None:
    p.write_bytes(b"")


def _garbage(p: Path) -> None:
    p.write_bytes(os.urandom(2000))


def _text(p: Path) -> None:
    p.write_text("this is not an image\n")


def _truncated(p: Path) -> None:
    buf = p.with_suffix(".tmp.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, quality=95)
    p.write_bytes(buf.read_bytes()[:600])
    buf.unlink()


@pytest.mark.parametrize(
    "make, expected",
    [(_zero, "empty (0 bytes)"), (_garbage, "not a readable image"), (_text, "not a readable image"),
     (_truncated, "not a readable image")],
)
@pytest.mark.parametrize("loader", ["photo", "mask"])
def test_broken_files_raise_mudi_error_naming_the_file(tmp_path, make, expected, loader):
    p = tmp_path / "broken_photo.jpg"
    make(p)
    with pytest.raises(MudiError) as exc:
        (load_rgb if loader == "photo" else load_mask)(p)
    assert str(p) in str(exc.value) and expected in str(exc.value)


def test_missing_file_and_folder_given_as_photo(tmp_path):
    with pytest.raises(MudiError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(MudiError, match="is a folder"):
        load_rgb(tmp_path)


# ----------------------------------------------------------------------------- masks


def test_mask_wrong_size_names_file_and_sizes(tmp_path):
    p = tmp_path / "mask_a00.png"
    Image.new("L", (30, 20), 255).save(p)
    with pytest.raises(MudiError) as exc:
        load_mask(p, (40, 20))
    msg = str(exc.value)
    assert str(p) in msg and "30x20" in msg and "40x20" in msg


def test_empty_mask_is_an_error_unless_allowed(tmp_path):
    p = tmp_path / "mask_a00.png"
    Image.new("L", (8, 8), 127).save(p)  # everything below the threshold
    with pytest.raises(MudiError, match="empty"):
        load_mask(p, (8, 8))
    assert not load_mask(p, (8, 8), allow_empty=True).any()


def test_mask_threshold_and_modes(tmp_path):
    vals = np.array([[0, 127, 128, 255]], np.uint8)
    p = tmp_path / "m.png"
    Image.fromarray(vals).save(p)
    assert load_mask(p).tolist() == [[False, False, True, True]]
    # RGB mask: luminance
    Image.fromarray(np.repeat(vals[..., None], 3, axis=2)).save(p)
    assert load_mask(p).tolist() == [[False, False, True, True]]
    # 16-bit mask
    Image.fromarray((vals.astype(np.uint16) * 257)).save(p)
    assert load_mask(p).tolist() == [[False, False, True, True]]
    # RGBA mask with a real alpha channel: the alpha is the mask
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[..., 3] = vals
    Image.fromarray(rgba, "RGBA").save(p)
    assert load_mask(p).tolist() == [[False, False, True, True]]
    # bool array round trip through save_image_atomic: 0/255
    m = np.array([[True, False], [False, True]])
    save_image_atomic(m, tmp_path / "b.png")
    assert np.asarray(Image.open(tmp_path / "b.png")).tolist() == [[255, 0], [0, 255]]
    assert load_mask(tmp_path / "b.png").tolist() == m.tolist()


def test_jpeg_mask_noise_is_thresholded(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    p = tmp_path / "mask.jpg"
    Image.fromarray(m).save(p, quality=70)
    got = load_mask(p, (32, 32))
    assert (got == (m > 0)).mean() > 0.97


# ----------------------------------------------------------------------------- folders and writes


def test_list_images(tmp_path):
    for name in ("b.jpg", "a.PNG", ".hidden.jpg", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.webp"]
    with pytest.raises(MudiError, match="folder not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(MudiError, match="found a file"):
        list_images(tmp_path / "b.jpg")


def test_claim_output_dir_creates_and_guards(tmp_path):
    out = claim_output_dir(tmp_path / "new" / "deep", create=True)
    assert out.is_dir()
    assert claim_output_dir(out, create=True) == out  # empty: fine
    (out / "x.txt").write_text("keep")
    with pytest.raises(MudiError, match="already has content"):
        claim_output_dir(out, create=True)
    assert claim_output_dir(out, overwrite=True, create=True) == out and (out / "x.txt").read_text() == "keep"
    with pytest.raises(MudiError, match="is a file"):
        claim_output_dir(out / "x.txt", create=True)


def test_claim_output_dir_policy(tmp_path):
    out = tmp_path / "new" / "deep"
    assert claim_output_dir(out) == out and not out.exists()  # validates, creates nothing
    assert claim_output_dir(out, create=True) == out and out.is_dir()
    (out / "x.txt").write_text("keep")
    with pytest.raises(MudiError, match=r"already has content\. Choose another --out, or pass --overwrite"):
        claim_output_dir(out)
    with pytest.raises(MudiError, match="Pass --resume to continue that run"):
        claim_output_dir(out, resume=False)
    assert claim_output_dir(out, resume=True) == out
    assert claim_output_dir(out, overwrite=True) == out and (out / "x.txt").read_text() == "keep"
    with pytest.raises(MudiError, match=r"the training output folder \(--run\) is a file"):
        claim_output_dir(out / "x.txt", what="training output", option="--run")
    with pytest.raises(MudiError, match="x.txt is a file"):
        claim_output_dir(out / "x.txt" / "below")


def test_staged_output_writes_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "a.txt").write_text("a")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_output(out) as stage:
        (stage / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(MudiError, match="already has content"):
        with staged_output(out):
            pass
    with staged_output(out, overwrite=True) as stage:
        (stage / "b.txt").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]


def test_atomic_writes_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"k": [1, 2]})
    write_text_atomic(tmp_path / "t.txt", "héllo")
    save_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "i.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "i.jpg", "t.txt"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert Image.open(tmp_path / "i.jpg").format == "JPEG"


# ----------------------------------------------------------------------------- subject sets


def _make_set(root: Path, photos: dict[str, Image.Image | None] | None = None, header=None, records=None) -> Path:
    """A small valid set a00, a01 (subject a) / b00 (subject b) unless overridden."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = photos or {}
    names = {"a00": "a", "a01": "a", "b00": "b"}
    recs = []
    for n, key in names.items():
        img = photos.get(n) or Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        img.save(root / f"{n}.png")
        w, h = Image.open(root / f"{n}.png").size
        m = np.zeros((h, w), np.uint8)
        m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
        Image.fromarray(m).save(root / f"mask_{n}.png")
        recs.append({"id": key, "file_name": f"{n}.png", "mask_path": f"mask_{n}.png", "text": f"photo {n}"})
    header = header or {"id": {"a": "olis corgi", "b": "hta chow chow"}}
    recs = records(recs) if records else recs
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in [header, *recs]) + "\n")
    return root


def test_subject_set_loads_the_shared_data(data_dir):
    for name in ("dog6_and_dog2", "monster_toy_and_robot_toy"):
        sset = SubjectSet.load(data_dir / "subjects" / name)
        assert len(sset) == 2
        for s in sset:
            photos = sset.photos(s.key)
            assert len(photos) == 5
            for ph in photos:
                assert ph.image.dtype == np.uint8 and ph.mask.dtype == bool
                assert ph.mask.shape == ph.image.shape[:2] and ph.mask.any()
                x0, y0, x1, y1 = ph.bbox
                assert ph.mask[y0:y1, x0:x1].sum() == ph.mask.sum()
    assert SubjectSet.load(data_dir / "subjects" / "monster_toy_and_robot_toy").subject("a").cls == "red monster plush"


def test_subject_set_round_trip_with_unusual_photos(tmp_path):
    cmyk = _two_colour(32, 24).convert("CMYK")
    exif_path = tmp_path / "rot.jpg"
    _exif_jpeg(exif_path, _two_colour(32, 24), 6)
    root = tmp_path / "set"
    root.mkdir()
    # a00: CMYK JPEG, a01: EXIF-rotated JPEG (mask in upright orientation), b00: grey PNG
    cmyk.save(root / "a00.jpg", quality=95)
    (root / "a01.jpg").write_bytes(exif_path.read_bytes())
    Image.new("L", (32, 24), 100).save(root / "b00.png")
    for n, (w, h) in {"a00": (32, 24), "a01": (24, 32), "b00": (32, 24)}.items():
        m = np.zeros((h, w), np.uint8)
        m[2:10, 3:12] = 255
        Image.fromarray(m).save(root / f"mask_{n}.png")
    recs = [{"id": "a", "file_name": "a00.jpg", "mask_path": "mask_a00.png", "text": "t0"},
            {"id": "a", "file_name": "a01.jpg", "mask_path": "mask_a01.png"},
            {"id": "b", "file_name": "b00.png", "mask_path": "mask_b00.png", "text": "t2"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in
                                                   [{"id": {"a": "olis corgi", "b": "hta chow chow"}}, *recs]))
    sset = SubjectSet.load(root)
    assert sset.photos("a")[1].image.shape == (32, 24, 3)  # upright
    assert sset.photos("a")[1].caption == "a photo of a olis corgi"  # default caption
    out = sset.save(tmp_path / "out")
    back = SubjectSet.load(out)
    for key in ("a", "b"):
        for x, y in zip(sset.photos(key), back.photos(key)):
            assert x.image.shape == y.image.shape
            assert np.abs(x.image.astype(int) - y.image.astype(int)).max() <= 3
            assert np.array_equal(x.mask, y.mask) and x.caption == y.caption
    # re-encoded files are plain upright RGB now
    for rec in (out / "metadata.jsonl").read_text().splitlines()[1:]:
        im = Image.open(out / json.loads(rec)["file_name"])
        assert im.mode == "RGB" and im.getexif().get(0x0112, 1) == 1
    with pytest.raises(MudiError, match="already has content"):
        sset.save(out)


def test_rgba_photo_without_mask_file_uses_alpha(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 50
    rgba[4:12, 4:12, 3] = 255
    root = _make_set(tmp_path / "s", records=lambda r: r)
    Image.fromarray(rgba, "RGBA").save(root / "a01.png")
    recs = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    recs[2].pop("mask_path")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in recs))
    sset = SubjectSet.load(root)
    assert sset.photos("a")[1].mask.sum() == 64


def _records_edit(fn):
    return lambda recs: fn([dict(r) for r in recs])


BAD_SETS = {
    "fewer than 2 subjects": (dict(header={"id": {"a": "olis corgi"}},
                                   records=lambda r: [x for x in r if x["id"] == "a"]), "at least 2"),
    "duplicate identifiers": (dict(header={"id": {"a": "olis corgi", "b": "olis chow chow"}}), "duplicate identifier 'olis'"),
    "duplicate phrases": (dict(header={"id": {"a": "olis corgi", "b": "OLIS Corgi"}}), "duplicate"),
    "phrase without class": (dict(header={"id": {"a": "olis", "b": "hta chow chow"}}), "must be an identifier and a class"),
    "bad identifier": (dict(header={"id": {"a": "ol/is corgi", "b": "hta chow chow"}}), "must be one word"),
    "subject without photos": (dict(header={"id": {"a": "olis corgi", "b": "hta chow chow", "c": "ult cat"}}),
                               "'ult cat' has no photos"),
    "undeclared subject": (dict(records=_records_edit(lambda r: r[:2] + [r[2] | {"id": "z"}])), "not declared"),
    "path outside the folder": (dict(records=_records_edit(lambda r: [r[0] | {"file_name": "../evil.png"}] + r[1:])),
                                "points outside the subject-set folder"),
    "mask path outside": (dict(records=_records_edit(lambda r: [r[0] | {"mask_path": "sub/../../evil.png"}] + r[1:])),
                          "points outside"),
    "absolute path": (dict(records=_records_edit(lambda r: [r[0] | {"file_name": "/etc/hosts"}] + r[1:])), "absolute"),
    "missing photo": (dict(records=_records_edit(lambda r: [r[0] | {"file_name": "gone.png"}] + r[1:])), "'gone.png' not found"),
    "missing file_name": (dict(records=_records_edit(lambda r: [{"id": "a", "mask_path": "mask_a00.png"}] + r[1:])),
                          "missing \"file_name\""),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_bad_subject_sets(tmp_path, case):
    kwargs, expected = BAD_SETS[case]
    (tmp_path / "evil.png").write_bytes(b"")
    root = _make_set(tmp_path / "s", **kwargs)
    with pytest.raises(MudiError) as exc:
        SubjectSet.load(root)
    assert expected in str(exc.value)


def test_symlink_pointing_outside_is_refused(tmp_path):
    root = _make_set(tmp_path / "s")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (32, 24)).save(outside)
    (root / "a00.png").unlink()
    (root / "a00.png").symlink_to(outside)
    with pytest.raises(MudiError, match="outside"):
        SubjectSet.load(root)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda root: Image.new("L", (5, 5), 255).save(root / "mask_a01.png"), "mask is 5x5 but its photo is 32x24"),
        (lambda root: Image.new("L", (32, 24), 0).save(root / "mask_b00.png"), "mask is empty"),
        (lambda root: (root / "a00.png").write_bytes(b""), "empty (0 bytes)"),
        (lambda root: (root / "b00.png").write_text("not a png"), "not a readable image"),
        (lambda root: (root / "metadata.jsonl").write_text(""), "is empty"),
        (lambda root: (root / "metadata.jsonl").write_text('{"id": {"a": "olis corgi"}}\n{oops\n'), ":2: not valid JSON"),
        (lambda root: (root / "metadata.jsonl").write_text('["a", "b"]\n'), "first line must map subject keys"),
        (lambda root: (root / "metadata.jsonl").unlink(), "no metadata.jsonl"),
    ],
)
def test_broken_files_in_a_subject_set_name_the_file(tmp_path, breakage, expected):
    root = _make_set(tmp_path / "s")
    breakage(root)
    with pytest.raises(MudiError) as exc:
        SubjectSet.load(root)
    assert expected in str(exc.value)
    assert str(root) in str(exc.value)


def test_photo_without_any_mask(tmp_path):
    root = _make_set(tmp_path / "s")
    recs = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    recs[1].pop("mask_path")
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in recs))
    with pytest.raises(MudiError) as exc:
        SubjectSet.load(root)
    assert "a00.png" in str(exc.value) and "no mask" in str(exc.value)


def test_missing_set_folder(tmp_path):
    with pytest.raises(MudiError, match="not found"):
        SubjectSet.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MudiError, match="found a file"):
        SubjectSet.load(tmp_path / "file")


def test_from_arrays_checks_mask_shapes():
    img = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(MudiError, match="mask shape"):
        SubjectSet.from_arrays([("a", "olis corgi", [(img, np.ones((10, 10), bool), "c")])])
    s = SubjectSet.from_arrays([("a", "olis corgi", [(img, np.ones((10, 12), bool), "c")]),
                                ("b", "hta chow chow", [(Image.new("L", (12, 10)), np.ones((10, 12), bool), "d")])])
    s.validate()
    assert s.photos("b")[0].image.shape == (10, 12, 3)
    assert mask_bbox(s.photos("a")[0].mask) == (0, 0, 12, 10)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: [r[0] | {"mask_path": 5}] + r[1:], "\"mask_path\" must be a string"),
        (lambda r: [r[0] | {"id": ["a"]}] + r[1:], "not declared"),
        (lambda r: r + [r[0] | {"id": "b"}], "listed twice"),
        (lambda r: r + [dict(r[0])], "listed twice"),
    ],
)
def test_malformed_metadata_records(tmp_path, edit, expected):
    root = _make_set(tmp_path / "s", records=_records_edit(edit))
    with pytest.raises(MudiError) as exc:
        SubjectSet.load(root)
    assert expected in str(exc.value) and "metadata.jsonl:" in str(exc.value)


def test_lab_photo_loads_and_lab_mask_is_a_clear_error(tmp_path):
    p = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8)).save(p)
    _assert_rgb8(load_rgb(p), (8, 8))
    with pytest.raises(MudiError) as exc:  # PIL cannot turn LAB into a grey mask
        load_mask(p, (8, 8))
    assert str(p) in str(exc.value) and "LAB" in str(exc.value)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.new("RGB", (100, 100)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 px > 2 x limit: PIL refuses
    with pytest.raises(MudiError) as exc:
        load_rgb(p)
    assert str(p) in str(exc.value) and "too large" in str(exc.value)


@pytest.mark.parametrize("mode", ["YCbCr", "RGBX", "I", "I;16B"])
def test_more_modes_load(tmp_path, mode):
    p = tmp_path / "m.tif"
    # deflate: Pillow 12.x writes an uncompressed YCbCr TIFF it cannot read back ("truncated")
    Image.new(mode, (8, 6)).save(p, compression="tiff_deflate")
    _assert_rgb8(load_rgb(p), (8, 6))
    assert load_mask(p, (8, 6), allow_empty=True).shape == (6, 8)
