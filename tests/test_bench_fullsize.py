"""benchmarks/bench_fullsize.py: the full-size configs, the activation estimate and the result parsing.

The measurements themselves run `mudi` subprocesses for minutes; here only the parts that decide
what the benchmark prints are checked, in seconds and on the meta device.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import activation_model  # noqa: E402
import bench_fullsize  # noqa: E402
import fullsize_models as fm  # noqa: E402

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def test_full_configs_have_the_published_parameter_counts():
    # parameter counts of the real checkpoints (stabilityai/stable-diffusion-xl-base-1.0,
    # runwayml/stable-diffusion-v1-5, openai/clip-vit-large-patch14)
    counts = fm.parameter_counts("full", 32, TARGETS)
    assert counts["sdxl"]["unet"] == 2_567_463_684
    assert counts["sdxl"]["text_encoder"] == 123_060_480
    assert counts["sdxl"]["text_encoder_2"] == 694_659_840
    assert counts["sdxl"]["vae"] == 83_653_863
    assert counts["sd15"]["unet"] == 859_520_964
    assert counts["sd15"]["vae"] == 83_653_863
    assert counts["clip"]["model"] == 427_616_513
    # rank 32 on q/k/v/out: 32 * (in + out) per projection
    assert counts["sd15"]["lora"] == 6_377_472


def test_reduced_scale_keeps_the_block_layout_and_is_smaller():
    for part in fm.PIPELINES:
        full, reduced = fm.config("full", part), fm.config("reduced", part)
        for key in ("down_block_types", "up_block_types", "addition_embed_type"):
            assert full["unet"].get(key) == reduced["unet"].get(key)
        assert reduced["resolution"] * 4 <= full["resolution"]
    full, reduced = fm.parameter_counts("full", 32, TARGETS), fm.parameter_counts("reduced", 32, TARGETS)
    for part in fm.PARTS:
        assert sum(reduced[part].values()) * 10 < sum(full[part].values())


def test_activation_estimate_checkpointing_and_batch():
    one = activation_model.estimate("tiny", "sd15", 1, 4, TARGETS)
    two = activation_model.estimate("tiny", "sd15", 2, 4, TARGETS)
    assert 0 < one["checkpointed"] < one["plain"]
    assert two["plain"] == pytest.approx(2 * one["plain"], rel=0.1)


def test_cuda_like_functions_keep_no_attention_matrix_and_are_restored():
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    saved = activation_model.SavedTensors()
    q = torch.empty(1, 2, 4096, 64, device="meta", requires_grad=True)
    with activation_model.cuda_like_functions(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        F.scaled_dot_product_attention(q, q, q)
    assert F.scaled_dot_product_attention is original
    assert saved.total < 4096 * 4096 * 2  # q (fp16 copy) and the output, not 4096 x 4096 scores


def test_class_set_is_readable_by_mudi(tmp_path):
    from mudi.subjects import SubjectSet
    from mudi.train.priors import ClassSet

    folder = bench_fullsize.make_class_set(bench_fullsize.SUBJECTS, tmp_path / "classes")
    photos = ClassSet.load(folder).for_subjects(SubjectSet.load(bench_fullsize.SUBJECTS))
    assert sorted(photos) == ["a", "b"] and all(photos.values())


def test_result_parsing(tmp_path):
    rows = [{"step": i, "step_time": t} for i, t in enumerate((9.0, 2.0, 4.0, 3.0), start=1)]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_fullsize.train_step_time(tmp_path, warmup=1) == 3.0
    now = time.time()
    for i, stamp in enumerate((now, now + 2, now + 6)):
        (tmp_path / f"{i:04d}.png").write_bytes(b"")
        os.utime(tmp_path / f"{i:04d}.png", (stamp, stamp))
    assert bench_fullsize.image_interval(tmp_path) == pytest.approx(3.0)
    assert bench_fullsize.find_key({"a": [{"settings": {"seconds": 1.5}}]}, "seconds") == 1.5
    line = bench_fullsize.peak_text({"peak_rss_kb": 2_000_000, "rss_before_kb": 500_000})
    assert line.startswith("peak 2.00 GB RSS")


def test_checkpointing_flags_follow_mudi_train():
    import argparse

    options = bench_fullsize.cli_options("train")
    assert {"--gradient-checkpointing", "--prior-dir", "--steps"} <= set(options)
    # explicit on/off, never mudi's "auto" (on for CUDA below 48 GB)
    on, off = (bench_fullsize.checkpointing_flags(v, options) for v in (True, False))
    parser = argparse.ArgumentParser()
    parser.add_argument("--gradient-checkpointing", **{k: getattr(options["--gradient-checkpointing"], k)
                                                       for k in ("nargs", "choices", "const")})
    assert parser.parse_args(on).gradient_checkpointing in (True, "on")
    assert parser.parse_args(off).gradient_checkpointing in (None, False, "off")
    assert off == ["--gradient-checkpointing", "off"]
    # the boolean switch of older versions
    switch = {"--gradient-checkpointing": argparse.Action(["--gradient-checkpointing"], "x", nargs=0)}
    assert bench_fullsize.checkpointing_flags(True, switch) == ["--gradient-checkpointing"]
    assert bench_fullsize.checkpointing_flags(False, switch) == []


def test_ratios(capsys):
    figures = {("train", "sdxl", (False, False)): 1.0, ("train", "sdxl", (True, False)): 1.5,
               ("generate", "sdxl", "mudi"): 2.2, ("generate", "sdxl", "none"): 2.0}
    bench_fullsize.print_ratios(figures, ["sdxl", "sd15"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["time ratios sdxl: gradient checkpointing x1.50, init mudi vs none x1.10"]


def test_arguments_are_checked_before_any_work():
    import torch

    assert bench_fullsize.check_args("cpu", ["sdxl", "sd15"]) is None
    assert "choose from sdxl, sd15" in bench_fullsize.check_args("cpu", ["flux"])
    assert "--device mps" in bench_fullsize.check_args("mps", ["sdxl"])
    if not torch.cuda.is_available():
        assert "CUDA is not available" in bench_fullsize.check_args("cuda", ["sdxl"])
        assert bench_fullsize.main(["--device", "cuda"]) == 2
