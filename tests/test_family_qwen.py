"""The Qwen-Image family on a tiny pipeline: recognition, the template-stripped Qwen2.5-VL text
with its padding mask, the video VAE's frame axis and per-channel normalization, packing against
the pipeline's own transformer call, true-CFG mapping, and `mudi train` → diffusers
`load_lora_weights` → `mudi generate` from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mudi.cli import main
from mudi.errors import MudiError
from mudi.models.families import QwenImageFamily, TextEmbeds, family_for_folder, family_of

from flow_train_checks import (assert_checkpointing_trains_the_same_lora, assert_dco_first_step_is_log2,
                               assert_init_mudi_from_the_cli, assert_resume_is_bitwise, tiny_pipeline, train_cli)

PART = "qwen-image"
# the fixture's run validates at its last step (cached embeddings + mask, frame-axis decode)
VALIDATE = ("--validate-every", "3", "--validation-prompt", "a photo of {a}", "--validation-steps", "2")


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return tiny_pipeline(tiny_models, PART)


@pytest.fixture(scope="module")
def lora(tiny_models, subjects, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen_lora")
    assert train_cli(tiny_models, subjects, out, PART, *VALIDATE) == 0
    return out


def test_folder_is_recognized(tiny_models):
    from mudi.models.loading import inspect_model

    assert type(family_for_folder(tiny_models / PART)) is QwenImageFamily
    info = inspect_model(str(tiny_models / PART))
    assert (info.vae_scale_factor, info.multiple, info.default_resolution) == (8, 16, 1024)
    assert info.prediction_type == "flow_matching"


def test_older_diffusers_gets_a_clear_error(tiny_models, monkeypatch):
    import diffusers

    from mudi.models.loading import inspect_model

    monkeypatch.setattr(diffusers, "QwenImageTransformer2DModel", None)
    with pytest.raises(MudiError, match=r"Qwen-Image models need diffusers >= 0\.35\.0 \(it has "
                                        r"QwenImageTransformer2DModel\)"):
        inspect_model(str(tiny_models / PART))


def test_the_tiny_tokenizer_drops_exactly_the_template_prefix(pipe):
    from mudi.models.tiny_qwen import QWEN_TEMPLATE_TOKENS

    assert pipe.prompt_template_encode_start_idx == QWEN_TEMPLATE_TOKENS
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix)["input_ids"]) == QWEN_TEMPLATE_TOKENS
    fam = family_of(pipe)
    prompt = "a photo of olis corgi"
    emb = fam.encode_text(pipe, [prompt], "cpu")
    suffix = pipe.prompt_template_encode.split("{}")[1]
    n = len(pipe.tokenizer(prompt)["input_ids"]) + len(pipe.tokenizer(suffix)["input_ids"])
    assert emb.tokens.shape == (1, n, 16) and emb.pooled is None and emb.mask.tolist() == [[1] * n]
    want, _ = pipe.encode_prompt(prompt=[prompt], device="cpu")
    assert torch.equal(emb.tokens, want)


def test_padded_text_gives_the_same_velocity(pipe):
    """Prompts of different lengths batch with zero padding and a mask; the padding changes nothing."""
    fam = family_of(pipe)
    short = fam.encode_text(pipe, ["a dog"], "cpu")
    long = fam.encode_text(pipe, ["a photo of olis corgi on the grass in the sun"], "cpu")
    both = TextEmbeds.cat([short, long])
    assert both.tokens.shape[1] == long.tokens.shape[1] > short.tokens.shape[1]
    assert both.mask[0].sum() == short.tokens.shape[1] and bool(both.mask[1].all())
    assert torch.equal(both.row(0).tokens[:, short.tokens.shape[1]:], torch.zeros_like(both.tokens[:1, short.tokens.shape[1]:]))
    x, t = torch.randn(2, 16, 8, 8), torch.tensor([0.7, 0.7])
    with torch.no_grad():
        batched = fam.denoise(pipe.transformer, x, t, both, 64)
        alone = fam.denoise(pipe.transformer, x[:1], t[:1], short, 64)
    assert torch.allclose(batched[:1], alone, atol=1e-5)


def test_vae_frame_axis_and_normalization(pipe):
    fam = family_of(pipe)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        dist = fam.vae_encode(pipe.vae, x)
        full = pipe.vae.encode(x[:, :, None]).latent_dist
    assert dist.mean.shape == (1, 16, 8, 8) and torch.equal(dist.mean, full.mean[:, :, 0])
    z = dist.mean
    grid = fam.to_latents(pipe.vae, z)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1)
    assert torch.allclose(grid, (z - mean) / std, atol=1e-6)
    assert torch.allclose(fam.from_latents(pipe.vae, grid), z, atol=1e-5)
    with torch.no_grad():
        assert fam.vae_decode(pipe.vae, z).shape == (1, 3, 64, 64)


def test_denoise_is_the_pipelines_transformer_call(pipe):
    fam = family_of(pipe)
    emb = fam.encode_text(pipe, ["a photo of olis corgi"], "cpu")
    seen = {}

    def hook(module, args, kwargs, out):
        seen.setdefault("kw", kwargs)
        seen.setdefault("out", out[0])

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        latents = pipe(prompt_embeds=emb.tokens, prompt_embeds_mask=emb.mask, num_inference_steps=2, height=64,
                       width=64, generator=torch.Generator().manual_seed(0), output_type="latent").images
    finally:
        handle.remove()
    kw = seen["kw"]
    grid = fam.grid_latents(pipe, kw["hidden_states"], 64)
    assert grid.shape == (1, 16, 8, 8) and fam.grid_latents(pipe, latents, 64).shape == (1, 16, 8, 8)
    with torch.no_grad():
        got = fam.denoise(pipe.transformer, grid, kw["timestep"], emb, 64)
    assert torch.allclose(got, fam.grid_latents(pipe, seen["out"], 64), atol=1e-5)


def test_guidance_is_true_cfg(pipe):
    fam = family_of(pipe)
    kw = fam.call_kwargs(pipe, {"prompt": "x", "negative_prompt": " ", "guidance_scale": 4.0})
    assert kw == {"prompt": "x", "negative_prompt": " ", "true_cfg_scale": 4.0}
    assert (fam.sampling.steps, fam.sampling.guidance_scale, fam.sampling.negative_prompt) == (50, 4.0, " ")


def test_train_exports_a_lora_diffusers_loads(tiny_models, lora):
    from diffusers import DiffusionPipeline

    summary = json.loads((lora / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "qwen-image" and summary["weighting_scheme"] == "none"
    assert summary["text_encoder_calls_training"] == 0 and summary["timestep_shift_mu"] is not None
    assert (lora / "validation" / "step_000003.png").is_file()  # cached embeddings + mask, frame-axis decode
    keys = load_file(str(lora / "pytorch_lora_weights.safetensors"))
    assert keys and all(k.startswith("transformer.") for k in keys) and any(".attn.to_out.0." in k for k in keys)
    p = DiffusionPipeline.from_pretrained(str(tiny_models / PART))
    p.set_progress_bar_config(disable=True)

    def image():
        return p(prompt="a photo of olis corgi", negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=2,
                 height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="pt").images

    before = image()
    p.load_lora_weights(str(lora))
    assert not torch.equal(before, image())


def test_generate_from_the_cli(lora, tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--lora", str(lora), "--prompt", "a photo of {a} and {b}", "--out", str(out),
                 "--n", "1", "--steps", "2", "--no-progress"]) == 0
    side = json.loads((out / "0000.json").read_text())
    assert side["init"] == "none" and side["negative_prompt"] == " " and side["guidance_scale"] == 4.0
    assert (out / "0000.png").is_file()


def test_priors_then_prior_preservation(tiny_models, subjects, tmp_path, box_segmenter):
    """Class images through the pipeline (true CFG), then training whose batches mix instance and
    class captions of different token lengths (padded, masked)."""
    classes = tmp_path / "classes"
    assert main(["priors", "--base", str(tiny_models / PART), "--subjects", str(subjects), "--n", "1",
                 "--detector", "none", "--segmenter", "grabcut", "--steps", "2", "--resolution", "64",
                 "--out", str(classes), "--no-progress"]) == 0
    out = tmp_path / "prior"
    assert train_cli(tiny_models, subjects, out, PART, "--prior-dir", str(classes), "--steps", "1") == 0
    row = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["loss_prior"]) and row["loss"] == pytest.approx(row["loss_instance"] + row["loss_prior"])


def test_init_mudi_from_the_cli(lora, tmp_path):
    """``--init mudi`` enters the sampler at σ_start from the subjects' latent (exactness: test_init_flow.py);
    ``--init auto`` stays ``none`` for this family (test_generate_from_the_cli)."""
    assert_init_mudi_from_the_cli(lora, tmp_path / "gen")


# ----------------------------------------------------------------------------- the trainer's properties


def test_resume_is_bitwise(tiny_models, subjects, lora, tmp_path):
    """Stopped after step 1 (before the fixture's validation at step 3), resumed: the same LoRA."""
    assert_resume_is_bitwise(tiny_models, subjects, PART, lora, tmp_path / "resumed", *VALIDATE)


def test_dco_first_step_loss_is_log2(tiny_models, subjects, tmp_path):
    assert_dco_first_step_is_log2(tiny_models, subjects, PART, tmp_path / "dco")


def test_gradient_checkpointing_trains_the_same_lora(tiny_models, subjects, tmp_path):
    assert_checkpointing_trains_the_same_lora(tiny_models, subjects, PART, tmp_path)
