"""mudi train on tiny SD / SDXL models: every mix mode, LoRA export and loading, resume,
cached text embeddings, config files and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mudi.cli import main
from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.train import TrainConfig, train
from mudi.train.checkpoints import list_checkpoints

FAST = dict(resolution=64, validate_every=-1, checkpoint_every=0)
RUN_KEYS = ("resume", "overwrite", "device", "progress")


@pytest.fixture(scope="module")
def subjects(data_dir: Path) -> Path:
    return data_dir / "subjects" / "dog6_and_dog2"


def _cfg(tiny_models: Path, subjects: Path, out: Path, model: str = "sd", **kw) -> TrainConfig:
    values = dict(FAST, subjects=str(subjects), base=str(tiny_models / model), out=str(out), max_train_steps=2)
    values.update(kw)
    return TrainConfig(**values)


def _train(tiny_models: Path, subjects: Path, out: Path, model: str = "sd", *, pipeline=None, on_step=None,
           stop_after: int = 0, **kw):
    """train() with the test's defaults; invocation options (resume, overwrite, device) split off."""
    options = RunOptions(progress=False, **{k: kw.pop(k) for k in RUN_KEYS if k in kw})
    return train(_cfg(tiny_models, subjects, out, model, **kw), options, pipeline=pipeline, on_step=on_step,
                 stop_after=stop_after)


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


def _lora(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "pytorch_lora_weights.safetensors"))


# ----------------------------------------------------------------------------- config


def test_defaults_are_method_section_3():
    c = TrainConfig()
    assert (c.rank, c.alpha, c.target_modules) == (32, 32.0, [])  # [] = the family's targets, resolved per model
    assert (c.learning_rate, c.lr_scheduler, c.weight_decay, c.max_grad_norm) == (1e-4, "constant", 1e-4, 1.0)
    assert (c.train_batch_size, c.gradient_accumulation_steps, c.max_train_steps) == (1, 2, 2010)
    assert (c.mix, c.p, c.k, c.seed, c.prior_weight, c.loss_alpha) == ("segmix", 0.3, 2, 42, 1.0, 1.0)
    assert c.resolution == 0 and c.mixed_precision == "auto"  # resolved from the model / device


def test_toml_round_trip_and_errors(tmp_path: Path):
    c = TrainConfig(subjects="s", base="b", out="o", p=0.5, validation_prompts=['a "quoted"\nprompt'], rank=4)
    path = tmp_path / "run.toml"
    path.write_text(c.to_toml())
    assert TrainConfig.from_toml(path) == c
    path.write_text("rnak = 4\n")
    with pytest.raises(MudiError, match="unknown option 'rnak'"):
        TrainConfig.from_toml(path)
    path.write_text('rank = "four"\n')
    with pytest.raises(MudiError, match="rank"):
        TrainConfig.from_toml(path)
    path.write_text("rank = \n")
    with pytest.raises(MudiError, match="not valid TOML"):
        TrainConfig.from_toml(path)


# ----------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("model", ["sd", "sdxl"])
@pytest.mark.parametrize("mix", ["segmix", "cutmix", "none"])
def test_train_each_model_and_mix(tiny_models, subjects, tmp_path, model, mix):
    out = tmp_path / "lora"
    # p = 1: every example is a composite (except for mix none = DreamBooth, all plain)
    _train(tiny_models, subjects, out, model, mix=mix, p=1.0, max_train_steps=2)
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors", "config.toml",
                 "train_log.jsonl", "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    rows = _log(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["lr"] == 1e-4 for r in rows)
    kinds = {k for r in rows for k in r["kinds"]}
    assert kinds == ({"plain"} if mix == "none" else {mix})
    assert len(rows[0]["kinds"]) == 2  # batch 1 x accumulation 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == model
    assert summary["text_encoder_calls_training"] == 0
    assert summary["latents_cached"] == 10  # the 10 plain photos
    assert summary["vae_encodes_training"] == (0 if mix == "none" else 4)
    saved = TrainConfig.from_toml(out / "config.toml")
    assert saved.resolution == 64 and saved.mixed_precision == "no" and saved.mix == mix
    assert Path(saved.subjects).is_absolute()
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") for k in keys)
    assert meta["unet.r"] == 32 and meta["unet.lora_alpha"] == 32
    assert {k.split(".lora")[0].split(".", 1)[1].rsplit(".", 1)[-1] for k in keys} == {"to_q", "to_k", "to_v", "0"}


