"""DCO regularization (``--reg dco``) and ``--segmix-start-step`` on tiny models."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mudi.settings import RunOptions
from mudi.train import TrainConfig, train
from mudi.train.checkpoints import list_checkpoints

FAST = dict(resolution=64, validate_every=-1, checkpoint_every=0)


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _train(tiny_models: Path, subjects: Path, out: Path, *, stop_after: int = 0, resume: bool = False, **kw):
    values = dict(FAST, subjects=str(subjects), base=str(tiny_models / "sd"), out=str(out), max_train_steps=2)
    values.update(kw)
    return train(TrainConfig(**values), RunOptions(progress=False, resume=resume), stop_after=stop_after)


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


def _lora(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "pytorch_lora_weights.safetensors"))


# ----------------------------------------------------------------------------- the DCO loss


def _stand_in_accelerator():
    import contextlib

    return SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0, unwrap_model=lambda m: m,
                           no_sync=lambda m: contextlib.nullcontext())


def test_dco_loss_against_a_hand_computed_value(tiny_models):
    """One micro-batch through TrainStep with --reg dco: its terms equal the formula applied to
    the LoRA UNet's and an independent base UNet's (no LoRA at all) predictions, and so does the
    gradient: beta * sigmoid(beta * d) times the gradient of the LoRA's MSE."""
    from diffusers import DDPMScheduler

    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import add_unet_lora
    from mudi.train.caches import TextCache
    from mudi.train.data import MicroBatch
    from mudi.train.precision import Precision
    from mudi.models.families.objectives import DDPMObjective
    from mudi.train.step import TrainStep

    cpu = torch.device("cpu")
    pipe = load_pipeline(str(tiny_models / "sd"))
    family = family_of(pipe)
    base_unet = copy.deepcopy(pipe.unet).eval()  # the reference, computed without any adapter switch
    torch.manual_seed(0)
    params = add_unet_lora(pipe.unet, rank=4, alpha=4.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for p in params:  # B != 0: the LoRA model differs from the base model
            p.add_(0.03 * torch.randn_like(p))
    cap = "a photo of olis corgi"
    text = TextCache(pipe, family, cpu, torch.float32)
    text.add([cap])
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    gen = torch.Generator().manual_seed(1)
    z, noise = torch.randn(1, c, s, s, generator=gen), torch.randn(1, c, s, s, generator=gen)
    t = torch.tensor([400])
    batch = MicroBatch(roles=["instance"], latents=[z], captions=[cap], kinds=["plain"], noise=[noise], timesteps=[t])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    beta = 1000.0
    cfg = TrainConfig(resolution=64, reg="dco", dco_beta=beta, gradient_accumulation_steps=1)
    step = TrainStep(unet=pipe.unet, optimizer=None, params=params, batches=SimpleNamespace(build=lambda g: batch),
                     objective=DDPMObjective(family, scheduler, 64), text_cache=text, precision=Precision("no", cpu),
                     accelerator=_stand_in_accelerator(), cfg=cfg, use_prior=False, dco=True)
    (inst, prior, base, dco), kinds = step.micro_step(0, sync=True)
    got_grads = [p.grad.clone() for p in params]

    # by hand
    noisy = scheduler.add_noise(z, noise, t)
    emb = text.get([cap])
    with torch.no_grad():
        mse_base = ((family.denoise(base_unet, noisy, t, emb, 64) - noise) ** 2).mean().item()
    for p in params:
        p.grad = None
    mse_lora_t = ((family.denoise(pipe.unet, noisy, t, emb, 64) - noise) ** 2).mean()
    mse_lora_t.backward()
    mse_lora = mse_lora_t.item()
    d = mse_lora - mse_base
    assert abs(d) > 1e-5 and 0.05 < abs(beta * d) < 20  # an informative, unsaturated case
    want = math.log1p(math.exp(beta * d))  # -log sigmoid(-beta d)
    assert inst.item() == pytest.approx(mse_lora, rel=1e-6)
    assert base.item() == pytest.approx(mse_base, rel=1e-6)
    assert dco.item() == pytest.approx(want, rel=1e-4)
    assert prior.item() == 0.0 and kinds == ["plain"]
    scale = beta / (1.0 + math.exp(-beta * d))  # beta * sigmoid(beta d)
    for g, p in zip(got_grads, params):
        torch.testing.assert_close(g, scale * p.grad, rtol=1e-3, atol=1e-6)
    assert all(p.requires_grad for p in params)  # the adapter is trainable again after the base pass
    assert not any(getattr(m, "disable_adapters", False) for m in pipe.unet.modules() if hasattr(m, "lora_A"))


def test_dco_under_ddp_uses_the_unwrapped_unet_and_no_sync(tiny_models):
    """Several processes: the base pass runs on the unwrapped UNet (the DDP wrapper has no adapter
    switch and must see one forward per micro-batch), and a non-final micro-batch runs inside
    ``no_sync``."""
    import contextlib

    from diffusers import DDPMScheduler

    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import add_unet_lora
    from mudi.train.caches import TextCache
    from mudi.train.data import MicroBatch
    from mudi.train.precision import Precision
    from mudi.models.families.objectives import DDPMObjective
    from mudi.train.step import TrainStep

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    cpu = torch.device("cpu")
    pipe = load_pipeline(str(tiny_models / "sd"))
    family = family_of(pipe)
    params = add_unet_lora(pipe.unet, rank=2, alpha=2.0, target_modules=["to_q"])
    wrapped, synced = Wrapper(pipe.unet), []

    @contextlib.contextmanager
    def no_sync(model):
        synced.append(model)
        yield

    acc = SimpleNamespace(device=cpu, num_processes=2, process_index=1, unwrap_model=lambda m: m.module,
                          no_sync=no_sync)
    text = TextCache(pipe, family, cpu, torch.float32)
    text.add(["a dog"])
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    batch = MicroBatch(roles=["instance"], latents=[torch.randn(1, c, s, s)], captions=["a dog"], kinds=["plain"],
                       noise=[torch.randn(1, c, s, s)], timesteps=[torch.tensor([10])])
    step = TrainStep(unet=wrapped, optimizer=None, params=params, batches=SimpleNamespace(build=lambda g: batch),
                     objective=DDPMObjective(family, DDPMScheduler.from_config(pipe.scheduler.config), 64), text_cache=text,
                     precision=Precision("no", cpu), accelerator=acc, cfg=TrainConfig(resolution=64, reg="dco"),
                     use_prior=False, dco=True)
    (_, _, base, dco), _ = step.micro_step(0, sync=False)
    assert wrapped.calls == 1 and synced == [wrapped]
    assert dco.item() == pytest.approx(math.log(2))  # B = 0: LoRA model = base model
    step.micro_step(1, sync=True)
    assert wrapped.calls == 2 and synced == [wrapped]
    assert all(p.grad is not None for p in params)


def test_dco_function_and_adapter_switch_after_an_error(tiny_models):
    from mudi.models.loading import load_pipeline
    from mudi.models.lora import add_unet_lora
    from mudi.train.dco import dco_loss, lora_disabled

    assert dco_loss(torch.tensor(0.5), torch.tensor(0.5), 1000.0).item() == pytest.approx(math.log(2))
    assert dco_loss(torch.tensor(0.4), torch.tensor(0.5), 10.0).item() == pytest.approx(math.log1p(math.exp(-1.0)))
    unet = load_pipeline(str(tiny_models / "sd")).unet
    params = add_unet_lora(unet, rank=2, alpha=2.0, target_modules=["to_q"])
    with pytest.raises(RuntimeError), lora_disabled(unet):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in params)
    assert not any(m.disable_adapters for m in unet.modules() if hasattr(m, "lora_A"))


