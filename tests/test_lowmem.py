"""Low-memory training: quantized frozen base, the memory estimate and its budget check, VAE offload."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.train import TrainConfig, train
from mudi.train.memory import (GB, MemorySettings, PipelineParts, estimate_memory, lora_parameter_count, meta_parts,
                               weight_bytes)
from mudi.train.memory_check import check_fits, memory_budget

FAST = dict(resolution=64, validate_every=-1, checkpoint_every=0, max_train_steps=2, rank=4, alpha=4.0)
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _cfg(tiny_models, subjects, out, **kw) -> TrainConfig:
    return TrainConfig(**dict(FAST, subjects=str(subjects), base=str(tiny_models / "sd"), out=str(out), **kw))


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
                                  guidance_embeds=True, axes_dims_rope=(4, 6, 6))


# ------------------------------------------------------------------------------ quantization
def test_missing_backend_names_the_pip_command(monkeypatch):
    from mudi.models import quantize

    monkeypatch.setattr(quantize, "_installed", lambda module: False)
    with pytest.raises(MudiError, match=r"needs torchao, which is not installed: run pip install 'mudi\[int8\]'"):
        quantize.check_quantize("int8", torch.device("cpu"))
    with pytest.raises(MudiError, match=r"pip install 'mudi\[nf4\]'"):
        quantize.check_quantize("nf4", torch.device("cuda"))
    quantize.check_quantize("none", torch.device("cpu"))
    monkeypatch.setattr(quantize, "_installed", lambda module: True)
    with pytest.raises(MudiError, match="CUDA devices only.*--quantize int8"):
        quantize.check_quantize("nf4", torch.device("cpu"))
    quantize.check_quantize("nf4", torch.device("cuda"))  # a CUDA device (not touched): accepted


def test_train_with_missing_backend_writes_nothing(tiny_models, subjects, tmp_path, monkeypatch):
    from mudi.models import quantize

    monkeypatch.setattr(quantize, "_installed", lambda module: False)
    with pytest.raises(MudiError, match="mudi\\[int8\\]"):
        train(_cfg(tiny_models, subjects, tmp_path / "out", quantize="int8"), RunOptions(progress=False, device="cpu"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(MudiError, match="quantize"):
        TrainConfig().updated({"quantize": "fp4"})


def test_nf4_config_reaches_from_pretrained_for_the_denoiser_only(tiny_models, monkeypatch):
    """The plumbing of --quantize nf4 (diffusers' bitsandbytes loader needs a GPU): the pipeline's
    from_pretrained gets a quantization config for its UNet alone, NF4 computing in the training dtype."""
    from diffusers import BitsAndBytesConfig, StableDiffusionPipeline

    from mudi.models.loading import load_pipeline

    if not HAS_BNB:  # stand-in: its version check needs the package's metadata, nothing else
        monkeypatch.setattr(BitsAndBytesConfig, "post_init", lambda self: None)
    seen = {}
    original = StableDiffusionPipeline.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        kwargs.pop("quantization_config")
        return original(cls, path, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(spy))
    pipe = load_pipeline(str(tiny_models / "sd"), dtype=torch.float32, quantize="nf4")
    mapping = seen["quantization_config"].quant_mapping
    assert list(mapping) == ["unet"]
    q = mapping["unet"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == torch.float32
    assert pipe.unet is not None
    from mudi.models.quantize import denoiser_component, pipeline_quantization

    assert pipeline_quantization("none", torch.float16, {"unet": []}) == {}
    assert denoiser_component({"transformer": [], "vae": []}) == "transformer"


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes (mudi[nf4]) not installed")
def test_lora_on_bnb_nf4_layers_trains_and_switches_off():
    """peft's LoRA on bitsandbytes 4-bit layers (built directly: bitsandbytes runs on a CPU even where
    diffusers' loader asks for a GPU): gradients reach only the LoRA, adapters off = the NF4 base."""
    import bitsandbytes as bnb

    from mudi.models.lora import add_unet_lora

    torch.manual_seed(0)
    model = _tiny_flux()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name in ("to_q", "to_k", "to_v", "proj_mlp"):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float32, quant_type="nf4")
                q.load_state_dict(child.state_dict())
                setattr(parent, name, q.to("cpu"))
    params = add_unet_lora(model, rank=4, alpha=4, target_modules=["to_q", "to_v", "proj_mlp"])
    assert isinstance(model.transformer_blocks[0].attn.to_q.get_base_layer(), bnb.nn.Linear4bit)
    inputs = _flux_inputs(model)
    base = model(**inputs).sample if hasattr(model(**inputs), "sample") else model(**inputs)[0]
    _check_lora_trains_and_switches_off(model, params, inputs, base)


