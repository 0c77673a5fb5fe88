"""``mudi train --train-text-encoder``: LoRA on the text encoders of the tiny SD and SDXL models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mudi.settings import RunOptions
from mudi.train import TrainConfig, train

PROMPTS = ["a photo of olis corgi", "a photo of a olis corgi and a hta chow chow, simple background."]


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _train(tiny_models: Path, subjects: Path, out: Path, family: str = "sd", *, stop_after: int = 0,
           resume: bool = False, **kw):
    values = dict(subjects=str(subjects), base=str(tiny_models / family), out=str(out), resolution=64,
                  validate_every=-1, checkpoint_every=1, max_train_steps=2, learning_rate=1e-2,
                  text_encoder_lr=1e-2, train_text_encoder=True, p=0.5)
    values.update(kw)
    return train(TrainConfig(**values), RunOptions(progress=False, resume=resume), stop_after=stop_after)


def _encode(pipe, prompts=PROMPTS):
    from mudi.models.families import family_of

    with torch.no_grad():
        e = family_of(pipe).encode_text(pipe, prompts, torch.device("cpu"))
    return torch.cat([t.flatten(1) for t in (e.tokens, getattr(e, "pooled", None)) if t is not None], dim=1)


def _merged_encoders(pipe, state: dict[str, torch.Tensor], alpha: float, rank: int) -> None:
    """Add ``alpha / rank * B @ A`` of each text-encoder LoRA module of a diffusers LoRA file to the
    pipeline's own projection weights (what the adapter says, computed without peft)."""
    for name in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipe, name, None)
        if enc is None:
            continue
        modules = dict(enc.named_modules())
        prefix = f"{name}."
        keys = [k for k in state if k.startswith(prefix) and k.endswith(".lora_A.weight")]
        assert keys, f"no {name} LoRA in the file"
        for k in keys:
            module = k[len(prefix):-len(".lora_A.weight")]
            a, b = state[k], state[k.replace("lora_A", "lora_B")]
            with torch.no_grad():
                modules[module].weight += (alpha / rank) * (b @ a)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_text_encoder_lora_loads_with_load_lora_weights(tiny_models, subjects, tmp_path, family):
    """A few steps with --train-text-encoder; the diffusers file (text_encoder.* / text_encoder_2.*
    keys) loaded into a fresh pipeline with load_lora_weights changes the text embeddings exactly as
    the trained adapter's weights say (merged by hand), and so does the kohya copy (lora_te_ for SD,
    lora_te1_/lora_te2_ for SDXL) through diffusers' kohya loader."""
    from safetensors.torch import load_file

    from mudi.models.loading import load_pipeline

    out = tmp_path / "o"
    res = _train(tiny_models, subjects, out, family, rank=4, alpha=8.0)
    state = load_file(res.lora)
    names = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    assert {k.split(".")[0] for k in state} == {"unet", *names}
    for name in names:  # trained (SDXL reads the penultimate layer of text_encoder: its last layer gets no gradient)
        assert any(state[k].abs().sum() > 0 for k in state if k.startswith(name + ".") and "lora_B" in k)
    kohya = load_file(res.kohya)
    prefixes = ["lora_te_"] if family == "sd" else ["lora_te1_", "lora_te2_"]
    for prefix, name in zip(prefixes, names):
        n = sum(1 for k in state if k.startswith(name + "."))
        assert sum(1 for k in kohya if k.startswith(prefix) and not k.endswith(".alpha")) == n
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_text_encoder"] is True and summary["text_encoder_calls_per_step"] > 0

    base_pipe = load_pipeline(str(tiny_models / family))
    before = _encode(base_pipe)
    loaded = load_pipeline(str(tiny_models / family))
    loaded.load_lora_weights(str(out))
    by_hand = load_pipeline(str(tiny_models / family))
    _merged_encoders(by_hand, state, alpha=8.0, rank=4)
    got, want = _encode(loaded), _encode(by_hand)
    assert (got - before).abs().max() > 1e-3  # the text encoders were trained
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    from_kohya = load_pipeline(str(tiny_models / family))
    from_kohya.load_lora_weights(str(res.kohya))
    torch.testing.assert_close(_encode(from_kohya), want, rtol=1e-4, atol=1e-5)


