"""Tests of the toy base model's trainer (``python -m mudi.toy.train``) on a tiny model config:
the default CPU path unchanged, the device / precision plumbing, ``--init-from`` a pipeline folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mudi.toy import train
from mudi.toy.train_device import PIPELINE_WEIGHTS, Placement

#: Small networks (the shipped sizes are ToyModelConfig's defaults).
TINY = {"vae_channels": [8, 8, 8], "unet_channels": [16, 16, 32], "unet_attention_heads": [1, 1, 2],
        "text_dim": 32, "text_layers": 1, "text_heads": 2}

#: A few images, 3 VAE steps (one unweighted), 4 UNet steps (two with the epsilon target).
RECIPE = ["--images", "12", "--vae-steps", "3", "--vae-batch", "2", "--vae-phase1-steps", "1",
          "--unet-steps", "4", "--unet-eps-steps", "2", "--batch", "3", "--warmup", "2",
          "--sample-every", "0"]

#: Sums of the weights after RECIPE, recorded with main's trainer before --device/--precision existed
#: (commit 39d75c1; the state dicts of the two versions were also compared bitwise then). One extra
#: draw from torch's generator before the third UNet step moves "unet" by 1.3e-5 and "te" by 5e-4
#: (relative), so the tolerance below (1e-6) catches any change of the draw order or the recipe.
MAIN_SUMS = {"vae": 231.57051696625422, "unet": 1473.9999271086538, "ema_unet": 1474.0769351136378,
             "te": 93.34476020062021, "ema_te": 93.3295901710938}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy_cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def run(out: Path, cfg: Path, *extra: str) -> dict:
    """Train the tiny recipe into ``out``; returns the checkpointed weights."""
    assert train.main(["--out", str(out), "--model-config", str(cfg), *RECIPE, *extra]) == 0
    vae = torch.load(out / "vae.pt", weights_only=False)
    unet = torch.load(out / "unet.pt", weights_only=False)
    return {"vae": vae["model"], **{k: unet[k] for k in ("unet", "ema_unet", "te", "ema_te")}}


def weight_sum(sd: dict) -> float:
    return sum(float(v.double().sum()) for v in sd.values() if v.is_floating_point())


def assert_same(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, tiny_config) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy_cpu") / "run"
    return out, run(out, tiny_config)


def test_default_cpu_path_is_mains(cpu_run):
    _, weights = cpu_run
    for name, expected in MAIN_SUMS.items():
        assert weight_sum(weights[name]) == pytest.approx(expected, rel=1e-6), name
    assert all(v.dtype == torch.float32 for sd in weights.values() for v in sd.values() if v.is_floating_point())


class SpyPlacement(Placement):
    """Stays on the CPU but records what the trainer hands to the device."""

    def __init__(self):
        super().__init__("cpu", "fp32")
        object.__setattr__(self, "models", [])
        object.__setattr__(self, "tensors", [])
        object.__setattr__(self, "autocasts", [0])

    def model(self, module):
        self.models.append(type(module).__name__)
        return super().model(module)

    def tensor(self, tensor):
        self.tensors.append(tuple(tensor.shape))
        return super().tensor(tensor)

    def autocast(self):
        self.autocasts[0] += 1
        return super().autocast()


def test_models_batches_and_noise_go_through_the_placement(cpu_run, tiny_config, tmp_path, monkeypatch):
    spy = SpyPlacement()
    monkeypatch.setattr(train, "resolve_placement", lambda device, precision: spy)
    weights = run(tmp_path / "run", tiny_config)
    assert_same(weights, cpu_run[1])  # random draws stay on the CPU generator, in the same order
    assert spy.models == ["AutoencoderKL", "UNet2DConditionModel", "CLIPTextModel"]
    batch, latent = 3, (3, 16, 16, 16)
    # per UNet step: token ids, latents, noise, timesteps; per VAE step: images and pixel weights
    assert spy.tensors.count((batch, 77)) == 4 and spy.tensors.count((batch,)) == 4
    assert spy.tensors.count(latent) == 8
    assert spy.tensors.count((2, 3, 64, 64)) == 3 and spy.tensors.count((2, 1, 64, 64)) == 3
    assert spy.autocasts[0] == 3 + 4  # every training forward pass


def test_bf16_autocast_keeps_fp32_master_weights(cpu_run, tiny_config, tmp_path):
    weights = run(tmp_path / "run", tiny_config, "--precision", "bf16")
    for name, sd in weights.items():
        floats = [v for v in sd.values() if v.is_floating_point()]
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats), name
    # the forward passes really ran in bf16: the weights moved differently from the fp32 run
    assert not torch.equal(weights["unet"]["conv_in.weight"], cpu_run[1]["unet"]["conv_in.weight"])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "unet training stopped at step 4" in log and "nan" not in log


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "cuda:1"], "CUDA is not available"),
    (["--device", "mps"], "MPS"),
    (["--device", "banana"], "is not a device"),
    (["--model-config", "MISSING.json"], "cannot read it as JSON"),
])
def test_bad_device_or_config_exits_2_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
    assert train.main(["--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_model_config_names_its_fields(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"unet_width": 64}))
    assert train.main(["--out", str(tmp_path / "run"), "--model-config", str(tmp_path / "cfg.json")]) == 2
    assert "unet_channels" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_pipeline(cpu_run, tiny_config, tmp_path_factory) -> Path:
    """The tiny CPU run, exported as a pipeline folder (what `--export` writes)."""
    from mudi.toy.model import build_text_encoder, build_tokenizer, build_unet, build_vae, load_config
    from mudi.toy.training import export

    cfg = load_config(tiny_config)
    weights = cpu_run[1]
    vae, unet, te = build_vae(cfg), build_unet(cfg), build_text_encoder(cfg)
    vae.load_state_dict(weights["vae"])
    unet.load_state_dict(weights["ema_unet"])
    te.load_state_dict(weights["ema_te"])
    out = tmp_path_factory.mktemp("toy_export") / "pipeline"
    return export(out, vae, unet, te, build_tokenizer(), 1.0, {"note": "test"})


def test_init_from_a_pipeline_folder_round_trips(tiny_pipeline, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "sample_grid", lambda *a, **k: None)  # the final grid is not tested here
    again = tmp_path / "again"
    assert train.main(["--out", str(tmp_path / "run"), "--model-config", str(tiny_config), *RECIPE,
                       "--init-from", str(tiny_pipeline), "--vae-steps", "0", "--unet-steps", "0",
                       "--export", str(again)]) == 0
    for rel in PIPELINE_WEIGHTS.values():  # fp16 -> fp32 (training) -> fp16 (export) is exact
        a, b = load_file(tiny_pipeline / rel), load_file(again / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_training_continues_from_a_pipeline_folder(tiny_pipeline, tiny_config, tmp_path):
    weights = run(tmp_path / "run", tiny_config, "--init-from", str(tiny_pipeline), "--vae-phase1-steps", "0",
                  "--lr", "1e-3", "--warmup", "1")
    for name, rel, key in (("unet", PIPELINE_WEIGHTS["unet"], "unet"),
                           ("te", PIPELINE_WEIGHTS["text_encoder"], "te")):
        start = load_file(tiny_pipeline / rel)
        moved = max(float((weights[key][k] - start[k].float()).abs().max()) for k in start)
        # started from the pipeline's weights: 4 AdamW steps of lr 1e-3 move a weight by at most ~4e-3
        assert 0 < moved < 6e-3, name
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "unet training stopped at step 4" in log


def test_init_from_must_fit(tiny_pipeline, tiny_config, tmp_path, capsys):
    # the tiny pipeline with the shipped sizes: refused before anything is written
    assert train.main(["--out", str(tmp_path / "run"), "--init-from", str(tiny_pipeline)]) == 2
    assert "--model-config" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train.main(["--out", str(tmp_path / "run"), "--model-config", str(tiny_config),
                       "--init-from", str(tmp_path / "empty")]) == 2
    assert "vae.pt, unet.pt not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the plumbing is tested above)")
def test_cuda_bf16_run_resumes_on_the_cpu(tiny_config, tmp_path):
    out = tmp_path / "run"
    run(out, tiny_config, "--device", "cuda", "--precision", "bf16", "--unet-steps", "2")
    weights = run(out, tiny_config)  # the CUDA checkpoints resume on the CPU up to step 4
    for sd in weights.values():
        assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    assert "unet training stopped at step 4" in (out / "log.txt").read_text()