def _flux_inputs(model, batch=1, side=4):
    tokens, text = side * side, 3
    return dict(hidden_states=torch.randn(batch, tokens, 16), encoder_hidden_states=torch.randn(batch, text, 32),
                pooled_projections=torch.randn(batch, 24), timestep=torch.full((batch,), 0.5),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3), guidance=torch.full((batch,), 3.5))


def _check_lora_trains_and_switches_off(model, params, inputs, base):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = model(**inputs)[0]
    assert not torch.equal(out, base)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.dtype == torch.float32 for p in params)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)
    model.disable_adapters()  # DCO's base-model pass
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs)[0], base)
    model.enable_adapters()


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao (mudi[int8]) not installed")
def test_int8_base_loads_trains_and_switches_off(tiny_models, subjects, tmp_path):
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import add_unet_lora

    pipe = load_pipeline(str(tiny_models / "sd"), dtype=torch.float32, quantize="int8")
    to_q = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn1.to_q"))
    assert "torchao" in type(to_q.weight).__module__ and pipe.text_encoder.dtype == torch.float32
    params = add_unet_lora(pipe.unet, rank=4, alpha=4, target_modules=["to_q", "to_v"])
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    base = pipe.unet(x, t, e)[0].detach()
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = pipe.unet(x, t, e)[0]
    assert not torch.equal(out, base)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in params)
    pipe.unet.disable_adapters()
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, e)[0], base)
    # and the whole trainer, two steps on a CPU, with DCO's adapters-off reference
    result = train(_cfg(tiny_models, subjects, tmp_path / "out", quantize="int8", reg="dco"),
                   RunOptions(progress=False, device="cpu"))
    assert result.finished and result.lora.is_file()