def test_lora_loads_into_fresh_pipeline_and_changes_output(tiny_models, subjects, tmp_path):
    from mudi.models.loading import load_pipeline

    out = tmp_path / "lora"
    _train(tiny_models, subjects, out, "sdxl", learning_rate=1e-2, max_train_steps=3)

    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a photo of a olis corgi", num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    base = sample(load_pipeline(str(tiny_models / "sdxl")))
    pipe = load_pipeline(str(tiny_models / "sdxl"))
    pipe.load_lora_weights(str(out))
    tuned = sample(pipe)
    assert np.abs(tuned - base).max() > 1e-3
    # the kohya/ComfyUI copy holds the same LoRA: lora_unet_* keys, alpha tensors
    kohya = load_file(str(out / "lora_kohya.safetensors"))
    assert all(k.startswith("lora_unet_") for k in kohya)
    alphas = [v for k, v in kohya.items() if k.endswith(".alpha")]
    assert alphas and all(float(a) == 32.0 for a in alphas)
    assert len(kohya) == len(_lora(out)) * 3 // 2
    pipe2 = load_pipeline(str(tiny_models / "sdxl"))
    pipe2.load_lora_weights(str(out), weight_name="lora_kohya.safetensors")
    assert np.array_equal(sample(pipe2), tuned)
    # the final checkpoint's own diffusers-format copy is the same LoRA
    pipe3 = load_pipeline(str(tiny_models / "sdxl"))
    pipe3.load_lora_weights(str(list_checkpoints(out)[-1][1]))
    assert np.array_equal(sample(pipe3), tuned)


def test_validation_grid_written(tiny_models, subjects, tmp_path):
    out = tmp_path / "lora"
    _train(tiny_models, subjects, out, "sdxl", validate_every=1, validation_inference_steps=1,
               validation_images=1, max_train_steps=2, validation_prompts=["a photo of a {b} on a sofa"])
    assert TrainConfig.from_toml(out / "config.toml").validation_prompts == ["a photo of a {b} on a sofa"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step_000000.png", "step_000001.png", "step_000002.png"]
    # validation used cached prompt embeddings: still no text-encoder call after setup
    assert json.loads((out / "summary.json").read_text())["text_encoder_calls_training"] == 0


# ----------------------------------------------------------------------------- resume


def test_resume_is_bitwise_identical(tiny_models, subjects, tmp_path):
    kw = dict(max_train_steps=4, checkpoint_every=1, learning_rate=1e-2, p=0.5, keep_checkpoints=1)
    full = tmp_path / "full"
    _train(tiny_models, subjects, full, "sdxl", **kw)
    part = tmp_path / "part"
    _train(tiny_models, subjects, part, "sdxl", stop_after=2, **kw)
    assert not (part / "pytorch_lora_weights.safetensors").exists()
    assert [s for s, _ in list_checkpoints(part)] == [2]
    ckpt = list_checkpoints(part)[0][1]
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "lora.safetensors", "optimizer.safetensors", "pytorch_lora_weights.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["sampler"]["next_example"] == 4 and "python" in state["rng"]
    _train(tiny_models, subjects, part, "sdxl", resume=True, **kw)
    a, b = _lora(full), _lora(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _log(part)] == [1, 2, 3, 4]
    assert [r["loss"] for r in _log(part)] == [r["loss"] for r in _log(full)]


def test_resume_after_kill_between_checkpoints(tiny_models, subjects, tmp_path):
    """A run dying at step 3 (last checkpoint at 2) resumes from 2 and ends identical."""
    kw = dict(max_train_steps=4, checkpoint_every=2, learning_rate=1e-2, p=0.5)
    full = tmp_path / "full"
    _train(tiny_models, subjects, full, "sd", **kw)

    def die(step, row):
        if step == 3:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_models, subjects, part, "sd", **kw, on_step=die)
    assert [s for s, _ in list_checkpoints(part)] == [2]
    assert [r["step"] for r in _log(part)] == [1, 2, 3]
    # a half-written checkpoint folder from the kill must not confuse the resume
    (part / "checkpoints" / ".step_000004.tmp").mkdir()
    _train(tiny_models, subjects, part, "sd", resume=True, **kw)
    a, b = _lora(full), _lora(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _log(part)] == [1, 2, 3, 4]


