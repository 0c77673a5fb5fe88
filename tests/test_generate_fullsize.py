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


# ------------------------------------------------------------------------------- 2. fused LoRA

def _lora_modules(unet) -> int:
    return sum(1 for _, m in unet.named_modules() if hasattr(m, "lora_A"))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_fused_lora_matches_unfused_when_mudi_owns_the_pipeline(tiny_models, loras, subject_dir, tmp_path,
                                                                monkeypatch, scale):
    import mudi.generate.pipeline as pipeline_module

    calls: list[str] = []
    for name in ("fuse_lora", "unfuse_lora"):
        real = getattr(pipeline_module, name)
        monkeypatch.setattr(pipeline_module, name, lambda pipe, _r=real, _n=name: (calls.append(_n), _r(pipe))[1])
    runs = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        runs[mode] = generate(cfg(out, subject_dir, base=str(tiny_models / "sd"), lora=str(loras["sd"]),
                                  fuse_lora=mode, lora_scale=scale, n=2, batch_size=2))
        assert sidecar(out, 0)["lora_fused"] is (mode == "on")
    assert calls == ["fuse_lora", "unfuse_lora"]  # fused for sampling, taken out again at the end
    plain = generate(cfg(tmp_path / "plain", subject_dir, base=str(tiny_models / "sd"), n=2, batch_size=2))
    for fused, unfused, base in zip(runs["on"], runs["off"], plain):
        assert np.abs(img(fused).astype(int) - img(unfused)).max() <= 2  # the same images up to rounding
        assert np.abs(img(unfused).astype(int) - img(base)).max() > 10  # ... and the LoRA does change them


def test_auto_fuses_on_a_gpu_only(tiny_models, loras, subject_dir, tmp_path):
    from mudi.generate.pipeline import wants_fused_lora

    with_lora = cfg(tmp_path / "o", subject_dir, lora=str(loras["sd"]))
    assert wants_fused_lora(with_lora, torch.device("cuda", 1), own_pipe=True)
    assert wants_fused_lora(with_lora, torch.device("mps"), own_pipe=True)
    assert not wants_fused_lora(with_lora, torch.device("cpu"), own_pipe=True)  # CPU images stay bitwise
    assert not wants_fused_lora(with_lora, torch.device("cuda"), own_pipe=False)  # a caller's pipeline
    assert not wants_fused_lora(cfg(tmp_path / "o", subject_dir, lora=str(loras["sd"]), fuse_lora="off"),
                                torch.device("cuda"), own_pipe=True)
    assert not wants_fused_lora(cfg(tmp_path / "o", subject_dir, fuse_lora="on"), torch.device("cuda"),
                                own_pipe=True)  # no LoRA
    out = tmp_path / "auto"
    generate(cfg(out, subject_dir, base=str(tiny_models / "sd"), lora=str(loras["sd"]), n=1))
    assert sidecar(out, 0)["lora_fused"] is False


def test_a_callers_pipeline_is_never_fused_and_left_without_the_adapter(sd_pipe, loras, subject_dir, tmp_path):
    before = {k: v.clone() for k, v in sd_pipe.unet.state_dict().items()}
    out = tmp_path / "given"
    generate(cfg(out, subject_dir, lora=str(loras["sd"]), fuse_lora="on", n=1), pipe=sd_pipe)
    assert sidecar(out, 0)["lora_fused"] is False
    assert _lora_modules(sd_pipe.unet) == 0
    after = sd_pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fuse_lora_flag(capsys):
    from mudi.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["generate", "--fuse-lora", "sometimes", "--prompt", "x", "--out", "y"])
    assert exc.value.code == 2 and "--fuse-lora" in capsys.readouterr().err
    from mudi.errors import MudiError
    from mudi.generate import GenerateConfig

    with pytest.raises(MudiError, match="--fuse-lora"):
        GenerateConfig(prompts=["x"], out="y", fuse_lora="yes").check()


# ------------------------------------------------------------------------------- 3. several processes

