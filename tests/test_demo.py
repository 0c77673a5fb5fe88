"""`mudi demo` end to end on a tiny SD pipeline (fast settings); the shipped toy model is
tested in test_toy.py."""

import json

import torch
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


def test_reduced_demo_on_the_shipped_toy_model_is_deterministic(tmp_path):
    """The demo's numbers are a function of the seed: a shortened demo on the shipped toy model, run
    twice, gives the same LoRA bytes, images and figures (no expected scores are hard-coded)."""
    argv = ["--train-steps", "6", "--images-per-prompt", "2", "--steps", "4", "--methods", "dreambooth,mudi",
            "--seed", "1", "--no-progress"]
    runs = []
    for name in ("first", "second"):
        assert main(["demo", "--out", str(tmp_path / name), *argv]) == 0
        runs.append(tmp_path / name)
    a, b = (json.loads((r / "summary.json").read_text()) for r in runs)
    assert a["methods"] == b["methods"] and a["versions"] == b["versions"]
    assert all(m["n_images"] == 8 for m in a["methods"].values())
    from safetensors.torch import load_file

    for lora in ("lora_segmix", "lora_none"):  # the files' metadata name their own folder: compare tensors
        ta, tb = (load_file(r / lora / "pytorch_lora_weights.safetensors") for r in runs)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), lora
    for rel in ("gen/mudi/0007.png", "gen/dreambooth/0000.png"):
        assert (runs[0] / rel).read_bytes() == (runs[1] / rel).read_bytes(), rel
    per_image = [json.loads((r / "eval" / "mudi" / "per_image.json").read_text()) for r in runs]
    assert [d.get("dnc") for d in per_image[0]] == [d.get("dnc") for d in per_image[1]]


def test_full_demo_writes_curves_and_spread(tmp_path, tiny_models, monkeypatch, capsys):
    """--full: the comparison over several seeds with its spread, success rate vs number of subjects,
    mean D&C vs γ; plots and report written; --resume redoes nothing (curves reduced for speed)."""
    from mudi.toy import demo_full

    monkeypatch.setattr(demo_full, "FULL_SEEDS", 2)
    monkeypatch.setattr(demo_full, "FULL_SUBJECTS", (2, 3))
    monkeypatch.setattr(demo_full, "FULL_GAMMAS", (0.0, 5.0))
    out = tmp_path / "full"
    argv = ["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--full", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "over seeds 0, 1 (mean ± std)" in printed and "mean D&C vs γ" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["per_seed"]) == {"0", "1"}
    for m in ("dreambooth", "mudi"):
        vals = [summary["per_seed"][s][m]["dnc_mean"] for s in ("0", "1")]
        spread = summary["spread"][m]
        assert abs(spread["dnc_mean_mean"] - sum(vals) / 2) < 1e-3
        assert abs(spread["dnc_mean_std"] - abs(vals[0] - vals[1]) / 2 ** 0.5) < 1e-3
    assert set(summary["success_vs_subjects"]) == {"2", "3"}
    three = json.loads((out / "subjects_3" / "summary.json").read_text())
    assert summary["success_vs_subjects"]["3"]["mudi"]["dnc_mean"] == three["methods"]["mudi"]["dnc_mean"]
    assert set(summary["dnc_vs_gamma"]) == {"0", "5"}
    # γ = 5 is the demo's own setting: the curve's point equals the seed run's MuDI row
    assert summary["dnc_vs_gamma"]["5"]["dnc_mean"] == summary["per_seed"]["0"]["mudi"]["dnc_mean"]
    for name in ("success_vs_subjects.png", "dnc_vs_gamma.png", "report.html", "seed_1/report.html"):
        assert (out / name).stat().st_size > 0
    assert main([*argv, "--resume"]) == 0
    assert "already done" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["spread"] == summary["spread"]


