"""The diffusion-transformer families (FLUX.1, SD3) on tiny pipelines: recognition, the
flow-matching objective against diffusers' training utilities, packing, and `mudi train` →
diffusers `load_lora_weights` → `mudi generate` end to end from the CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mudi.cli import main
from mudi.errors import MudiError
from mudi.models.families import FluxFamily, SD3Family, family_for_folder, family_of
from mudi.models.families.objectives import FlowSettings, flow_loss_weight, sample_u

from flow_train_checks import (assert_checkpointing_trains_the_same_lora, assert_dco_first_step_is_log2,
                               assert_resume_is_bitwise)
from flow_train_checks import train_cli as _train_cli



@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


@pytest.fixture(scope="module")
def flux_pipe(tiny_models):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux_lora(tiny_models, subjects, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flux_lora")
    assert _train_cli(tiny_models, subjects, out, "flux") == 0
    return out


# ----------------------------------------------------------------------------- recognizing


@pytest.mark.parametrize("part, family, multiple, resolution", [("flux", FluxFamily, 16, 1024),
                                                                 ("sd3", SD3Family, 16, 64)])
def test_dit_folders_are_recognized(tiny_models, part, family, multiple, resolution):
    from mudi.models.loading import inspect_model

    assert type(family_for_folder(tiny_models / part)) is family
    info = inspect_model(str(tiny_models / part))
    assert (info.multiple, info.default_resolution, info.prediction_type) == (multiple, resolution, "flow_matching")
    with pytest.raises(MudiError, match="multiple of 16"):
        info.check_resolution(72)


def test_unsupported_pipeline_lists_the_families(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline", "transformer": []}))
    with pytest.raises(MudiError, match=r"HunyuanDiTPipeline.*FLUX\.1.*SD3") as exc:
        family_for_folder(tmp_path)
    assert "SDXL" in str(exc.value) and "Stable Diffusion 1.x/2.x" in str(exc.value)


def test_dit_family_refuses_a_ddpm_scheduler():
    with pytest.raises(MudiError, match="flow matching"):
        FluxFamily().check_scheduler({"_class_name": "EulerDiscreteScheduler"}, "x")


# ----------------------------------------------------------------------------- objective


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "none"])
def test_sigma_density_is_diffusers(scheme):
    """One draw per example from the example's generator = diffusers' draw from the global RNG
    in the same state."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    s = FlowSettings(logit_mean=0.3, logit_std=0.8, mode_scale=1.29)
    for seed in range(5):
        torch.manual_seed(seed)
        want = compute_density_for_timestep_sampling(scheme, 1, logit_mean=0.3, logit_std=0.8, mode_scale=1.29)
        got = sample_u(scheme, torch.Generator().manual_seed(seed), s)
        assert got == pytest.approx(float(want[0]), abs=1e-6)


@pytest.mark.parametrize("scheme", ["sigma_sqrt", "cosmap", "none", "logit_normal"])
def test_loss_weighting_is_diffusers(scheme):
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = torch.tensor([0.1, 0.5, 0.9])
    want = compute_loss_weighting_for_sd3(scheme, sigmas)
    got = flow_loss_weight(scheme, sigmas)
    assert torch.allclose(torch.ones(3) if got is None else got, want)


def test_flow_noising_target_and_the_samplers_shift(flux_pipe):
    fam = family_of(flux_pipe)
    obj = fam.training_objective(flux_pipe, 64, FlowSettings())
    x0, eps = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    t = torch.tensor([0.25, 0.75])
    assert torch.allclose(obj.noisy_input(x0, eps, t)[1], 0.25 * x0[1] + 0.75 * eps[1])
    assert torch.equal(obj.target(x0, eps, t), eps - x0)
    # the training shift is the one the sampler applies at this resolution (16 tokens at 64 px)
    seen = {}
    original = type(flux_pipe.scheduler).set_timesteps

    @functools.wraps(original)  # the pipeline inspects its signature
    def spy(self, *args, **kw):
        seen["mu"] = kw.get("mu")
        return original(self, *args, **kw)

    type(flux_pipe.scheduler).set_timesteps = spy
    try:
        flux_pipe(prompt="a dog", num_inference_steps=1, height=64, width=64, output_type="latent")
    finally:
        type(flux_pipe.scheduler).set_timesteps = original
    assert obj.mu == pytest.approx(seen["mu"])
    u = sample_u("none", torch.Generator().manual_seed(3), FlowSettings())
    sigma = float(obj.draw_timestep(torch.Generator().manual_seed(3)))
    table = obj.sigma_table[int(u * 1000)]
    assert sigma == pytest.approx(float(flux_pipe.scheduler.time_shift(seen["mu"], 1.0, float(table))), rel=1e-6)
    unshifted = fam.training_objective(flux_pipe, 64, FlowSettings(timestep_shift="none"))
    assert float(unshifted.draw_timestep(torch.Generator().manual_seed(3))) == pytest.approx(float(table))
    assert obj.guidance == 3.5 and obj.describe()["weighting_scheme"] == "none"


