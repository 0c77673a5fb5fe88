"""`mudi bench`: suites, the import of another tool's images, the table, end to end on the toy world."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.bench import BenchConfig, bench, bootstrap_ci, load_suite, multi_subject_prompt, shipped_suites
from mudi.errors import MudiError
from mudi.settings import RunOptions

PROMPT = "a wip circle next to a jam circle"


def test_multi_subject_prompt_rule():
    assert multi_subject_prompt("a {} in the jungle", ["a", "b"]) == "a {a} and a {b} in the jungle"
    assert multi_subject_prompt("a red {}", ["a", "b", "c"]) == "a red {a}, a red {b} and a red {c}"
    assert multi_subject_prompt("{} on the beach", ["x"]) == "{x} on the beach"
    with pytest.raises(MudiError):
        multi_subject_prompt("no slot", ["a"])


def test_shipped_suites_hold_the_benchmark_facts(data_dir):
    assert {"dreambench_multi", "mudi_pairs"} <= set(shipped_suites())
    db = load_suite("dreambench_multi")
    # the same classes and templates as the DreamBench list shipped in examples/
    txt = (data_dir / "dreambench_prompts_and_classes.txt").read_text()
    listed = re.findall(r"'(.*?)'\.format", txt)
    assert db.templates["object"] + db.templates["live"] == [t.replace("{0} {1}", "{}") for t in listed]
    assert len(db.classes) == 30 and db.classes["dog6"] == "dog" and db.classes["rc_car"] == "toy"
    assert db.kind(["corgi", "dog"]) == "live" and db.kind(["toy", "toy"]) == "object"
    assert db.prompts(["a", "b"], ["dog", "dog"])[10] == "a {a} and a {b} wearing a red hat"
    assert len(db.prompts(["a", "b"], ["toy", "can"])) == 25 and "licence" in db.to_dict()
    mp = load_suite("mudi_pairs")
    assert "dog6_and_dog2" in mp.pairs and mp.prompts(["a", "b"], ["dog", "dog"], limit=1) == [
        "{a} and {b} playing together, floating on the pool"]
    with pytest.raises(MudiError, match="shipped suite"):
        load_suite("no_such_suite")


def test_bootstrap_ci():
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5) and bootstrap_ci([]) == (None, None)
    x = np.random.default_rng(1).normal(0.6, 0.1, 200)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi and hi - lo < 0.05 and bootstrap_ci(x) == (lo, hi)  # seeded
    assert bootstrap_ci(x[:10])[1] - bootstrap_ci(x[:10])[0] > hi - lo  # fewer images, wider


@pytest.fixture()
def toy_world(tmp_path):
    from mudi.toy import register, world
    from mudi.toy.subject_set import make_subject_set

    register()  # --detector/--embedder toy (an installed mudi does it through its entry point)
    sset_dir = make_subject_set(tmp_path / "toy_pair", seed=0)

    def scene(*subjects, bg="grass"):
        xs = np.linspace(14, 50, len(subjects)) if len(subjects) > 1 else [32]
        objs = tuple(world.subject_object(s, int(x), 32, 18) for s, x in zip(subjects, xs))
        return Image.fromarray(world.render_scene(world.Scene(objs, bg, 1, 64))[0])

    return sset_dir, scene, world.SUBJECTS


def _eval_config(tiny_models=None):
    from mudi.evaluate import EvaluateConfig

    clip = str(tiny_models / "clip") if tiny_models else "none"
    return EvaluateConfig(detector="toy", embedder="toy", clip=clip, success_threshold=0.7, report=False)


def test_bench_runs_a_suite_on_the_toy_world_and_resumes(toy_world, tiny_models, tmp_path):
    from mudi.generate import GenerateConfig
    from mudi.toy import base_model_path

    sset_dir, _, _ = toy_world
    suite = tmp_path / "toy_suite.json"
    suite.write_text(json.dumps({"name": "toy", "templates": {"object": ["a {} on grass", "a {} on water",
                                                                        "a {} on wood"]}}))
    gen = GenerateConfig(steps=3, resolution=64, guidance=1.0, dtype="float32", gamma=5.0)
    config = BenchConfig(suite=str(suite), out=str(tmp_path / "B"), subjects=[str(sset_dir)],
                         base=str(base_model_path()), subjects_count="1..2", prompts_limit=2, n=1)
    opts = RunOptions(device="cpu", progress=False)
    result = bench(config, opts, generate_config=gen, evaluate_config=_eval_config(tiny_models))
    out = tmp_path / "B"
    assert {p.name for p in out.iterdir()} >= {"bench.csv", "bench.json", "bench.html", "cases"}
    rows = {r["group"]: r for r in result.rows}
    assert set(rows) == {"all", "k=1", "k=2", "pair=toy_pair"}
    assert rows["all"]["n_images"] == 2 + 2 and rows["k=2"]["n_images"] == 2
    for m in ("dnc", "success", "identity", "missing", "duplicate", "dino", "clip_i", "clip_t"):
        assert rows["all"][m] is not None and rows["all"][f"{m}_lo"] <= rows["all"][m] <= rows["all"][f"{m}_hi"]
    side = json.loads((out / "cases" / "base__toy_pair__k2" / "images" / "0000.json").read_text())
    assert side["prompt"] == "a wip circle and a jam circle on grass" and side["subjects"] == ["a", "b"]
    info = json.loads((out / "bench.json").read_text())
    assert info["models"]["detector"] == "toy" and "D&C embedder" in info["models"]["dino_model"]
    assert info["models"]["clip_i_model"] == str(tiny_models / "clip") and info["suite"]["name"] == "toy"
    assert "base__toy_pair__k1" in {c["name"] for c in info["cases"]}
    # a new run into the same folder is refused; a stopped run continues where it stopped
    with pytest.raises(MudiError, match="--resume"):
        bench(config, opts, generate_config=gen, evaluate_config=_eval_config(tiny_models))
    case = out / "cases" / "base__toy_pair__k2"
    kept = (case / "images" / "0000.png").stat().st_mtime_ns
    (case / "images" / "0001.png").unlink()
    for f in (case / "eval").iterdir():
        f.unlink()
    (case / "eval").rmdir()
    again = bench(config, RunOptions(resume=True, device="cpu", progress=False), generate_config=gen,
                  evaluate_config=_eval_config(tiny_models))
    assert (case / "images" / "0001.png").exists() and (case / "images" / "0000.png").stat().st_mtime_ns == kept
    assert [r["dnc"] for r in again.rows] == [r["dnc"] for r in result.rows]  # same seeds, same images


def _foreign_folder(tmp_path, scene, subjects, rows_extra=()):
    a, b = subjects
    folder = tmp_path / "other_tool"
    folder.mkdir()
    images = {"both.png": scene(a, b), "only_a.png": scene(a), "a_twice.png": scene(a, a)}
    lines = []
    for name, im in images.items():
        im.save(folder / name)
        lines.append({"file": name, "prompt": "a circle and a circle on grass", "subjects": ["a", "b"]})
    lines += list(rows_extra)
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def test_bench_scores_an_imported_folder_through_the_cli(toy_world, tmp_path, capsys):
    from mudi.cli import main

    sset_dir, scene, subjects = toy_world
    folder = _foreign_folder(tmp_path, scene, subjects)
    common = ["bench", "--subjects", str(sset_dir), "--detector", "toy", "--embedder", "toy", "--clip", "none",
              "--success-threshold", "0.7", "--no-progress"]
    assert main(common + ["--images", str(folder), "--method", "other", "--out", str(tmp_path / "B")]) == 0
    printed = capsys.readouterr().out
    assert "other" in printed and "pair=toy_pair" in printed
    info = json.loads((tmp_path / "B" / "bench.json").read_text())
    row = next(r for r in info["rows"] if r["group"] == "all")
    assert row["method"] == "other" and row["n_scored"] == 3
    assert row["missing"] == pytest.approx(2 / 3, abs=1e-4) and row["duplicate"] == pytest.approx(1 / 3, abs=1e-4)
    per = json.loads((tmp_path / "B" / "cases" / "other__toy_pair__k2" / "eval" / "per_image.json").read_text())
    assert [(p["missing"], p["duplicate"]) for p in per] == [(0, 0), (1, 0), (1, 1)]
    assert per[0]["fidelity_prompt"] == "a circle and a circle on grass"
    html = (tmp_path / "B" / "bench.html").read_text()
    assert "other" in html and "toy" in html
    csv_head = (tmp_path / "B" / "bench.csv").read_text().splitlines()[0]
    assert csv_head.startswith("method,group,n_images,n_scored,dnc,dnc_lo,dnc_hi")
    # mistakes: exit 2, nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    _foreign_folder(bad, scene, subjects, [{"file": "both.png", "prompt": "x", "subjects": ["zz"]}])
    assert main(common + ["--images", str(bad / "other_tool"), "--out", str(tmp_path / "B2")]) == 2
    assert main(common + ["--images", str(folder), "--lora", "x", "--out", str(tmp_path / "B3")]) == 2
    assert main(common + ["--out", str(tmp_path / "B4")]) == 2  # no method
    assert main(common + ["--images", str(folder), "--suite", "nope", "--out", str(tmp_path / "B5")]) == 2
    assert "not in the subject set" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("B2", "B3", "B4", "B5"))


def test_bench_splits_the_images_across_processes(toy_world, tmp_path):
    """Two stand-in processes (threads) give the one-process table, written once."""
    from test_evaluate_processes import ThreadGroup

    from mudi.evaluate import EvalModels, EvaluateConfig
    from mudi.evaluate.global_metrics import ImageMetrics
    from mudi.toy.vision import ToyDetector, ToyEmbedder

    sset_dir, scene, subjects = toy_world
    folder = _foreign_folder(tmp_path, scene, subjects)

    def run(out, procs=None):
        models = EvalModels(ToyDetector(), ToyEmbedder(), metrics=ImageMetrics(ToyEmbedder(), names={"dino": "toy"}))
        config = BenchConfig(out=str(out), subjects=[str(sset_dir)], images=[str(folder)])
        return bench(config, RunOptions(progress=False), evaluate_config=EvaluateConfig(success_threshold=0.7),
                     models=models, procs=procs)

    alone = run(tmp_path / "one")
    split = ThreadGroup(2).run(lambda procs: run(tmp_path / "two", procs))
    assert not [r for r in split if isinstance(r, BaseException)], split
    assert all(r.rows == alone.rows for r in split)
    assert alone.rows[0]["dino"] is not None and alone.rows[0]["n_scored"] == 3
    per = "cases/imported__toy_pair__k2/eval/per_image.json"
    assert (tmp_path / "two" / per).read_text() == (tmp_path / "one" / per).read_text().replace("/one/", "/two/")
    assert (tmp_path / "two" / "bench.json").is_file()
