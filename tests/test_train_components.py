"""The trainer's components on their own: schedule and batches, caches, checkpoints and the resume
policy, metric logging, optimizer schedule, mixed precision, and the recipe's clean-up."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.train import TrainConfig


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sd"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- optimizer schedule


def test_lr_factor_schedules():
    from mudi.train.optim import lr_factor, make_optimizer, set_learning_rate

    cfg = TrainConfig(lr_scheduler="linear", lr_warmup_steps=2, max_train_steps=6)
    assert [lr_factor(s, cfg) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    cos = TrainConfig(lr_scheduler="cosine", max_train_steps=4)
    assert [round(lr_factor(s, cos), 6) for s in (0, 2, 4)] == [1.0, 0.5, 0.0]
    assert lr_factor(3, TrainConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=5)) == 0.8
    p = torch.nn.Parameter(torch.zeros(2))
    opt = make_optimizer([p], cfg)
    assert set_learning_rate(opt, 0, cfg) == pytest.approx(5e-5) and opt.param_groups[0]["lr"] == pytest.approx(5e-5)


# ----------------------------------------------------------------------------- data


def test_micro_batches_are_a_function_of_their_number(tiny_models, subjects, sd_pipe):
    from mudi.compose import Composer
    from mudi.models.families import family_of
    from mudi.subjects import SubjectSet
    from mudi.train.caches import LatentEncoder
    from mudi.train.data import ExampleSchedule, MicroBatchBuilder, class_captions, subject_captions

    sset = SubjectSet.load(subjects)
    latents = LatentEncoder(sd_pipe.vae, family_of(sd_pipe), torch.device("cpu"))
    plain = latents.cache_plain(sset, 64)
    assert len(plain) == len(latents.cache) == 10 and latents.encodes == 10

    def builder(**kw):
        return MicroBatchBuilder(composer=Composer(sset, 64, mix="segmix", p=0.5, k=2), schedule=ExampleSchedule(sset, 7),
                                 latents=latents, plain_examples=plain, batch_size=2, p=0.5, mix="segmix",
                                 num_train_timesteps=1000, **kw)

    a, b = builder(loss_alpha=1.0).build(3), builder(loss_alpha=0.5).build(3)
    assert a.roles == ["instance", "instance"] and len(a.captions) == 2 and not a.weights
    assert len(b.weights) == 2 and b.weights[0].shape[-2:] == a.latents[0].shape[-2:]
    for x, y in zip(a.latents + a.noise + a.timesteps, b.latents + b.noise + b.timesteps):
        assert torch.equal(x, y)  # same example number, same draws (weights draw nothing)
    assert not all(torch.equal(x, y) for x, y in zip(a.noise, builder(loss_alpha=1.0).build(4).noise))
    caps = subject_captions(sset, 2, "segmix")
    assert len(caps) == len(set(caps)) and any(" and " in c for c in caps)
    assert subject_captions(sset, 2, "none") == [c for c in caps if " and " not in c]
    photos = {k: [sset.photos(k)[0]] for k in sset.keys}
    names = {k: sset.subject(k).cls for k in sset.keys}
    assert len(class_captions(photos, names, sset.keys, 2, "segmix")) >= 2


# ----------------------------------------------------------------------------- caches


def test_text_cache_counts_calls_and_releases_encoders(tiny_models):
    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.train.caches import TextCache

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    text = TextCache(pipe, family_of(pipe), torch.device("cpu"), torch.float32)
    assert text.fill(["a dog", "a cat"], ["a photo of a dog"], negative="")
    calls = text.calls
    assert calls > 0 and set(text.cond) == {"a dog", "a cat", "a photo of a dog"}
    batch = text.get(["a cat", "a dog", "a cat"])
    assert batch.tokens.shape[0] == batch.pooled.shape[0] == 3 and text.calls == calls
    assert torch.equal(batch.tokens[0], batch.tokens[2])
    assert not text.uncond.tokens.any()  # SDXL: empty negative prompt = zeros
    text.get(["a bird"])  # not cached: encoded on the spot, counted
    assert text.calls > calls
    text.release_encoders(owned=True)
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None and text.encoders() == []
    with pytest.raises(RuntimeError, match="released"):
        text.get(["a fish"])
    assert text.get(["a dog"]).tokens.shape[0] == 1


def test_latent_sample_uses_the_family_normalization(sd_pipe):
    from mudi.models.families import family_of
    from mudi.train.caches import LatentEncoder

    latents = LatentEncoder(sd_pipe.vae, family_of(sd_pipe), torch.device("cpu"))
    mean, std = torch.randn(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    z = latents.sample((mean, std), torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, (mean + std * eps) * float(sd_pipe.vae.config.scaling_factor))


# ----------------------------------------------------------------------------- checkpoints


def _lora_unet():
    from diffusers import UNet2DConditionModel

    from mudi.models.lora import add_unet_lora

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=2,
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8)
        params = add_unet_lora(unet, rank=2, alpha=2, target_modules=["to_q", "to_v"])
    return unet, params


def test_checkpointer_round_trip_prunes_and_restores_rng(tmp_path):
    from mudi.train.checkpoints import Checkpointer, list_checkpoints, training_rngs

    unet, params = _lora_unet()
    opt = torch.optim.AdamW(params, lr=0.1)
    ck = Checkpointer(tmp_path, keep=2, unet=unet, optimizer=opt, extra={"config": {"rank": 2}})
    with training_rngs(5):
        for step in (1, 2, 3):
            sum(p.sum() for p in params).backward()
            opt.step()
            ck.save(step, {"next_example": step})
        after = torch.rand(3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    state = json.loads((tmp_path / "checkpoints" / "step_000003" / "state.json").read_text())
    assert state["config"] == {"rank": 2} and state["sampler"] == {"next_example": 3}
    saved = [p.detach().clone() for p in params]
    unet2, params2 = _lora_unet()
    opt2 = torch.optim.AdamW(params2, lr=0.1)
    with training_rngs(99):
        assert Checkpointer(tmp_path, keep=2, unet=unet2, optimizer=opt2).restore_latest() == 3
        assert torch.equal(torch.rand(3), after)  # the RNG state of the run's scope at step 3
    assert all(torch.equal(a, b) for a, b in zip(saved, params2))
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert Checkpointer(tmp_path / "none", keep=1, unet=unet2, optimizer=opt2).restore_latest() == 0


def test_training_rngs_seed_inside_and_restore_outside():
    from mudi.train.checkpoints import training_rngs

    torch.manual_seed(123)
    random.seed(1)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with training_rngs(42):
        inside = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(42)
    random.seed(42)
    np.random.seed(42)
    assert torch.equal(inside[0], torch.rand(2)) and inside[1] == random.random() and inside[2] == np.random.rand()
    torch.set_rng_state(before[0])
    random.setstate(before[1])
    with training_rngs(42):
        torch.rand(5)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_resume_policy(tmp_path):
    from mudi.train.checkpoints import resolve_resume

    out = tmp_path / "run"
    assert resolve_resume(TrainConfig(out=str(out))).out == str(out)  # nothing written yet: start over
    out.mkdir()
    (out / "stray").write_text("x")
    with pytest.raises(MudiError, match="not a `mudi train` output folder"):
        resolve_resume(TrainConfig(out=str(out)))
    saved = TrainConfig(subjects="s", base="b", out=str(out), p=0.5, max_train_steps=10)
    # an OUT/config.toml written before invocation options left the config still resumes
    (out / "config.toml").write_text("\n".join(ln for ln in saved.to_toml().splitlines() if ln != "[train]")
                                     + '\ndevice = "cpu"\nprogress = false\nresume = false\n')
    merged = resolve_resume(TrainConfig(out=str(out), max_train_steps=20))
    assert (merged.p, merged.subjects, merged.max_train_steps) == (0.5, "s", 20)
    with pytest.raises(MudiError, match="p = 0.9"):
        resolve_resume(TrainConfig(out=str(out), p=0.9))


# ----------------------------------------------------------------------------- metrics


def test_metric_logger_cuts_the_log_on_resume_and_plots_without_pyplot(tmp_path):
    import matplotlib

    from mudi.train.metrics import MetricLogger, read_log

    backend = matplotlib.get_backend()
    log = MetricLogger(tmp_path, start_step=0, log_every=2, end_step=5)
    for step in range(1, 6):
        log.log(step, {"step": step, "loss": 1.0 / step, "lr": 0.1})
    log.close()
    assert [r["step"] for r in read_log(tmp_path / "train_log.jsonl")] == [2, 4, 5]
    with open(tmp_path / "train_log.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # a line cut by a kill
    log = MetricLogger(tmp_path, start_step=2, log_every=1, end_step=3)
    log.log(3, {"step": 3, "loss": 0.3})
    log.plot()
    log.close()
    assert [r["step"] for r in read_log(tmp_path / "train_log.jsonl")] == [2, 3]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend
    quiet = MetricLogger(tmp_path / "other", start_step=0, log_every=1, end_step=1, active=False)
    quiet.log(1, {"step": 1, "loss": 1.0})
    quiet.plot()
    assert not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------- precision


def test_precision_modes():
    from mudi.train.precision import Precision, make_accelerator, resolve_mixed_precision

    cpu = torch.device("cpu")
    assert resolve_mixed_precision("auto", cpu) == "no" and resolve_mixed_precision("bf16", cpu) == "bf16"
    with pytest.raises(MudiError, match="fp16 needs a GPU"):
        resolve_mixed_precision("fp16", cpu)
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    none = Precision("no", cpu)
    with none.autocast(lin):
        assert lin(x).dtype == torch.float32 and none.scaler is None and none.dtype == torch.float32
    bf16 = Precision("bf16", cpu)
    with bf16.autocast():
        assert lin(x).dtype == torch.bfloat16
    with bf16.autocast(lin):  # the module's outputs come back in float32, as from a prepared model
        y = lin(x)
    assert y.dtype == torch.float32 and not lin._forward_hooks
    with bf16.autocast():
        assert torch.equal(y, lin(x).float())
    acc = make_accelerator(cpu)
    assert acc.device.type == "cpu" and acc.mixed_precision == "no"


def test_accelerate_conflict_is_a_clear_error(monkeypatch):
    import accelerate

    from mudi.train.precision import make_accelerator

    def conflict(*args, **kwargs):
        raise ValueError("AcceleratorState has already been initialized and cannot be changed")

    monkeypatch.setattr(accelerate, "Accelerator", conflict)
    with pytest.raises(MudiError, match="fresh Python process"):
        make_accelerator(torch.device("cpu"))


# ----------------------------------------------------------------------------- the recipe


def test_train_returns_result_and_leaves_no_global_state(tiny_models, subjects, sd_pipe, tmp_path):
    from accelerate.state import AcceleratorState

    from mudi.train import train

    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    bars = dict(getattr(sd_pipe, "_progress_bar_config", {}))
    cfg = TrainConfig(subjects=str(subjects), base=str(tiny_models / "sd"), out=str(tmp_path / "o"), resolution=64,
                      max_train_steps=1, validate_every=-1, checkpoint_every=0, mixed_precision="bf16")
    result = train(cfg, RunOptions(progress=False), pipeline=sd_pipe)
    assert result.finished and result.out == tmp_path / "o" and result.summary["mixed_precision"] == "bf16"
    assert result.lora.is_file() and result.kohya.is_file() and result.config.is_file()
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert dict(getattr(sd_pipe, "_progress_bar_config", {})) == bars
    assert AcceleratorState._shared_state.get("_mixed_precision") == "no"
    saved = (tmp_path / "o" / "config.toml").read_text()
    assert saved.splitlines()[2] == "[train]" and "device" not in saved and "progress" not in saved
    assert TrainConfig.from_toml(tmp_path / "o" / "config.toml").mixed_precision == "bf16"
