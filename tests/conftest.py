"""Shared pytest fixtures: offline mode, one CPU thread, tiny models, the shared test data.

Everything here runs at import time, before any test module imports torch/transformers,
so the hub is never contacted and the suite stays light on the (shared) CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with tiny random-weight models: sdxl/, sd/, owlv2/, sam/, dinov2/, clip/.

    Built once per test session with :func:`mudi.tiny.build_tiny_models` (seed 0); each
    subfolder is an ordinary local model folder accepted by the loaders in :mod:`mudi.models`.
    Treat it as read-only (it is shared by all tests).
    """
    from mudi.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_models(root, seed=0)
    return root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared test data folder (``shared/data`` beside the repository checkout).

    Override with the environment variable ``MUDI_SHARED_DATA``.
    """
    override = os.environ.get("MUDI_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"Shared test data not found at {path}; set MUDI_SHARED_DATA to the shared/data folder."
        )
    return path
