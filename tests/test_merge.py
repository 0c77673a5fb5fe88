"""mudi merge (modular customization): the merge rules keep each LoRA's update, the merged folder
loads in diffusers (both files) and in `mudi generate`, `mudi train --init-lora` starts from it,
and every mistake is a clear error with nothing written. Tiny SD model, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mudi.cli import main
from mudi.errors import MudiError
from mudi.models.lora_files import LoraModule, read_diffusers_lora, read_kohya_lora
from mudi.settings import RunOptions
from mudi.train import MergeConfig, TrainConfig, merge, train
from mudi.train.merge import merge_module

FAST = dict(resolution=64, validate_every=-1, checkpoint_every=0, max_train_steps=2, learning_rate=1e-2)
QUIET = RunOptions(progress=False)


def _module(rank: int, out: int = 6, shape=(5,), scale: float = 1.0, seed: int = 0) -> LoraModule:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, *shape, generator=g)
    b = torch.randn(out, rank, *([1] * (len(shape) - 1)), generator=g)
    return LoraModule(a, b, scale)


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("shape", [(5,), (3, 3, 3)], ids=["linear", "conv3x3"])
def test_concat_keeps_every_update_exactly(shape):
    m1, m2 = _module(4, shape=shape, scale=0.5, seed=1), _module(2, shape=shape, scale=2.0, seed=2)
    merged = merge_module([m1, m2], [1.0, 1.0], "concat")
    assert merged.rank == 6 and merged.scale == 1.0
    torch.testing.assert_close(merged.delta(), m1.delta() + m2.delta(), rtol=1e-6, atol=1e-6)
    weighted = merge_module([m1, m2], [0.3, -1.5], "concat")  # negative weights subtract
    torch.testing.assert_close(weighted.delta(), 0.3 * m1.delta() - 1.5 * m2.delta(), rtol=1e-6, atol=1e-6)


def test_sum_is_the_best_low_rank_approximation_of_the_sum():
    m1, m2 = _module(4, out=8, shape=(7,), seed=3), _module(4, out=8, shape=(7,), seed=4)
    target = (m1.delta() + m2.delta()).reshape(8, 7)
    exact = merge_module([m1, m2], [1.0, 1.0], "sum", rank=8)
    torch.testing.assert_close(exact.delta().reshape(8, 7), target, rtol=1e-6, atol=1e-5)
    low = merge_module([m1, m2], [1.0, 1.0], "sum", rank=3)
    assert low.rank == 3
    s = torch.linalg.svdvals(target)
    err = torch.linalg.matrix_norm(low.delta().reshape(8, 7) - target)
    torch.testing.assert_close(err, s[3:].square().sum().sqrt(), rtol=1e-5, atol=1e-6)  # Eckart-Young
    default = merge_module([m1, m2], [1.0, 1.0], "sum")  # rank = the largest source rank
    assert default.rank == 4


# ----------------------------------------------------------------------------- end to end on a tiny SD model


@pytest.fixture(scope="module")
def single_loras(tiny_models, data_dir, tmp_path_factory):
    """Two single-subject DreamBooth LoRAs of one subject set (subject a: rank 4; subject b: rank 2, alpha 1)."""
    root = tmp_path_factory.mktemp("single")
    subjects = data_dir / "subjects" / "dog6_and_dog2"
    base = str(tiny_models / "sd")
    for key, rank, alpha in (("a", 4, 4.0), ("b", 2, 1.0)):
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(root / key), only=[key], mix="none",
                          rank=rank, alpha=alpha), QUIET)
    return root, subjects, base


def _fused_deltas(base: str, lora: Path, weight_name: str = "pytorch_lora_weights.safetensors") -> dict:
    """What diffusers adds to each adapted weight when it loads and fuses ``lora``."""
    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(base)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lora), weight_name=weight_name)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    after = pipe.unet.state_dict()
    return {k: after[k] - before[k] for k in before if not torch.equal(after[k], before[k])}


def test_merge_then_fine_tune_end_to_end(single_loras, tmp_path, capsys):
    root, subjects, base = single_loras
    out = tmp_path / "merged"
    assert main(["merge", "--lora", str(root / "a"), "--lora", str(root / "b"), "--out", str(out)]) == 0
    assert "rank 6" in capsys.readouterr().out
    info = json.loads((out / "merge.json").read_text())
    assert info["rule"] == "concat" and info["rank"] == 6
    assert [s["subjects"] for s in info["sources"]] == [{"a": "olis corgi"}, {"b": "hta chow chow"}]
    # diffusers reads the merged file as the sum of the two updates (scales and ranks folded in)
    da, db, dm = (_fused_deltas(base, p) for p in (root / "a", root / "b", out))
    assert set(dm) == set(da) == set(db) and dm
    for k in dm:
        torch.testing.assert_close(dm[k], da[k] + db[k], rtol=1e-4, atol=1e-6)
    # the kohya copy holds the same merged updates
    ka, kb, km = (read_kohya_lora(p / "lora_kohya.safetensors") for p in (root / "a", root / "b", out))
    for name, m in km.modules.items():
        torch.testing.assert_close(m.delta(), ka.modules[name].delta() + kb.modules[name].delta())
    kohya_fused = _fused_deltas(base, out, "lora_kohya.safetensors")
    for k in dm:
        torch.testing.assert_close(kohya_fused[k], dm[k], rtol=1e-4, atol=1e-6)
    # a short Seg-Mix fine-tune starts from the merged LoRA (rank and alpha taken from it) ...
    tuned = tmp_path / "tuned"
    result = train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tuned), init_lora=str(out)), QUIET)
    assert result.finished
    saved = TrainConfig.from_toml(tuned / "config.toml")
    assert (saved.rank, saved.alpha, saved.init_lora) == (6, 6.0, str(out.resolve()))
    assert "rank 32 -> 6" in capsys.readouterr().err
    # ... and is loadable by mudi generate
    gen = tmp_path / "gen"
    assert main(["generate", "--lora", str(tuned), "--out", str(gen), "--n", "1", "--steps", "2",
                 "--prompt", "a photo of {a} and {b}", "--no-progress"]) == 0
    assert (gen / "0000.png").is_file()


def test_init_lora_is_the_starting_adapter_and_keeps_the_random_streams(single_loras, tmp_path):
    from mudi.models.lora import lora_state_dict
    from mudi.train.plan import prepare_run
    from mudi.train.recipe import LoRATrainer

    root, subjects, base = single_loras
    merged = tmp_path / "m"
    merge(MergeConfig(loras=[str(root / "a"), str(root / "b")], out=str(merged), rule="sum", rank=3))
    cfg = TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tmp_path / "t"), init_lora=str(merged))
    trainer = LoRATrainer(prepare_run(cfg, QUIET))
    try:
        trainer.setup()
        state = lora_state_dict(trainer.unet)
    finally:
        trainer.cleanup()
    table = read_diffusers_lora(merged / "pytorch_lora_weights.safetensors")
    assert len(state) == 2 * len(table.modules)
    for name, m in table.modules.items():
        module = name.split(".", 1)[1]
        assert torch.equal(state[f"{module}.lora_A.weight"], m.a) and torch.equal(state[f"{module}.lora_B.weight"], m.b)
    assert m.rank == 3


# ----------------------------------------------------------------------------- mistakes


def _other_base_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    text = (dst / "config.toml").read_text().replace('base = "', 'base = "/elsewhere/')
    (dst / "config.toml").write_text(text)
    return dst


@pytest.mark.parametrize("case, message", [
    ("one", "at least two LoRAs"),
    ("weights", "--weights has 1 values for 2"),
    ("zero", "finite non-zero"),
    ("rank_concat", "--rank applies to --rule sum"),
    ("missing", "no pytorch_lora_weights.safetensors"),
    ("other_base", "different base models"),
    ("other_targets", "trained with the same --target-modules"),
    ("out_exists", "--overwrite"),
])
def test_merge_mistakes_exit_2_and_write_nothing(single_loras, tiny_models, data_dir, tmp_path, capsys, case, message):
    root, subjects, base = single_loras
    a, b = str(root / "a"), str(root / "b")
    out = tmp_path / "out"
    extra: list[str] = ["--lora", a, "--lora", b]
    if case == "one":
        extra = ["--lora", a]
    elif case == "weights":
        extra += ["--weights", "1"]
    elif case == "zero":
        extra += ["--weights", "1,0"]
    elif case == "rank_concat":
        extra += ["--rank", "4"]
    elif case == "missing":
        extra = ["--lora", a, "--lora", str(tmp_path / "nowhere")]
    elif case == "other_base":
        extra = ["--lora", a, "--lora", str(_other_base_copy(root / "b", tmp_path / "b2"))]
    elif case == "other_targets":
        c = tmp_path / "c"
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(c), only=["b"], mix="none", rank=2,
                          target_modules=["to_q"]), QUIET)
        extra = ["--lora", a, "--lora", str(c)]
    elif case == "out_exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert main(["merge", *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert (not out.exists()) or [p.name for p in out.iterdir()] == ["keep.txt"]


def test_only_picks_subjects_and_init_lora_mistakes(single_loras, tmp_path):
    root, subjects, base = single_loras
    with pytest.raises(MudiError, match="add --mix none"):
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tmp_path / "x"), only=["a"]), QUIET)
    with pytest.raises(MudiError, match="unknown subject 'zz'"):
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tmp_path / "x"), only=["zz"], mix="none"),
              QUIET)
    with pytest.raises(MudiError, match="no pytorch_lora_weights"):
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tmp_path / "x"),
                          init_lora=str(tmp_path)), QUIET)
    other = _other_base_copy(root / "a", tmp_path / "a2")
    with pytest.raises(MudiError, match="was made on base model"):
        train(TrainConfig(**FAST, subjects=str(subjects), base=base, out=str(tmp_path / "x"), init_lora=str(other)),
              QUIET)
    assert not (tmp_path / "x").exists()
    saved = TrainConfig.from_toml(root / "a" / "config.toml")
    assert saved.only == ["a"]
