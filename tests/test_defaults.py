"""Issue 12's reference defaults (sampling per model family, priors, class composites, D&C):
each default's value, and that it reaches the pipeline call / the priors generation / the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mudi.generate import GenerateConfig, generate
from mudi.models.families import SDFamily, SDXLFamily, SamplingDefaults
from mudi.models.families.base import METHOD_NEGATIVE_PROMPT, REFERENCE_NEGATIVE_PROMPT
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet

REF_NEGATIVE = "anime, cartoon, graphic, text, painting, crayon, graphite, abstract glitch, blurry"


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    spec = []
    for key, phrase, color in [("a", "olis corgi", (200, 120, 40)), ("b", "hta chow chow", (60, 60, 200))]:
        photos = []
        for _ in range(2):
            img = np.full((64, 64, 3), 255, np.uint8)
            mask = np.zeros((64, 64), bool)
            mask[12:52, 16:48] = True
            img[mask] = np.clip(np.array(color) + rng.integers(-20, 20, 3), 0, 255)
            photos.append((img, mask, f"a photo of a {phrase}"))
        spec.append((key, phrase, photos))
    return SubjectSet.from_arrays(spec).save(tmp_path_factory.mktemp("defaults") / "subjects")


class CallSpy:
    """Stands in for a pipeline's ``__call__``: records the keyword arguments, returns white images."""

    def __init__(self):
        self.calls: list[dict] = []

    def method(self):
        """A function to set as the pipeline class's ``__call__``."""
        return lambda pipe, *args, **kwargs: self(pipe, *args, **kwargs)

    def __call__(self, pipe, *args, **kwargs):
        from types import SimpleNamespace

        self.calls.append(kwargs)
        n = len(kwargs["prompt"]) if isinstance(kwargs.get("prompt"), list) else 1
        size = (kwargs.get("width") or 64, kwargs.get("height") or 64)
        return SimpleNamespace(images=[Image.new("RGB", size, "white") for _ in range(n)])


# ----------------------------------------------------------------------------- sampling per family

def test_family_sampling_defaults_are_the_diffusers_pipeline_defaults():
    import inspect

    import diffusers

    assert SDXLFamily.sampling == SamplingDefaults(50, 5.0, REF_NEGATIVE)
    assert SDFamily.sampling == SamplingDefaults(50, 7.5, "sticker, collage, cartoon, abstract glitch, blurry")
    assert REFERENCE_NEGATIVE_PROMPT == REF_NEGATIVE and METHOD_NEGATIVE_PROMPT == SDFamily.sampling.negative_prompt
    for family, cls in ((SDXLFamily, diffusers.StableDiffusionXLPipeline), (SDFamily, diffusers.StableDiffusionPipeline)):
        params = inspect.signature(cls.__call__).parameters
        assert family.sampling.steps == params["num_inference_steps"].default
        assert family.sampling.guidance_scale == params["guidance_scale"].default


def test_generate_config_defaults_mean_the_family_default():
    config = GenerateConfig(prompts=["x"], out="o")
    assert (config.steps, config.guidance, config.negative_prompt) == (0, -1.0, "default")
    config.check()
    sdxl = config.with_sampling_defaults(SDXLFamily.sampling)
    assert (sdxl.steps, sdxl.guidance, sdxl.negative_prompt) == (50, 5.0, REF_NEGATIVE)
    sd = config.with_sampling_defaults(SDFamily.sampling)
    assert (sd.steps, sd.guidance, sd.negative_prompt) == (50, 7.5, METHOD_NEGATIVE_PROMPT)
    # given values stay (the old defaults are options), "" = no negative prompt
    old = config.updated({"steps": 30, "guidance": 7.5, "negative_prompt": ""}).with_sampling_defaults(SDXLFamily.sampling)
    assert (old.steps, old.guidance, old.negative_prompt) == (30, 7.5, "")
    assert config.to_dict()["steps"] == 0  # never modified


@pytest.mark.parametrize("field, value", [("steps", -1), ("guidance", -0.5), ("guidance", -2.0)])
def test_generate_config_rejects_other_negatives(field, value):
    from mudi.errors import MudiError

    with pytest.raises(MudiError, match=f"--{field}"):
        GenerateConfig(prompts=["x"], out="o", **{field: value}).check()


@pytest.mark.parametrize("family, expected", [("sdxl", (50, 5.0, REF_NEGATIVE)),
                                              ("sd", (50, 7.5, METHOD_NEGATIVE_PROMPT))])
def test_generate_without_sampling_options_uses_the_family_defaults(tiny_models, subject_dir, tmp_path, monkeypatch,
                                                                    family, expected):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / family))
    spy = CallSpy()
    monkeypatch.setattr(type(pipe), "__call__", spy.method())
    out = tmp_path / "out"
    config = GenerateConfig(prompts=["a photo of olis corgi and hta chow chow"], out=str(out), subjects=str(subject_dir),
                            n=2, batch_size=2, init="none")
    generate(config, RunOptions(progress=False), pipe=pipe)
    steps, guidance, negative = expected
    (call,) = spy.calls
    assert call["num_inference_steps"] == steps and call["guidance_scale"] == guidance
    assert call["negative_prompt"] == [negative, negative]
    for i in range(2):
        side = json.loads((out / f"000{i}.json").read_text())
        assert (side["steps"], side["guidance_scale"], side["negative_prompt"]) == expected
    run = GenerateConfig.from_toml(out / "config.toml")
    assert (run.steps, run.guidance, run.negative_prompt) == expected


def test_mean_shifted_init_starts_at_the_first_timestep_of_the_family_default(tiny_models, subject_dir, tmp_path,
                                                                             monkeypatch):
    """The init's t_first follows the resolved step count (981 at 50 steps for the SDXL scheduler
    configuration, 958 at the old 30)."""
    from mudi.generate import init as init_module
    from mudi.generate.init import schedule_start
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    seen = []
    real = init_module.mean_shifted_latents

    def spy_init(*args, **kwargs):
        seen.append(kwargs["num_inference_steps"])
        return real(*args, **kwargs)

    monkeypatch.setattr("mudi.generate.sampling.mean_shifted_latents", spy_init)
    monkeypatch.setattr(type(pipe), "__call__", CallSpy().method())
    generate(GenerateConfig(prompts=["olis corgi and hta chow chow"], out=str(tmp_path / "o"),
                            subjects=str(subject_dir), n=1), RunOptions(progress=False), pipe=pipe)
    assert seen == [50]
    sdxl_like = type(pipe.scheduler).from_config({**pipe.scheduler.config, "num_train_timesteps": 1000,
                                                  "timestep_spacing": "leading", "steps_offset": 1})
    assert int(schedule_start(sdxl_like, 50)[1]) == 981
    assert int(schedule_start(sdxl_like, 30)[1]) == 958
