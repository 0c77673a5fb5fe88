"""Class sets for prior preservation: generation + segmentation, loading, CLI, training with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mudi.cli import main
from mudi.train.config import PRIOR_PROMPT, TrainConfig
from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.train.priors import ClassSet, PriorsConfig, generate_class_set, segment_class_image
from mudi.protocols import Detection
from mudi.subjects import SubjectSet


class BoxSegmenter:
    """Fills the given box: a deterministic stand-in for SAM."""

    def __init__(self):
        self.boxes = []

    def segment(self, image, box):
        self.boxes.append(tuple(box))
        w, h = image.size
        m = np.zeros((h, w), dtype=bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        m[y0:y1, x0:x1] = True
        return m


class OneBoxDetector:
    def __init__(self, score=0.9):
        self.score = score
        self.calls = []

    def detect(self, images, queries, threshold):
        self.calls.append((list(queries), threshold))
        out = []
        for im in images:
            w, h = im.size
            dets = [Detection((w * 0.25, h * 0.25, w * 0.75, h * 0.75), self.score, 0)]
            out.append([d for d in dets if d.score >= threshold])
        return out


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


@pytest.fixture(scope="module")
def class_set(tiny_models, subjects, tmp_path_factory) -> Path:
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sd"))
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path_factory.mktemp("priors")
    generate_class_set(pipe, SubjectSet.load(subjects), PriorsConfig(out=str(out), n=2, steps=1),
                       RunOptions(progress=False), detector=None, segmenter=BoxSegmenter())
    return out


def test_generated_class_set(class_set: Path, subjects: Path):
    cs = ClassSet.load(class_set)
    assert cs.classes == {"a": "corgi", "b": "chow chow"}
    assert {c: len(v) for c, v in cs.photos.items()} == {"corgi": 2, "chow chow": 2}
    ph = cs.photos["chow chow"][0]
    assert ph.image.shape == (64, 64, 3) and ph.mask.shape == (64, 64) and ph.mask.any()
    assert ph.caption == "A photo of a chow chow"  # the reference's class caption (generated from PRIOR_PROMPT)
    assert (class_set / "chow_chow_0000.png").is_file() and (class_set / "mask_chow_chow_0000.png").is_file()
    assert (class_set / "contact_sheet.png").is_file()
    head = json.loads((class_set / "metadata.jsonl").read_text().splitlines()[0])
    assert head["threshold"] == 0.4 and head["n"] == 2
    by_key = cs.for_subjects(SubjectSet.load(subjects))
    assert set(by_key) == {"a", "b"} and by_key["a"] is cs.photos["corgi"]


def test_segment_class_image_uses_detector_at_threshold():
    from PIL import Image

    img = Image.new("RGB", (40, 40), "white")
    det, seg = OneBoxDetector(score=0.9), BoxSegmenter()
    mask, reason = segment_class_image(img, "corgi", det, seg, threshold=0.4)
    assert mask is not None and mask[20, 20] and not mask[0, 0]
    assert det.calls == [(["corgi"], 0.4)]
    weak = OneBoxDetector(score=0.3)  # below METHOD's 0.4 threshold: the image is rejected
    mask, reason = segment_class_image(img, "corgi", weak, seg, threshold=0.4)
    assert mask is None and reason
    # no detector: the central 90 % box goes to the segmenter
    seg2 = BoxSegmenter()
    mask, _ = segment_class_image(img, "corgi", None, seg2, threshold=0.4)
    assert seg2.boxes == [(2.0, 2.0, 38.0, 38.0)] and mask.sum() == 36 * 36


def test_class_set_errors(tmp_path: Path, class_set: Path):
    with pytest.raises(MudiError, match="not found"):
        ClassSet.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MudiError, match="metadata.jsonl"):
        ClassSet.load(tmp_path / "empty")
    other = SubjectSet.from_arrays([
        ("a", "olis corgi", [(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), "x")]),
        ("b", "hta tabby cat", [(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), "y")]),
    ])
    with pytest.raises(MudiError, match="tabby cat"):
        ClassSet.load(class_set).for_subjects(other)


def test_train_with_prior_preservation(tiny_models, subjects, class_set, tmp_path):
    from mudi.settings import RunOptions
    from mudi.train import train

    out = tmp_path / "lora"
    train(TrainConfig(subjects=str(subjects), base=str(tiny_models / "sd"), out=str(out), prior_dir=str(class_set),
                      resolution=64, max_train_steps=2, p=0.5, validate_every=-1, checkpoint_every=0),
          RunOptions(progress=False))
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    for r in rows:
        assert np.isfinite(r["loss_prior"]) and r["loss"] == pytest.approx(r["loss_instance"] + r["loss_prior"])
        kinds = r["kinds"]  # (instance, class) per example: the class example is mixed like its instance
        assert len(kinds) == 4 and kinds[0::2] == kinds[1::2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latents_cached"] == 10 + 4 and summary["text_encoder_calls_training"] == 0


def test_priors_cli(tiny_models, subjects, tmp_path, monkeypatch, capsys):
    from mudi.prepare import segment as prepare_segment

    monkeypatch.setattr(prepare_segment.GrabCutSegmenter, "segment", lambda self, image, box: BoxSegmenter().segment(image, box))
    out = tmp_path / "classes"
    args = ["priors", "--base", str(tiny_models / "sd"), "--subjects", str(subjects), "--n", "1",
            "--detector", "none", "--segmenter", "grabcut", "--steps", "1", "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    assert "--prior-dir" in capsys.readouterr().out
    assert {c: len(v) for c, v in ClassSet.load(out).photos.items()} == {"corgi": 1, "chow chow": 1}
    assert main(args + ["--out", str(out)]) == 2  # never overwrites without --overwrite
    assert "already has content" in capsys.readouterr().err
    assert main(args[:-1] + ["--out", str(tmp_path / "x"), "--n", "0"]) == 2
    assert main(["priors", "--base", str(tmp_path / "nope"), "--subjects", str(subjects), "--out",
                 str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


class NeverSegmenter:
    def segment(self, image, box):
        w, h = image.size
        return np.zeros((h, w), dtype=bool)


def test_failed_class_set_leaves_nothing_behind(tiny_models, subjects, tmp_path):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sd"))
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path / "classes"
    with pytest.raises(MudiError, match="none of 2 generated 'corgi' images could be segmented"):
        generate_class_set(pipe, SubjectSet.load(subjects), PriorsConfig(out=str(out), n=1, steps=1),
                           RunOptions(progress=False), detector=None, segmenter=NeverSegmenter())
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("values, match", [
    ({"n": 0}, "--n must be >= 1"),
    ({"threshold": 1.5}, "--threshold"),
    ({"prompt": "a photo"}, "must contain {cls}"),
    ({"max_tries": 0.5}, "--max-tries"),
])
def test_priors_config_checks(values, match):
    with pytest.raises(MudiError, match=match):
        PriorsConfig().updated(values).check()


def test_priors_device_reaches_detector_segmenter_and_pipeline(tiny_models, subjects, tmp_path, monkeypatch):
    """`mudi priors --device cuda:1`: OWLv2, SAM and the base pipeline are loaded for cuda:1, not GPU 0
    (spy loaders record the device and load on the CPU; this machine has no GPU)."""
    import torch

    import mudi.runtime
    import mudi.train.priors as priors
    from mudi.models import loading

    asked = torch.device("cuda", 1)
    seen: dict[str, object] = {}
    monkeypatch.setattr(mudi.runtime, "pick_device", lambda name="auto", **kw: asked)
    for name in ("load_owlv2", "load_sam"):
        real = getattr(loading, name)

        def spy(model, *, dtype=torch.float32, device="cpu", _real=real, _name=name):
            seen[_name] = device
            return _real(model, dtype=dtype, device="cpu")

        monkeypatch.setattr(loading, name, spy)

    def pipeline_spy(base, *, dtype, device, vae=None):
        seen["load_pipeline"] = (device, dtype)
        return loading.__dict__["_real_load_pipeline"](base, vae=vae)

    monkeypatch.setitem(loading.__dict__, "_real_load_pipeline", loading.load_pipeline)
    monkeypatch.setattr(loading, "load_pipeline", pipeline_spy)
    monkeypatch.setattr(priors, "generate_class_set", lambda pipe, sset, config, options, **kw: (pipe, kw))
    config = PriorsConfig(base=str(tiny_models / "sd"), subjects=str(subjects), out=str(tmp_path / "c"),
                          detector=str(tiny_models / "owlv2"), segmenter=str(tiny_models / "sam"))
    pipe, models = priors.make_class_set(config, RunOptions(device="cuda:1", progress=False))
    assert seen == {"load_owlv2": asked, "load_sam": asked, "load_pipeline": (asked, torch.float16)}
    assert models["detector"] is not None and models["segmenter"] is not None


def test_priors_batches_decode_one_image_at_a_time_on_a_gpu(tiny_models, subjects, tmp_path, monkeypatch):
    """With a VAE on a GPU (a CPU VAE made to look like one), a batch of class images is decoded
    one image at a time; the setting is put back afterwards."""
    import mudi.models.decode as decode
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sd"))
    pipe.set_progress_bar_config(disable=True)
    sizes: list[int] = []
    real = pipe.vae._decode
    pipe.vae._decode = lambda z, *a, **k: (sizes.append(int(z.shape[0])), real(z, *a, **k))[1]
    monkeypatch.setattr(decode, "vae_device_type", lambda vae: "cuda")
    generate_class_set(pipe, SubjectSet.load(subjects), PriorsConfig(out=str(tmp_path / "c"), n=2, steps=1, batch_size=2),
                       RunOptions(progress=False), detector=None, segmenter=BoxSegmenter())
    assert sizes == [1] * 4 and pipe.vae.use_slicing is False