def test_full_demo_needs_dreambooth_and_mudi(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--full", "--methods", "mudi,segmix"]) == 2
    assert "keep dreambooth and mudi" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_modular_rows(tmp_path, tiny_models):
    """--methods modular,modular_segmix: per-subject DreamBooth LoRAs merged (concat: ranks stacked),
    then a short Seg-Mix fine-tune from the merged LoRA; both rows in the summary."""
    from safetensors.torch import load_file

    out = tmp_path / "mod"
    argv = [a for a in FAST if a not in ("dreambooth,mudi",)]
    argv[argv.index("--methods") + 1:argv.index("--methods") + 1] = ["modular,modular_segmix"]
    assert main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["modular", "modular_segmix"]
    assert all(m["n_images"] == len(summary["prompts"]) for m in summary["methods"].values())
    single = load_file(out / "lora_single_a" / "pytorch_lora_weights.safetensors")
    merged = load_file(out / "lora_merged" / "pytorch_lora_weights.safetensors")
    key = next(k for k in single if "lora_A" in k or "lora.down" in k)
    assert merged[key].shape[0] == 2 * single[key].shape[0]  # ranks stacked
    tuned = (out / "lora_merged_segmix" / "config.toml").read_text()
    assert "lora_merged" in tuned and 'mix = "segmix"' in tuned
    sidecar = json.loads(sorted((out / "gen" / "modular_segmix").glob("[0-9][0-9][0-9][0-9].json"))[0].read_text())
    assert "lora_merged_segmix" in json.dumps(sidecar)


def test_demo_iterative_row(tmp_path, capsys):
    """--methods mudi,mudi_iterative: the rounds start from the mudi row's Seg-Mix LoRA (adopted as
    round 0, not retrained), generate at seeds apart from the evaluation's, keep D&C's successes and
    fine-tune on them; the row's LoRA differs from mudi's, and the summary, table and report show it."""
    from safetensors.torch import load_file

    out = tmp_path / "it"
    # a reduced demo on the shipped toy model (the toy detector finds circles in its images); threshold 0:
    # the round keeps its images with the right count and a non-negative D&C
    argv = ["--train-steps", "6", "--images-per-prompt", "2", "--steps", "4", "--methods", "mudi,mudi_iterative",
            "--seed", "1", "--success-threshold", "0", "--no-progress"]
    assert main(["demo", "--out", str(out), *argv]) == 0
    printed = capsys.readouterr().out
    assert "mudi_iterative" in printed.split("method", 1)[1]  # the CLI table's row
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["mudi", "mudi_iterative"]
    row = summary["methods"]["mudi_iterative"]
    assert row["n_images"] == 2 * len(summary["prompts"]) and row["training_mix"] == "iterative"
    rounds = json.loads((out / "lora_iterative" / "rounds.json").read_text())["rounds"]
    assert row["rounds"] == rounds and len(rounds) == 1 and rounds[0]["images"] == 2 * len(summary["prompts"])
    round0 = out / "lora_iterative" / "rounds" / "0" / "train"
    segmix = load_file(out / "lora_segmix" / "pytorch_lora_weights.safetensors")
    adopted = load_file(round0 / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(segmix[k], adopted[k]) for k in segmix)  # round 0 is the mudi row's LoRA
    final = load_file(out / "lora_iterative" / "pytorch_lora_weights.safetensors")
    assert final.keys() == segmix.keys() and any(not torch.equal(final[k], segmix[k]) for k in segmix)
    r1 = out / "lora_iterative" / "rounds" / "1"
    kept = [json.loads(ln) for ln in (r1 / "kept" / "examples.jsonl").read_text().splitlines() if ln.strip()]
    per_image = json.loads((r1 / "eval" / "per_image.json").read_text())
    successes = {f"{d['name']}.png" for d in per_image if d["count_ok"] and d["dnc"] >= 0}
    assert rounds[0]["kept"] == len(kept) == len(successes) > 0 and {k["file_name"] for k in kept} == successes
    tuned = (r1 / "train" / "config.toml").read_text()
    assert str(round0.resolve()) in tuned and 'mix = "segmix"' in tuned and "max_train_steps = 1" in tuned  # a fifth of 6
    # the round's images were drawn at other seeds than the evaluated ones
    seeds = lambda folder: {json.loads(p.read_text())["seed"] for p in folder.glob("[0-9][0-9][0-9][0-9].json")}
    assert seeds(r1 / "images") and not seeds(r1 / "images") & seeds(out / "gen" / "mudi")
    sidecar = json.loads(sorted((out / "gen" / "mudi_iterative").glob("[0-9][0-9][0-9][0-9].json"))[0].read_text())
    assert "lora_iterative" in json.dumps(sidecar)
    report = (out / "report.html").read_text()
    assert "<b>mudi_iterative</b>" in report and f"kept {len(kept)} of {rounds[0]['images']}" in report
    # --resume redoes nothing: subjects, both LoRAs, both generations and evaluations are skipped
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--resume", *argv]) == 0
    assert capsys.readouterr().out.count("already done, skipping") == 1 + 2 + 2 + 2
    assert json.loads((out / "summary.json").read_text())["methods"] == summary["methods"]


def test_demo_init_only_control_row(tmp_path, tiny_models):
    """init_only samples the base model itself (no LoRA trained or loaded) with the same
    initialization as the initialized rows: it measures what the initialization does alone."""
    out = tmp_path / "ctl"
    argv = [a if a != "dreambooth,mudi" else "init_only,dreambooth_init" for a in FAST]
    assert main(["demo", "--base", str(tiny_models / "sd"), "--out", str(out), "--seed", "3", *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["init_only", "dreambooth_init"]
    row = summary["methods"]["init_only"]
    assert row["training_mix"] == "base" and row["initialization"] == "mudi"
    assert sorted(p.name for p in out.glob("lora_*")) == ["lora_none"]  # only the DreamBooth LoRA was trained
    sidecar = json.loads((out / "gen" / "init_only" / "0000.json").read_text())
    assert not sidecar.get("lora")
    def pixels(row, name):
        return Image.open(out / "gen" / row / name).tobytes()

    assert pixels("init_only", "0000.png") != pixels("dreambooth_init", "0000.png")  # the LoRA changes the image
    # same initialization: the same init canvas
    assert pixels("init_only", "0000_init.png") == pixels("dreambooth_init", "0000_init.png")