def test_resume_refuses_changed_method_options(tiny_models, subjects, tmp_path):
    out = tmp_path / "run"
    _train(tiny_models, subjects, out, "sd", stop_after=1, checkpoint_every=1)
    with pytest.raises(MudiError, match="p = 0.9"):
        _train(tiny_models, subjects, out, "sd", resume=True, p=0.9)
    # more steps is fine
    _train(tiny_models, subjects, out, "sd", resume=True, max_train_steps=3)
    assert _log(out)[-1]["step"] == 3
    # the CLI needs only --out: everything else comes from OUT/config.toml
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert TrainConfig.from_toml(out / "config.toml").max_train_steps == 4


# ----------------------------------------------------------------------------- caching


def test_text_encoders_never_called_during_steps(tiny_models, subjects, tmp_path):
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    for enc in (pipe.text_encoder, pipe.text_encoder_2):
        enc.register_forward_hook(count)
    at_step: dict[int, int] = {}
    _train(tiny_models, subjects, tmp_path / "o", "sdxl", p=0.5, max_train_steps=3, validate_every=1,
               validation_inference_steps=1, validation_images=1,
          pipeline=pipe, on_step=lambda s, row: at_step.__setitem__(s, calls["n"]))
    assert calls["n"] > 0  # the captions were encoded once, before step 1
    assert at_step[1] == at_step[2] == at_step[3] == calls["n"]  # and never again (validation included)


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_then_train(tiny_models, subjects, tmp_path, capsys):
    s = tmp_path / "S"
    assert main(["prepare", "--from", str(subjects), "--out", str(s), "--no-progress"]) == 0
    out = tmp_path / "L"
    assert main(["train", "--subjects", str(s), "--base", str(tiny_models / "sdxl"), "--out", str(out),
                 "--steps", "4", "--resolution", "64", "--validate-every", "-1", "--no-progress"]) == 0
    assert "load_lora_weights" in capsys.readouterr().out
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_cli_config_file_and_flag_override(tiny_models, subjects, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'subjects = "{subjects}"\nbase = "{tiny_models / "sd"}"\nmax_train_steps = 5\n'
                   'resolution = 64\nrank = 4\nmix = "cutmix"\nvalidate_every = -1\n')
    out = tmp_path / "L"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--steps", "1", "--no-progress"]) == 0
    saved = TrainConfig.from_toml(out / "config.toml")
    assert (saved.max_train_steps, saved.rank, saved.mix, saved.resolution) == (1, 4, "cutmix", 64)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--base", "/nonexistent/model"], "does not exist"),
        (["--resolution", "72"], "multiple of 16"),
        (["--resolution", "32"], "resolution"),
        (["--p", "1.5"], "p = 1.5"),
        (["--rank", "0"], "rank"),
        (["--steps", "0"], "steps"),
        (["--k", "3"], "only 2 subjects"),
        (["--mixed-precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
        (["--prior-dir", "/nonexistent/priors"], "class set"),
        (["--lr", "-1"], "learning_rate"),
        (["--prior-weight", "-1"], "prior_weight"),
        (["--reg", "prior"], "--reg prior needs a class set"),
        (["--reg", "dco", "--prior-dir", "/some/priors"], "used only with --reg prior"),
        (["--dco-beta", "0"], "dco_beta"),
        (["--segmix-start-step", "-1"], "segmix_start_step"),
        (["--text-encoder-lr", "0"], "text_encoder_lr"),
        (["--train-text-encoder", "--text-encoder-target-modules", "to_q"], "not found in the text_encoder"),
    ],
)
def test_bad_input_exits_2(tiny_models, subjects, tmp_path, capsys, extra, message):
    out = tmp_path / "L"
    args = ["train", "--subjects", str(subjects), "--base", str(tiny_models / "sd"), "--out", str(out),
            "--resolution", "64", "--steps", "1", "--no-progress"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # failed before anything was written


def test_bad_subject_set_and_existing_out(tiny_models, tmp_path, capsys, subjects):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"id": {"a": "olis corgi"}}\n')
    args = ["train", "--base", str(tiny_models / "sd"), "--resolution", "64", "--steps", "1"]
    assert main(args + ["--subjects", str(bad), "--out", str(tmp_path / "o1")]) == 2
    assert "subject" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(args + ["--subjects", str(subjects), "--out", str(busy)]) == 2
    assert "--resume" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("empty", [False, True])
