"""The parts of `mudi generate` on their own: the config (settings, run file, flags), the layout
planner, planning, sidecars and resume, the progress bar, and that a run never changes its config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mudi.cli import main
from mudi.errors import MudiError
from mudi.generate import GenerateConfig, generate
from mudi.generate.jobs import ImageJob, LayoutPlanner, ResolvedRun, is_finished, plan_jobs, sidecar
from mudi.generate.layout import LayoutWarning
from mudi.generate.llm_layout import LayoutProviderError
from mudi.generate.sampling import StepProgress
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet

PROMPT = "a photo of olis corgi and hta chow chow"


@pytest.fixture(scope="module")
def sset(tmp_path_factory) -> SubjectSet:
    rng = np.random.default_rng(0)
    spec = []
    for key, phrase, (w, h) in [("a", "olis corgi", (40, 30)), ("b", "hta chow chow", (30, 44))]:
        photos = []
        for _ in range(3):
            mask = np.zeros((h, w), bool)
            mask[2:-2, 3:-3] = True
            photos.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask, f"a photo of a {phrase}"))
        spec.append((key, phrase, photos))
    return SubjectSet.load(SubjectSet.from_arrays(spec).save(tmp_path_factory.mktemp("parts") / "subjects"))


class FakeLLM:
    """A layout provider that answers fixed regions, or fails."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, 0

    def propose(self, prompt, phrases, width, height):
        self.calls += 1
        if self.fail:
            raise LayoutProviderError("no answer")
        return [(k, (i * width // 2, 0, (i + 1) * width // 2, height)) for i, k in enumerate(phrases)]


# ------------------------------------------------------------------------------ config

def test_config_fields_carry_help_and_round_trip_through_a_run_file(tmp_path):
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(GenerateConfig))
    config = GenerateConfig(prompts=[PROMPT], out="gen", gamma=5.0, sizes="a=1,b=0.5", llm_api_key="secret")
    text = config.to_toml()
    assert text.startswith("[generate]") and "secret" not in text and "llm_api_key" not in text
    (tmp_path / "run.toml").write_text(text + "\n[train]\nsteps = 3\n")
    back = GenerateConfig.from_toml(tmp_path / "run.toml")
    assert back == GenerateConfig(prompts=[PROMPT], out="gen", gamma=5.0, sizes="a=1,b=0.5")


def test_config_typo_in_a_run_file_names_the_valid_options(tmp_path):
    (tmp_path / "run.toml").write_text('[generate]\ngama = 2.0\n')
    with pytest.raises(MudiError, match=r"run.toml: unknown option 'gama'. Did you mean gamma\?"):
        GenerateConfig.from_toml(tmp_path / "run.toml")


def test_cli_run_file_and_flags(sset, tmp_path, capsys, monkeypatch):
    from mudi.cli import generate as cli_generate

    seen = {}
    monkeypatch.setattr(cli_generate, "generate", lambda config, options: seen.update(c=config, o=options) or [])
    run = tmp_path / "run.toml"
    run.write_text(f'[generate]\nprompts = ["{PROMPT}"]\nsubjects = "{sset.root}"\nn = 2\ngamma = 5.0\n')
    prompts = tmp_path / "more.txt"
    prompts.write_text("olis corgi\n")
    assert main(["generate", "--config", str(run), "--gamma", "4", "--prompts", str(prompts), "--out",
                 str(tmp_path / "o"), "--no-progress", "--resume", "--device", "cpu"]) == 0
    config, options = seen["c"], seen["o"]
    assert (config.n, config.gamma, config.prompts) == (2, 4.0, [PROMPT, "olis corgi"])
    assert options == RunOptions(resume=True, device="cpu", progress=False)
    run.write_text('[generate]\nn = 2\nsteps_count = 3\n')
    capsys.readouterr()
    assert main(["generate", "--config", str(run), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'steps_count'" in err and "steps" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_generate_never_modifies_the_config(tiny_models, sset, tmp_path):
    config = GenerateConfig(prompts=["{a} and {b}"], out=str(tmp_path / "out"), base=str(tiny_models / "sd"),
                            subjects=str(sset.root), n=1, steps=1, sizes="olis=1,hta=0.5")
    before = config.to_dict()
    generate(config, RunOptions(progress=False))
    assert config.to_dict() == before
    written = GenerateConfig.from_toml(tmp_path / "out" / "config.toml")
    # the run file records the SD family's sampling defaults (and init) for what was left unset
    assert written == config.updated({"sizes": "a=1.0,b=0.5", "resolution": 64, "dtype": "float32", "guidance": 7.5,
                                      "negative_prompt": "sticker, collage, cartoon, abstract glitch, blurry",
                                      "init": "mudi"})
    # the resolved config repeats the run
    again = generate(written.updated({"out": str(tmp_path / "again")}), RunOptions(progress=False))
    assert again[0].read_bytes() == (tmp_path / "out" / "0000.png").read_bytes()


def test_errors_found_with_the_model_leave_no_output_folder(tiny_models, sset, tmp_path):
    out = tmp_path / "out"
    config = GenerateConfig(prompts=[PROMPT], out=str(out), base=str(tiny_models / "sd"), subjects=str(sset.root),
                            n=1, steps=1, resolution=72)
    with pytest.raises(MudiError, match="not a multiple of 16"):
        generate(config, RunOptions(progress=False))
    assert not out.exists()
    with pytest.raises(MudiError, match="exclude each other"):
        generate(config, RunOptions(resume=True, overwrite=True))
    with pytest.raises(MudiError, match="--device"):
        generate(config, RunOptions(device="tpu"))


# ------------------------------------------------------------------------------ planning

def test_layout_planner_modes(sset, tmp_path):
    keys, dims = ["a", "b"], {"a": (34, 26), "b": (24, 40)}
    none = LayoutPlanner(GenerateConfig(init="none"), sset, 64, 64)
    assert none.layout(PROMPT, keys, dims, np.random.default_rng(0)) == ([], "none")
    auto = LayoutPlanner(GenerateConfig(), sset, 64, 64, sizes={"a": 1.0, "b": 0.5})
    layout, source = auto.layout(PROMPT, keys, dims, np.random.default_rng(0))
    heights = {p.key: p.box[3] - p.box[1] for p in layout}
    assert source == "auto" and heights["b"] == pytest.approx(heights["a"] / 2, abs=1)
    llm = FakeLLM()
    planner = LayoutPlanner(GenerateConfig(layout="llm"), sset, 64, 64, llm=llm)
    for seed in range(3):  # one request per prompt
        layout, source = planner.layout(PROMPT, keys, dims, np.random.default_rng(seed))
    assert llm.calls == 1 and source == "llm" and layout[0].box[2] <= 32 <= layout[1].box[0]
    failing = LayoutPlanner(GenerateConfig(layout="llm"), sset, 64, 64, llm=FakeLLM(fail=True))
    with pytest.warns(LayoutWarning, match="no answer"):
        layout, source = failing.layout(PROMPT, keys, dims, np.random.default_rng(0))
    assert source.startswith("auto (llm failed") and len(layout) == 2
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"olis": [0, 0, 30, 64], "hta": [34, 0, 64, 64]}))
    from_file = LayoutPlanner(GenerateConfig(layout=str(boxes)), sset, 64, 64)
    from_file.add_prompt(PROMPT, PROMPT, keys)
    layout, source = from_file.layout(PROMPT, keys, dims, np.random.default_rng(0))
    assert source == f"file:{boxes}" and layout[0].box[2] <= 30 and layout[1].box[0] >= 34


def test_plan_jobs_seeds_photos_and_layouts(sset):
    config = GenerateConfig(prompts=[PROMPT, "{b}"], n=3, seed=10)
    jobs = plan_jobs(config, sset, 64, 64)
    assert [(j.index, j.seed, j.stem) for j in jobs][:4] == [(0, 10, "0000"), (1, 11, "0001"), (2, 12, "0002"),
                                                           (3, 13, "0003")]
    assert jobs[3].prompt == "hta chow chow" and jobs[3].subjects == ["b"] and jobs[3].source_prompt == "{b}"
    # any image is planned the same alone (its own seed) as in a batch
    alone = plan_jobs(GenerateConfig(prompts=[PROMPT], n=1, seed=12), sset, 64, 64)[0]
    assert (alone.photos, alone.layout) == (jobs[2].photos, jobs[2].layout)
    fixed = plan_jobs(GenerateConfig(prompts=[PROMPT], n=2, photo=4), sset, 64, 64)
    assert all(j.photos == {"a": 1, "b": 1} for j in fixed)


def test_sidecar_and_resume(sset, tmp_path):
    import torch

    config = GenerateConfig(prompts=[PROMPT], n=1)
    job = plan_jobs(config, sset, 64, 64)[0]
    run = ResolvedRun(base="m", subject_set=str(sset.root), lora="", scheduler="PNDMScheduler", height=64, width=64,
                      dtype=torch.float32)
    side = sidecar(job, config, run, sset)
    assert (side["dtype"], side["layout_mode"], side["scheduler"]) == ("float32", "auto", "PNDMScheduler")
    assert not is_finished(tmp_path, job.stem, side)
    (tmp_path / "0000.png").write_bytes(b"png")
    (tmp_path / "0000.json").write_text(json.dumps(side))
    assert is_finished(tmp_path, job.stem, side)
    with pytest.raises(MudiError, match=r"0000.json: this image was made with other settings \(gamma: 3.0 -> 5.0\)"):
        is_finished(tmp_path, job.stem, {**side, "gamma": 5.0})


def test_step_progress_counts_image_steps():
    bar = StepProgress(total_images=3, steps_per_image=4, enabled=False)
    jobs = [ImageJob(i, "p", i, [], [], {}, [], "none") for i in range(3)]
    bar.start_batch(jobs[:2])
    for step in range(4):
        assert bar(None, step, 0, {"latents": 1}) == {"latents": 1}
    bar.start_batch(jobs[2:])
    bar(None, 0, 0, {})
    assert bar.done == 2 * 4 + 1
    bar.close()