def test_stand_in_processes_split_the_images_into_one_folder(tiny_models, sd_pipe, subject_dir, tmp_path, monkeypatch):
    """Two stand-in processes (threads, each with its own pipeline): process i samples images
    i, i+2, ...; every image is made exactly once, the same as one process makes it; the main
    process alone writes config.toml and the contact sheet, after both are done."""
    import threading

    import mudi.generate.pipeline as pipeline_module
    from mudi.models.loading import load_pipeline
    from test_evaluate_processes import ThreadGroup

    pipes = [sd_pipe, load_pipeline(str(tiny_models / "sd"))]
    made: dict[str, list[str]] = {}
    real_sample = pipeline_module.sample_jobs
    real_sheets = pipeline_module.write_contact_sheets

    def sample_spy(pipe, jobs, *args, **kwargs):
        made[threading.current_thread().name] = [j.stem for j in jobs]
        return real_sample(pipe, jobs, *args, **kwargs)

    sheets: list[list[str]] = []

    def sheets_spy(out, jobs, *args, **kwargs):
        sheets.append(sorted(p.name for p in out.glob("0*.png")))
        return real_sheets(out, jobs, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample_jobs", sample_spy)
    monkeypatch.setattr(pipeline_module, "write_contact_sheets", sheets_spy)
    prompts = [PROMPT, "{c} and {a}"]
    out = tmp_path / "one_folder"
    results = ThreadGroup(2).run(lambda procs: (threading.current_thread().__setattr__("name", f"p{procs.index}"),
                                                generate(cfg(out, subject_dir, prompts=prompts, n=3),
                                                         pipe=pipes[procs.index], procs=procs))[1])
    assert not any(isinstance(r, BaseException) for r in results), results
    assert made == {"p0": ["0000", "0002", "0004"], "p1": ["0001", "0003", "0005"]}  # disjoint and complete
    assert sheets == [[f"{i:04d}.png" for i in range(6)]]  # once, with every image there
    assert results[0] == results[1] == [out / f"{i:04d}.png" for i in range(6)]
    assert (out / "config.toml").is_file() and (out / "contact_sheet.png").is_file()
    monkeypatch.undo()
    alone = generate(cfg(tmp_path / "alone", subject_dir, prompts=prompts, n=3), pipe=sd_pipe)
    assert [p.read_bytes() for p in alone] == [p.read_bytes() for p in results[0]]


def test_resume_is_split_after_skipping_finished_images(sd_pipe, subject_dir, tmp_path, monkeypatch):
    """With --resume every process skips the same finished images, then takes its share of the rest."""
    import mudi.generate.pipeline as pipeline_module

    class Alone(Processes):  # a member of a group of 2 whose barrier is a no-op (run one after the other)
        def wait(self):
            pass

    out = tmp_path / "r"
    generate(cfg(out, subject_dir, n=2), pipe=sd_pipe)
    taken: list[str] = []
    monkeypatch.setattr(pipeline_module, "sample_jobs", lambda pipe, jobs, *a, **k: taken.extend(j.stem for j in jobs))
    monkeypatch.setattr(pipeline_module, "write_contact_sheets", lambda *a, **k: None)
    for index in (0, 1):
        generate(cfg(out, subject_dir, n=6), RunOptions(resume=True, progress=False), pipe=sd_pipe,
                 procs=Alone(index, 2))
    assert taken == ["0002", "0004", "0003", "0005"]


def test_two_cpu_processes_generate_one_folder(tiny_models, subject_dir, tmp_path):
    """`mudi generate` started as two processes (the environment accelerate launch sets): one
    folder with every image once, the same files as one process writes."""
    from test_processes import launch

    args = ["-m", "mudi.cli", "generate", "--base", str(tiny_models / "sd"), "--subjects", str(subject_dir),
            "--prompt", PROMPT, "--n", "3", "--steps", "2", "--no-progress", "--device", "cpu"]
    two = launch(args + ["--out", str(tmp_path / "two")], n=2)
    assert all(r.returncode == 0 for r in two), [r.stderr[-2000:] for r in two]
    assert "wrote 3 image(s)" in two[0].stdout and "wrote" not in two[1].stdout  # one report, by the main process
    one = launch(args + ["--out", str(tmp_path / "one")], n=1)
    assert one[0].returncode == 0, one[0].stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["0000.json", "0000.png", "0001.json", "0001.png", "0002.json", "0002.png", "config.toml",
                     "contact_sheet.png"]
    for i in range(3):
        assert (tmp_path / "two" / f"{i:04d}.png").read_bytes() == (tmp_path / "one" / f"{i:04d}.png").read_bytes()
