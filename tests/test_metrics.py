"""The metrics beside D&C (DINO, CLIP-I, CLIP-T, identity, missing/duplicate) on images whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.evaluate.similarity import identity_scores, reference_similarity, subject_counts, text_similarity


# ----------------------------------------------------------------------------- pure functions

def test_reference_similarity_definition():
    refs = [np.array([[1.0, 0, 0], [0, 1.0, 0]]), np.array([[0, 0, 2.0]])]
    score, per = reference_similarity(np.array([[1.0, 0, 0], [0, 0, 5.0]]), refs)
    # image 0: cos to a's refs (1, 0) -> 0.5, to b's ref 0 -> mean 0.25; image 1: 0 and 1 -> 0.5
    assert np.allclose(per, [[0.5, 0.0], [0.0, 1.0]]) and np.allclose(score, [0.25, 0.5])
    same, _ = reference_similarity(np.array([[3.0, 4.0, 0]]), [np.array([[0.3, 0.4, 0]])])
    assert same[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        reference_similarity(np.ones((1, 3)), [np.ones((2, 4))])


def test_text_similarity_is_the_raw_cosine():
    assert np.allclose(text_similarity([[1.0, 0], [1.0, 0]], [[1.0, 1.0], [-1.0, 0]]), [2 ** -0.5, -1.0])


def test_identity_scores_pair_best_first_and_absent_is_zero():
    s = np.array([[0.9, 0.8],    # box 0 is most like a
                  [0.85, 0.3]])  # box 1 also like a: b gets box 1 (0.3) after a took box 0
    assert np.allclose(identity_scores(s, 2), [0.9, 0.3])
    assert np.allclose(identity_scores(np.array([[0.2, 0.7]]), 2), [0.0, 0.7])  # a absent
    assert np.allclose(identity_scores(np.zeros((0, 3)), 3), [0, 0, 0])
    assert np.allclose(identity_scores(np.array([[-0.4, -0.1]]), 2), [0, 0])  # clipped at 0


def test_subject_counts():
    assert subject_counts(np.array([[0.9, 0.1], [0.2, 0.8]]), 2, 2) == (0, 0)
    assert subject_counts(np.array([[0.9, 0.1], [0.8, 0.2]]), 2, 2) == (1, 1)  # a twice, b missing
    assert subject_counts(np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]), 3, 2) == (0, 1)
    assert subject_counts(np.array([[0.9, 0.1]]), 1, 2) == (1, 0)
    assert subject_counts(None, 7, 2) == (0, 5) and subject_counts(None, 0, 3) == (3, 0)


# ----------------------------------------------------------------------------- toy world images

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from mudi.subjects import SubjectSet
    from mudi.toy import world
    from mudi.toy.subject_set import make_subject_set

    root = tmp_path_factory.mktemp("toy_metrics")
    sset = SubjectSet.load(make_subject_set(root / "set", seed=0))
    one = SubjectSet.load(make_subject_set(root / "one", seed=1, n_photos=1))

    def scene(*subjects, bg="grass"):
        xs = np.linspace(12, 52, len(subjects)) if len(subjects) > 1 else [32]
        objs = tuple(world.subject_object(s, int(x), 32, 18) for s, x in zip(subjects, xs))
        return Image.fromarray(world.render_scene(world.Scene(objs, bg, 1, 64))[0])

    return sset, one, scene, world.SUBJECTS


def _evaluate(images, sset, metrics=None, **kw):
    from mudi.evaluate import evaluate_images
    from mudi.toy.vision import ToyDetector, ToyEmbedder

    return evaluate_images(images, sset, ToyDetector(), ToyEmbedder(), prompts="a wip circle next to a jam circle",
                           metrics=metrics, **kw)


def test_counts_and_identity_on_toy_images(toy):
    from mudi.evaluate.global_metrics import ImageMetrics
    from mudi.toy.vision import ToyEmbedder

    sset, _, scene, (a, b) = toy
    images = [scene(a, b), scene(a, a), scene(a), scene(a, a, b)]
    ev = _evaluate(images, sset, ImageMetrics(dino=ToyEmbedder(), names={"dino": "toy"}))
    good, twice, alone, extra = ev.results
    assert (good.missing, good.duplicate) == (0, 0) and good.identity > 0.8
    assert (twice.missing, twice.duplicate) == (1, 1)  # a pasted twice: b is missing, a duplicated
    assert twice.dnc.count_ok  # D&C's count rule alone does not see it
    assert twice.identity_per_subject["b"] < 0.5 < twice.identity_per_subject["a"]
    assert (alone.missing, alone.duplicate) == (1, 0) and alone.identity_per_subject["b"] == 0.0
    assert (extra.missing, extra.duplicate) == (0, 1) and extra.dnc.count_error == "duplicate"
    assert good.identity > max(twice.identity, alone.identity)
    assert all(r.dino is not None for r in ev.results) and all(r.clip_i is None for r in ev.results)
    s = ev.summary
    assert s["missing_mean"] == pytest.approx(0.5) and s["duplicate_mean"] == pytest.approx(0.5)
    assert s["identity_mean"] == pytest.approx(np.mean([r.identity for r in ev.results]), abs=1e-6)
    assert s["dino_mean"] is not None and s["clip_t_mean"] is None
    assert ev.settings["dino_model"] == "toy" and ev.settings["clip_i_model"] is None
    d = good.to_dict()
    for key in ("dnc", "dino", "clip_i", "clip_t", "identity", "missing", "duplicate"):
        assert key in d


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """A tiny random DINO ViT (the ViTModel config of facebook/dino-vits16, shrunk)."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    out = tmp_path_factory.mktemp("tiny_dino")
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                    image_size=32, patch_size=8, qkv_bias=True)
    ViTModel(cfg, add_pooling_layer=False).eval().save_pretrained(out, safe_serialization=True)
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def test_identical_image_reaches_the_maximum(toy, tiny_vit, tiny_models):
    from mudi.evaluate.dino import DinoEmbedder
    from mudi.evaluate.global_metrics import ImageMetrics
    from mudi.evaluate.textfid import ClipScorer

    _, one, scene, (a, b) = toy
    refs = [Image.fromarray(one.photos(k)[0].image) for k in ("a", "b")]
    metrics = ImageMetrics(DinoEmbedder(str(tiny_vit)), ClipScorer(str(tiny_models / "clip")))
    ev = _evaluate([refs[0], scene(a, b, bg="water")], one, metrics, subjects=[["a"], ["a", "b"]])
    same, other = ev.results
    assert same.dino == pytest.approx(1.0, abs=1e-5) and same.clip_i == pytest.approx(1.0, abs=1e-5)
    assert other.dino < 0.999 and other.clip_i < 0.999
    assert -1.0 <= same.clip_t <= 1.0 and other.clip_t is not None
    assert metrics.dino.n_embedded == 2 + 2  # each reference once, then the two images