# ------------------------------------------------------------------------------ memory estimate
def test_a_component_that_cannot_be_built_is_named_not_counted(tiny_models, tmp_path):
    import json
    import shutil

    folder = tmp_path / "sd"
    shutil.copytree(tiny_models / "sd", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "NoSuchTextModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    parts = meta_parts(folder)
    assert parts.text_encoders == {} and parts.unknown == ["text_encoder (NoSuchTextModel)"]
    est = estimate_memory(parts, MemorySettings(resolution=64, rank=4, cuda=False))
    assert "not estimated" in est.table()


def test_estimate_parts_of_a_tiny_pipeline(tiny_models):
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import add_unet_lora

    parts = meta_parts(tiny_models / "sdxl")
    assert type(parts.denoiser).__name__ == "UNet2DConditionModel" and list(parts.text_encoders) == [
        "text_encoder", "text_encoder_2"]
    assert all(p.device.type == "meta" for p in parts.denoiser.parameters())
    pipe = load_pipeline(str(tiny_models / "sdxl"))
    n = sum(p.numel() for p in pipe.unet.parameters())
    assert weight_bytes(parts.denoiser, torch.float16) == 2 * n
    assert weight_bytes(parts.denoiser, torch.float16, "nf4") < weight_bytes(parts.denoiser, torch.float16, "int8") < 2 * n
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in"]
    params = add_unet_lora(pipe.unet, rank=4, alpha=4, target_modules=targets)
    assert lora_parameter_count(parts.denoiser, 4, targets) == sum(p.numel() for p in params)  # exact

    s = MemorySettings(resolution=64, dtype=torch.float16, rank=4, cuda=False)
    est = estimate_memory(parts, s)
    names = [p.name for p in est.parts]
    assert names[:3] == ["denoiser weights", "text_encoder weights", "text_encoder_2 weights"]
    te = sum(p.bytes for p in est.parts if p.name.startswith("text_encoder"))
    assert est.phase_total("caching") - est.phase_total("training") == te - sum(
        p.bytes for p in est.parts if p.phase == "training" and p.name != "activations" and not p.transient) - max(
        p.bytes for p in est.parts if p.transient)
    assert "peak" in est.table() and est.peak == max(est.phase_total("caching"), est.phase_total("training"))
    cuda = estimate_memory(parts, MemorySettings(resolution=64, dtype=torch.float16, rank=4, cuda=True))
    assert cuda.peak > est.peak  # the CUDA reserve
    offloaded = estimate_memory(parts, MemorySettings(resolution=64, rank=4, cuda=False, offload_vae=True))
    vae = [p for p in offloaded.parts if p.name == "VAE weights"][0]
    assert vae.bytes == 0 and "offload" in vae.note


@pytest.mark.parametrize("which", ["unet", "flux"])
def test_activation_estimate_checkpointing_and_batch(tiny_models, which):
    parts = meta_parts(tiny_models / "sd") if which == "unet" else PipelineParts(_tiny_flux())
    res = 64 if which == "unet" else 128
    act = {}
    for batch in (1, 2):
        est = estimate_memory(parts, MemorySettings(resolution=res, batch=batch, rank=4, cuda=False))
        act[batch] = est.activations
        assert [p.bytes for p in est.parts if p.name == "activations"] == [est.activations["plain"]]
    assert 0 < act[1]["checkpointed"] < act[1]["plain"]
    assert act[2]["plain"] == pytest.approx(2 * act[1]["plain"], rel=0.15)


def test_budget_error_lists_the_options_that_fit(tiny_models):
    parts = meta_parts(tiny_models / "sdxl")
    s = MemorySettings(resolution=256, batch=2, dtype=torch.float32, rank=4, cuda=False)
    plain = estimate_memory(parts, s)
    ckpt = estimate_memory(parts, MemorySettings(resolution=256, batch=2, dtype=torch.float32, rank=4, cuda=False,
                                                 checkpointing=True))
    assert ckpt.peak < plain.peak
    assert check_fits(parts, s, plain.peak, "test").peak == plain.peak  # exactly fits
    with pytest.raises(MudiError) as err:
        check_fits(parts, s, plain.peak - 1, "--memory-budget x", where="tiny")
    msg = str(err.value)
    assert "tiny: training needs an estimated" in msg and "nothing was written" in msg
    assert "--quantize int8: peak" in msg and "--quantize nf4" not in msg  # no CUDA: no NF4
    assert f"--gradient-checkpointing on: peak {ckpt.peak / GB:.2f} GB" in msg
    with pytest.raises(MudiError, match="none found|still too much"):
        check_fits(parts, s, 1, "--memory-budget x")


def test_budget_source():
    cfg = TrainConfig()
    assert memory_budget(cfg, torch.device("cpu")) == (None, "")
    assert memory_budget(cfg, torch.device("cuda:1"), total=lambda d: 24_000_000_000) == (24_000_000_000,
                                                                                           "the memory of cuda:1")
    assert memory_budget(cfg.updated({"memory_budget": 16.0}), torch.device("cuda"))[0] == 16_000_000_000
    with pytest.raises(MudiError, match="memory_budget"):
        TrainConfig(subjects="s", base="b", out="o", memory_budget=-1.0).check()


def test_train_prints_the_estimate_and_stops_over_budget(tiny_models, subjects, tmp_path, capsys):
    with pytest.raises(MudiError, match="Options that would fit"):
        train(_cfg(tiny_models, subjects, tmp_path / "out", memory_budget=1e-6), RunOptions(progress=False))
    assert not (tmp_path / "out").exists()
    result = train(_cfg(tiny_models, subjects, tmp_path / "ok", offload_vae=True, memory_budget=1.0),
                   RunOptions(progress=False))
    err = capsys.readouterr().err
    assert "mudi train: memory estimate (64 px, micro-batch 1, rank 4" in err and "fits 1.00 GB (--memory-budget 1)" in err
    assert result.finished


# ------------------------------------------------------------------------------ offload
def test_offloaded_vae_encodes_identically_and_unhooks(tiny_models):
    from mudi.models.loading import load_vae
    from mudi.train.offload import offload_to_cpu

    vae = load_vae(str(tiny_models / "sd"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean
        handles = offload_to_cpu(vae, torch.device("cpu"))
        assert len(handles) == 2 * sum(1 for c in vae.children() if next(c.parameters(), None) is not None)
        assert torch.equal(vae.encode(x).latent_dist.mean, ref)
        moved = []
        vae.encoder.to = lambda device, *a, **k: moved.append(str(device)) or vae.encoder
        vae.encode(x)
        assert moved == ["cpu", "cpu"]  # to the device for the call, back afterwards
        del vae.encoder.to
    for h in handles:
        h.remove()
    assert not vae.encoder._forward_pre_hooks and not vae.encoder._forward_hooks


def test_memory_plan_models_have_the_published_sizes():
    """benchmarks/memory_plan.py builds the published architectures: parameter counts of the real checkpoints."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import memory_plan

    def count(m):
        return sum(p.numel() for p in m.parameters())

    flux = memory_plan.parts_of("flux1-dev")
    assert count(flux.denoiser) == 11_901_408_320  # FLUX.1 [dev] transformer
    assert count(flux.text_encoders["text_encoder_2 (T5-XXL)"]) == 4_762_310_656  # T5 v1.1 XXL encoder
    klein = memory_plan.parts_of("flux2-klein-4b")
    assert 3.8e9 < count(klein.denoiser) < 4.0e9 and 4.0e9 < count(klein.text_encoders["text_encoder (Qwen3-4B)"]) < 4.1e9
    assert 2.2e9 < count(memory_plan.parts_of("sd35-medium").denoiser) < 2.6e9
