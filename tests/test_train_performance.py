"""CUDA-only training settings checked on a CPU: gradient-checkpointing decision, AdamW kernels,
TF32, the accelerate launch environment (DeepSpeed/FSDP refused, mixed precision honoured)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mudi.errors import MudiError
from mudi.train.config import TrainConfig
from mudi.train.optim import make_optimizer, optimizer_name
from mudi.train.performance import (CHECKPOINTING_BELOW_GIB, GIB, adamw_implementation, decide_gradient_checkpointing,
                                    tf32_enabled)
from mudi.train.precision import check_launch_environment, resolve_mixed_precision

CUDA = torch.device("cuda", 0)  # only a name here: nothing runs on it
CPU = torch.device("cpu")


def _card(gib: float, name: str = "stand-in GPU"):
    return lambda device: SimpleNamespace(total_memory=int(gib * GIB), name=name)


# ----------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("gib, on", [(24, True), (40, True), (47.5, True), (48, False), (80, False)])
def test_auto_checkpointing_follows_cuda_memory(gib, on):
    decided, why = decide_gradient_checkpointing("auto", CUDA, properties=_card(gib, "A-card"))
    assert decided is on
    assert "A-card" in why and ("on" if on else "off") in why and f"{CHECKPOINTING_BELOW_GIB} GB" in why


def test_checkpointing_auto_off_on_cpu_and_explicit_choices_win():
    def never(device):
        raise AssertionError("device properties read for a non-CUDA device or an explicit choice")

    assert decide_gradient_checkpointing("auto", CPU, properties=never)[0] is False
    assert decide_gradient_checkpointing("on", CPU, properties=never)[0] is True
    assert decide_gradient_checkpointing("off", CUDA, properties=never)[0] is False


def test_checkpointing_config_field_reads_old_boolean_configs(tmp_path):
    assert TrainConfig().gradient_checkpointing == "auto"
    path = tmp_path / "old.toml"
    path.write_text("[train]\ngradient_checkpointing = true\n")  # a config.toml written before "auto"
    assert TrainConfig.from_toml(path).gradient_checkpointing == "on"
    assert TrainConfig().updated({"gradient-checkpointing": False}).gradient_checkpointing == "off"
    with pytest.raises(MudiError, match="choose one of auto, on, off"):
        TrainConfig().updated({"gradient_checkpointing": "sometimes"})


# ----------------------------------------------------------------------------- AdamW, TF32


def test_adamw_kernels_fused_on_cuda_reference_loop_on_cpu():
    cpu_params = [torch.nn.Parameter(torch.zeros(2))]
    assert adamw_implementation(cpu_params) == {"foreach": False}
    meta_cuda = [SimpleNamespace(device=CUDA, is_floating_point=lambda: True)]  # stand-in CUDA parameters
    assert adamw_implementation(meta_cuda) == {"fused": True}
    mixed = meta_cuda + cpu_params
    assert adamw_implementation(mixed) == {"foreach": False}
    opt = make_optimizer(cpu_params, TrainConfig())
    assert opt.defaults["foreach"] is False and not opt.defaults.get("fused") and optimizer_name(opt) == "AdamW"


def test_cpu_optimizer_step_is_the_reference_loop():
    """The CPU optimizer is exactly AdamW(foreach=False): same numbers as before the change."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    cfg = TrainConfig()
    ours = make_optimizer(a, cfg)
    ref = torch.optim.AdamW(b, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon, foreach=False)
    for _ in range(3):
        for p, q in zip(a, b):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def _tf32_state():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision, conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_set_for_a_cuda_run_and_restored():
    before = _tf32_state()
    with tf32_enabled(True, CUDA) as on:
        assert on is True and _tf32_state() in (("tf32", "tf32"), (True, True))
    assert _tf32_state() == before
    with tf32_enabled(False, CUDA) as on:
        assert on is False and _tf32_state() in (("ieee", "ieee"), (False, False))
    assert _tf32_state() == before
    with tf32_enabled(True, CPU) as on:  # other devices: untouched
        assert on is False and _tf32_state() == before
    with pytest.raises(RuntimeError), tf32_enabled(True, CUDA):
        raise RuntimeError("a failing run")
    assert _tf32_state() == before
    assert TrainConfig().tf32 is True


# ----------------------------------------------------------------------------- accelerate launch