def test_evaluate_writes_the_metrics_and_their_models(toy, tiny_vit, tiny_models, tmp_path, capsys):
    from mudi.cli import main

    sset, _, scene, (a, b) = toy
    g = tmp_path / "G"
    g.mkdir()
    for i, im in enumerate([scene(a, b), scene(a)]):
        im.save(g / f"{i:04d}.png")
        (g / f"{i:04d}.json").write_text(json.dumps({"prompt": "a wip circle next to a jam circle",
                                                     "subjects": ["a", "b"]}))
    from mudi.toy import register

    register()
    assert main(["evaluate", "--images", str(g), "--subjects", str(sset.root), "--detector", "toy", "--embedder",
                 "toy", "--clip", str(tiny_models / "clip"), "--dino-model", str(tiny_vit), "--no-report",
                 "--out", str(tmp_path / "E")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[-6:] == ["ident", "miss", "dup", "DINO", "CLIP-I", "CLIP-T"]
    assert row.split()[-5:-3] == ["0.50", "0.00"]  # missing per image 0 and 1, no duplicate
    per = json.loads((tmp_path / "E" / "per_image.json").read_text())
    for key in ("dnc", "dino", "clip_i", "clip_t", "identity", "missing", "duplicate"):
        assert all(p[key] is not None for p in per), key
    assert [p["missing"] for p in per] == [0, 1]
    s = json.loads((tmp_path / "E" / "scores.json").read_text())
    for key in ("dino_mean", "clip_i_mean", "clip_t_mean", "identity_mean", "missing_mean", "duplicate_mean",
                "success_rate"):
        assert s["summary"][key] is not None, key
    assert s["settings"]["dino_model"] == str(tiny_vit)
    assert s["settings"]["clip_i_model"] == s["settings"]["clip_t_model"] == str(tiny_models / "clip")
    header = (tmp_path / "E" / "scores.csv").read_text().splitlines()[0].split(",")
    assert {"dino", "clip_i", "clip_t", "identity", "missing", "duplicate"} <= set(header)
    # auto with a plugin embedder: DINO falls back to the D&C embedder and says so
    assert main(["evaluate", "--images", str(g), "--subjects", str(sset.root), "--detector", "toy", "--embedder",
                 "toy", "--clip", "none", "--no-report", "--out", str(tmp_path / "E2")]) == 0
    s2 = json.loads((tmp_path / "E2" / "scores.json").read_text())
    assert "D&C embedder" in s2["settings"]["dino_model"] and s2["summary"]["clip_i_mean"] is None
