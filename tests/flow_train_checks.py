"""Training properties every flow-matching family must keep, written once and called from each
family's test file (FLUX.1 in test_families_dit.py, FLUX.2 [klein], Qwen-Image): a run stopped
after one step and resumed gives the bitwise-same LoRA; DCO's first-step loss is log 2 (LoRA B = 0,
so the model and its reference agree); gradient checkpointing on/off trains the same LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mudi.cli import main

FAST = ["--resolution", "64", "--validate-every", "-1", "--checkpoint-every", "0", "--no-progress"]


def train_cli(tiny_models: Path, subjects: Path, out: Path, part: str, *extra: str) -> int:
    """`mudi train` on the tiny model ``part`` for 3 steps at 64 px (``extra`` flags come last and win)."""
    return main(["train", "--subjects", str(subjects), "--base", str(tiny_models / part), "--out", str(out),
                 "--steps", "3", *FAST, *extra])


def tiny_pipeline(tiny_models: Path, part: str):
    """The tiny pipeline ``part`` of the tiny-models folder, progress bars off."""
    from mudi.models.loading import load_pipeline

    p = load_pipeline(str(tiny_models / part))
    p.set_progress_bar_config(disable=True)
    return p


def lora_weights(run: Path) -> dict[str, torch.Tensor]:
    """The diffusers LoRA a finished run exported."""
    return load_file(str(run / "pytorch_lora_weights.safetensors"))


def assert_init_mudi_from_the_cli(lora: Path, out: Path) -> None:
    """`mudi generate --init mudi --init-sigma 0.8 --save-init` with a flow family's LoRA: the sidecar
    records the initialization and its two-subject layout, and the init canvas is saved."""
    assert main(["generate", "--lora", str(lora), "--prompt", "a photo of {a} and {b}", "--out", str(out), "--n", "1",
                 "--steps", "2", "--init", "mudi", "--init-sigma", "0.8", "--save-init", "--no-progress"]) == 0
    side = json.loads((out / "0000.json").read_text())
    assert side["init"] == "mudi" and side["init_sigma"] == 0.8 and len(side["layout"]) == 2
    assert (out / "0000_init.png").is_file() and (out / "0000.png").is_file()


def assert_resume_is_bitwise(tiny_models: Path, subjects: Path, part: str, reference: Path, out: Path,
                             *extra: str) -> None:
    """``reference`` is a finished ``train_cli(..., *extra)`` run; the same run stopped after step 1
    and resumed must export exactly the same tensors."""
    assert train_cli(tiny_models, subjects, out, part, *extra, "--stop-after", "1") == 0
    assert not (out / "pytorch_lora_weights.safetensors").exists()  # really stopped early
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    a, b = lora_weights(reference), lora_weights(out)
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def assert_dco_first_step_is_log2(tiny_models: Path, subjects: Path, part: str, out: Path,
                                  *extra: str) -> list[dict]:
    """Two DCO steps: every reference loss finite, step 1's loss log 2; returns the log rows."""
    assert train_cli(tiny_models, subjects, out, part, "--reg", "dco", "--steps", "2", *extra) == 0
    assert json.loads((out / "summary.json").read_text())["reg"] == "dco"
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss_reference"]) for r in rows)
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # step 1: LoRA B = 0, the DCO loss is log 2
    return rows


def assert_checkpointing_trains_the_same_lora(tiny_models: Path, subjects: Path, part: str, tmp: Path) -> None:
    """One step with gradient checkpointing off and on: the same (non-zero) LoRA update, and the
    "on" run really recomputes blocks through ``torch.utils.checkpoint``."""
    import torch.utils.checkpoint as ckpt

    runs, calls = {}, {"off": 0, "on": 0}
    real = ckpt.checkpoint
    for mode in ("off", "on"):
        out = tmp / mode

        def spy(*args, _mode=mode, **kw):
            calls[_mode] += 1
            return real(*args, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ckpt, "checkpoint", spy)
            assert train_cli(tiny_models, subjects, out, part, "--steps", "1", "--gradient-checkpointing", mode) == 0
        assert json.loads((out / "summary.json").read_text())["gradient_checkpointing"] is (mode == "on")
        runs[mode] = lora_weights(out)
    assert calls["off"] == 0 and calls["on"] > 0, calls
    assert runs["off"].keys() == runs["on"].keys()
    assert all(torch.allclose(runs["off"][k], runs["on"][k], atol=1e-6) for k in runs["off"])
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in runs["on"].items() if "lora_B" in k)
