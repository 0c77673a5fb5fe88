"""Tests of the toy world, its subject set, the toy detector/embedder and the shipped base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mudi.protocols import Detector, Embedder
from mudi.toy import (
    CLASSES,
    SUBJECTS,
    ToyDetector,
    ToyEmbedder,
    base_model_path,
    class_word,
    make_subject_set,
)
from mudi.toy import captions, world
from mudi.toy.vision import find_objects


def test_world_is_deterministic():
    a_img, a_cap, _ = captions.render_dataset(6, seed=3)
    b_img, b_cap, _ = captions.render_dataset(6, seed=3)
    c_img, _, _ = captions.render_dataset(6, seed=4)
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (6, 64, 64, 3) and a_img.dtype == np.uint8


def test_captions_follow_the_grammar():
    rng = np.random.default_rng(0)
    sc = world.Scene(
        (world.ToyObject("square", "blue", "plain", 45, 30, 20),
         world.ToyObject("circle", "red", "striped", 15, 30, 20)),
        "grass", 1,
    )
    assert captions.caption(sc) == "a photo of a striped red circle and a blue square on grass"
    sc3 = world.Scene(sc.objects + (world.ToyObject("star", "pink", "dotted", 30, 55, 10),), "white", 1)
    assert captions.caption(sc3) == (
        "a photo of a striped red circle, a dotted pink star and a blue square, simple background"
    )
    for _ in range(20):
        cap = captions.caption(world.sample_scene(rng), rng)
        assert cap.startswith("a photo of a ") and any(c in cap for c in CLASSES)


def test_made_up_words_sit_before_class_words():
    rng = np.random.default_rng(2)
    scenes = [world.sample_scene(rng) for _ in range(60)]
    # p_made_up = 0 draws nothing extra from the rng: captions (and what follows) are unchanged
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    assert [captions.caption(s, r1) for s in scenes] == [captions.caption(s, r2, p_made_up=0.0) for s in scenes]
    assert r1.random() == r2.random()
    known = set(" ".join(captions.caption(s) for s in scenes).replace(",", " ").split())
    known |= set(world.COLOURS) | set(world.TEXTURES) | set(world.CLASSES)
    seen = 0
    rng = np.random.default_rng(3)
    for s in scenes:
        words = captions.caption(s, rng, p_made_up=0.5).replace(",", " ").split()
        for i, w in enumerate(words):
            if w not in known:
                seen += 1
                assert words[i + 1] in world.CLASSES  # right before the class word
                assert 3 <= len(w) <= 5 and w.isalpha()
                assert w not in {spec.identifier for spec in SUBJECTS}
    assert seen > 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_are_exact(seed):
    rng = np.random.default_rng(seed)
    sc = world.sample_scene(rng, n_objects=2)
    img, masks = world.render_scene(sc)
    bg = np.clip(np.rint(world.render_background(sc.background, 64, sc.bg_seed)), 0, 255).astype(np.uint8)
    union = np.logical_or.reduce(masks)
    # pixels away from every object are the untouched background
    far = ~ndimage.binary_dilation(union, structure=np.ones((3, 3), bool))
    assert np.array_equal(img[far], bg[far])
    for obj, m in zip(sc.objects, masks):
        # mask area matches the analytic shape area (coverage >= 0.5 rule) within 6 %
        r = obj.size / 2
        area = {"circle": np.pi * r * r, "square": (1.72 * r) ** 2}.get(obj.shape)
        if area is not None:
            assert abs(m.sum() - area) / area < 0.06
        # inside a plain object, fully covered pixels carry exactly the object colour
        if obj.texture == "plain":
            inner = ndimage.binary_erosion(m, iterations=1)
            assert inner.any()
            assert (img[inner] == np.array(world.COLOURS[obj.colour], np.uint8)).all()
    assert not np.logical_and(masks[0], masks[1]).any()


def test_subject_set_folder_is_valid_and_deterministic(tmp_path):
    from mudi.subjects import SubjectSet

    out = make_subject_set(tmp_path / "s", seed=5)
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"id": {"a": "wip circle", "b": "jam circle"}}
    rows = [json.loads(x) for x in lines[1:]]
    assert [r["id"] for r in rows] == ["a"] * 5 + ["b"] * 5
    assert all(r["text"].startswith(f"a photo of a {'wip' if r['id'] == 'a' else 'jam'} circle") for r in rows)
    for r in rows:
        m = np.asarray(Image.open(out / r["mask_path"]))
        assert set(np.unique(m)) == {0, 255}
        assert Image.open(out / r["file_name"]).size == (64, 64)
    ss = SubjectSet.load(out)
    assert len(ss) == 2
    again = make_subject_set(tmp_path / "t", seed=5)
    for r in rows:
        assert (out / r["file_name"]).read_bytes() == (again / r["file_name"]).read_bytes()
    # the two subjects share class and colour and differ only in their markings
    a, b = SUBJECTS
    assert (a.shape, a.colour) == (b.shape, b.colour) and a.texture != b.texture


def test_class_word():
    assert class_word("olis circle") == "circle"
    assert class_word("a photo of a striped red star.") == "star"
    assert class_word("a dog") is None


def test_detector_counts_and_names_objects():
    det = ToyDetector()
    assert isinstance(det, Detector)
    rng = np.random.default_rng(11)
    right = 0
    n = 40
    for _ in range(n):
        sc = world.sample_scene(rng)
        img, _ = world.render_scene(sc)
        dets = det.detect([Image.fromarray(img)], list(CLASSES), 0.4)[0]
        got = sorted(CLASSES[d.label] for d in dets)
        right += got == sorted(o.shape for o in sc.objects)
    assert right / n >= 0.9
    # two similar subjects, queried by identifier phrases: both found, boxes in pixels
    img, _ = world.render_scene(world.Scene(
        (world.subject_object(SUBJECTS[0], 16, 30, 26), world.subject_object(SUBJECTS[1], 46, 34, 26)),
        "grass", 7, 64))
    big = Image.fromarray(img).resize((256, 256), Image.NEAREST)
    dets = det.detect([big], ["olis circle", "hta circle"], 0.4)[0]
    assert len(dets) == 2
    xs = sorted((d.box[0] + d.box[2]) / 2 for d in dets)
    assert abs(xs[0] - 64) < 8 and abs(xs[1] - 184) < 8
    # nothing is reported for a class that is not in the picture
    assert det.detect([big], ["square"], 0.4)[0] == []


def test_embedder_separates_the_two_subjects(tmp_path):
    emb = ToyEmbedder()
    assert isinstance(emb, Embedder)
    out = make_subject_set(tmp_path / "s", seed=1)
    photos = [Image.open(out / f"{k}{i:02d}.png").convert("RGB") for k in "ab" for i in range(5)]
    e = emb.embed(photos)
    assert e.shape[0] == 10 and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    s = e @ e.T
    off = ~np.eye(5, dtype=bool)
    same = min(s[:5, :5][off].mean(), s[5:, 5:][off].mean())
    cross = s[:5, 5:].mean()
    assert same > 0.8 and cross < 0.5 and same - cross > 0.4
    # a white-padded crop (as D&C embeds boxes) matches its own subject
    a = np.asarray(photos[0])
    crop = Image.new("RGB", (64, 64), "white")
    crop.paste(Image.fromarray(a[8:56, 8:56]), (8, 8))
    c = emb.embed([crop])[0]
    assert c @ e[:5].mean(0) > c @ e[5:].mean(0)
    assert np.array_equal(emb.embed(photos[:2]), e[:2])


def test_shipped_base_model_loads_and_samples():
    import torch
    from diffusers import StableDiffusionPipeline

    path = base_model_path()
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    assert size_mb <= 50
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    names = {n for n, _ in pipe.unet.named_modules()}
    assert any(n.endswith("attn2.to_q") for n in names) and any(n.endswith("attn1.to_out.0") for n in names)
    out = pipe("a photo of a wip circle and a jam circle on grass", num_inference_steps=3,
               guidance_scale=4.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("gap", [-6, -3, 0])
def test_detector_splits_touching_objects(gap):
    # two similar circles overlapping or touching form one foreground blob; the detector still
    # reports two boxes, one around each circle
    objs = (world.ToyObject("circle", "yellow", "striped", 20, 32, 24),
            world.ToyObject("circle", "yellow", "dotted", 44 + gap, 32, 24))
    img, _ = world.render_scene(world.Scene(objs, "grass", 3))
    assert len(find_objects(np.asarray(img, np.float32))) == 1  # one merged blob
    dets = ToyDetector().detect([Image.fromarray(img)], ["olis circle", "hta circle"], 0.4)[0]
    centres = sorted((d.box[0] + d.box[2]) / 2 for d in dets)
    assert len(centres) == 2
    assert abs(centres[0] - 20) < 4 and abs(centres[1] - (44 + gap)) < 4
    # without splitting it is one (or no) detection
    assert len(ToyDetector(split=False).detect([Image.fromarray(img)], ["olis circle", "hta circle"], 0.4)[0]) < 2


def _discs(*discs, shape=(40, 70)):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return np.logical_or.reduce([(x - cx) ** 2 + (y - cy) ** 2 <= r ** 2 for cx, cy, r in discs])


@pytest.mark.parametrize("bump", [(20, 8, 5), (20, 7, 6), (12, 9, 5), (46, 35, 5)])
def test_split_blob_two_touching_objects_one_ragged(bump):
    # a ragged object (a bump on its outline, as the toy model draws them) has a second
    # distance-transform maximum; the touching pair is still split in two at the neck, one part
    # around each object (the bump stays with its object)
    from mudi.toy.vision import split_blob

    parts = split_blob(_discs((20, 22, 12), (44, 22, 12), bump), 24)
    centres = sorted((x0 + x1) / 2 for (x0, _, x1, _), _ in parts)
    assert len(parts) == 2
    assert abs(centres[0] - 20) < 3 and abs(centres[1] - 44) < 3
    # ... and a single ragged object is never split
    assert len(split_blob(_discs((20, 22, 12), bump if bump[0] < 40 else (30, 30, 6), shape=(40, 40)), 24)) == 1


def test_detector_never_splits_a_single_object():
    det = ToyDetector()
    rng = np.random.default_rng(5)
    for _ in range(150):
        sc = world.sample_scene(rng, n_objects=1)
        img, _ = world.render_scene(sc)
        assert len(det.objects(np.asarray(img, np.float32))) == 1, sc.objects[0]


def test_three_and_four_similar_subjects(tmp_path):
    """--subjects 3|4: the extra subjects share class and colour, the first two are unchanged, the
    prompts name them all in the toy grammar, and the toy detector/embedder tell all four apart."""
    from mudi.toy import demo_prompts, similar_subjects

    assert similar_subjects(2) == SUBJECTS
    four = similar_subjects(4)
    assert len({(s.shape, s.colour) for s in four}) == 1 and len({s.texture for s in four}) == 4
    assert len({s.identifier for s in four}) == 4
    with pytest.raises(ValueError):
        similar_subjects(5)
    assert demo_prompts(2) == __import__("mudi.toy", fromlist=["DEMO_PROMPTS"]).DEMO_PROMPTS
    assert demo_prompts(3)[0] == "a photo of a wip circle, a jam circle and a tok circle on grass"
    # the photos of wip and jam do not change when more subjects join the set
    two = make_subject_set(tmp_path / "two", seed=2)
    out = make_subject_set(tmp_path / "four", seed=2, subjects=four)
    assert json.loads((out / "metadata.jsonl").read_text().splitlines()[0])["id"] == {
        "a": "wip circle", "b": "jam circle", "c": "tok circle", "d": "bez circle"}
    assert (two / "b04.png").read_bytes() == (out / "b04.png").read_bytes()
    emb = ToyEmbedder()
    refs = [emb.embed([Image.open(out / f"{k}{i:02d}.png") for i in range(5)]).mean(0) for k in "abcd"]
    # four subjects side by side at the size a 4-subject layout gives them (a 16 px slot)
    scene = world.Scene(tuple(world.subject_object(s, 8 + 16 * i, 32, 13) for i, s in enumerate(four)), "grass", 1)
    img, _ = world.render_scene(scene)
    dets = ToyDetector().detect([Image.fromarray(img)], ["wip circle"], 0.3)[0]
    assert len(dets) == 4
    crops = emb.embed([Image.fromarray(img[22:42, 16 * i:16 * i + 16]) for i in range(4)])
    for i in range(4):
        sims = [float(crops[i] @ r) for r in refs]
        assert int(np.argmax(sims)) == i, (i, sims)
