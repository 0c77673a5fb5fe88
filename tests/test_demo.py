"""`mudi demo` end to end on a tiny SD pipeline (fast settings); the shipped toy model is
tested in test_toy.py."""

import json

from PIL import Image

from mudi.cli import main

FAST = ["--train-steps", "2", "--images-per-prompt", "1", "--steps", "2", "--methods", "dreambooth,mudi",
        "--no-progress"]


def _run(tmp_path, tiny_models, name):
    out = tmp_path / name
    rc = main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--seed", "3", *FAST])
    assert rc == 0
    return out


def test_demo_writes_report_and_summary_deterministically(tmp_path, tiny_models, capsys):
    out = _run(tmp_path, tiny_models, "a")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"dreambooth", "mudi"}
    for m in summary["methods"].values():
        assert {"dnc_mean", "success_rate", "count_errors"} <= set(m)
        assert m["n_images"] == len(summary["prompts"])
    assert summary["methods"]["mudi"]["initialization"] == "mudi"
    assert summary["methods"]["dreambooth"]["training_mix"] == "none"
    report = (out / "report.html").read_text()
    assert "mudi demo" in report and "data:image/png;base64," in report
    assert (out / "lora_none" / "pytorch_lora_weights.safetensors").exists()
    assert (out / "lora_segmix" / "pytorch_lora_weights.safetensors").exists()
    assert len(list((out / "gen" / "mudi").glob("[0-9][0-9][0-9][0-9].png"))) == len(summary["prompts"])

    again = json.loads((_run(tmp_path, tiny_models, "b") / "summary.json").read_text())
    assert again["methods"] == summary["methods"]

    # --resume on a finished demo redoes nothing and reports the same numbers
    capsys.readouterr()
    rc = main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--seed", "3", "--resume", *FAST])
    assert rc == 0
    assert capsys.readouterr().out.count("already done, skipping") == 1 + 2 + 2 + 2
    assert json.loads((out / "summary.json").read_text())["methods"] == summary["methods"]


def test_demo_refuses_non_empty_out(tmp_path, tiny_models, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    rc = main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), *FAST])
    assert rc == 2
    assert "already has content" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"


def test_demo_rejects_unknown_method(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "x"), "--methods", "dreambooth,nope"])
    assert rc == 2
    assert "unknown demo method" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_rejects_bad_fill_and_threshold(tmp_path, capsys):
    for flag, value, msg in (("--fill", "0", "--fill must be in (0, 1]"),
                             ("--success-threshold", "1.5", "--success-threshold must be in [0, 1]")):
        rc = main(["demo", "--out", str(tmp_path / "x"), flag, value])
        assert rc == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_demo_summary_records_sampling_settings(tmp_path, tiny_models):
    out = tmp_path / "s"
    rc = main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--seed", "1", "--fill", "0.5",
               "--success-threshold", "0.6", "--gamma", "4", *FAST])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["fill"] == 0.5 and summary["config"]["gamma"] == 4.0
    assert summary["config"]["success_threshold"] == 0.6
    # the layout fill reached generation: each init box fills half of its slot (32 of 64 px slots)
    first = sorted((out / "gen" / "mudi").glob("[0-9][0-9][0-9][0-9].json"))[0]
    sidecar = json.loads(first.read_text())
    width = Image.open(first.with_suffix(".png")).size[0]
    widths = [p["box"][2] - p["box"][0] for p in sidecar["layout"]]
    assert len(widths) == 2 and max(widths) <= 0.5 * width / 2 + 1
    report = (out / "report.html").read_text()
    assert "D&amp;C ≥ 0.6" in report
    assert "γ = 4, layout fill 0.5" in report and "Initialization canvases" in report


def test_demo_with_three_subjects(tmp_path, tiny_models):
    """--subjects 3: three subjects in the set, the prompts and every init layout; composites of 3;
    the library versions are recorded."""
    out = tmp_path / "three"
    rc = main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--subjects", "3", *FAST])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["subjects"] == 3
    assert list(summary["subjects"]) == ["a", "b", "c"]
    assert all(p.startswith("a photo of a wip circle, a jam circle and a tok circle") for p in summary["prompts"])
    assert {"torch", "diffusers", "transformers", "peft"} <= set(summary["versions"])
    sidecar = json.loads(sorted((out / "gen" / "mudi").glob("[0-9][0-9][0-9][0-9].json"))[0].read_text())
    assert sorted(p["key"] for p in sidecar["layout"]) == ["a", "b", "c"]
    config = (out / "lora_segmix" / "config.toml").read_text()
    assert "k = 3" in config and "segmix_margin = 2.0" in config
    report = (out / "report.html").read_text()
    assert "Three similar subjects" in report and f"torch {summary['versions']['torch']}" in report


def test_demo_rejects_bad_subject_count(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "x"), "--subjects", "5"])
    assert rc == 2
    assert "--subjects must be 2, 3 or 4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
