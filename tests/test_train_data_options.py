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
    return TrainStep(unet=None, optimizer=None, params=[], batches=None, family=None, noise_scheduler=None,
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