# ----------------------------------------------------------------------------- runs


def test_dco_run_resumes_bitwise_with_segmix_start_step(tiny_models, subjects, tmp_path):
    """--reg dco with Seg-Mix, gradient accumulation 2 and --segmix-start-step 2: a run stopped
    after step 1 and resumed ends bitwise identical; the DCO terms are logged; the first step
    (LoRA B = 0: the LoRA model is the base model) has loss log 2."""
    kw = dict(max_train_steps=4, checkpoint_every=1, learning_rate=1e-2, p=1.0, keep_checkpoints=1, reg="dco",
              segmix_start_step=2)
    full, part = tmp_path / "full", tmp_path / "part"
    _train(tiny_models, subjects, full, **kw)
    _train(tiny_models, subjects, part, stop_after=1, **kw)
    assert [s for s, _ in list_checkpoints(part)] == [1]
    _train(tiny_models, subjects, part, resume=True, **kw)
    a, b = _lora(full), _lora(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = _log(full)
    assert [r["loss"] for r in _log(part)] == [r["loss"] for r in rows]
    assert rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert rows[0]["loss_instance"] == pytest.approx(rows[0]["loss_reference"], rel=1e-6)
    assert all({"loss", "loss_instance", "loss_reference"} <= set(r) and "loss_prior" not in r for r in rows)
    assert [r["kinds"] for r in rows] == [["plain"] * 2] * 2 + [["segmix"] * 2] * 2  # p = 1 from step 2 on
    saved = TrainConfig.from_toml(full / "config.toml")
    assert (saved.reg, saved.dco_beta, saved.segmix_start_step) == ("dco", 1000.0, 2)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["reg"] == "dco" and summary["dco"]["beta"] == 1000.0 and summary["dco"]["steps"] == 4
    assert summary["dco"]["last_loss"] == rows[-1]["loss"]
    assert summary["dco"]["mean_loss_reference"] == pytest.approx(sum(r["loss_reference"] for r in rows) / 4)


def test_plain_run_records_reg(tiny_models, subjects, tmp_path):
    """The default is auto: prior with --prior-dir, else DCO (the reference trainer's default);
    the saved config and the summary record what it resolved to, with beta."""
    assert (TrainConfig().reg, TrainConfig().dco_beta, TrainConfig().segmix_start_step) == ("auto", 1000.0, 0)
    assert TrainConfig(prior_dir="p").resolved_reg() == "prior" and TrainConfig().resolved_reg() == "dco"
    out = tmp_path / "o"
    _train(tiny_models, subjects, out, max_train_steps=1)
    saved = TrainConfig.from_toml(out / "config.toml")
    assert (saved.reg, saved.dco_beta, saved.segmix_start_step) == ("dco", 1000.0, 0)  # auto, resolved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reg"] == "dco" and summary["dco"]["beta"] == 1000.0
    assert "loss_reference" in _log(out)[0]
    old = tmp_path / "old"  # --reg none: the old default, unregularized
    _train(tiny_models, subjects, old, max_train_steps=1, reg="none")
    assert TrainConfig.from_toml(old / "config.toml").reg == "none"
    assert json.loads((old / "summary.json").read_text())["reg"] == "none" and "loss_reference" not in _log(old)[0]


# ----------------------------------------------------------------------------- --segmix-start-step


def test_segmix_start_step_only_changes_the_steps_before_it(tiny_models, subjects):
    """Examples of optimizer steps before N are plain; from N on they are those of N = 0; the
    noise and timesteps never change (each draw is a function of the example number)."""
    from mudi.compose import Composer
    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.subjects import SubjectSet
    from mudi.train.caches import LatentEncoder
    from mudi.train.data import ExampleSchedule, MicroBatchBuilder

    pipe = load_pipeline(str(tiny_models / "sd"))
    sset = SubjectSet.load(subjects)
    latents = LatentEncoder(pipe.vae, family_of(pipe), torch.device("cpu"))
    plain = latents.cache_plain(sset, 64)

    def builder(start: int):
        return MicroBatchBuilder(composer=Composer(sset, 64, mix="segmix", p=1.0, k=2), schedule=ExampleSchedule(sset, 7),
                                 latents=latents, plain_examples=plain, batch_size=1, p=1.0, mix="segmix",
                                 loss_alpha=1.0, num_train_timesteps=1000, segmix_start_step=start,
                                 examples_per_step=2)

    late, early = builder(2), builder(0)
    for g in range(6):  # 2 micro-batches of 1 example per step: steps 0, 0, 1, 1, 2, 2
        a, b = late.build(g), early.build(g)
        assert b.kinds == ["segmix"] and a.kinds == (["plain"] if g < 4 else ["segmix"])
        assert torch.equal(a.noise[0], b.noise[0]) and torch.equal(a.timesteps[0], b.timesteps[0])
        if g >= 4:
            assert torch.equal(a.latents[0], b.latents[0]) and a.captions == b.captions


def test_dco_with_gradient_checkpointing_and_bf16(tiny_models, subjects, tmp_path):
    """The no-grad base pass coexists with gradient checkpointing (same LoRA) and bf16 autocast."""
    kw = dict(max_train_steps=2, p=0.5, learning_rate=1e-2, reg="dco")
    _train(tiny_models, subjects, tmp_path / "a", **kw)
    _train(tiny_models, subjects, tmp_path / "b", gradient_checkpointing="on", **kw)
    a, b = _lora(tmp_path / "a"), _lora(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k or "lora_up" in k)  # it trained
    _train(tiny_models, subjects, tmp_path / "c", mixed_precision="bf16", **kw)
    rows = _log(tmp_path / "c")
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["loss_reference"]) for r in rows)
