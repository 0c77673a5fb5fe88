"""Optional extras and devices in evaluation: a broken install says what failed; DreamSim only
from --dreamsim-cache, with no download and no torch.hub code (a stand-in `dreamsim` package,
since the real one pulls torchvision); every model on the device asked for."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mudi.errors import MudiError
from mudi.runtime import import_optional


def make_package(root: Path, name: str, files: dict[str, str], monkeypatch) -> None:
    """A stand-in package ``name`` under ``root`` (importable for this test only)."""
    for rel, text in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, mod)


# ----------------------------------------------------------------------------- import errors

def test_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)  # `import ImageReward` fails: absent
    with pytest.raises(MudiError, match=r"not installed.*pip install 'mudi\[imagereward\]'.*leave out"):
        import_optional("ImageReward", package="image-reward", extra="imagereward", purpose="--image-reward",
                        instead="leave out --image-reward")


def test_installed_but_failing_import_gives_the_error(tmp_path, monkeypatch):
    from mudi.evaluate.textfid import ImageRewardScorer

    # what image-reward does under transformers 5: an ImportError from inside the package
    make_package(tmp_path, "ImageReward", {"__init__.py": """
        from transformers.modeling_utils import apply_chunking_to_forward_gone_in_v5
    """}, monkeypatch)
    with pytest.raises(MudiError) as err:
        ImageRewardScorer()
    msg = str(err.value)
    assert "installed but `import ImageReward` fails" in msg and "not installed" not in msg
    assert "apply_chunking_to_forward_gone_in_v5" in msg and "pip check" in msg and "--image-reward" in msg


def test_missing_dependency_or_any_exception_is_not_called_not_installed(tmp_path, monkeypatch):
    make_package(tmp_path, "extra_a", {"__init__.py": "import a_dependency_that_is_missing_xyz\n"}, monkeypatch)
    make_package(tmp_path, "extra_b", {"__init__.py": "raise RuntimeError('needs CUDA 11 (stand-in)')\n"},
                 monkeypatch)
    make_package(tmp_path, "extra_c", {"__init__.py": "from . import sub\n", "sub.py": "import nope_xyz.inner\n"},
                 monkeypatch)
    for name, text in (("extra_a", "a_dependency_that_is_missing_xyz"), ("extra_b", "RuntimeError: needs CUDA 11"),
                       ("extra_c", "nope_xyz")):
        with pytest.raises(MudiError, match="installed but") as err:
            import_optional(name, package=name, extra="x", purpose="--x")
        assert text in str(err.value)


def test_tensorboard_broken_install_is_reported(tmp_path, monkeypatch):
    import importlib.util

    from mudi.train.metrics import MetricLogger

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorboard" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import fails
    logger = MetricLogger.__new__(MetricLogger)
    logger.out = tmp_path
    with pytest.warns(UserWarning, match="tensorboard is installed but cannot log"):
        assert logger._tensorboard(0) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # not installed: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logger._tensorboard(0) is None


# ----------------------------------------------------------------------------- DreamSim

STAND_IN = {
    "__init__.py": """
        import os, torch
        from torch import nn
        CALLS = []

        class Model(nn.Module):
            def __init__(self, backbone, device):
                super().__init__()
                self.backbone = backbone.to(device)
            def embed(self, x):
                return self.backbone(x.flatten(1)[:, :4])

        def dreamsim(pretrained=True, device="cuda", cache_dir="./models", normalize_embeds=True,
                     dreamsim_type="ensemble", use_patch_model=False):
            # what dreamsim 0.2 does: weights from cache_dir, hub dir set to it, DINO from torch.hub
            CALLS.append(dict(device=device, cache_dir=cache_dir, dreamsim_type=dreamsim_type))
            if not os.path.exists(os.path.join(cache_dir, "ensemble_lora", "adapter_config.json")):
                torch.hub.download_url_to_file("https://example.invalid/ckpt.zip", os.path.join(cache_dir, "x.zip"))
            torch.hub.set_dir(cache_dir)
            backbone = torch.hub.load("facebookresearch/dino:main", "dino_vitb16")
            if os.environ.get("STAND_IN_DINOV2"):
                torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14")
            return Model(backbone, device).eval(), lambda im: torch.ones(1, 3, 4, 4)
    """,
    "feature_extraction/__init__.py": "",
    "feature_extraction/vision_transformer.py": """
        from torch import nn
        def vit_base(patch_size=16, num_classes=0, **kwargs):
            assert patch_size == 16 and num_classes == 0
            return nn.Linear(4, 3)
    """,
}


@pytest.fixture()
def fake_dreamsim(tmp_path, monkeypatch):
    make_package(tmp_path / "pkgs", "dreamsim", STAND_IN, monkeypatch)
    return tmp_path


def fill_cache(cache: Path, seed: int = 0) -> dict:
    from mudi.evaluate.dreamsim import DINO_FILE, REQUIRED

    for rel in REQUIRED["ensemble"]:
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_bytes(b"{}")
    state = torch.nn.Linear(4, 3).state_dict()
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in state.items()}
    torch.save(state, cache / DINO_FILE)
    return state


def test_dreamsim_needs_a_cache_folder_before_importing_anything(fake_dreamsim, monkeypatch):
    from mudi.evaluate.embed import DreamSimEmbedder

    with pytest.raises(MudiError, match=r"--dreamsim-cache DIR.*never downloads.*dreamsim_ensemble_checkpoint\.zip"):
        DreamSimEmbedder()
    with pytest.raises(MudiError, match="not a folder"):
        DreamSimEmbedder(cache_dir=str(fake_dreamsim / "nowhere"))
    (fake_dreamsim / "partial").mkdir()
    with pytest.raises(MudiError, match=r"missing .*ensemble_lora/adapter_config\.json.*dino_vitbase16_pretrain"):
        DreamSimEmbedder(cache_dir=str(fake_dreamsim / "partial"))
    assert "dreamsim" not in sys.modules  # checked before the package is imported


def test_dreamsim_loads_from_the_cache_without_hub_code(fake_dreamsim, monkeypatch):
    from mudi.evaluate.embed import DreamSimEmbedder

    cache = fake_dreamsim / "cache"
    state = fill_cache(cache)
    monkeypatch.chdir(fake_dreamsim)
    hub_load, hub_dir = torch.hub.load, torch.hub.get_dir()
    emb = DreamSimEmbedder(cache_dir=str(cache), device="cpu", batch_size=2)
    import dreamsim

    assert dreamsim.CALLS == [dict(device="cpu", cache_dir=str(cache), dreamsim_type="ensemble")]
    # the DINO backbone is the ViT shipped in the package with the cache's weights
    for k, v in emb.model.backbone.state_dict().items():
        assert torch.equal(v, state[k])
    assert torch.hub.load is hub_load and torch.hub.get_dir() == hub_dir  # torch.hub restored
    assert not (fake_dreamsim / "models").exists()  # nothing in ./models of the current directory
    from PIL import Image

    out = emb.embed([Image.new("RGB", (8, 8))] * 3)
    assert out.shape == (3, 3) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_dreamsim_never_downloads_nor_runs_other_hub_code(fake_dreamsim, monkeypatch):
    from mudi.evaluate.dreamsim import load_dreamsim

    cache = fake_dreamsim / "cache"
    fill_cache(cache)
    monkeypatch.setenv("STAND_IN_DINOV2", "1")
    with pytest.raises(MudiError, match="no code fetched at run time"):
        load_dreamsim(cache)
    monkeypatch.delenv("STAND_IN_DINOV2")
    import dreamsim

    real_exists = dreamsim.os.path.exists
    monkeypatch.setattr(dreamsim.os.path, "exists", lambda p: False if "ensemble_lora" in str(p) else real_exists(p))
    with pytest.raises(MudiError, match="tried to download https://example.invalid"):
        load_dreamsim(cache)
    assert torch.hub.download_url_to_file.__module__ == "torch.hub"


def test_dreamsim_cache_is_a_config_field_checked_before_writing(tmp_path, monkeypatch):
    from mudi.cli import main
    from mudi.evaluate import EvaluateConfig

    assert "dreamsim_cache" in {f for f in EvaluateConfig.__dataclass_fields__}
    with pytest.raises(MudiError, match="--dreamsim-cache"):
        EvaluateConfig().updated({"embedder": "dreamsim"}).check()
    (tmp_path / "G").mkdir()
    rc = main(["evaluate", "--images", str(tmp_path / "G"), "--subjects", str(tmp_path), "--embedder", "dreamsim",
               "--out", str(tmp_path / "E")])
    assert rc == 2 and not (tmp_path / "E").exists()


def test_dreamsim_cache_reaches_the_embedder(monkeypatch):
    from mudi.evaluate import EvaluateConfig, EvalModels
    from mudi.evaluate.registry import DETECTORS, EMBEDDERS

    seen = {}
    monkeypatch.setitem(DETECTORS.factories, "spy", lambda model, **o: seen.setdefault("detector", o) and object())
    monkeypatch.setitem(EMBEDDERS.factories, "dreamsim", lambda model, **o: seen.setdefault("embedder", o) and object())
    config = EvaluateConfig().updated({"detector": "spy", "embedder": "dreamsim", "dreamsim_cache": "/w",
                                       "clip": "none"})
    EvalModels.load(config, "meta")
    assert seen["embedder"]["dreamsim_cache"] == "/w" and seen["embedder"]["device"] == "meta"
    assert seen["detector"]["device"] == "meta"


# ----------------------------------------------------------------------------- devices

def test_every_model_on_the_asked_device(tiny_models, monkeypatch):
    """Detector, embedder and CLIP all land on the device given (the meta device stands in for a GPU)."""
    from mudi.evaluate import EvaluateConfig, EvalModels

    config = EvaluateConfig().updated({"detector": str(tiny_models / "owlv2"), "embedder": str(tiny_models / "dinov2"),
                                       "clip": str(tiny_models / "clip")})
    models = EvalModels.load(config, "meta")
    for model in (models.detector.model, models.embedder.model, models.clip.model):
        assert {p.device.type for p in model.parameters()} == {"meta"}
    assert models.embedder.device.type == models.clip.device.type == "meta"
    assert models.settings()["device"] == "meta"


def test_image_reward_gets_the_device(tmp_path, monkeypatch):
    from mudi.evaluate.textfid import ImageRewardScorer

    make_package(tmp_path, "ImageReward", {"__init__.py": """
        SEEN = []
        def load(name, device="cuda"):
            SEEN.append(device)
            return object()
    """}, monkeypatch)
    ImageRewardScorer(device="cuda:1")
    import ImageReward

    assert ImageReward.SEEN == ["cuda:1"]


def test_each_process_loads_on_its_own_gpu(monkeypatch):
    import mudi.runtime
    from mudi.evaluate import EvaluateConfig, EvalModels
    from mudi.evaluate.pipeline import load_models
    from mudi.runtime import Processes
    from mudi.settings import RunOptions

    seen = []
    monkeypatch.setattr(mudi.runtime, "pick_device", lambda name, **k: torch.device(name))
    monkeypatch.setattr(EvalModels, "load", classmethod(lambda cls, config, device: seen.append(device)))
    for procs, asked, want in ((Processes(1, 2, 1), "cuda", "cuda:1"), (Processes(1, 2, 1), "cuda:0", "cuda:0"),
                               (Processes(), "cuda", "cuda"), (Processes(1, 2, 1), "cpu", "cpu")):
        load_models(EvaluateConfig(), RunOptions(device=asked), processes=procs)
        assert seen.pop() == want
