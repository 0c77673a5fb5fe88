"""Issue 13, generation at full size (checked on tiny models on the CPU): batched decode goes
through the VAE one image at a time with the same pixels; the LoRA is fused for sampling when
mudi loads the model itself (never in a caller's pipeline); several processes split the images of
one run; ``mudi priors --device`` reaches the detector, the segmenter and the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mudi.generate import generate
from mudi.models.decode import sliced_decode
from mudi.runtime import Processes
from mudi.settings import RunOptions
from test_generate import PROMPT, cfg, img, loras, sd_pipe, sidecar, subject_dir  # noqa: F401


class DecodeSpy:
    """Records the batch size of every call of a VAE's ``_decode`` (the per-slice decode)."""

    def __init__(self, vae):
        self.vae, self.sizes, self.inner = vae, [], vae._decode

    def __enter__(self):
        def spy(z, *args, **kwargs):
            self.sizes.append(int(z.shape[0]))
            return self.inner(z, *args, **kwargs)

        self.vae._decode = spy
        return self

    def __exit__(self, *exc):
        del self.vae._decode


# ------------------------------------------------------------------------------- 1. sliced decode

class StandInVAE:
    """A VAE on a GPU as far as :func:`sliced_decode` can tell (``device`` and ``use_slicing``)."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.use_slicing = False


class StandInPipe:
    def __init__(self, device: str):
        self.vae = StandInVAE(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps", "meta"])
def test_a_vae_off_the_cpu_decodes_one_image_at_a_time(device):
    pipe = StandInPipe(device)
    with sliced_decode(pipe) as on:
        assert on and pipe.vae.use_slicing is True
    assert pipe.vae.use_slicing is False  # put back
    with pytest.raises(RuntimeError):
        with sliced_decode(pipe):
            raise RuntimeError("boom")
    assert pipe.vae.use_slicing is False  # also after an error
    with sliced_decode(StandInPipe("cpu")) as on:
        assert on is False
    with sliced_decode(object()) as on:  # no VAE: nothing to do
        assert on is False


def test_generate_decodes_sliced_off_the_cpu(sd_pipe, subject_dir, tmp_path, monkeypatch):
    """generate() asks for sliced decoding: a VAE that looks like a GPU one gets batches of one
    image (forced here on the CPU); the images are those of the whole-batch decode up to rounding."""
    import mudi.models.decode as decode

    prompts = [PROMPT, "{c} and {a}"]
    with DecodeSpy(sd_pipe.vae) as spy:
        whole = generate(cfg(tmp_path / "whole", subject_dir, prompts=prompts, n=2, batch_size=3), pipe=sd_pipe)
    assert spy.sizes == [3, 1]  # on the CPU: whole batches, bitwise as before
    monkeypatch.setattr(decode, "vae_device_type", lambda vae: "cuda")
    with DecodeSpy(sd_pipe.vae) as spy:
        sliced = generate(cfg(tmp_path / "sliced", subject_dir, prompts=prompts, n=2, batch_size=3), pipe=sd_pipe)
    assert spy.sizes == [1, 1, 1, 1]  # batches of 3 and 1, each decoded one image at a time
    assert sd_pipe.vae.use_slicing is False  # the caller's pipeline is left as it was
    for a, b in zip(sliced, whole):
        assert np.abs(img(a).astype(int) - img(b)).max() <= 1


def test_cpu_images_are_bitwise_unchanged(sd_pipe, subject_dir, tmp_path, monkeypatch):
    """On the CPU the decode is not sliced: the same PNG files as a run without the slicing step."""
    import contextlib

    import mudi.generate.pipeline as pipeline_module

    prompts = [PROMPT]
    new = generate(cfg(tmp_path / "new", subject_dir, prompts=prompts, n=3, batch_size=2), pipe=sd_pipe)
    monkeypatch.setattr(pipeline_module, "sliced_decode", lambda pipe, **kw: contextlib.nullcontext(False))
    old = generate(cfg(tmp_path / "old", subject_dir, prompts=prompts, n=3, batch_size=2), pipe=sd_pipe)
    assert [p.read_bytes() for p in new] == [p.read_bytes() for p in old]