@pytest.mark.parametrize("var, what", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")])
def test_deepspeed_and_fsdp_launches_are_refused(var, what):
    with pytest.raises(MudiError, match=f"with {what}.*DDP"):
        check_launch_environment({var: "true"})
    check_launch_environment({var: "false", "ACCELERATE_MIXED_PRECISION": "fp16"})  # plain DDP passes
    check_launch_environment({})


def test_launch_mixed_precision_is_followed_or_a_conflict():
    assert resolve_mixed_precision("auto", CUDA, {"ACCELERATE_MIXED_PRECISION": "bf16"}) == "bf16"
    assert resolve_mixed_precision("auto", CUDA, {"ACCELERATE_MIXED_PRECISION": "no"}) == "no"
    assert resolve_mixed_precision("auto", CUDA, {}) == "fp16"
    assert resolve_mixed_precision("bf16", CUDA, {"ACCELERATE_MIXED_PRECISION": "bf16"}) == "bf16"
    assert resolve_mixed_precision("fp16", CUDA, {"ACCELERATE_MIXED_PRECISION": "no"}) == "fp16"  # accelerate's default
    with pytest.raises(MudiError, match="conflicts with `accelerate launch --mixed_precision bf16`"):
        resolve_mixed_precision("fp16", CUDA, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    with pytest.raises(MudiError, match="fp8"):
        resolve_mixed_precision("auto", CUDA, {"ACCELERATE_MIXED_PRECISION": "fp8"})
    with pytest.raises(MudiError, match="came from ACCELERATE_MIXED_PRECISION"):
        resolve_mixed_precision("auto", CPU, {"ACCELERATE_MIXED_PRECISION": "fp16"})


def test_refused_launch_writes_nothing(tiny_models, data_dir, tmp_path, monkeypatch, capsys):
    from mudi.cli import main

    out = tmp_path / "o"
    args = ["train", "--subjects", str(data_dir / "subjects" / "dog6_and_dog2"), "--base", str(tiny_models / "sd"),
            "--out", str(out), "--resolution", "64", "--steps", "1", "--no-progress"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(args) == 2
    assert "FSDP" in capsys.readouterr().err and not out.exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert main(args + ["--mixed-precision", "no"]) == 2
    assert "conflicts" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------- data in the background, losses on device


def test_prefetcher_gives_the_batches_in_order_from_another_thread():
    import threading

    from mudi.train.data import BatchPrefetcher

    threads = []

    def build(g):
        threads.append(threading.current_thread().name)
        return {"g": g, "x": torch.arange(3) + g}

    order = [4, 5, 6, 7, 8]
    pf = BatchPrefetcher(build, iter(order), depth=2)
    got = [pf.get(g) for g in order]
    pf.close()
    assert [b["g"] for b in got] == order and all(torch.equal(b["x"], build(b["g"])["x"]) for b in got)
    assert all(name.startswith("mudi-batches") for name in threads[: len(order)])
    pf = BatchPrefetcher(build, iter(order), depth=1)
    with pytest.raises(RuntimeError, match="micro-batch 5 asked for"):
        pf.get(5)
    pf.close()

    def broken(g):
        raise MudiError(f"photo of example {g} unreadable")

    pf = BatchPrefetcher(broken, iter([0, 1]))
    with pytest.raises(MudiError, match="example 0 unreadable"):  # the worker's error, in the training thread
        pf.get(0)
    pf.close()


def test_losses_stay_on_the_device_until_the_step_ends(tiny_models, data_dir, tmp_path, monkeypatch):
    """One device-to-host transfer per optimizer step (not a float() per micro-batch), and the
    micro-batches come from the background builder, identical to building them in place."""
    from mudi.settings import RunOptions
    from mudi.train.plan import prepare_run
    import traceback

    from mudi.train.recipe import LoRATrainer

    cfg = TrainConfig(subjects=str(data_dir / "subjects" / "dog6_and_dog2"), base=str(tiny_models / "sd"),
                      out=str(tmp_path / "o"), resolution=64, max_train_steps=2, validate_every=-1,
                      checkpoint_every=0, gradient_accumulation_steps=3, p=1.0)
    trainer = LoRATrainer(prepare_run(cfg, RunOptions(progress=False)))
    try:
        trainer.setup()
        step = trainer.step_fn
        direct = [step.batches.build(g) for g in step.micro_batches(0)]
        step.prefetch(0, 2)
        syncs = []

        def counting(name, real):
            def wrapper(self, *args):
                caller = traceback.extract_stack(limit=2)[0].filename
                if "/mudi/" in caller.replace("\\", "/"):  # mudi's own transfers (not torch's CPU optimizer)
                    syncs.append(name)
                return real(self, *args)
            return wrapper

        for name in ("__float__", "item", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        fetched = [step._batch(g) for g in step.micro_batches(0)]
        result = step.run(1)
        monkeypatch.undo()
        assert syncs == ["tolist"] and isinstance(result.loss, float) and isinstance(result.grad_norm, float)
        for a, b in zip(direct, fetched):
            assert a.captions == b.captions and a.kinds == b.kinds
            assert all(torch.equal(x, y) for x, y in zip(a.latents + a.noise + a.timesteps,
                                                        b.latents + b.noise + b.timesteps))
    finally:
        trainer.cleanup()


def test_train_flags_for_the_new_options(tmp_path):
    import argparse

    from mudi.cli.train import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "--variant NAME" in text and "--no-tf32" in text and "{auto,on,off}" in text
    args = parser.parse_args(["train", "--variant", "fp16", "--no-tf32", "--gradient-checkpointing", "on"])
    cfg = build_config(args)
    assert (cfg.variant, cfg.tf32, cfg.gradient_checkpointing) == ("fp16", False, "on")
    assert build_config(parser.parse_args(["train"])).variant == "auto"
    assert build_config(parser.parse_args(["train"])).gradient_checkpointing == "auto"
    assert build_config(parser.parse_args(["train", "--gradient-checkpointing"])).gradient_checkpointing == "on"
    assert build_config(parser.parse_args(["train", "--no-gradient-checkpointing"])).gradient_checkpointing == "off"