def test_flux_denoise_packs_like_the_pipeline(flux_pipe):
    from diffusers import FluxPipeline

    fam = family_of(flux_pipe)
    emb = fam.encode_text(flux_pipe, ["a photo of olis corgi"], "cpu")
    assert emb.tokens.shape == (1, 512, 32) and emb.pooled.shape == (1, 32)
    x = torch.randn(1, 16, 8, 8)
    packed = fam.pack(x)
    assert packed.shape == (1, 16, 64) and torch.equal(fam.grid_latents(flux_pipe, packed, 64), x)
    t = torch.tensor([0.6])
    with torch.no_grad():
        got = fam.denoise(flux_pipe.transformer, x, t, emb, 64, guidance=3.5)
        ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, x.device, x.dtype)
        want = flux_pipe.transformer(hidden_states=packed, timestep=t, guidance=torch.tensor([3.5]),
                                     pooled_projections=emb.pooled, encoder_hidden_states=emb.tokens,
                                     txt_ids=torch.zeros(512, 3), img_ids=ids, return_dict=False)[0]
    assert torch.equal(got, fam.grid_latents(flux_pipe, want, 64))


def test_weighted_squared_error():
    from mudi.train.step import TrainStep

    pred, target = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    w = flow_loss_weight("sigma_sqrt", torch.tensor([0.5, 1.0])).view(-1, 1, 1, 1)
    err = TrainStep.squared_error(pred, target, w)
    assert torch.equal(err[:, 0, 0, 0], torch.tensor([4.0, 1.0]))
    assert TrainStep.squared_error(pred, target, None).sum() == 8


# ----------------------------------------------------------------------------- end to end


def _pipe_image(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt="a photo of olis corgi", num_inference_steps=2, height=64, width=64, generator=g,
                output_type="pt").images


def test_flux_train_exports_a_lora_diffusers_loads(tiny_models, flux_lora):
    from diffusers import DiffusionPipeline

    summary = json.loads((flux_lora / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "flux" and summary["prediction_type"] == "flow_matching"
    assert summary["text_encoder_calls_training"] == 0 and summary["guidance"] == 3.5
    comfy = load_file(str(flux_lora / "lora_kohya.safetensors"))  # the ComfyUI copy, BFL layout
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in comfy and all(
        k.startswith("lora_unet_") for k in comfy)
    keys = load_file(str(flux_lora / "pytorch_lora_weights.safetensors"))
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any(".ff_context.net.2." in k for k in keys) and any(".attn.add_q_proj." in k for k in keys)
    cfg = (flux_lora / "config.toml").read_text()
    assert '"ff.net.0.proj"' in cfg  # the family's LoRA targets resolved into the run config
    pipe = DiffusionPipeline.from_pretrained(str(tiny_models / "flux"))
    pipe.set_progress_bar_config(disable=True)
    before = _pipe_image(pipe)
    pipe.load_lora_weights(str(flux_lora))
    after = _pipe_image(pipe)
    assert before.shape == after.shape and not torch.equal(before, after)


def test_flux_generate_from_the_cli(flux_lora, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--lora", str(flux_lora), "--prompt", "a photo of {a} and {b}", "--out", str(out),
                 "--n", "2", "--steps", "2", "--no-progress"]) == 0
    side = json.loads((out / "0001.json").read_text())
    assert side["scheduler"] == "FlowMatchEulerDiscreteScheduler" and side["init"] == "none"  # the family default
    assert 'init = "none"' in (out / "config.toml").read_text()
    assert (out / "0000.png").is_file() and (out / "0001.png").is_file()


def test_flux_resume_is_bitwise(tiny_models, subjects, flux_lora, tmp_path):
    assert_resume_is_bitwise(tiny_models, subjects, "flux", flux_lora, tmp_path / "resumed")


def test_flux_dco_and_weighting_options(tiny_models, subjects, tmp_path):
    out = tmp_path / "dco"
    assert_dco_first_step_is_log2(tiny_models, subjects, "flux", out, "--weighting-scheme", "logit_normal")
    assert json.loads((out / "summary.json").read_text())["weighting_scheme"] == "logit_normal"


def test_flux_priors_then_prior_preservation(tiny_models, subjects, tmp_path, monkeypatch):
    from mudi.prepare import segment as prepare_segment

    def box(self, image, b):
        m = np.zeros((image.size[1], image.size[0]), dtype=bool)
        m[8:56, 8:56] = True
        return m

    monkeypatch.setattr(prepare_segment.GrabCutSegmenter, "segment", box)
    classes = tmp_path / "classes"
    assert main(["priors", "--base", str(tiny_models / "flux"), "--subjects", str(subjects), "--n", "1",
                 "--detector", "none", "--segmenter", "grabcut", "--steps", "1", "--resolution", "64",
                 "--out", str(classes), "--no-progress"]) == 0
    out = tmp_path / "prior"
    assert _train_cli(tiny_models, subjects, out, "flux", "--prior-dir", str(classes), "--steps", "1") == 0
    row = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["loss_prior"]) and row["loss"] == pytest.approx(row["loss_instance"] + row["loss_prior"])


def test_sd3_train_load_and_generate(tiny_models, subjects, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    out = tmp_path / "sd3"
    assert _train_cli(tiny_models, subjects, out, "sd3", "--steps", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "sd3" and summary["weighting_scheme"] == "logit_normal"
    assert summary["timestep_shift_mu"] is None and summary["guidance"] is None
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_models / "sd3"))
    pipe.set_progress_bar_config(disable=True)
    before = _pipe_image(pipe)
    pipe.load_lora_weights(str(out))
    assert not torch.equal(before, _pipe_image(pipe))
    gen = tmp_path / "gen"
    assert main(["generate", "--lora", str(out), "--prompt", "a photo of {a}", "--out", str(gen), "--n", "1",
                 "--steps", "2", "--init", "none", "--no-progress"]) == 0
    assert (gen / "0000.png").is_file()


def test_flux_gradient_checkpointing_trains_the_same_lora(tiny_models, subjects, tmp_path):
    assert_checkpointing_trains_the_same_lora(tiny_models, subjects, "flux", tmp_path)
