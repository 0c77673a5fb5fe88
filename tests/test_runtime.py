"""mudi.runtime: devices, dtypes, scoped RNG and library settings."""

from __future__ import annotations

import logging

import pytest
import torch

from mudi.errors import MudiError
from mudi.runtime import forked_rng, generator, pick_device, quiet_libraries, resolve_dtype


def test_pick_device_and_dtype():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(MudiError, match="--device 'gpu0' is not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MudiError, match="CUDA is not available"):
            pick_device("cuda:0")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(MudiError, match="choose auto or one of"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_forked_rng_gives_seeded_numbers_and_restores_the_global_state():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with forked_rng(7):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=generator(7)))
    assert torch.equal(torch.rand(3), expected_next)


def test_quiet_libraries_restores_levels_and_progress_bars():
    from diffusers.utils import logging as diffusers_logging

    lg = logging.getLogger("diffusers")
    lg.setLevel(logging.INFO)
    diffusers_logging.enable_progress_bar()
    with quiet_libraries():
        assert lg.level == logging.ERROR and not diffusers_logging.is_progress_bar_enabled()
    assert lg.level == logging.INFO and diffusers_logging.is_progress_bar_enabled()
    with pytest.raises(RuntimeError):
        with quiet_libraries():
            raise RuntimeError
    assert lg.level == logging.INFO
    lg.setLevel(logging.NOTSET)
