"""Evaluation: D&C over images with fake detector/embedder, folders, reports, CLI on tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.errors import MudiError
from mudi.evaluate import (
    DetectAndCompare,
    Evaluation,
    compare_runs,
    evaluate_folder,
    evaluate_images,
)
from mudi.evaluate.folder import collect_folder
from mudi.protocols import Detection, Detector, Embedder
from mudi.report import write_run_report
from mudi.subjects import SubjectSet

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


# ----------------------------------------------------------------------------- fakes

class ColourDetector:
    """Finds solid non-white, non-grey squares: one box per connected colour blob (by colour)."""

    def __init__(self):
        self.calls: list[tuple[int, tuple[str, ...], float]] = []

    def detect(self, images, queries, threshold):
        from scipy import ndimage

        self.calls.append((len(images), tuple(queries), threshold))
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB")).astype(int)
            sat = a.max(axis=2) - a.min(axis=2) > 80
            lab, n = ndimage.label(sat)
            dets = []
            for sl in ndimage.find_objects(lab):
                ys, xs = sl
                dets.append(Detection((xs.start, ys.start, xs.stop, ys.stop), 0.9, 0))
            out.append(dets)
        return out


class MeanColourEmbedder:
    """Embedding = centred mean colour of the saturated pixels; counts what it embeds."""

    def __init__(self):
        self.calls: list[int] = []

    @property
    def n_embedded(self) -> int:
        return sum(self.calls)

    def embed(self, images):
        self.calls.append(len(images))
        rows = []
        for im in images:
            a = np.asarray(im.convert("RGB")).astype(float) / 255
            sat = a.max(axis=2) - a.min(axis=2) > 0.3
            v = a[sat].mean(axis=0) - 0.5 if sat.any() else np.full(3, 0.01)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(images), 3)


def canvas(*squares, size=64):
    img = Image.new("RGB", (size, size), (255, 255, 255))
    arr = np.asarray(img).copy()
    for colour, (x, y, s) in squares:
        arr[y:y + s, x:x + s] = colour
    return Image.fromarray(arr)


def photo(colour, n):
    img = canvas((colour, (8 + n, 10, 30 + n)))
    mask = np.asarray(img).min(axis=2) < 250
    return img, mask, f"a photo {n}"


@pytest.fixture()
def sset():
    return SubjectSet.from_arrays([
        ("a", "olis red block", [photo(RED, i) for i in range(5)]),
        ("b", "hta blue block", [photo(BLUE, i) for i in range(5)]),
        ("c", "ult green block", [photo(GREEN, i) for i in range(3)]),
    ])


GOOD = canvas((RED, (2, 20, 20)), (BLUE, (36, 20, 20)))
TWICE = canvas((RED, (2, 20, 20)), (RED, (36, 20, 20)))  # subject a drawn twice, b missing
ONE = canvas((RED, (2, 20, 20)))
THREE = canvas((RED, (0, 0, 18)), (BLUE, (40, 0, 18)), (RED, (20, 40, 18)))
PROMPT = "a olis red block and a hta blue block on a table"


def test_fakes_implement_the_protocols():
    assert isinstance(ColourDetector(), Detector) and isinstance(MeanColourEmbedder(), Embedder)


# ----------------------------------------------------------------------------- D&C over images

def test_evaluate_images_logic(sset):
    det, emb = ColourDetector(), MeanColourEmbedder()
    ev = evaluate_images([GOOD, TWICE, ONE, THREE], sset, det, emb, prompts=PROMPT, names=list("wxyz"))
    good, twice, one, three = ev.results
    assert good.dnc.count_ok and good.dnc.score > 0.95 and good.success and good.dnc.identities_ok
    assert good.subjects == ["a", "b"] and good.fidelity_prompt == "a red block and a blue block on a table"
    # matched boxes: row 0 is the red box (left), row 1 the blue one (right)
    assert good.dnc.matched_boxes[0][0] < 10 and good.dnc.matched_boxes[1][0] > 30
    assert twice.dnc.count_ok and twice.dnc.score < 0.5 and not twice.success and not twice.dnc.identities_ok
    assert one.dnc.score == 0 and one.dnc.count_error == "missing" and not one.success
    assert three.dnc.score == 0 and three.dnc.count_error == "duplicate"
    assert three.dnc.s_dc_raw.shape == (3, 2)  # diagnosis: similarities of the extra boxes are kept
    s = ev.summary
    assert s["n_scored"] == 4 and s["success_rate"] == 0.25 and s["count_error_rate"] == 0.5
    assert s["n_missing"] == 1 and s["n_duplicate"] == 1
    assert s["dnc_mean"] == pytest.approx(np.mean([r.dnc.score for r in ev.results]), abs=1e-6)
    assert s["success_rate_sem"] == pytest.approx(np.sqrt(0.25 * 0.75 / 4), abs=1e-6)
    # per subject: b's box in TWICE is red, so b's "other" similarity is pulled up
    assert s["per_subject"]["a"]["n"] == 2 and s["per_subject"]["a"]["own"] == pytest.approx(1.0, abs=0.01)
    assert s["per_subject"]["b"]["other"] > s["per_subject"]["b"]["gt_other"] + 0.5
    # the detector is asked for every subject's class at once, with the paper's threshold
    assert det.calls == [(4, ("red block", "blue block"), 0.4)]


def test_references_embedded_once_and_crops_batched(sset):
    det, emb = ColourDetector(), MeanColourEmbedder()
    images = [GOOD, TWICE, GOOD, ONE, GOOD, GOOD, TWICE]
    ev = evaluate_images(images, sset, det, emb, prompts=PROMPT, batch_size=3)
    n_refs = 10  # 5 photos of a + 5 of b (c is not in the prompt: never embedded)
    n_crops = sum(r.dnc.n_boxes for r in ev.results)
    assert emb.calls[0] == n_refs  # first call: all references together
    assert emb.n_embedded == n_refs + n_crops  # references never re-embedded
    assert len(emb.calls) == 1 + 3  # then one call per batch of 3 images (ceil(7/3) = 3)
    # a second evaluation with the same engine reuses the cached references
    engine = DetectAndCompare(sset, det, emb)
    before = emb.n_embedded
    evaluate_images([GOOD], sset, det, emb, prompts=PROMPT, engine=engine)
    evaluate_images([GOOD, GOOD], sset, det, emb, prompts=PROMPT, engine=engine)
    assert emb.n_embedded - before == n_refs + 2 + 4


def test_per_k_and_subject_keys(sset):
    det, emb = ColourDetector(), MeanColourEmbedder()
    three_subjects = canvas((RED, (0, 0, 18)), (BLUE, (40, 0, 18)), (GREEN, (20, 40, 18)))
    ev = evaluate_images(
        [GOOD, three_subjects, ONE],
        sset, det, emb,
        prompts=[PROMPT, None, None],
        subjects=[None, ["a", "b", "ult"], ["olis red block"]],
    )
    assert [r.k for r in ev.results] == [2, 3, 1]
    assert ev.results[1].subjects == ["a", "b", "c"] and ev.results[1].success
    assert ev.results[2].success and ev.results[2].dnc.score == pytest.approx(1.0, abs=0.02)
    assert set(ev.summary["per_k"]) == {"1", "2", "3"}
    assert ev.summary["per_k"]["3"]["success_rate"] == 1.0
    assert ev.results[1].clip_score is None  # no prompt, no CLIP


def test_masked_reference_mode(sset):
    from mudi.evaluate.embed import ReferenceEmbeddings, masked_reference

    p = sset.photos("a")[0]
    ref = masked_reference(p.image, p.mask)
    assert ref.size[0] == ref.size[1] == max(p.bbox[2] - p.bbox[0], p.bbox[3] - p.bbox[1])
    emb = MeanColourEmbedder()
    refs = ReferenceEmbeddings(sset, emb, mode="masked")
    assert refs.get("a").shape == (5, 3) and refs["a"] is refs.get("a") and emb.calls == [5]
    assert refs.ground_truth(["a", "b"]).shape == (2, 2) and emb.calls == [5, 5]
    with pytest.raises(MudiError):
        ReferenceEmbeddings(sset, emb, mode="cropped")


def test_success_threshold_and_norm_are_configurable(sset):
    det, emb = ColourDetector(), MeanColourEmbedder()
    strict = evaluate_images([GOOD], sset, det, emb, prompts=PROMPT, success_threshold=1.0)
    assert not strict.results[0].success and strict.summary["success_threshold"] == 1.0
    spec = evaluate_images([TWICE], sset, det, emb, prompts=PROMPT, norm="spectral")
    fro = evaluate_images([TWICE], sset, det, emb, prompts=PROMPT)
    assert spec.results[0].score >= fro.results[0].score  # spectral norm <= Frobenius norm
    with pytest.raises(MudiError):
        evaluate_images([GOOD], sset, det, emb, prompts=PROMPT, norm="max")
    with pytest.raises(MudiError):
        evaluate_images([GOOD], sset, det, emb, prompts=PROMPT, success_threshold=2)


def test_prompt_without_known_identifiers_is_a_clear_error(sset):
    with pytest.raises(MudiError, match="none of the identifiers"):
        evaluate_images([GOOD], sset, ColourDetector(), MeanColourEmbedder(), prompts="a sks dog and a zwx cat")
    with pytest.raises(MudiError, match="not in the subject set"):
        evaluate_images([GOOD], sset, ColourDetector(), MeanColourEmbedder(), subjects=[["a", "zz"]])


def test_bad_image_does_not_stop_the_run(sset, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ev = evaluate_images([GOOD, bad, tmp_path / "missing.png", GOOD], sset, ColourDetector(), MeanColourEmbedder(),
                         prompts=PROMPT, batch_size=2)
    assert [r.error is None for r in ev.results] == [True, False, False, True]
    assert "bad.png" in ev.results[1].error
    assert ev.summary["n_errors"] == 2 and ev.summary["n_scored"] == 2 and ev.summary["success_rate"] == 1.0


def test_detector_crash_on_one_image_is_isolated(sset):
    class Flaky(ColourDetector):
        def detect(self, images, queries, threshold):
            if any(im.size == (50, 50) for im in images):
                raise RuntimeError("boom")
            return super().detect(images, queries, threshold)

    ev = evaluate_images([GOOD, GOOD.resize((50, 50)), GOOD], sset, Flaky(), MeanColourEmbedder(), prompts=PROMPT,
                         batch_size=3)
    assert [r.error is None for r in ev.results] == [True, False, True]
    assert "boom" in ev.results[1].error


# ----------------------------------------------------------------------------- folders

def write_generation(folder: Path, images, prompt=PROMPT, subjects=("a", "b"), phrases=None, start=0, layout=()):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images, start):
        im.save(folder / f"{i:04d}.png")
        side = {"prompt": prompt, "negative_prompt": "", "seed": i, "subjects": list(subjects),
                "phrases": list(phrases or ["olis red block", "hta blue block"][:len(subjects)]),
                "subject_set": "S", "layout": list(layout), "gamma": 3.0, "init": "mudi", "base": "tiny", "lora": None,
                "steps": 2, "guidance_scale": 5.0, "height": 64, "width": 64, "scheduler": "x"}
        (folder / f"{i:04d}.json").write_text(json.dumps(side))
    return folder


def test_evaluate_folder_reads_sidecars_and_skips_artifacts(sset, tmp_path):
    g = write_generation(tmp_path / "g", [GOOD, TWICE, GOOD])
    canvas().save(g / "contact_sheet.png")
    canvas().save(g / "0000_init.png")
    (g / "0002.png").write_bytes(b"\x89PNG broken")
    ev = evaluate_folder(g, sset, ColourDetector(), MeanColourEmbedder())
    assert [r.name for r in ev.results] == ["0000", "0001", "0002"]
    assert ev.results[0].success and not ev.results[1].success
    assert ev.results[2].error and "0002.png" in ev.results[2].error
    assert ev.results[0].meta["seed"] == 0 and ev.label == "g"


def test_folder_subject_mismatch_is_a_clear_error(sset, tmp_path):
    g = write_generation(tmp_path / "g", [GOOD], subjects=("a", "d"), phrases=["olis red block", "zwx cat"])
    with pytest.raises(MudiError, match="not in the subject set"):
        collect_folder(g, sset)
    g2 = write_generation(tmp_path / "g2", [GOOD], phrases=["sks red block", "hta blue block"])
    with pytest.raises(MudiError, match="sks red block"):
        collect_folder(g2, sset)
    # same keys and identifiers, other classes: the wrong subject set
    g3 = write_generation(tmp_path / "g3", [GOOD], phrases=["olis red monster plush", "hta blue block"])
    with pytest.raises(MudiError, match="olis red monster plush"):
        collect_folder(g3, sset)


def test_layout_iou_from_sidecar(sset, tmp_path):
    right = [{"key": "a", "box": [2, 20, 22, 40]}, {"key": "b", "box": [36, 20, 56, 40]}]
    swapped = [{"key": "a", "box": [36, 20, 56, 40]}, {"key": "b", "box": [2, 20, 22, 40]}]
    write_generation(tmp_path / "g", [GOOD], layout=right)
    write_generation(tmp_path / "g", [GOOD, ONE], layout=swapped, start=1)
    ev = evaluate_folder(tmp_path / "g", sset, ColourDetector(), MeanColourEmbedder())
    assert ev.results[0].layout_iou == pytest.approx(1.0)
    assert ev.results[1].layout_iou == pytest.approx(0.0)
    assert ev.results[2].layout_iou is None  # count error: no matched boxes
    assert ev.summary["layout_iou_mean"] == pytest.approx(0.5)


def test_images_without_sidecars(sset, tmp_path):
    g = tmp_path / "plain"
    g.mkdir()
    GOOD.save(g / "x.png")
    ONE.save(g / "y.jpg")
    with pytest.raises(MudiError, match="no sidecar"):
        collect_folder(g, sset)
    items = collect_folder(g, sset, prompt=PROMPT)
    assert [it.subjects for it in items] == [["a", "b"], ["a", "b"]]
    items = collect_folder(g, sset, subject_keys=["a"])
    assert items[0].subjects == ["a"] and items[0].prompt is None
    with pytest.raises(MudiError, match="none of the identifiers"):
        collect_folder(g, sset, prompt="two blocks")


def test_broken_sidecar_is_reported_per_image(sset, tmp_path):
    g = write_generation(tmp_path / "g", [GOOD, GOOD])
    (g / "0001.json").write_text("{not json")
    ev = evaluate_folder(g, sset, ColourDetector(), MeanColourEmbedder())
    assert ev.results[0].success and "unreadable sidecar" in ev.results[1].error


def test_write_outputs_and_report(sset, tmp_path):
    g = write_generation(tmp_path / "g", [GOOD, TWICE, ONE])
    ev = evaluate_folder(g, sset, ColourDetector(), MeanColourEmbedder())
    out = ev.save(tmp_path / "E")
    assert ev.path == out
    write_run_report(ev)
    for name in ("scores.csv", "per_image.json", "scores.json", "report.html"):
        assert (out / name).is_file()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["summary"]["n_images"] == 3 and "per_k" in scores["summary"]
    assert scores["settings"]["success_threshold"] == 0.8 and scores["settings"]["detection_threshold"] == 0.4
    per = json.loads((out / "per_image.json").read_text())
    assert per[0]["S_DC"] is not None and per[0]["S_GT"] is not None and len(per[0]["boxes"]) == 2
    assert per[2]["count_error"] == "missing" and per[2]["dnc"] == 0
    csv_lines = (out / "scores.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("name,k,subjects,dnc,success")
    html = (out / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 3 and "data:image/png;base64," in html
    assert "S_DC" in html and "S_GT" in html and "count error (missing" in html
    with pytest.raises(MudiError, match="already has content"):
        ev.save(tmp_path / "E")
    ev.save(tmp_path / "E", overwrite=True)
    run = Evaluation.load(out)
    assert run.label == "g" and run.dnc_by_name["0000"] > 0.9 and run.path == out
    # one type for one artifact: what was saved is what is loaded
    assert [r.to_dict() for r in run.results] == per and run.summary == scores["summary"]
    assert run.dnc_by_name == ev.dnc_by_name and run.results[1].dnc.s_dc.shape == (2, 2)


def test_compare_runs_table_and_win_rate(sset, tmp_path):
    det, emb = ColourDetector(), MeanColourEmbedder()
    ga = write_generation(tmp_path / "mudi", [GOOD, GOOD, TWICE])
    gb = write_generation(tmp_path / "dreambooth", [TWICE, ONE, GOOD])
    ea = evaluate_folder(ga, sset, det, emb)
    eb = evaluate_folder(gb, sset, det, emb)
    comp = compare_runs([ea, eb])
    assert [r["label"] for r in comp.table] == ["mudi", "dreambooth"]
    assert comp.table[0]["success_rate"] == pytest.approx(2 / 3)
    assert comp.win_rate["mudi"]["dreambooth"] == pytest.approx(2 / 3, abs=1e-4)
    assert comp.win_rate["dreambooth"]["mudi"] == pytest.approx(1 / 3, abs=1e-4)
    from mudi.report import write_comparison_plot

    paths = comp.save(tmp_path)
    assert write_comparison_plot(comp, tmp_path).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(paths["json"].read_text())["n_shared_images"]["mudi"]["dreambooth"] == 3
    assert paths["csv"].read_text().startswith("label,path,n_images")
    with pytest.raises(MudiError, match="unique"):
        compare_runs([ea, ea])


# ----------------------------------------------------------------------------- real model wrappers (tiny)

def test_dinov2_embedder_mean_of_all_tokens(tiny_models):
    import torch

    from mudi.evaluate.embed import Dinov2Embedder

    e1 = Dinov2Embedder(tiny_models / "dinov2", batch_size=1)
    e4 = Dinov2Embedder((e1.model, e1.processor), batch_size=4)
    ims = [GOOD, TWICE, ONE, THREE, GOOD.resize((40, 70))]
    a, b = e1.embed(ims), e4.embed(ims)
    assert a.shape == (5, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batching does not change embeddings
    with torch.no_grad():
        px = e1.processor(images=[GOOD], return_tensors="pt")["pixel_values"]
        h = e1.model(pixel_values=px).last_hidden_state[0]
    assert h.shape[0] == 1 + 16  # CLS + 4x4 patches: all of them are averaged
    ref = h.mean(0).numpy()
    np.testing.assert_allclose(a[0], ref / np.linalg.norm(ref), atol=1e-5)
    assert e1.n_embedded == 5


def test_dreamsim_missing_is_a_clear_error(monkeypatch, tmp_path):
    from mudi.evaluate.dreamsim import REQUIRED
    from mudi.evaluate.embed import DreamSimEmbedder
    from mudi.evaluate.registry import make_embedder

    for rel in REQUIRED["ensemble"]:  # a complete weights folder, but no package
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # make `import dreamsim` fail
    with pytest.raises(MudiError, match=r"'dreamsim' package, which is not installed.*mudi\[dreamsim\]"):
        DreamSimEmbedder(cache_dir=str(tmp_path))
    with pytest.raises(MudiError, match="dinov2"):
        make_embedder("dreamsim", dreamsim_cache=str(tmp_path))


def test_clip_scorer(tiny_models, sset):
    from mudi.evaluate.textfid import ClipScorer, fidelity_prompt

    clip = ClipScorer(tiny_models / "clip", batch_size=2)
    texts = [fidelity_prompt(PROMPT, sset)] * 3
    s = clip.score([GOOD, TWICE, ONE], texts)
    assert s.shape == (3,) and np.all((s >= 0) & (s <= 100))
    im = clip.image_embeds([GOOD])
    t = clip.text_embeds(texts[:1])
    assert s[0] == pytest.approx(100 * max(float(im[0] @ t[0]), 0.0), abs=1e-3)
    assert texts[0] == "a red block and a blue block on a table"
    long = clip.score([GOOD], ["a red block " * 60])  # truncated to 77 tokens, no crash
    assert np.isfinite(long).all()


# ----------------------------------------------------------------------------- CLI end to end (tiny)

@pytest.fixture()
def saved_set(sset, tmp_path):
    return sset.save(tmp_path / "S")


def _cli(*argv):
    from mudi.cli import main

    return main([str(a) for a in argv])


def test_cli_end_to_end_tiny_models(tiny_models, saved_set, tmp_path, capsys):
    g = write_generation(tmp_path / "G", [GOOD, TWICE, ONE])
    (g / "0003.png").write_bytes(b"")  # unreadable: reported, the run goes on
    (g / "0003.json").write_text((g / "0000.json").read_text())
    E = tmp_path / "E"
    rc = _cli("evaluate", "--images", g, "--subjects", saved_set, "--detector", tiny_models / "owlv2",
              "--embedder", tiny_models / "dinov2", "--clip", tiny_models / "clip", "--out", E,
              "--threshold", "0.05", "--device", "cpu", "--batch-size", "2")
    assert rc == 0
    scores = json.loads((E / "scores.json").read_text())
    s = scores["summary"]
    assert s["n_images"] == 4 and s["n_scored"] == 3 and s["n_errors"] == 1
    assert s["clip_score_mean"] is not None and 0 <= s["success_rate"] <= 1
    assert 0.0 <= s["dnc_mean"] <= 1.0
    per = json.loads((E / "per_image.json").read_text())
    assert [p["name"] for p in per] == ["0000", "0001", "0002", "0003"]
    assert all(p["detections"] is not None for p in per[:3]) and per[3]["error"]
    html = (E / "report.html").read_text()
    assert "data:image/jpeg;base64," in html and "S_GT" in html
    assert (E / "scores.csv").is_file()
    assert "run" in capsys.readouterr().out

    # compare this evaluation with a second image folder, evaluated with the same models
    g2 = write_generation(tmp_path / "G2", [GOOD, GOOD])
    g3 = write_generation(tmp_path / "G3", [TWICE])
    rc = _cli("evaluate", "--images", f"mudi={g2}", "--subjects", saved_set, "--detector", tiny_models / "owlv2",
              "--embedder", tiny_models / "dinov2", "--clip", "none", "--out", tmp_path / "E2",
              "--threshold", "0.05", "--compare", f"baseline={E}", g3, "--device", "cpu")
    assert rc == 0
    comp = json.loads((tmp_path / "E2" / "comparison.json").read_text())
    # image folders given to --compare are evaluated too (into OUT/compare/LABEL)
    assert [r["label"] for r in comp["runs"]] == ["mudi", "baseline", "G3"]
    assert json.loads((tmp_path / "E2" / "compare" / "G3" / "scores.json").read_text())["summary"]["n_images"] == 1
    assert (tmp_path / "E2" / "comparison.png").is_file() and (tmp_path / "E2" / "scores.json").is_file()
    assert "Comparison" in (tmp_path / "E2" / "report.html").read_text()

    # comparing finished evaluations needs no model
    rc = _cli("evaluate", "--compare", f"a={E}", f"b={tmp_path / 'E2'}", "--out", tmp_path / "C")
    assert rc == 0
    assert {"comparison.csv", "comparison.json", "comparison.png", "report.html"} <= {
        p.name for p in (tmp_path / "C").iterdir()}


def test_cli_several_runs_side_by_side(tiny_models, saved_set, tmp_path):
    a = write_generation(tmp_path / "db", [GOOD])
    b = write_generation(tmp_path / "mudi", [TWICE])
    rc = _cli("evaluate", "--images", a, "--images", b, "--subjects", saved_set, "--detector", tiny_models / "owlv2",
              "--embedder", tiny_models / "dinov2", "--clip", "none", "--out", tmp_path / "E",
              "--threshold", "0.05", "--nms", "none", "--norm", "spectral", "--device", "cpu")
    assert rc == 0
    E = tmp_path / "E"
    assert (E / "db" / "scores.json").is_file() and (E / "mudi" / "report.html").is_file()
    comp = json.loads((E / "comparison.json").read_text())
    assert [r["label"] for r in comp["runs"]] == ["db", "mudi"]
    html = (E / "report.html").read_text()
    assert 'href="db/report.html"' in html and "data:image/png;base64," in html
    settings = json.loads((E / "db" / "scores.json").read_text())["settings"]
    assert settings["norm"] == "spectral" and "nms_iou=None" in settings["detector"]


def test_cli_errors(tiny_models, saved_set, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    GOOD.save(plain / "x.png")
    common = ["--subjects", saved_set, "--detector", tiny_models / "owlv2", "--embedder", tiny_models / "dinov2",
              "--clip", "none", "--device", "cpu"]
    assert _cli("evaluate", "--images", plain, *common, "--out", tmp_path / "o1") == 2
    assert "no sidecar" in capsys.readouterr().err
    assert _cli("evaluate", "--images", plain, *common, "--out", tmp_path / "o2", "--prompt", PROMPT,
                "--threshold", "0.05") == 0
    wrong = write_generation(tmp_path / "wrong", [GOOD], subjects=("a", "x"), phrases=["olis red block", "sks dog"])
    assert _cli("evaluate", "--images", wrong, *common, "--out", tmp_path / "o3") == 2
    assert "not in the subject set" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()  # nothing created before the inputs are known to be right
    assert _cli("evaluate", "--out", tmp_path / "o4") == 2
    assert _cli("evaluate", "--images", plain, *common, "--out", tmp_path / "o2", "--prompt", PROMPT) == 2
    assert "already has content" in capsys.readouterr().err
    assert _cli("evaluate", "--images", plain, *common, "--out", tmp_path / "o5", "--prompt", PROMPT,
                "--success-threshold", "3") == 2


def test_cli_on_mudi_generate_output(tiny_models, saved_set, tmp_path):
    """`mudi generate` on the tiny SD pipeline, then `mudi evaluate` over exactly that folder."""
    from mudi.cli import main

    G, E = tmp_path / "G", tmp_path / "E"
    assert main(["generate", "--base", str(tiny_models / "sd"), "--subjects", str(saved_set), "--prompt", PROMPT,
                 "--n", "2", "--steps", "2", "--no-progress", "--resolution", "64", "--out", str(G)]) == 0
    assert (G / "contact_sheet.png").is_file() and (G / "0001.json").is_file()
    rc = _cli("evaluate", "--images", G, "--subjects", saved_set, "--detector", tiny_models / "owlv2",
              "--embedder", tiny_models / "dinov2", "--clip", tiny_models / "clip", "--out", E,
              "--threshold", "0.05", "--device", "cpu")
    assert rc == 0
    per = json.loads((E / "per_image.json").read_text())
    assert [p["name"] for p in per] == ["0000", "0001"]  # contact sheet and init images are not evaluated
    assert all(p["error"] is None and p["subjects"] == ["a", "b"] and p["seed"] is not None for p in per)
    assert all(p["fidelity_prompt"] == "a red block and a blue block on a table" for p in per)
    s = json.loads((E / "scores.json").read_text())["summary"]
    assert s["n_scored"] == 2 and s["clip_score_mean"] is not None
    assert (E / "report.html").stat().st_size > 1000


def test_toy_world_detector_and_embedder(tmp_path):
    """The evaluation depends only on the protocols: the toy world's classical detector and
    embedder plug in unchanged, and D&C separates a correct scene from a duplicated subject."""
    from mudi.toy import register, world
    from mudi.toy.subject_set import make_subject_set
    from mudi.toy.vision import ToyDetector, ToyEmbedder

    sset = SubjectSet.load(make_subject_set(tmp_path / "toy", seed=0))
    a, b = world.SUBJECTS

    def scene(first, second, bg):
        objs = (world.subject_object(first, 16, 32, 20), world.subject_object(second, 48, 32, 20))
        return Image.fromarray(world.render_scene(world.Scene(objs, bg, 1, 64))[0])

    images = [scene(a, b, "grass"), scene(b, a, "water"), scene(a, a, "grass"), scene(b, b, "wood")]
    ev = evaluate_images(images, sset, ToyDetector(), ToyEmbedder(), prompts="a wip circle next to a jam circle")
    good, swapped, aa, bb = ev.results
    assert all(r.dnc.count_ok for r in ev.results)
    assert good.success and swapped.success and good.score > 0.85 and swapped.score > 0.85
    assert swapped.dnc.matched == [1, 0]  # a is on the right: greedy matching finds it there
    assert not aa.success and not bb.success and aa.score < 0.3 and bb.score < 0.3
    assert ev.summary["success_rate"] == 0.5

    # the same through the CLI (--detector toy --embedder toy), over a generate-style folder;
    # an installed mudi registers the toy world through its `mudi.plugins` entry point, here directly
    register()
    g = tmp_path / "G"
    g.mkdir()
    for i, im in enumerate(images):
        im.save(g / f"{i:04d}.png")
        (g / f"{i:04d}.json").write_text(json.dumps({"prompt": "a wip circle next to a jam circle",
                                                     "subjects": ["a", "b"], "phrases": ["wip circle", "jam circle"]}))
    assert _cli("evaluate", "--images", g, "--subjects", tmp_path / "toy", "--detector", "toy", "--embedder", "toy",
                "--clip", "none", "--out", tmp_path / "E") == 0
    s = json.loads((tmp_path / "E" / "scores.json").read_text())
    assert s["summary"]["success_rate"] == 0.5 and s["settings"]["detector"] == "toy"

    # the same settings from a run file's [evaluate] table; flags still override it
    run = tmp_path / "run.toml"
    run.write_text('[evaluate]\ndetector = "toy"\nembedder = "toy"\nclip = "none"\nsuccess_threshold = 0.99\n'
                   f'images = "{g}"\nsubjects = "{tmp_path / "toy"}"\n')
    assert _cli("evaluate", "--config", run, "--success-threshold", "0.5", "--no-report", "--out", tmp_path / "E3") == 0
    s3 = json.loads((tmp_path / "E3" / "scores.json").read_text())
    assert s3["summary"]["n_scored"] == 4 and s3["settings"]["success_threshold"] == 0.5
    assert not (tmp_path / "E3" / "report.html").exists() and (tmp_path / "E3" / "config.toml").is_file()


# ----------------------------------------------------------------------------- library: evaluate(), compare()

def _fake_models():
    from mudi.evaluate import EvalModels

    return EvalModels(ColourDetector(), MeanColourEmbedder(), names={"detector": "colour", "embedder": "mean"})


def _config(saved_set, images, out="", **values):
    from mudi.evaluate import EvaluateConfig

    return EvaluateConfig().updated({"images": str(images), "subjects": str(saved_set), "out": str(out),
                                     "clip": "none", **values})


def test_evaluate_writes_results_and_resolved_config(saved_set, tmp_path):
    from mudi.evaluate import EvaluateConfig, evaluate

    g = write_generation(tmp_path / "G", [GOOD, TWICE])
    config = _config(saved_set, g, tmp_path / "E", success_threshold=0.9, queries=["a=red thing"])
    models = _fake_models()
    ev = evaluate(config, models=models)
    assert ev.path == tmp_path / "E" and ev.label == "G" and [r.success for r in ev.results] == [True, False]
    assert {p.name for p in ev.path.iterdir()} == {"scores.csv", "per_image.json", "scores.json", "config.toml"}
    assert EvaluateConfig.from_toml(ev.path / "config.toml") == config  # the resolved config, read back
    settings = json.loads((ev.path / "scores.json").read_text())["settings"]
    assert settings["detector"] == "colour" and settings["queries"]["a"] == "red thing"
    assert models.detector.calls[0][1] == ("red thing", "blue block")
    # the references of a subject set are embedded once per EvalModels, whatever the number of runs
    n = models.embedder.n_embedded
    evaluate(config.updated({"out": ""}), models=models)
    assert models.embedder.n_embedded - n == 4  # only the crops of the two images


def test_evaluate_checks_everything_before_writing(saved_set, tmp_path):
    from mudi.evaluate import evaluate
    from mudi.settings import RunOptions

    wrong = write_generation(tmp_path / "wrong", [GOOD], subjects=("a", "x"), phrases=["olis red block", "sks dog"])
    with pytest.raises(MudiError, match="not in the subject set"):
        evaluate(_config(saved_set, wrong, tmp_path / "E"), models=_fake_models())
    assert not (tmp_path / "E").exists()
    g = write_generation(tmp_path / "G", [GOOD])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(MudiError, match="already has content"):
        evaluate(_config(saved_set, g, tmp_path / "busy"), models=_fake_models())
    ev = evaluate(_config(saved_set, g, tmp_path / "busy"), RunOptions(overwrite=True), models=_fake_models())
    assert (ev.path / "keep.txt").read_text() == "x" and (ev.path / "scores.json").is_file()
    with pytest.raises(MudiError, match="--nms"):
        evaluate(_config(saved_set, g, tmp_path / "E2", nms="many"), models=_fake_models())
    with pytest.raises(MudiError, match="--query"):
        evaluate(_config(saved_set, g, tmp_path / "E2", queries=["red"]), models=_fake_models())
    with pytest.raises(MudiError, match="subjects"):
        evaluate(_config(saved_set, g, tmp_path / "E2").updated({"subjects": ""}), models=_fake_models())
    assert not (tmp_path / "E2").exists()
    with pytest.raises(MudiError, match=r"--detector 'owl'.*Registered detectors: .*owlv2"):
        evaluate(_config(saved_set, g, tmp_path / "E2", detector="owl"))  # a model name is checked before writing
    assert not (tmp_path / "E2").exists()


def test_config_fields_flags_and_run_file(tmp_path):
    from mudi.evaluate import EvaluateConfig
    from mudi.settings import field_help

    assert field_help(EvaluateConfig, "success_threshold") and EvaluateConfig().success_threshold == 0.8
    assert EvaluateConfig(nms="0.5").nms_iou() == 0.5 and EvaluateConfig().nms_iou() is None  # raw boxes by default
    for bad in ({"batch_size": 0}, {"threshold": 1.5}, {"success_threshold": -0.1}, {"nms": "0"}):
        with pytest.raises(MudiError):
            EvaluateConfig().updated(bad).check()
    run = tmp_path / "run.toml"
    run.write_text('[train]\nrank = 4\n\n[evaluate]\nembedder = "dreamsim"\nsubject_keys = ["a", "b"]\n')
    cfg = EvaluateConfig.from_toml(run)
    assert cfg.embedder == "dreamsim" and cfg.subject_keys == ["a", "b"] and cfg.detector == "owlv2"
    run.write_text('[evaluate]\nembeder = "dreamsim"\n')
    with pytest.raises(MudiError, match="embedder"):  # the typo is named with the valid choice
        EvaluateConfig.from_toml(run)


def test_plan_runs_labels_and_destinations(tmp_path):
    from mudi.evaluate import plan_runs

    a, b = write_generation(tmp_path / "a", [GOOD]), write_generation(tmp_path / "b", [GOOD])
    out = tmp_path / "out"
    [one] = plan_runs([str(a)], [], out)
    assert (one.label, one.dest, one.kind) == ("a", out, "images")
    runs = plan_runs([f"x={a}", str(b)], [], out)
    assert [(r.label, r.dest) for r in runs] == [("x", out / "x"), ("b", out / "b")]
    ev_dir = tmp_path / "ev"
    Evaluation([], {"n_images": 0}, {}, "old").save(ev_dir)
    runs = plan_runs([str(a)], [str(b), f"old={ev_dir}"], out)
    assert [(r.label, r.kind, r.dest, r.primary) for r in runs] == [
        ("a", "images", out, True), ("b", "images", out / "compare" / "b", False), ("old", "evaluation", None, False)]
    with pytest.raises(MudiError, match="used twice"):
        plan_runs([f"x={a}", f"x={b}"], [], out)
    with pytest.raises(MudiError, match="at least two"):
        plan_runs([], [str(ev_dir)], out)
    with pytest.raises(MudiError, match="nothing to evaluate"):
        plan_runs([], [], out)
    with pytest.raises(MudiError, match="not a folder"):
        plan_runs([str(tmp_path / "missing")], [], out)


def test_compare_evaluations_folders_and_image_folders(saved_set, tmp_path, sset):
    from mudi.evaluate import compare

    mem = evaluate_folder(write_generation(tmp_path / "mem", [GOOD, GOOD]), sset, ColourDetector(),
                          MeanColourEmbedder())
    done = evaluate_folder(write_generation(tmp_path / "done", [TWICE, TWICE]), sset, ColourDetector(),
                           MeanColourEmbedder(), label="done")
    done.save(tmp_path / "E_done")
    imgs = write_generation(tmp_path / "imgs", [GOOD, ONE])
    out = tmp_path / "C"
    comp = compare([mem, f"earlier={tmp_path / 'E_done'}", str(imgs)], _config(saved_set, ""), out=out,
                   models=_fake_models())
    assert [r["label"] for r in comp.table] == ["mem", "earlier", "imgs"]
    assert comp.win_rate["mem"]["earlier"] == 1.0 and comp.win_rate["earlier"]["mem"] == 0.0
    assert comp.runs[2].path == out / "compare" / "imgs" and (out / "compare" / "imgs" / "scores.json").is_file()
    assert json.loads((out / "comparison.json").read_text())["n_shared_images"]["imgs"]["mem"] == 2
    with pytest.raises(MudiError, match="EvaluateConfig"):
        compare([mem, str(imgs)])


# ----------------------------------------------------------------------------- registry and plugins

def test_registry_names_paths_and_errors(monkeypatch, tmp_path):
    from mudi.evaluate import registry

    calls = []
    monkeypatch.setitem(registry.DETECTORS.factories, "owlv2", lambda model, **kw: calls.append((model, kw)) or "det")
    assert registry.make_detector(None, device="cpu", batch_size=2, nms_iou=None) == "det"
    assert registry.make_detector("org/owlv2-large") == "det" and registry.make_detector(str(tmp_path)) == "det"
    assert [c[0] for c in calls] == [None, "org/owlv2-large", str(tmp_path)]
    assert calls[0][1] == {"device": "cpu", "batch_size": 2, "nms_iou": None}
    with pytest.raises(MudiError, match=r"--embedder 'dinov3'.*Registered embedders: .*dinov2, dreamsim"):
        registry.make_embedder("dinov3")
    with pytest.raises(ValueError):
        registry.register_detector("a/b", lambda model, **kw: None)


def test_plugins_are_loaded_lazily_from_entry_points(monkeypatch):
    from importlib import metadata

    from mudi.evaluate import registry

    class FakeEntryPoint:
        def __init__(self, name, fn):
            self.name, self.value, self._fn = name, f"x:{name}", fn

        def load(self):
            return self._fn

    def broken():
        raise RuntimeError("plugin bug")

    def good():
        registry.register_embedder("plug", lambda model, **kw: "plugged")

    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "EMBEDDERS", registry.Registry("embedder", "dinov2", dict(registry.EMBEDDERS.factories)))
    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint("bad", broken),
                                                                 FakeEntryPoint("good", good)] if group == registry.PLUGIN_GROUP else [])
    with pytest.warns(UserWarning, match="plugin bug"):
        assert registry.make_embedder("plug") == "plugged"
    assert registry._plugins_loaded and "plug" in registry.EMBEDDERS.names()


def test_toy_world_plugs_in_through_an_entry_point():
    import tomllib
    from importlib import metadata

    import mudi.toy
    from mudi.evaluate import registry

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    value = pyproject["project"]["entry-points"]["mudi.plugins"]["toy"]
    assert metadata.EntryPoint("toy", value, "mudi.plugins").load() is mudi.toy.register
    mudi.toy.register()
    assert type(registry.make_detector("toy")).__name__ == "ToyDetector"
    assert type(registry.make_embedder("toy", device="cpu", batch_size=3)).__name__ == "ToyEmbedder"
    # the product never imports the toy world
    src = Path(__file__).resolve().parents[1] / "src" / "mudi"
    offenders = [p for p in src.rglob("*.py") if "toy" not in p.relative_to(src).parts
                 and ("import mudi.toy" in p.read_text() or "from mudi.toy" in p.read_text())]
    assert offenders == []


# ----------------------------------------------------------------------------- evaluate never imports report

def test_evaluate_does_not_import_report_and_report_uses_no_pyplot(sset, tmp_path):
    import subprocess

    import re

    src = Path(__file__).resolve().parents[1] / "src" / "mudi" / "evaluate"
    assert not [p.name for p in src.glob("*.py") if re.search(r"^\s*(from|import) mudi\.report", p.read_text(), re.M)]
    code = ("import sys; import mudi.evaluate; assert 'mudi.report' not in sys.modules; "
            "from mudi.report.plots import plot_per_k; plot_per_k({'per_k': {'2': {'n_scored': 1}}}); "
            "assert 'matplotlib.pyplot' not in sys.modules")  # no pyplot global state, no backend switch
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ,
                                                                   "PYTHONPATH": str(src.parents[1])})
    report_src = src.parent / "report"
    assert not [p.name for p in report_src.glob("*.py")
                if re.search(r"matplotlib\.use\(|matplotlib\.pyplot|import pyplot", p.read_text())]
    from mudi.report.plots import plot_dnc_histogram

    assert plot_dnc_histogram([0.1, 0.9, 0.0], 0.8, count_errors=[False, False, True])[:4] == b"\x89PNG"


def test_report_thumbnails_from_paths_or_given_images(sset, tmp_path):
    from mudi.report import render_run_report
    from mudi.report.thumbnails import result_thumbnail

    ev = evaluate_images([GOOD, ONE, tmp_path / "missing.png"], sset, ColourDetector(), MeanColourEmbedder(),
                         prompts=PROMPT, names=["good", "one", "gone"])
    phrases = dict(ev.settings["subjects"])
    jpeg = result_thumbnail(ev.results[0], phrases, GOOD)
    assert jpeg[:2] == b"\xff\xd8" and Image.open(__import__("io").BytesIO(jpeg)).size == (320, 320)
    assert result_thumbnail(ev.results[0], phrases) is None  # in memory, no path: nothing to draw from
    assert result_thumbnail(ev.results[2], phrases, GOOD) is None  # not scored
    html = render_run_report(ev, images={"good": GOOD, "one": ONE})
    assert html.count("data:image/jpeg;base64,") == 2 and "gone" in html
