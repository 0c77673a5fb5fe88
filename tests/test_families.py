"""The model-family seam: recognizing folders and pipelines, one latent normalization, SDXL extras."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mudi.errors import MudiError
from mudi.models.families import FAMILIES, SDFamily, SDXLFamily, TextEmbeds, family_for_folder, family_named, family_of


@pytest.mark.parametrize("part, family", [("sd", SDFamily), ("sdxl", SDXLFamily)])
def test_each_family_recognizes_its_tiny_folder(tiny_models, part, family):
    found = family_for_folder(tiny_models / part)
    assert type(found) is family and found.name == part
    index = json.loads((tiny_models / part / "model_index.json").read_text())
    assert type(family_for_folder(index)) is family
    info = found.inspect(tiny_models / part, index, "my-model")
    assert (info.vae_scale_factor, info.unet_downsample, info.default_resolution) == (8, 2, 64)
    assert info.multiple == 16 and info.folder == tiny_models / part and info.family is found
    with pytest.raises(MudiError, match="does not fit my-model.*multiple of 16"):
        info.check_resolution(72)


def test_family_of_loaded_pipelines(tiny_models):
    from mudi.models.loading import load_pipeline

    for part in ("sd", "sdxl"):
        pipe = load_pipeline(str(tiny_models / part))
        fam = family_of(pipe)
        assert fam.name == part and isinstance(pipe, fam.pipeline_class())
        assert fam.vae_scale_factor(pipe) == 8 and fam.size_multiple(pipe) == 16 and fam.default_resolution(pipe) == 64
        assert [type(e).__name__ for e in fam.text_encoders(pipe)] == (
            ["CLIPTextModel", "CLIPTextModelWithProjection"] if part == "sdxl" else ["CLIPTextModel"])
        info = fam.info_of(pipe, "hub/id")
        assert (info.path, info.default_resolution, info.folder) == ("hub/id", 64, None)


def test_every_registered_family_implements_the_seam():
    from mudi.models.families import ModelFamily

    assert FAMILIES and all(isinstance(f, ModelFamily) for f in FAMILIES)
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    assert not isinstance(object(), ModelFamily)


def test_unknown_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(MudiError, match="Flux2Pipeline pipeline; mudi supports"):
        family_for_folder({"_class_name": "Flux2Pipeline", "transformer": [], "vae": []})
    with pytest.raises(MudiError, match="model_index.json"):
        family_for_folder(tmp_path)
    assert family_named("sdxl") is next(f for f in FAMILIES if f.name == "sdxl")
    with pytest.raises(MudiError, match="known: flux, flux2, sd3, qwen-image, sdxl, sd"):
        family_named("qwen")


def _vae(**config):
    return SimpleNamespace(config=SimpleNamespace(**{"scaling_factor": 0.5, "shift_factor": None,
                                                      "latents_mean": None, "latents_std": None, **config}))


@pytest.mark.parametrize("config", [
    {},                                                     # SD/SDXL: scaling only
    {"shift_factor": 0.25},                                 # shift, then scaling
    {"latents_mean": [0.1, -0.2], "latents_std": [2.0, 0.5]},
    {"latents_mean": [0.1, -0.2], "latents_std": [2.0, 0.5], "shift_factor": 0.25},  # statistics win
])
def test_latent_normalization_round_trip(config):
    fam = SDFamily()
    vae = _vae(**config)
    z = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x = fam.to_latents(vae, z)
    assert torch.allclose(fam.from_latents(vae, x), z, atol=1e-6)
    if "latents_mean" in config:
        m, s = torch.tensor([0.1, -0.2]).view(1, -1, 1, 1), torch.tensor([2.0, 0.5]).view(1, -1, 1, 1)
        assert torch.equal(x, (z - m) * 0.5 / s)  # the shift is not applied on top of the statistics
    elif "shift_factor" in config:
        assert torch.equal(x, (z - 0.25) * 0.5)
    else:
        assert torch.equal(x, z * 0.5) and torch.equal(fam.from_latents(vae, x), x / 0.5)


def test_sd_vae_normalization_is_plain_scaling(tiny_models):
    """The tiny SD/SDXL VAEs (no statistics, no shift): exactly z·s and z/s, as before the seam."""
    from mudi.models.loading import load_vae

    for part in ("sd", "sdxl"):
        vae = load_vae(str(tiny_models / part))
        s = vae.config.scaling_factor
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        assert torch.equal(family_named(part).to_latents(vae, z), z * float(s))
        assert torch.equal(family_named(part).from_latents(vae, z), z / s)


def test_sdxl_text_and_unet_conditioning(tiny_models):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    fam = family_of(pipe)
    emb = fam.encode_text(pipe, ["a dog", "a cat"], "cpu")
    assert emb.pooled is not None and emb.tokens.shape[0] == emb.pooled.shape[0] == 2
    kw = fam.unet_kwargs(emb, 64)["added_cond_kwargs"]
    assert kw["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2 and kw["text_embeds"] is emb.pooled
    neg = fam.encode_negative(pipe, "", "cpu")  # force_zeros_for_empty_prompt
    assert not neg.tokens.any() and not neg.pooled.any()
    call = fam.pipeline_embeds(emb.row(0), neg)
    assert set(call) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"}
    sd = load_pipeline(str(tiny_models / "sd"))
    sd_emb = family_of(sd).encode_text(sd, ["a dog"], "cpu")
    assert sd_emb.pooled is None and family_of(sd).unet_kwargs(sd_emb, 64) == {}
    assert set(family_of(sd).pipeline_embeds(sd_emb, sd_emb)) == {"prompt_embeds", "negative_prompt_embeds"}


def test_text_embeds_batch_ops():
    e = TextEmbeds(torch.arange(6.0).view(2, 3, 1), torch.arange(4.0).view(2, 2))
    assert torch.equal(TextEmbeds.cat([e.row(1), e.row(0)]).tokens, e.tokens.flip(0))
    r = e.row(0).repeat(3)
    assert r.tokens.shape == (3, 3, 1) and r.pooled.shape == (3, 2)
    assert TextEmbeds(torch.ones(1, 2, 2)).repeat(2).pooled is None


def test_training_target(tiny_models):
    from diffusers import DDPMScheduler

    fam = SDFamily()
    x0, eps, t = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0), torch.tensor([10])
    sch = DDPMScheduler(prediction_type="epsilon")
    assert fam.training_target(sch, x0, eps, t) is eps
    sch = DDPMScheduler(prediction_type="v_prediction")
    assert torch.equal(fam.training_target(sch, x0, eps, t), sch.get_velocity(x0, eps, t))
    with pytest.raises(MudiError, match="sample"):
        fam.training_target(DDPMScheduler(prediction_type="sample"), x0, eps, t)


def test_meta_denoiser_has_the_module_names_without_weights(tiny_models):
    from mudi.models.lora import check_lora_targets, lora_target_choices

    state = torch.get_rng_state()
    unet = SDFamily().meta_denoiser(tiny_models / "sd")
    assert torch.equal(torch.get_rng_state(), state)  # building it draws nothing from the global RNG
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert {"to_q", "to_k", "to_v", "to_out.0", "proj_in"} <= set(lora_target_choices(unet))
    check_lora_targets(unet, ["to_q", "to_out.0"], where="m")
    with pytest.raises(MudiError, match=r"'to_qq' not found in the UNet of m; choose among .*to_q, to_v"):
        check_lora_targets(unet, ["to_q", "to_qq"], where="m")
