"""Shared pytest fixtures: offline mode, one CPU thread, tiny models, the example data in ``examples/``.

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

    Built once per test session with :func:`mudi.models.tiny.build_tiny_models` (seed 0); each
    subfolder is an ordinary local model folder accepted by the loaders in :mod:`mudi.models.loading`.
    Treat it as read-only (it is shared by all tests).
    """
    from mudi.models.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_models(root, seed=0)
    return root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The example data shipped in the repository (``examples/``: two real subject pairs with
    masks, from the DreamBooth dataset, CC-BY-4.0; see ``examples/README.md``)."""
    path = Path(__file__).resolve().parents[1] / "examples"
    assert (path / "subjects").is_dir(), f"{path}/subjects is missing from the checkout"
    return path


@pytest.fixture
def box_segmenter(monkeypatch):
    """GrabCut replaced by a fixed central box (48×48 of a 64 px image), so `mudi priors` on a
    tiny pipeline's random images always keeps them."""
    import numpy as np

    from mudi.prepare import segment as prepare_segment

    def box(self, image, b):
        m = np.zeros((image.size[1], image.size[0]), dtype=bool)
        m[8:56, 8:56] = True
        return m

    monkeypatch.setattr(prepare_segment.GrabCutSegmenter, "segment", box)


@pytest.fixture(scope="session")
def photo_class_set():
    """``make(folder, cls, photos)``: a class-set folder in `mudi priors`'s format whose class ``cls``
    has two images from a toy photo folder (a00, b01 with their masks); no model needed."""
    def make(folder: Path, cls: str, photos: Path) -> Path:
        from mudi.io import load_mask, load_rgb
        from mudi.train.priors import ClassSetWriter

        folder.mkdir(parents=True)
        writer = ClassSetWriter(folder, {"classes": {"a": cls}})
        for i, name in enumerate(("a00.png", "b01.png")):
            image = load_rgb(photos / name)
            writer.add(cls, i, image, load_mask(photos / f"mask_{name}", image.size), f"A photo of a {cls}")
        writer.finish()
        return folder

    return make