def test_resume_of_a_missing_or_empty_out_starts_a_new_run(tiny_models, subjects, tmp_path, capsys, empty):
    """After a config typo (nothing written), `--resume` with the fixed config just starts the run."""
    out = tmp_path / "o"
    if empty:
        out.mkdir()
    args = ["train", "--base", str(tiny_models / "sd"), "--subjects", str(subjects), "--out", str(out),
            "--resolution", "64", "--steps", "1", "--validate-every=-1", "--no-progress", "--resume"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"nothing to resume in {out}: starting a new run" in err
    assert [r["step"] for r in _log(out)] == [1] and (out / "pytorch_lora_weights.safetensors").is_file()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "keep.txt").write_text("mine")  # not a `mudi train` folder: still refused
    assert main([a if a != str(out) else str(stray) for a in args]) == 2
    assert "not a `mudi train` output folder" in capsys.readouterr().err
    assert sorted(p.name for p in stray.iterdir()) == ["keep.txt"]


def test_instance_examples_match_composer(tiny_models, subjects, tmp_path):
    """The trainer's cached plain examples + Composer.composite reproduce Composer.example."""
    from mudi.compose import Composer
    from mudi.subjects import SubjectSet
    from mudi.train.data import ExampleSchedule

    sset = SubjectSet.load(subjects)
    comp = Composer(sset, 64, mix="segmix", p=0.5, k=2)
    sched = ExampleSchedule(sset, 42)
    seen = set()
    for e in range(12):
        key, idx = sched.item(e)
        a = comp.example(key, idx, sched.numpy_rng(e))
        rng = sched.numpy_rng(e)
        b = comp.composite(key, idx, rng) if rng.random() < 0.5 else None
        if b is None:
            assert a.kind == "plain"
        else:
            assert a.kind == b.kind and a.caption == b.caption
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        seen.add(a.kind)
    assert seen == {"plain", "segmix"}
    # every photo is visited once per epoch
    assert sorted(sched.item(e) for e in range(10)) == sorted(sched.items)


def test_v_prediction_model(tiny_models, subjects, tmp_path):
    import shutil

    model = tmp_path / "sd_v"
    shutil.copytree(tiny_models / "sd", model)
    sched = model / "scheduler" / "scheduler_config.json"
    cfg = json.loads(sched.read_text())
    cfg["prediction_type"] = "v_prediction"
    sched.write_text(json.dumps(cfg))
    out = tmp_path / "o"
    _train(tiny_models, subjects, out, base=str(model), max_train_steps=1)
    assert json.loads((out / "summary.json").read_text())["prediction_type"] == "v_prediction"


