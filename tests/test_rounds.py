"""Iterative training (`mudi train --rounds N`, mudi.iterate): the rounds' folders, the kept images
as extra whole-image examples, and a run stopped mid-round resuming to the same LoRA. Tiny SD model,
tiny OWLv2/DINOv2 as detector and embedder, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from safetensors.torch import load_file

import mudi.workflows.rounds as iterate_module
from mudi.cli import main
from mudi.errors import MudiError
from mudi.evaluate import EvaluateConfig
from mudi.generate import GenerateConfig
from mudi.settings import RunOptions, read_section
from mudi.train import TrainConfig, train
from mudi.workflows import iterate

FAST = dict(resolution=64, validate_every=-1, checkpoint_every=0, max_train_steps=2, learning_rate=1e-2)
QUIET = RunOptions(progress=False)


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _config(tiny_models, subjects, out, **kw) -> TrainConfig:
    values = dict(FAST, subjects=str(subjects), base=str(tiny_models / "sd"), out=str(out), rounds=1, round_steps=2,
                  round_images=3, keep_threshold=-0.5)
    values.update(kw)
    return TrainConfig(**values)


def _templates(tiny_models):
    return dict(generate=GenerateConfig(steps=2),
                evaluate=EvaluateConfig(detector=str(tiny_models / "owlv2"), embedder=str(tiny_models / "dinov2"),
                                        clip="none", report=False))


class HalvesDetector:
    """Stand-in detector: subject 0 in the left half, subject 1 in the right half of every image
    (no count errors, so D&C is computed with the real embedder), except image 0001, which shows
    one subject only (a count error: never kept)."""

    def __init__(self):
        self.calls = 0

    def detect(self, images, queries, threshold):
        from mudi.protocols import Detection

        out = []
        for im in images:
            w, h = im.size
            boxes = [Detection((2.0, 4.0, w / 2 - 2, h - 4.0), 0.9, 0), Detection((w / 2 + 2, 4.0, w - 2.0, h - 4.0), 0.9, 1)]
            out.append(boxes[:1] if self.calls == 1 else boxes)
            self.calls += 1
        return out


def _models(tiny_models, evaluate: EvaluateConfig):
    from mudi.evaluate import EvalModels
    from mudi.evaluate.pipeline import load_models

    real = load_models(evaluate)
    return EvalModels(HalvesDetector(), real.embedder, names={"detector": "halves", "embedder": "tiny dinov2"})


def _log_kinds(folder: Path) -> set[str]:
    rows = [json.loads(ln) for ln in (folder / "train_log.jsonl").read_text().splitlines()]
    return {k for r in rows for k in r["kinds"]}


def test_rounds_then_resume_mid_round_gives_the_same_lora(tiny_models, subjects, tmp_path, monkeypatch):
    from mudi.models.loading import load_pipeline

    whole = tmp_path / "whole"  # with the caller's loaded pipeline
    templates = _templates(tiny_models)
    pipe = load_pipeline(str(tiny_models / "sd"))
    result = iterate(_config(tiny_models, subjects, whole), QUIET, **templates, pipe=pipe,
                     eval_models=_models(tiny_models, templates["evaluate"]))
    assert not getattr(pipe.unet, "peft_config", None)  # the rounds' LoRA was unloaded from the caller's pipeline
    r1 = whole / "rounds" / "1"
    assert len(list((r1 / "images").glob("[0-9][0-9][0-9][0-9].png"))) == 3
    assert (r1 / "eval" / "scores.json").is_file()
    kept = [json.loads(ln) for ln in (r1 / "kept" / "examples.jsonl").read_text().splitlines()]
    per_image = {d["name"]: d for d in json.loads((r1 / "eval" / "per_image.json").read_text())}
    assert per_image["0001"]["count_error"] and per_image["0000"]["count_ok"]
    assert [k["file_name"] for k in kept] == [f"{n}.png" for n, d in per_image.items()
                                              if d["count_ok"] and d["dnc"] >= -0.5]
    assert kept and "0001.png" not in [k["file_name"] for k in kept]
    for item in kept:
        assert item["text"] == "a photo of a olis corgi and a hta chow chow" and item["subjects"] == ["a", "b"]
        assert item["mask_source"] == "detections"
        mask = np.asarray(Image.open(r1 / "kept" / item["mask_path"])) > 127
        assert mask[32, 10] and mask[32, 50] and not mask[32, 32] and not mask[1, 10]  # the two boxes
    # round 1's fine-tune starts from round 0's LoRA and draws the kept images as whole examples
    saved = TrainConfig.from_toml(r1 / "train" / "config.toml")
    assert saved.init_lora == str((whole / "rounds" / "0" / "train").resolve())
    assert saved.extra_examples == [str((r1 / "kept").resolve())]
    assert "kept" in _log_kinds(r1 / "train") and "kept" not in _log_kinds(whole / "rounds" / "0" / "train")
    final = load_file(str(result.lora))
    assert all(torch.equal(final[k], v) for k, v in load_file(str(r1 / "train" / "pytorch_lora_weights.safetensors")).items())
    rounds = json.loads((whole / "rounds.json").read_text())["rounds"]
    assert rounds[0]["kept"] == len(kept) and rounds[0]["images"] == 3
    # OUT/config.toml holds the [train] table (read by mudi generate) and the rounds' templates
    assert read_section(whole / "config.toml", "train")["rounds"] == 1
    assert read_section(whole / "config.toml", "evaluate")["detector"] == str(tiny_models / "owlv2")

    # the same run (models loaded by mudi), stopped right after round 1's images were made, then resumed
    stopped = tmp_path / "stopped"
    real = iterate_module._evaluate_round

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(iterate_module, "_evaluate_round", killed)
    with pytest.raises(KeyboardInterrupt):
        iterate(_config(tiny_models, subjects, stopped), QUIET, **_templates(tiny_models))
    assert len(list((stopped / "rounds" / "1" / "images").glob("[0-9][0-9][0-9][0-9].png"))) == 3
    assert not (stopped / "rounds" / "1" / "train").exists()
    monkeypatch.setattr(iterate_module, "_evaluate_round", real)
    with pytest.raises(MudiError, match="--resume"):  # no silent restart over a stopped run
        iterate(_config(tiny_models, subjects, stopped), QUIET, **_templates(tiny_models))
    resumed = iterate(TrainConfig(out=str(stopped)), RunOptions(resume=True, progress=False),  # saved settings
                      eval_models=_models(tiny_models, _templates(tiny_models)["evaluate"]))
    again = load_file(str(resumed.lora))
    assert set(again) == set(final) and all(torch.equal(again[k], final[k]) for k in final)
    assert json.loads((stopped / "rounds.json").read_text())["rounds"] == rounds


def test_cli_rounds_options_and_mistakes(tiny_models, subjects, tmp_path, capsys, monkeypatch):
    base = ["train", "--subjects", str(subjects), "--base", str(tiny_models / "sd"), "--resolution", "64",
            "--steps", "2", "--validate-every", "-1", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a"), "--rounds", "1", "--stop-after", "1"]) == 2
    assert "--stop-after does not combine with --rounds" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--rounds", "1", "--keep-threshold", "3"]) == 2
    assert "keep_threshold" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "c"), "--extra-examples", str(tmp_path)]) == 2
    assert "no examples.jsonl" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*base, "--out", str(tmp_path / "e"), "--rounds", "1"]) == 2
    assert "runs in one process" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert not any((tmp_path / n).exists() for n in "abce")
    with pytest.raises(MudiError, match="mudi.iterate"):
        train(_config(tiny_models, subjects, tmp_path / "d"), QUIET)


def test_extra_examples_enter_the_schedule_as_whole_images(tiny_models, subjects, tmp_path):
    """An examples folder made by hand: its images are drawn as they are (never cut into composites),
    a subject the set lacks is refused."""
    from mudi.subjects import SubjectSet
    from mudi.train.data import ExampleSchedule
    from mudi.train.extra import EXTRA_KEY, load_extra, write_examples

    folder = tmp_path / "kept"
    folder.mkdir()
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(folder / "0000.png")
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(folder / "mask_0000.png")
    write_examples(folder, [{"file_name": "0000.png", "mask_path": "mask_0000.png", "text": "a photo of x",
                             "subjects": ["a", "b"]}])
    sset = SubjectSet.load(subjects)
    extra = load_extra([str(folder)], sset.keys)
    assert len(extra) == 1 and extra[0].photo.caption == "a photo of x" and extra[0].photo.mask.all()
    schedule = ExampleSchedule(sset, seed=0, extra=1)
    n = len(schedule.items)
    assert sum(schedule.item(e)[0] == EXTRA_KEY for e in range(n)) == 1  # once per epoch
    with pytest.raises(MudiError, match="does not have"):
        load_extra([str(folder)], ["a"])
    out = tmp_path / "t"
    train(TrainConfig(**{**FAST, "max_train_steps": 6}, subjects=str(subjects), base=str(tiny_models / "sd"),
                      out=str(out), p=1.0, extra_examples=[str(folder)]), QUIET)
    assert "kept" in _log_kinds(out) and "plain" not in _log_kinds(out)  # p = 1: everything else is a composite


def test_first_training_must_be_finished(tiny_models, subjects, tmp_path):
    """iterate(first=DIR) adopts a finished `mudi train` folder as round 0 (tests/test_demo.py runs it);
    a folder without a finished summary is refused before anything is written."""
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text(json.dumps({"finished": False}))
    out = tmp_path / "out"
    with pytest.raises(MudiError, match="not a finished `mudi train` folder"):
        iterate(_config(tiny_models, subjects, out), QUIET, **_templates(tiny_models), first=unfinished)
    assert not out.exists()
