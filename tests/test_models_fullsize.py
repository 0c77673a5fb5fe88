"""Loading at full size: fp16 weight variants (``--variant``), the force-upcast VAE in float32 from
the start, EDM/flow schedulers refused, latents normalized the same way for training and decoding."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mudi.errors import MudiError
from mudi.models import loading
from mudi.models.variants import check_variant_files, choose_variant, file_variant, hub_variants

COMPONENTS = ("unet", "vae", "text_encoder")


def _save_variant(src: Path, dst: Path, *, plain_too: bool, bump: float = 0.0) -> Path:
    """A copy of a tiny pipeline with ``*.fp16.safetensors`` weights (the values shifted by ``bump``,
    so a test can tell which files were loaded), and optionally its plain files too."""
    pipe = loading.load_pipeline(str(src))
    if plain_too:
        pipe.save_pretrained(dst)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(bump)
    pipe.to(torch.float16).save_pretrained(dst, variant="fp16")
    return dst


@pytest.fixture(scope="module")
def fp16_only(tiny_models, tmp_path_factory) -> Path:
    return _save_variant(tiny_models / "sd", tmp_path_factory.mktemp("v") / "sd16", plain_too=False)


@pytest.fixture(scope="module")
def both(tiny_models, tmp_path_factory) -> Path:
    return _save_variant(tiny_models / "sd", tmp_path_factory.mktemp("v") / "sdboth", plain_too=True, bump=0.5)


# ----------------------------------------------------------------------------- variants


def test_variant_file_names():
    assert file_variant("diffusion_pytorch_model.safetensors") == ""
    assert file_variant("diffusion_pytorch_model.fp16.safetensors") == "fp16"
    assert file_variant("model.fp16-00001-of-00002.safetensors") == "fp16"
    assert file_variant("diffusion_pytorch_model-00001-of-00002.safetensors") == ""
    assert file_variant("config.json") is None
    files = ["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors",
             "vae/diffusion_pytorch_model.fp16.safetensors", "model_index.json", "x.safetensors"]
    assert hub_variants(files, ["unet", "vae", ""]) == {"unet": {"", "fp16"}, "vae": {"fp16"}, "": {""}}


def test_auto_variant_choice():
    both, only16, plain = {"unet": {"", "fp16"}}, {"unet": {"fp16"}}, {"unet": {""}}
    assert choose_variant("auto", both, torch.float16) == "fp16"  # half the download for an fp16 run
    assert choose_variant("auto", both, torch.float32) is None  # the fp32 files for an fp32 run
    assert choose_variant("auto", only16, torch.float32) == "fp16"  # only fp16 files: they load (cast up)
    assert choose_variant("auto", plain, torch.float16) is None
    assert choose_variant("none", both, torch.float16) is None and choose_variant("fp16", plain, None) == "fp16"
    mixed = {"unet": {"fp16"}, "vae": {""}}
    with pytest.raises(MudiError, match="do not share one weights variant"):
        check_variant_files("auto", mixed, "base")
    with pytest.raises(MudiError, match="--variant fp16 needs fp16-variant"):
        check_variant_files("fp16", plain, "base")


def test_fp16_only_folder_passes_inspection_and_loads(fp16_only, tiny_models):
    assert sorted(p.name for p in (fp16_only / "unet").glob("*.safetensors")) == ["diffusion_pytorch_model.fp16.safetensors"]
    assert loading.inspect_model(str(fp16_only)).default_resolution > 0
    with pytest.raises(MudiError, match="--variant none needs plain"):
        loading.inspect_model(str(fp16_only), variant="none")
    pipe = loading.load_pipeline(str(fp16_only))  # float32 run: the fp16 files, cast up
    ref = loading.load_pipeline(str(tiny_models / "sd"))
    assert pipe.unet.dtype == torch.float32
    for (name, a), (_, b) in zip(pipe.unet.state_dict().items(), ref.unet.state_dict().items()):
        assert torch.equal(a, b.half().float()), name


def test_auto_loads_fp16_files_for_fp16_and_plain_files_for_fp32(both, tiny_models):
    assert loading.pick_variant(str(both), list(COMPONENTS), "auto", torch.float16) == "fp16"
    w32 = loading.load_pipeline(str(both)).unet.conv_in.weight
    w16 = loading.load_pipeline(str(both), dtype=torch.float16).unet.conv_in.weight
    ref = loading.load_pipeline(str(tiny_models / "sd")).unet.conv_in.weight
    assert torch.equal(w32, ref)  # the plain files
    assert torch.equal(w16, (ref + 0.5).half())  # the (shifted) fp16 files, not the fp32 ones cast down
    plain16 = loading.load_pipeline(str(both), dtype=torch.float16, variant="none").unet.conv_in.weight
    assert torch.equal(plain16, ref.half())


def test_training_from_an_fp16_only_folder(fp16_only, data_dir, tmp_path):
    from mudi.settings import RunOptions
    from mudi.train import TrainConfig, train

    cfg = TrainConfig(subjects=str(data_dir / "subjects" / "dog6_and_dog2"), base=str(fp16_only), out=str(tmp_path / "o"),
                      resolution=64, max_train_steps=1, validate_every=-1, checkpoint_every=0)
    result = train(cfg, RunOptions(progress=False))
    assert result.finished and result.lora.is_file()
    with pytest.raises(MudiError, match="--variant none"):
        train(cfg.updated({"variant": "none", "out": str(tmp_path / "p")}), RunOptions(progress=False))
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------- force-upcast VAE


def test_force_upcast_vae_is_loaded_in_float32_from_the_start(tiny_models, monkeypatch):
    from diffusers import AutoencoderKL

    assert json.loads((tiny_models / "sdxl" / "vae" / "config.json").read_text())["force_upcast"] is True
    asked: list[torch.dtype] = []
    real = AutoencoderKL.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        asked.append(kwargs.get("dtype"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(spy))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no "upcast_vae is deprecated" on the way
        pipe = loading.load_pipeline(str(tiny_models / "sdxl"), dtype=torch.float16)
    assert asked == [torch.float32]  # never loaded in float16 first
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float16
    assert pipe.text_encoder.dtype == torch.float16
    z = torch.randn(1, 4, 8, 8, dtype=torch.float16)  # what an fp16 pipeline hands its VAE
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        image = pipe.vae.decode(z).sample
        assert pipe.vae.encode(image.half()).latent_dist.mean.dtype == torch.float32
    assert image.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    sd = loading.load_pipeline(str(tiny_models / "sd"), dtype=torch.float16)  # force_upcast false: fp16
    assert sd.vae.dtype == torch.float16
    vae = loading.load_vae(str(tiny_models / "sdxl"), dtype=torch.float16)
    assert vae.dtype == torch.float32


# ----------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("scheduler, match", [
    ({"_class_name": "EDMDPMSolverMultistepScheduler", "prediction_type": "epsilon", "sigma_data": 0.5}, "an EDM"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, "a flow-matching"),
    ({"_class_name": "EulerDiscreteScheduler", "prediction_type": "sample"}, "'sample'"),
])
def test_edm_and_flow_schedulers_are_refused_before_loading(tiny_models, tmp_path, scheduler, match, monkeypatch):
    folder = tmp_path / "playground"
    shutil.copytree(tiny_models / "sdxl", folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(MudiError, match=match):
        loading.inspect_model(str(folder))
    from mudi.models.families import family_named

    family = family_named("sdxl")
    pipe = type("Pipe", (), {})()
    edm = type(scheduler["_class_name"], (), {"config": {k: v for k, v in scheduler.items() if k != "_class_name"}})
    pipe.scheduler = edm()
    with pytest.raises(MudiError, match=match):  # a hub model, checked once its configs are loaded
        family.info_of(pipe, "someone/playground")


def test_ddpm_style_schedulers_pass(tiny_models):
    from mudi.models.families import family_named

    for cfg in ({"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction"},
                {"_class_name": "DPMSolverMultistepScheduler"}, {}):
        family_named("sd").check_scheduler(cfg, "base")


# ----------------------------------------------------------------------------- latent normalization


def test_latents_normalized_the_same_way_for_training_and_decoding():
    """A VAE config with latents_mean/std AND shift_factor: the trainer's latents and the decoder's
    input are inverse to each other and follow diffusers' SDXL pipeline (mean/std win, no shift)."""
    from diffusers import AutoencoderKL

    from mudi.models.families import family_named
    from mudi.train.caches import LatentEncoder
    from mudi.train.validation import decode_latents

    mean, std, scaling = [0.5, -0.2, 0.1, 0.3], [2.0, 0.5, 1.5, 1.0], 0.13025
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, scaling_factor=scaling,
                        shift_factor=0.7, latents_mean=mean, latents_std=std).eval()
    family = family_named("sdxl")
    raw = torch.randn(1, 4, 8, 8)
    encoder = LatentEncoder(vae, family, torch.device("cpu"))
    z = encoder.sample((raw, torch.zeros_like(raw)), torch.Generator().manual_seed(0))  # what training sees
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    assert torch.allclose(z, (raw - m) * scaling / s)
    pipeline_decode_input = z * s / scaling + m  # StableDiffusionXLPipeline's decode (and our validation's)
    assert torch.allclose(family.from_latents(vae, z), pipeline_decode_input, atol=1e-6)
    assert torch.allclose(pipeline_decode_input, raw, atol=1e-5)
    seen = []
    real = vae.decode
    vae.decode = lambda x, **kw: (seen.append(x.clone()), real(x, **kw))[1]
    from diffusers.image_processor import VaeImageProcessor

    stand_in = type("Pipe", (), {"vae": vae, "image_processor": VaeImageProcessor(vae_scale_factor=1)})()
    decode_latents(stand_in, family, z)
    assert torch.allclose(seen[0], raw, atol=1e-5)  # validation decodes exactly what training encoded
    plain = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, scaling_factor=0.5,
                          shift_factor=0.25)  # no channel statistics: the shift applies (SD3/Flux-style)
    assert torch.allclose(family.to_latents(plain, raw), (raw - 0.25) * 0.5)
    assert torch.allclose(family.from_latents(plain, family.to_latents(plain, raw)), raw, atol=1e-6)