def test_text_encoder_run_resumes_bitwise(tiny_models, subjects, tmp_path):
    """--train-text-encoder with DCO (the default): a run stopped after step 2 and resumed ends with
    exactly the UNet and text-encoder LoRA of an uninterrupted one; the text-encoder group has its own
    learning rate; without the option nothing about the text encoders changes."""
    from safetensors.torch import load_file

    full = _train(tiny_models, subjects, tmp_path / "full", max_train_steps=4, gradient_accumulation_steps=2)
    _train(tiny_models, subjects, tmp_path / "cut", max_train_steps=4, gradient_accumulation_steps=2, stop_after=2)
    resumed = _train(tiny_models, subjects, tmp_path / "cut", max_train_steps=4, gradient_accumulation_steps=2,
                     resume=True)
    a, b = load_file(full.lora), load_file(resumed.lora)
    assert set(a) == set(b) and any(k.startswith("text_encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.summary["reg"] == "dco" and full.summary["dco"]["steps"] == 4
    # captions encoded per micro-batch twice: through the LoRA encoder (with gradients) and, for
    # DCO's base pass, with its adapter off (2 micro-batches x 2 passes x 1 encoder)
    assert full.summary["text_encoder_calls_per_step"] == 4 and full.summary["captions_cached"] == 0
    ckpt = load_file(tmp_path / "full" / "checkpoints" / "step_000004" / "lora.safetensors")
    assert any(k.startswith("text_encoder.") for k in ckpt) and not any(k.startswith("unet.") for k in ckpt)
    state = json.loads((tmp_path / "full" / "checkpoints" / "step_000004" / "state.json").read_text())
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-2, 1e-2]
    plain = _train(tiny_models, subjects, tmp_path / "plain", train_text_encoder=False)
    assert not any(k.startswith("text_encoder") for k in load_file(plain.lora))
    assert plain.summary["text_encoder_calls_training"] == 0


def test_base_prediction_switches_the_text_encoder_lora_off(tiny_models):
    """DCO's base pass with text-encoder adapters: inside lora_disabled the encoders answer as the
    base encoders; afterwards the adapters are on and trainable again."""
    from mudi.models.loading import load_pipeline
    from mudi.models.text_lora import AdapterSwitch, add_text_encoder_lora
    from mudi.train.dco import lora_disabled

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    before = _encode(pipe)
    torch.manual_seed(0)
    params = add_text_encoder_lora({"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2},
                                   rank=4, alpha=4.0, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    adapted = _encode(pipe)
    assert (adapted - before).abs().max() > 1e-3
    with lora_disabled(AdapterSwitch(pipe.text_encoder), AdapterSwitch(pipe.text_encoder_2)):
        torch.testing.assert_close(_encode(pipe), before)
    assert torch.equal(_encode(pipe), adapted) and all(p.requires_grad for p in params)


def test_text_encoder_options_are_checked(tiny_models, subjects, tmp_path):
    """Unknown text-encoder LoRA targets are a MudiError naming the encoder; --text-encoder-lr must be > 0."""
    from mudi.errors import MudiError

    with pytest.raises(MudiError, match="not found in the text_encoder of"):
        _train(tiny_models, subjects, tmp_path / "x", text_encoder_target_modules=["nope"])
    assert not (tmp_path / "x").exists()  # checked before anything is written
    with pytest.raises(MudiError, match="text_encoder_lr"):
        TrainConfig(subjects="s", base="b", out="o", text_encoder_lr=0.0).check()
    assert (TrainConfig().train_text_encoder, TrainConfig().text_encoder_lr) == (False, 5e-6)
    assert TrainConfig().text_encoder_target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]


def test_text_encoder_lora_with_gradient_checkpointing(tiny_models, subjects, tmp_path):
    """--gradient-checkpointing on recomputes the text encoders' activations too: their LoRA still
    gets gradients and the run ends with the same weights as without checkpointing."""
    from safetensors.torch import load_file

    a = load_file(_train(tiny_models, subjects, tmp_path / "a", gradient_checkpointing="off").lora)
    b = load_file(_train(tiny_models, subjects, tmp_path / "b", gradient_checkpointing="on").lora)
    te = [k for k in a if k.startswith("text_encoder.") and "lora_B" in k]
    assert te and all(b[k].abs().sum() > 0 for k in te)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
