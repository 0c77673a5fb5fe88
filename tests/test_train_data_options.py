"""Training-data options of issue 12: loss masking of the class half (``--loss-mask``) and the
crops of plain examples (``--plain-crop``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mudi.train import TrainConfig


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _step(use_prior: bool = True):
    from mudi.train.step import TrainStep

    acc = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0, unwrap_model=lambda m: m,
                          no_sync=lambda m: contextlib.nullcontext())
    return TrainStep(unet=None, optimizer=None, params=[], batches=None, objective=None,
                     text_cache=None, precision=None, accelerator=acc, cfg=TrainConfig(), use_prior=use_prior)


def test_masked_losses_by_hand():
    """mean(w * err) over the instance rows and over the class rows, as the reference's
    ``(loss * mask).mean()`` on each half of the batch."""
    from mudi.train.data import MicroBatch

    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[2.0, 0.0], [0.0, 2.0]]]])  # (2 rows, 1 channel, 2x2)
    target = torch.zeros_like(pred)
    w_inst = torch.tensor([[1.0, 0.5], [0.5, 1.0]])[None, None]
    w_cls = torch.tensor([[0.25, 1.0], [1.0, 0.25]])[None, None]
    batch = MicroBatch(roles=["instance", "class"], weights=[w_inst, w_cls])
    inst, prior = _step().losses(pred, target, batch)
    assert inst.item() == pytest.approx((1 * 1 + 4 * 0.5 + 9 * 0.5 + 16 * 1) / 4)  # 5.875
    assert prior.item() == pytest.approx((4 * 0.25 + 0 + 0 + 4 * 0.25) / 4)  # 0.5
    plain = MicroBatch(roles=["instance", "class"])  # no weights (alpha 1): plain MSE
    inst, prior = _step().losses(pred, target, plain)
    assert (inst.item(), prior.item()) == (30 / 4, 8 / 4)
    ones = MicroBatch(roles=["instance", "class"], weights=[torch.ones(1, 1, 2, 2)] * 2)
    assert [v.item() for v in _step().losses(pred, target, ones)] == [30 / 4, 8 / 4]  # ones weigh nothing


def _builder(tiny_models: Path, subjects: Path, **kw):
    from mudi.compose import Composer
    from mudi.models.families import family_of
    from mudi.models.loading import load_pipeline
    from mudi.subjects import SubjectSet
    from mudi.train.caches import LatentEncoder
    from mudi.train.data import ExampleSchedule, MicroBatchBuilder

    pipe = load_pipeline(str(tiny_models / "sd"))
    sset = SubjectSet.load(subjects)
    latents = LatentEncoder(pipe.vae, family_of(pipe), torch.device("cpu"))
    names = {s.key: s.cls for s in sset}
    plain = latents.cache_plain(sset, 64, {s.key: sset.photos(s.key) for s in sset}, names)
    p = kw.pop("p")
    values = dict(composer=Composer(sset, 64, mix="segmix", p=p, k=2), schedule=ExampleSchedule(sset, 7), p=p,
                  latents=latents, plain_examples=plain, batch_size=1, mix="segmix", num_train_timesteps=1000,
                  class_photos={s.key: sset.photos(s.key) for s in sset}, class_names=names)
    values.update(kw)
    return MicroBatchBuilder(**values)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_loss_mask_rows(tiny_models, subjects, p):
    """--loss-mask composites (default, the reference): composite rows are weighted, instance and
    class alike, plain rows are all ones; --loss-mask instance (old): every instance row, no class row."""
    from mudi.compose import loss_weight_map

    assert TrainConfig().loss_mask == "composites"
    new = _builder(tiny_models, subjects, p=p, loss_alpha=0.25)
    old = _builder(tiny_models, subjects, p=p, loss_alpha=0.25, loss_mask="instance")
    for g in range(3):
        a, b = new.build(g), old.build(g)
        assert a.roles == ["instance", "class"] and a.kinds == ["segmix" if p else "plain"] * 2
        for x, y in zip(a.latents + a.noise, b.latents + b.noise):
            assert torch.equal(x, y)  # the weights draw nothing
        examples = _examples(new, g)
        for row, (w_new, w_old, ex) in enumerate(zip(a.weights, b.weights, examples)):
            masked = torch.from_numpy(loss_weight_map(ex.mask, 0.25, tuple(a.latents[row].shape[-2:])))[None, None]
            assert masked.min() < 1.0  # the mask says something
            assert torch.equal(w_new, masked if p else torch.ones_like(masked))
            assert torch.equal(w_old, masked if row == 0 else torch.ones_like(masked))


def _examples(builder, g: int):
    """The instance and class examples of micro-batch ``g`` (batch size 1), drawn like build()."""
    key, idx = builder.schedule.item(g)
    rng = builder.schedule.numpy_rng(g)
    ex = builder.instance_example(key, idx, rng, g)
    return [ex, builder.composer.mix_like(builder.class_photos, ex, rng, class_names=builder.class_names)]


# ----------------------------------------------------------------------------- --plain-crop


@pytest.fixture(scope="module")
def wide_subjects(subjects, tmp_path_factory) -> Path:
    """The example pair with landscape photos (512x352, masks alike): every plain photo has many crops."""
    import shutil

    from PIL import Image

    out = tmp_path_factory.mktemp("wide") / "set"
    shutil.copytree(subjects, out)
    for f in sorted(out.glob("*.jpg")) + sorted(out.glob("mask_*.png")):
        img = Image.open(f)
        img.resize((512, 352), Image.NEAREST if f.suffix == ".png" else Image.BICUBIC).save(f)
    return out


def test_random_crops_are_a_function_of_the_example_number(tiny_models, wide_subjects):
    """--plain-crop random: each plain example is its photo cropped at the offset drawn from the
    example's crop stream (the class photo after the instance one), encoded per example; the same
    numbers give the same batches in a fresh builder; center keeps the one cached crop."""
    from mudi.compose import plain, plain_resized_size

    assert TrainConfig().plain_crop == "random"
    rand = _builder(tiny_models, wide_subjects, p=0.0, loss_alpha=1.0, plain_crop="random")
    center = _builder(tiny_models, wide_subjects, p=0.0, loss_alpha=1.0, plain_crop="center")
    offsets = set()
    for g in range(6):
        a, c = rand.build(g), center.build(g)
        key, idx = rand.schedule.item(g)
        crop = rand.schedule.crop_rng(g)
        inst_photo = rand.composer.set.photos(key)[idx]
        cls_photo = _examples(rand, g)[1]
        cls_photo = rand.class_photos[key][cls_photo.placements[0].photo]
        for row, ph in enumerate((inst_photo, cls_photo)):
            nw, nh = plain_resized_size(ph, 64)
            assert (nw, nh) == (93, 64)
            off = (int(crop.integers(0, nw - 64 + 1)), int(crop.integers(0, nh - 64 + 1)))
            offsets.add(off)
            want = plain(ph, 64, key=key, photo_index=0, offset=off).image
            dist = rand.latents.distribution(want)
            gen = rand.schedule.torch_generator(g)
            if row == 1:  # the class row's VAE noise comes after the instance row's noise and timestep
                rand.latents.sample(dist, gen), torch.randn(a.latents[0].shape, generator=gen), torch.randint(0, 1000, (1,), generator=gen)
            assert torch.equal(a.latents[row], rand.latents.sample(dist, gen))
        assert torch.equal(a.noise[0], c.noise[0]) and torch.equal(a.timesteps[1], c.timesteps[1])  # other streams unchanged
        again = _builder(tiny_models, wide_subjects, p=0.0, loss_alpha=1.0, plain_crop="random").build(g)
        assert all(torch.equal(x, y) for x, y in zip(a.latents, again.latents))
    assert len(offsets) > 3  # the crops move
    cached = center.latents.cache[("instance", "a", 0)]
    assert center.latents.encodes == len(center.latents.cache)  # center: nothing encoded after the cache
    assert torch.equal(cached[0], center.latents.distribution(center.plain_examples[("a", 0)].image)[0])


def test_random_crops_resume_bitwise(tiny_models, wide_subjects, tmp_path):
    """A --plain-crop random run (DCO, the default) stopped after step 2 and resumed ends with
    exactly the LoRA of an uninterrupted one, and differs from the --plain-crop center run."""
    from safetensors.torch import load_file

    from mudi.settings import RunOptions
    from mudi.train import train

    def run(out, stop_after=0, resume=False, **kw):
        cfg = TrainConfig(subjects=str(wide_subjects), base=str(tiny_models / "sd"), out=str(out), resolution=64,
                          validate_every=-1, checkpoint_every=1, max_train_steps=4, p=0.3, learning_rate=1e-2, **kw)
        return train(cfg, RunOptions(progress=False, resume=resume), stop_after=stop_after)

    full = run(tmp_path / "full")
    run(tmp_path / "cut", stop_after=2)
    resumed = run(tmp_path / "cut", resume=True)
    center = run(tmp_path / "center", plain_crop="center")
    a, b, c = (load_file(r.lora) for r in (full, resumed, center))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert full.summary["reg"] == "dco" and full.summary["latents_cached"] == 0
    assert full.summary["vae_encodes_training"] == 8  # every example is encoded (4 steps x 2 micro-batches)
    assert center.summary["latents_cached"] == 10 and center.summary["vae_encodes_training"] < 8


def test_runs_saved_before_the_new_defaults_resume_with_their_old_values(tmp_path):
    """A config.toml written before --plain-crop/--loss-mask/--class-layout/--reg existed resumes
    with the values the run was made with (centre crops, instance masking, the instance layout, no
    DCO); a config that names them is read as it is."""
    from mudi.train.checkpoints import resolve_resume

    out = tmp_path / "run"
    out.mkdir()
    new_keys = ("plain_crop", "loss_mask", "class_layout", "reg", "dco_beta", "train_text_encoder",
                "text_encoder_lr", "text_encoder_target_modules")
    text = TrainConfig(subjects="s", base="b", out=str(out), max_train_steps=10).to_toml()
    old = "\n".join(ln for ln in text.splitlines() if not ln.split(" = ")[0] in new_keys)
    (out / "config.toml").write_text(old + "\n")
    merged = resolve_resume(TrainConfig(out=str(out)))
    assert (merged.plain_crop, merged.loss_mask, merged.class_layout, merged.reg) == ("center", "instance", "instance", "none")
    (out / "config.toml").write_text(old.replace('prior_dir = ""', 'prior_dir = "/p"') + "\n")
    assert resolve_resume(TrainConfig(out=str(out))).reg == "prior"
    (out / "config.toml").write_text(text)
    merged = resolve_resume(TrainConfig(out=str(out)))
    assert (merged.plain_crop, merged.loss_mask, merged.class_layout, merged.reg) == ("random", "composites", "reference", "auto")