def test_gradient_checkpointing_and_bf16_and_loss_weighting(tiny_models, subjects, tmp_path):
    kw = dict(max_train_steps=2, p=0.5, learning_rate=1e-2)
    _train(tiny_models, subjects, tmp_path / "a", "sd", **kw)
    _train(tiny_models, subjects, tmp_path / "b", "sd", gradient_checkpointing="on", **kw)
    a, b = _lora(tmp_path / "a"), _lora(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # recomputation, same result
    sa, sb = (json.loads((tmp_path / x / "summary.json").read_text()) for x in "ab")
    assert (sa["gradient_checkpointing"], sb["gradient_checkpointing"]) == (False, True)  # auto = off on a CPU
    assert "auto: cpu device" in sa["gradient_checkpointing_reason"]
    assert sa["optimizer"] == "AdamW" and sa["tf32"] is False  # the CPU loop and no TF32 off CUDA
    _train(tiny_models, subjects, tmp_path / "c", "sd", loss_alpha=0.0, **kw)
    la, lc = _log(tmp_path / "a")[0]["loss_instance"], _log(tmp_path / "c")[0]["loss_instance"]
    assert lc < la  # alpha 0: only subject pixels count, the (white/empty) rest weighs 0
    _train(tiny_models, subjects, tmp_path / "d", "sd", mixed_precision="bf16", **kw)
    assert TrainConfig.from_toml(tmp_path / "d" / "config.toml").mixed_precision == "bf16"
    assert all(v.dtype == torch.float32 for v in _lora(tmp_path / "d").values())  # LoRA kept in fp32


def test_sigkill_and_resume_gives_the_same_lora(tiny_models, subjects, tmp_path):
    """Kill a real `mudi train` process (SIGKILL, no clean-up) mid-run, resume, compare."""
    import os
    import signal
    import subprocess
    import sys
    import time

    kw = dict(max_train_steps=6, checkpoint_every=1, learning_rate=1e-2, p=0.5)
    full = tmp_path / "full"
    _train(tiny_models, subjects, full, "sd", **kw)

    part = tmp_path / "part"
    cmd = [sys.executable, "-m", "mudi.cli", "train", "--subjects", str(subjects), "--base", str(tiny_models / "sd"),
           "--out", str(part), "--resolution", "64", "--steps", "6", "--checkpoint-every", "1", "--lr", "0.01",
           "--p", "0.5", "--validate-every", "-1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (part / "checkpoints" / "step_000002").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (part / "pytorch_lora_weights.safetensors").exists()
    _train(tiny_models, subjects, part, "sd", resume=True, **kw)
    a, b = _lora(full), _lora(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _log(part)] == list(range(1, 7))


def test_8bit_adam_needs_bitsandbytes(tiny_models, subjects, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    args = ["train", "--subjects", str(subjects), "--base", str(tiny_models / "sd"), "--out", str(tmp_path / "o"),
            "--resolution", "64", "--steps", "1", "--use-8bit-adam", "--no-progress"]
    assert main(args) == 2
    assert "bitsandbytes" in capsys.readouterr().err


def test_cuda_requested_without_gpu(tiny_models, subjects, tmp_path, capsys):
    if torch.cuda.is_available():  # this check is about machines without a GPU
        return
    args = ["train", "--subjects", str(subjects), "--base", str(tiny_models / "sd"), "--out", str(tmp_path / "o"),
            "--resolution", "64", "--steps", "1", "--device", "cuda"]
    assert main(args) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_resume_with_overwrite_means_resume_or_start(tiny_models, subjects, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stray.txt").write_text("x")
    _train(tiny_models, subjects, out, "sd", resume=True, overwrite=True, max_train_steps=1, checkpoint_every=1)
    assert [r["step"] for r in _log(out)] == [1]  # nothing to resume: started over
    _train(tiny_models, subjects, out, "sd", resume=True, overwrite=True, max_train_steps=2)
    assert [r["step"] for r in _log(out)] == [1, 2]  # a run was there: continued, not restarted
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 1


def test_three_subjects_k3(tiny_models, data_dir, tmp_path):
    """k = 3 composites over a 4-subject set: every caption pre-computed, none encoded per step."""
    from mudi.subjects import SubjectSet

    sets = [SubjectSet.load(data_dir / "subjects" / n) for n in ("dog6_and_dog2", "monster_toy_and_robot_toy")]
    items = []
    for i, (ss, idents) in enumerate(zip(sets, (("olis", "hta"), ("ult", "amg")))):
        for s, ident in zip(ss, idents):
            photos = [(ph.image, ph.mask, ph.caption) for ph in ss.photos(s.key)[:2]]
            items.append((f"{s.key}{i}", f"{ident} {s.cls}", photos))
    four = SubjectSet.from_arrays(items).save(tmp_path / "four")
    out = tmp_path / "o"
    train(TrainConfig(**FAST, subjects=str(four), base=str(tiny_models / "sd"), out=str(out), max_train_steps=2,
                      k=3, p=1.0), RunOptions(progress=False))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["text_encoder_calls_training"] == 0
    assert summary["captions_cached"] >= 8 + 4 * 3 * 2  # photo captions + every ordered composite caption
    assert {k for r in _log(out) for k in r["kinds"]} == {"segmix"}


# ----------------------------------------------------------------------------- GPU-path regressions (run on CPU)


def test_text_encoders_freed_and_force_upcast_vae_kept_fp32(tiny_models, subjects, tmp_path, monkeypatch):
    """After the caption cache is built no reference to the text encoders is left (on a GPU the
    SDXL text_encoder_2 alone is 1.4 GB in fp16), and a --vae whose config says force_upcast
    (like the real SDXL base VAE) runs in fp32 under mixed precision."""
    import gc
    import weakref

    import mudi.models.loading

    real = mudi.models.loading.load_pipeline
    seen: dict = {}

    def spy(*args, **kwargs):
        pipe = real(*args, **kwargs)
        seen["pipe"] = pipe
        seen["refs"] = [weakref.ref(pipe.text_encoder), weakref.ref(pipe.text_encoder_2)]
        return pipe

    monkeypatch.setattr(mudi.models.loading, "load_pipeline", spy)
    checks = []

    def on_step(step, row):
        gc.collect()
        checks.append(([r() is None for r in seen["refs"]], seen["pipe"].vae.dtype))

    _train(tiny_models, subjects, tmp_path / "o", "sdxl", mixed_precision="bf16", vae=str(tiny_models / "sdxl"),
               max_train_steps=1, on_step=on_step)
    assert checks == [([True, True], torch.float32)]


def test_validation_decodes_outside_autocast(tiny_models, subjects, tmp_path):
    """Validation images are decoded without autocast in the VAE's dtype: under fp16 autocast the
    SDXL base VAE (fp32, force_upcast) overflows and the validation grids come out black."""
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(tiny_models / "sdxl"))
    assert pipe.vae.config.force_upcast
    real = pipe.vae.decode
    calls = []

    def decode(z, *args, **kwargs):
        calls.append((torch.is_autocast_enabled("cpu"), z.dtype, next(pipe.vae.parameters()).dtype))
        return real(z, *args, **kwargs)

    pipe.vae.decode = decode
    out = tmp_path / "o"
    _train(tiny_models, subjects, out, "sdxl", mixed_precision="bf16", validate_every=0,
               validation_inference_steps=1, validation_images=1, max_train_steps=1, pipeline=pipe)
    assert calls and all(c == (False, torch.float32, torch.float32) for c in calls)
    assert (out / "validation" / "step_000001.png").is_file()


def test_kohya_copy_of_real_layouts_converts_back_and_marks_sd2(tmp_path):
    """The kohya copy of LoRAs on the real SD 1.x/2.x and SDXL UNet layouts (tiny channels) converts
    back with diffusers' own kohya converter to exactly the diffusers-format weights (SDXL: with
    kohya's original-UNet block names); SD 2.x LoRAs are marked ss_v2 (A1111 filters LoRAs by
    base-model version)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers

    from mudi.models.families import family_named
    from mudi.models.lora import add_unet_lora, kohya_state_dict, lora_state_dict, save_kohya_lora

    def unet(kind):
        common = dict(sample_size=8, layers_per_block=2, norm_num_groups=8, attention_head_dim=2)
        if kind == "sdxl":
            return UNet2DConditionModel(
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(16, 16, 16), transformer_layers_per_block=[1, 2, 10], cross_attention_dim=16,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 16, use_linear_projection=True, **common)
        return UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(16,) * 4,
            cross_attention_dim=1024 if kind == "sd2" else 16, **common)

    for kind, cls in (("sdxl", StableDiffusionXLPipeline), ("sd1", StableDiffusionPipeline), ("sd2", StableDiffusionPipeline)):
        u = unet(kind)
        add_unet_lora(u, rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        torch.manual_seed(0)
        for p in u.parameters():
            if p.requires_grad:
                p.data.normal_()
        peft = lora_state_dict(u)
        kohya = kohya_state_dict(peft, 8.0, sgm_layers_per_block=2 if kind == "sdxl" else None)
        if kind == "sdxl":  # kohya's SDXL scheme: the original UNet's block names
            assert {k.split("_transformer_blocks")[0] for k in kohya} >= {
                "lora_unet_input_blocks_4_1", "lora_unet_input_blocks_8_1", "lora_unet_middle_block_1",
                "lora_unet_output_blocks_0_1", "lora_unet_output_blocks_5_1"}
            assert not any("down_blocks" in k or "up_blocks" in k or "mid_block_" in k for k in kohya)
        else:
            assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in kohya)
        converted, alphas = cls.lora_state_dict(kohya, unet_config=u.config)
        norm = {k.replace(".processor.", ".").replace("to_out_lora", "to_out.0.lora").replace("_lora.", ".lora."): v
                for k, v in converted.items()}
        expected = {"unet." + k: v for k, v in convert_state_dict_to_diffusers(peft).items()}
        assert set(norm) == set(expected), kind
        assert all(torch.equal(norm[k], expected[k]) for k in expected), kind
        assert alphas and set(float(a) for a in alphas.values()) == {8.0}
        family = family_named("sdxl" if kind == "sdxl" else "sd")
        path = save_kohya_lora(u, tmp_path / f"{kind}.safetensors", alpha=8.0, family=family)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta["ss_base_model_version"] == {"sdxl": "sdxl_base_v1-0", "sd1": "sd_v1", "sd2": "sd_v2"}[kind]
        assert meta["ss_v2"] == str(kind == "sd2")


def test_hub_model_path_resolves_resolution_after_loading(tiny_models, subjects, tmp_path, monkeypatch):
    """A hub id is not inspected before loading (inspect_model returns None): the model's
    resolution, SDXL-ness and prediction type then come from the loaded pipeline."""
    from mudi.models import loading

    monkeypatch.setattr(loading, "inspect_model", lambda base, **kw: None)
    out = tmp_path / "o"
    _train(tiny_models, subjects, out, "sdxl", resolution=0, max_train_steps=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["model"] == "sdxl" and summary["resolution"] == 64
    assert TrainConfig.from_toml(out / "config.toml").resolution == 64
    with pytest.raises(MudiError, match="does not fit"):
        _train(tiny_models, subjects, tmp_path / "bad", "sdxl", resolution=72, max_train_steps=1)


def test_target_module_typo_fails_before_writing_then_resume_works(tiny_models, subjects, tmp_path, capsys):
    """A typo in target_modules of a --config file: one-line error naming the module and the valid
    choices, exit 2, nothing written; with the config fixed the run starts and --resume continues it."""
    cfg = tmp_path / "run.toml"
    body = (f'subjects = "{subjects}"\nbase = "{tiny_models / "sd"}"\nmax_train_steps = 2\nresolution = 64\n'
            'validate_every = -1\ncheckpoint_every = 1\n')
    cfg.write_text(body + 'target_modules = ["to_q", "to_kk"]\n')
    out = tmp_path / "L"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'to_kk' not found" in err and "to_k, to_out.0, to_q, to_v" in err and "'to_q'" not in err
    assert not out.exists()
    cfg.write_text(body + 'target_modules = ["to_q", "to_k"]\n')
    assert main(["train", "--config", str(cfg), "--out", str(out), "--stop-after", "1", "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert [r["step"] for r in _log(out)] == [1, 2] and (out / "pytorch_lora_weights.safetensors").is_file()
    # the saved config is a run file: it reproduces the run elsewhere
    again = tmp_path / "again"
    assert main(["train", "--config", str(out / "config.toml"), "--out", str(again), "--no-progress"]) == 0
    a, b = _lora(out), _lora(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_folder_left_by_the_typo_bug(tiny_models, subjects, tmp_path, capsys):
    """A folder an older mudi left behind (config.toml with the typo, no checkpoint): --resume
    names the bad module (exit 2, nothing changed); with the saved config fixed, --resume trains."""
    out = tmp_path / "L"
    out.mkdir()
    cfg = _cfg(tiny_models, subjects, out, "sd", max_train_steps=1, target_modules=["to_q", "to_vv"])
    (out / "config.toml").write_text(cfg.to_toml() + 'device = "auto"\nprogress = true\n')
    before = (out / "config.toml").read_text()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'to_vv' not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"] and (out / "config.toml").read_text() == before
    (out / "config.toml").write_text(before.replace('"to_vv"', '"to_v"'))
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert [r["step"] for r in _log(out)] == [1] and (out / "pytorch_lora_weights.safetensors").is_file()