def test_fp16_sdxl_pipeline_decodes_with_its_fp32_vae_without_upcasting(tiny_models):
    """pipe(...) of an fp16 SDXL pipeline hands fp16 latents to the fp32 VAE: it decodes them
    (inputs cast), without diffusers' deprecated upcast_vae and without casting the VAE back."""
    pipe = loading.load_pipeline(str(tiny_models / "sdxl"), dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        image = pipe("a dog", num_inference_steps=2, height=64, width=64, output_type="pil",
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64) and pipe.vae.dtype == torch.float32


def test_hub_pipeline_with_an_edm_scheduler_is_refused_before_downloading_weights(monkeypatch):
    from diffusers import DDPMScheduler

    monkeypatch.setattr(loading, "resolve_model", lambda name, kind: name)  # "online": the hub id itself
    monkeypatch.setattr(loading, "_read_model_index", lambda path: {
        "_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]})
    edm = {"_class_name": "EDMDPMSolverMultistepScheduler", "prediction_type": "epsilon"}
    monkeypatch.setattr(DDPMScheduler, "load_config", classmethod(lambda cls, path, subfolder=None: dict(edm)))
    with pytest.raises(MudiError, match="playground.*an EDM noise schedule"):
        loading.inspect_model("playgroundai/playground-v2.5-1024px-aesthetic")
    edm["_class_name"] = "EulerDiscreteScheduler"
    assert loading.inspect_model("stabilityai/stable-diffusion-xl-base-1.0") is None
