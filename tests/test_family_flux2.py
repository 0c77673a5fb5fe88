"""The FLUX.2 [klein] family on a tiny pipeline: recognition, Qwen3 text encoding, the batch-norm
latent normalization and 2×2 patch packing against the pipeline's own code, the resolution shift,
and `mudi train` → diffusers `load_lora_weights` → `mudi generate` / `mudi priors` from the CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mudi.cli import main
from mudi.errors import MudiError
from mudi.models.families import Flux2KleinFamily, family_for_folder, family_of

from flow_train_checks import (assert_checkpointing_trains_the_same_lora, assert_dco_first_step_is_log2,
                               assert_init_mudi_from_the_cli, assert_resume_is_bitwise, tiny_pipeline, train_cli)

PART = "flux2-klein"


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return tiny_pipeline(tiny_models, PART)


@pytest.fixture(scope="module")
def lora(tiny_models, subjects, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flux2_lora")
    assert train_cli(tiny_models, subjects, out, PART) == 0
    return out


def _image(p, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return p(prompt="a photo of olis corgi", num_inference_steps=2, height=64, width=64, generator=g,
             output_type="pt", **kw).images


def test_folder_is_recognized_with_the_models_lora_targets(tiny_models):
    from mudi.models.loading import inspect_model

    assert type(family_for_folder(tiny_models / PART)) is Flux2KleinFamily
    info = inspect_model(str(tiny_models / PART))
    assert (info.multiple, info.default_resolution, info.prediction_type) == (16, 1024, "flow_matching")
    # the klein script's list: double-block attention, fused QKV+MLP, every single block's output projection
    assert info.family.default_lora_targets == ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj",
                                                "single_transformer_blocks.0.attn.to_out",
                                                "single_transformer_blocks.1.attn.to_out")
    assert Flux2KleinFamily.default_lora_targets[-1] == "to_qkv_mlp_proj"  # the registry's instance is unchanged


def test_other_flux2_pipelines_are_refused_with_the_list(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline", "transformer": []}))
    with pytest.raises(MudiError, match=r"Flux2Pipeline.*FLUX\.2 \[klein\] \(Flux2KleinPipeline\).*Qwen-Image"):
        family_for_folder(tmp_path)


def test_older_diffusers_gets_a_clear_error(tiny_models, monkeypatch):
    import diffusers

    from mudi.models.loading import inspect_model

    monkeypatch.setattr(diffusers, "Flux2KleinPipeline", None)  # (diffusers' lazy module re-imports a deleted name)
    monkeypatch.setattr(diffusers, "__version__", "0.36.0")
    with pytest.raises(MudiError, match=r"FLUX\.2 \[klein\] models need diffusers >= 0\.37\.0.*installed diffusers "
                                        r"is 0\.36\.0"):
        inspect_model(str(tiny_models / PART))
    fam = Flux2KleinFamily()
    assert not isinstance(object(), fam.pipeline_class())  # other pipelines are still told apart
    with pytest.raises(MudiError, match="pip install -U 'diffusers>=0.37.0'"):
        fam.pipeline_class().from_pretrained("x")


def test_text_is_the_pipelines_qwen3_encoding(pipe):
    fam = family_of(pipe)
    emb = fam.encode_text(pipe, ["a photo of olis corgi", "a dog"], "cpu")
    want, _ = pipe.encode_prompt(prompt=["a photo of olis corgi", "a dog"], device="cpu")
    # three hidden layers (9, 18, 27) of the 16-wide tiny Qwen3 side by side, 512 tokens, no pooled embedding
    assert emb.tokens.shape == (2, 512, 48) and emb.pooled is None and torch.equal(emb.tokens, want)
    kw = fam.call_kwargs(pipe, {"prompt": "x", "negative_prompt": "blurry", "guidance_scale": 4.0})
    assert "negative_prompt" not in kw and kw["guidance_scale"] == 4.0
    assert torch.equal(kw["negative_prompt_embeds"], fam.encode_text(pipe, ["blurry"], "cpu").tokens)
    assert "negative_prompt_embeds" not in fam.call_kwargs(pipe, {"prompt": "x", "negative_prompt": None})


def test_latents_are_batch_norm_normalized_patches(pipe):
    from diffusers import Flux2KleinPipeline as P

    fam = family_of(pipe)
    z = torch.randn(2, 16, 8, 8)
    grid = fam.to_latents(pipe.vae, z)
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    assert torch.allclose(P._patchify_latents(grid), (P._patchify_latents(z) - mean) / std, atol=1e-6)
    assert torch.allclose(fam.from_latents(pipe.vae, grid), z, atol=1e-5)
    assert grid.shape == z.shape and not torch.allclose(grid, z)


def test_denoise_is_the_pipelines_transformer_call(pipe):
    """The pipeline's own packed call (captured) gives the same velocity as the family's grid call."""
    from diffusers import Flux2KleinPipeline as P

    fam = family_of(pipe)
    emb = fam.encode_text(pipe, ["a photo of olis corgi"], "cpu")
    seen = {}

    def hook(module, args, kwargs, out):
        seen.setdefault("kw", kwargs)
        seen.setdefault("out", out[0])

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        packed = pipe(prompt_embeds=emb.tokens, num_inference_steps=1, height=64, width=64, guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        handle.remove()
    assert packed is not None
    kw = seen["kw"]
    patches = P._unpack_latents_with_ids(kw["hidden_states"], kw["img_ids"], 4, 4)
    grid = P._unpatchify_latents(patches)
    with torch.no_grad():
        got = fam.denoise(pipe.transformer, grid, kw["timestep"], emb, 64)
    want = P._unpatchify_latents(P._unpack_latents_with_ids(seen["out"], kw["img_ids"], 4, 4))
    assert got.shape == (1, 16, 8, 8) and torch.allclose(got, want, atol=1e-5)


def test_training_shift_is_the_samplers(pipe):
    from mudi.models.families.objectives import FlowSettings

    fam = family_of(pipe)
    obj = fam.training_objective(pipe, 64, FlowSettings())
    seen = {}
    original = type(pipe.scheduler).set_timesteps

    @functools.wraps(original)
    def spy(self, *args, **kw):
        seen["mu"] = kw.get("mu")
        return original(self, *args, **kw)

    type(pipe.scheduler).set_timesteps = spy
    try:
        pipe(prompt="a dog", num_inference_steps=fam.sampling.steps, height=64, width=64, guidance_scale=1.0,
             output_type="latent")
    finally:
        type(pipe.scheduler).set_timesteps = original
    assert obj.mu == pytest.approx(seen["mu"]) and obj.guidance is None and obj.scheme == "none"


def test_train_exports_a_lora_diffusers_loads(tiny_models, lora):
    from diffusers import DiffusionPipeline

    summary = json.loads((lora / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "flux2" and summary["prediction_type"] == "flow_matching"
    assert summary["text_encoder_calls_training"] == 0
    keys = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert any("single_transformer_blocks.1.attn.to_out.lora_A" in k for k in keys)
    assert any(".to_qkv_mlp_proj." in k for k in keys)
    p = DiffusionPipeline.from_pretrained(str(tiny_models / PART))
    p.set_progress_bar_config(disable=True)
    before = _image(p)
    p.load_lora_weights(str(lora))
    after = _image(p)
    assert before.shape == after.shape and not torch.equal(before, after)


def test_generate_from_the_cli(lora, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--lora", str(lora), "--prompt", "a photo of {a} and {b}", "--out", str(out),
                 "--n", "1", "--steps", "2", "--no-progress"]) == 0
    side = json.loads((out / "0000.json").read_text())
    assert side["init"] == "none" and side["negative_prompt"] == "" and side["steps"] == 2
    assert (out / "0000.png").is_file()
    neg = tmp_path / "neg"  # a negative prompt goes in as embeddings
    assert main(["generate", "--lora", str(lora), "--prompt", "a photo of {a}", "--out", str(neg), "--n", "1",
                 "--steps", "2", "--negative-prompt", "blurry", "--init", "none", "--no-progress"]) == 0
    assert json.loads((neg / "0000.json").read_text())["negative_prompt"] == "blurry"


def test_priors_from_the_cli(tiny_models, subjects, tmp_path, box_segmenter):
    classes = tmp_path / "classes"
    assert main(["priors", "--base", str(tiny_models / PART), "--subjects", str(subjects), "--n", "1",
                 "--detector", "none", "--segmenter", "grabcut", "--steps", "1", "--resolution", "64",
                 "--out", str(classes), "--no-progress"]) == 0
    assert (classes / "corgi_0000.png").is_file() and (classes / "mask_chow_chow_0000.png").is_file()


def test_init_mudi_from_the_cli(lora, tmp_path):
    """``--init mudi`` enters the sampler at σ_start from the subjects' latent (exactness: test_init_flow.py);
    ``--init auto`` stays ``none`` for this family (test_generate_from_the_cli)."""
    assert_init_mudi_from_the_cli(lora, tmp_path / "gen")


# ----------------------------------------------------------------------------- the trainer's properties


def test_resume_is_bitwise(tiny_models, subjects, lora, tmp_path):
    assert_resume_is_bitwise(tiny_models, subjects, PART, lora, tmp_path / "resumed")


def test_dco_first_step_loss_is_log2(tiny_models, subjects, tmp_path):
    assert_dco_first_step_is_log2(tiny_models, subjects, PART, tmp_path / "dco")


def test_gradient_checkpointing_trains_the_same_lora(tiny_models, subjects, tmp_path):
    assert_checkpointing_trains_the_same_lora(tiny_models, subjects, PART, tmp_path)
