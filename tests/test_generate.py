"""`mudi generate` end to end on the tiny SD and SDXL pipelines, the generate API (determinism,
γ/layout sensitivity, resume), prompt → subjects resolution, and bad inputs (exit 2, nothing sampled)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mudi.cli import main
from mudi.errors import MudiError
from mudi.generate import GenerateConfig, generate
from mudi.generate.prompts import resolve_prompt
from mudi.settings import RunOptions
from mudi.generate.layout import LayoutWarning
from mudi.subjects import SubjectSet

CONTRACT_KEYS = {"prompt", "negative_prompt", "seed", "subjects", "phrases", "subject_set", "layout", "gamma", "init",
                 "base", "lora", "steps", "guidance_scale", "height", "width", "scheduler"}
PROMPT = "a photo of olis corgi and hta chow chow, simple background"


def _photo(rng, w, h, color):
    img = np.clip(rng.normal(color, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - w / 2) / (w * 0.38)) ** 2 + ((yy - h / 2) / (h * 0.42)) ** 2 <= 1
    return img, mask


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    spec = []
    for key, phrase, color, (w, h) in [("a", "olis corgi", (200, 120, 40), (80, 64)),
                                       ("b", "hta chow chow", (150, 90, 60), (64, 90)),
                                       ("c", "ult robot toy", (60, 60, 200), (50, 50))]:
        photos = []
        for i in range(2):
            img, mask = _photo(rng, w, h, color)
            photos.append((img, mask, f"a photo of a {phrase}"))
        spec.append((key, phrase, photos))
    return SubjectSet.from_arrays(spec).save(tmp_path_factory.mktemp("gen") / "subjects")


def _make_lora(base: Path, out: Path, seed: int) -> Path:
    """A LoRA with non-zero random weights on the tiny UNet, saved in diffusers format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from mudi.models.loading import load_pipeline

    pipe = load_pipeline(str(base))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def loras(tiny_models, subject_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    out = {name: _make_lora(tiny_models / name, root / name, i) for i, name in enumerate(("sd", "sdxl"))}
    # a `mudi train`-like output folder: config.toml names the base model and subject set
    (out["sd"] / "config.toml").write_text(
        f'base = "{tiny_models / "sd"}"\nsubjects = "{subject_dir}"\nresolution = 64\n'
    )
    return out


@pytest.fixture(scope="module")
def sd_pipe(tiny_models):
    from mudi.models.loading import load_pipeline

    return load_pipeline(str(tiny_models / "sd"))


def run_cli(*args) -> int:
    return main(["generate", "--steps", "2", "--no-progress", *map(str, args)])


def sidecar(out: Path, i: int) -> dict:
    return json.loads((out / f"{i:04d}.json").read_text())


def img(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------- CLI e2e

def test_cli_sdxl_lora_mudi_init(tiny_models, loras, subject_dir, tmp_path):
    out = tmp_path / "out"
    rc = run_cli("--base", tiny_models / "sdxl", "--lora", loras["sdxl"], "--subjects", subject_dir,
                 "--prompt", PROMPT, "--n", 2, "--out", out, "--save-init", "--guidance", 3)
    assert rc == 0
    for name in ("0000.png", "0000.json", "0000_init.png", "0001.png", "0001.json", "0001_init.png",
                 "contact_sheet.png", "init_sheet.png", "config.toml"):
        assert (out / name).is_file(), name
    s0, s1 = sidecar(out, 0), sidecar(out, 1)
    assert CONTRACT_KEYS <= set(s0)
    assert (s0["seed"], s1["seed"]) == (0, 1)
    assert s0["subjects"] == ["a", "b"] and s0["phrases"] == ["olis corgi", "hta chow chow"]
    assert s0["init"] == "mudi" and s0["gamma"] == 3.0 and s0["steps"] == 2 and s0["guidance_scale"] == 3.0
    assert s0["base"] == str(tiny_models / "sdxl") and s0["lora"] == str(loras["sdxl"])
    assert s0["scheduler"] == "EulerDiscreteScheduler" and (s0["height"], s0["width"]) == (64, 64)
    # SDXL's default negative prompt is the reference code's (github agwmon/MuDI utils/pipe.py)
    assert s0["negative_prompt"] == "anime, cartoon, graphic, text, painting, crayon, graphite, abstract glitch, blurry"
    assert s0["subject_set"] == str(subject_dir)
    assert sorted(p["key"] for p in s0["layout"]) == ["a", "b"]
    for p in s0["layout"]:
        x0, y0, x1, y1 = p["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert img(out / "0000.png").shape == (64, 64, 3)
    canvas = img(out / "0000_init.png")
    assert canvas.shape == (64, 64, 3) and (canvas[0, 0] == 255).all() and (canvas != 255).any()


def test_cli_sdxl_no_lora_init_none(tiny_models, subject_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli("--base", tiny_models / "sdxl", "--subjects", subject_dir, "--prompt", "{a} next to {c}",
                   "--n", 1, "--out", out, "--init", "none", "--seed", 5) == 0
    s = sidecar(out, 0)
    assert s["init"] == "none" and s["layout"] == [] and s["lora"] == "" and s["seed"] == 5
    assert s["prompt"] == "olis corgi next to ult robot toy" and s["subjects"] == ["a", "c"]
    assert not (out / "0000_init.png").exists()


def test_cli_sd_base_from_train_config_init_none(tiny_models, loras, tmp_path):
    out = tmp_path / "out"
    # no --base and no --subjects: both come from the LoRA folder's config.toml
    assert run_cli("--lora", loras["sd"], "--prompt", "olis corgi", "--n", 1, "--out", out, "--init", "none") == 0
    s = sidecar(out, 0)
    assert s["base"] == str(tiny_models / "sd") and s["init"] == "none" and s["subjects"] == ["a"]
    assert s["scheduler"] == "PNDMScheduler"


def test_cli_sd_no_lora_layout_file_dpm(tiny_models, subject_dir, tmp_path):
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps({"size": 128, "boxes": [{"key": "hta", "box": [0, 10, 60, 120]},
                                                         {"key": "olis corgi", "box": [64, 40, 128, 100]}]}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nolis corgi and hta chow chow\n\nhta chow chow sitting by olis corgi\n")
    out = tmp_path / "out"
    assert run_cli("--base", tiny_models / "sd", "--subjects", subject_dir, "--prompts", prompts, "--n", 1,
                   "--out", out, "--layout", layout, "--scheduler", "dpm", "--gamma", 2, "--seed", 10) == 0
    s0, s1 = sidecar(out, 0), sidecar(out, 1)
    assert (s0["seed"], s1["seed"]) == (10, 11)
    assert s0["prompt"] == "olis corgi and hta chow chow" and s1["subjects"] == ["b", "a"]
    assert s0["scheduler"] == "DPMSolverMultistepScheduler" and s0["gamma"] == 2.0 and s0["layout_mode"] == "file"
    boxes = {p["key"]: p["box"] for p in s0["layout"]}
    # regions (0,5)-(30,60) and (32,20)-(64,50) at 64 px, photos fitted inside them
    assert 0 <= boxes["b"][0] and boxes["b"][2] <= 30 and 5 <= boxes["b"][1] and boxes["b"][3] <= 60
    assert 32 <= boxes["a"][0] and boxes["a"][2] <= 64 and 20 <= boxes["a"][1] and boxes["a"][3] <= 50


# ----------------------------------------------------------------------------- API tests

def cfg(out, subject_dir, **kw) -> GenerateConfig:
    base = dict(prompts=[PROMPT], out=str(out), subjects=str(subject_dir), n=1, steps=2, seed=3,
                guidance=3.0)
    base.update(kw)
    return GenerateConfig(**base)


def test_same_seed_same_image_and_gamma_layout_init_change_it(sd_pipe, loras, subject_dir, tmp_path):
    a = img(generate(cfg(tmp_path / "a", subject_dir), pipe=sd_pipe)[0])
    b = img(generate(cfg(tmp_path / "b", subject_dir), pipe=sd_pipe)[0])
    assert np.array_equal(a, b)
    g1 = img(generate(cfg(tmp_path / "g1", subject_dir, gamma=1.0), pipe=sd_pipe)[0])
    assert np.abs(g1.astype(int) - a).mean() > 1
    layout = tmp_path / "l.json"
    layout.write_text(json.dumps({"a": [0, 0, 32, 64], "b": [32, 0, 64, 64]}))
    lf = img(generate(cfg(tmp_path / "lf", subject_dir, layout=str(layout)), pipe=sd_pipe)[0])
    assert np.abs(lf.astype(int) - a).mean() > 1
    none = img(generate(cfg(tmp_path / "none", subject_dir, init="none"), pipe=sd_pipe)[0])
    assert np.abs(none.astype(int) - a).mean() > 1
    with_lora = img(generate(cfg(tmp_path / "lora", subject_dir, lora=str(loras["sd"])), pipe=sd_pipe)[0])
    assert np.abs(with_lora.astype(int) - a).mean() > 1
    # the LoRA was unloaded again: the given pipe is as before
    again = img(generate(cfg(tmp_path / "again", subject_dir), pipe=sd_pipe)[0])
    assert np.array_equal(a, again)


def test_any_image_is_reproducible_alone(sd_pipe, subject_dir, tmp_path):
    batch = generate(cfg(tmp_path / "batch", subject_dir, n=3, seed=20), pipe=sd_pipe)
    alone = generate(cfg(tmp_path / "alone", subject_dir, n=1, seed=22), pipe=sd_pipe)
    assert np.array_equal(img(batch[2]), img(alone[0]))
    assert sidecar(tmp_path / "batch", 2)["layout"] == sidecar(tmp_path / "alone", 0)["layout"]
    assert not np.array_equal(img(batch[0]), img(batch[1]))


def test_resume_and_overwrite(sd_pipe, subject_dir, tmp_path):
    out = tmp_path / "out"
    generate(cfg(out, subject_dir, n=2), pipe=sd_pipe)
    first = (out / "0000.png").stat().st_mtime_ns
    with pytest.raises(MudiError, match="already has content"):
        generate(cfg(out, subject_dir, n=3), pipe=sd_pipe)
    paths = generate(cfg(out, subject_dir, n=3), RunOptions(resume=True, progress=False), pipe=sd_pipe)
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    assert (out / "0000.png").stat().st_mtime_ns == first  # kept, not regenerated
    assert sidecar(out, 2)["seed"] == 5
    with pytest.raises(MudiError, match="other settings.*gamma"):
        generate(cfg(out, subject_dir, n=3, gamma=1.0), RunOptions(resume=True, progress=False), pipe=sd_pipe)
    generate(cfg(out, subject_dir, n=1, gamma=1.0), RunOptions(overwrite=True, progress=False), pipe=sd_pipe)
    assert sidecar(out, 0)["gamma"] == 1.0


@pytest.mark.parametrize("good", [True, False])
def test_llm_layout_end_to_end(sd_pipe, subject_dir, tmp_path, good):
    answer = {"boxes": [{"subject": "olis corgi", "box": [2, 10, 30, 60]}, {"subject": "hta chow chow", "box": [34, 4, 62, 62]}]}
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            content = json.dumps(answer) if good else "Sure! The corgi goes left."
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = cfg(tmp_path / "llm", subject_dir, n=2, layout="llm", llm_url=url, llm_model="fake", llm_timeout=5)
    try:
        if good:
            generate(config, pipe=sd_pipe)
        else:
            with pytest.warns(LayoutWarning, match="LLM layout failed.*automatic layout"):
                generate(config, pipe=sd_pipe)
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 1  # one request per prompt, not per image
    assert PROMPT in requests[0]["messages"][-1]["content"]
    for i in range(2):
        s = sidecar(tmp_path / "llm", i)
        boxes = {p["key"]: p["box"] for p in s["layout"]}
        assert sorted(boxes) == ["a", "b"]
        if good:
            assert s["layout_source"] == "llm"
            assert 2 <= boxes["a"][0] and boxes["a"][2] <= 30 and 34 <= boxes["b"][0] and boxes["b"][2] <= 62
        else:
            assert s["layout_source"].startswith("auto (llm failed")


# ------------------------------------------------------------------------ prompts → subjects

def test_resolve_prompt(subject_dir):
    sset = SubjectSet.load(subject_dir)
    text, subs = resolve_prompt(sset, "hta chow chow and olis corgi")
    assert [s.key for s in subs] == ["b", "a"] and text == "hta chow chow and olis corgi"
    text, subs = resolve_prompt(sset, "{olis} playing with {b} and {ult robot toy}")
    assert text == "olis corgi playing with hta chow chow and ult robot toy" and [s.key for s in subs] == ["a", "b", "c"]
    with pytest.raises(MudiError, match=r"placeholder \{zzz\}"):
        resolve_prompt(sset, "{zzz} and olis corgi")
    with pytest.raises(MudiError, match="'amg' looks like a subject identifier"):
        resolve_prompt(sset, "olis corgi and amg cat")
    with pytest.raises(MudiError, match="names none of the subjects.*olis"):
        resolve_prompt(sset, "a photo of a dog")


# --------------------------------------------------------------------------- bad inputs

def _bad(capsys, out: Path, *args) -> str:
    capsys.readouterr()
    rc = run_cli("--prompt", PROMPT, "--out", out, *args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert not list(out.glob("*.png")) if out.exists() else True
    return err


def test_bad_inputs_before_loading(capsys, tiny_models, loras, subject_dir, tmp_path):
    out = tmp_path / "out"
    base = ("--base", tiny_models / "sd")
    assert "LoRA not found" in _bad(capsys, out, *base, "--subjects", subject_dir, "--lora", tmp_path / "nope")
    empty = tmp_path / "empty_lora"
    empty.mkdir()
    assert "no pytorch_lora_weights.safetensors" in _bad(capsys, out, *base, "--subjects", subject_dir, "--lora", empty)
    assert "subject-set folder not found" in _bad(capsys, out, *base, "--subjects", tmp_path / "nosubjects")
    err = _bad(capsys, out, *base, "--subjects", subject_dir, "--prompt", "olis corgi meets amg cat")
    assert "'amg' looks like a subject identifier" in err and "olis" in err
    assert "names none of the subjects" in _bad(capsys, out, *base, "--subjects", subject_dir, "--prompt", "a dog")
    assert "placeholder {zzz}" in _bad(capsys, out, *base, "--subjects", subject_dir, "--prompt", "{zzz} and {a}")
    boxes = tmp_path / "outside.json"
    boxes.write_text(json.dumps({"a": [0, 0, 40, 70], "b": [30, 0, 64, 64]}))
    err = _bad(capsys, out, *base, "--subjects", subject_dir, "--layout", boxes, "--resolution", 64)
    assert str(boxes) in err and "outside the 64x64 canvas" in err
    boxes.write_text(json.dumps({"a": [0, 0, 30, 60], "c": [30, 0, 64, 64]}))
    err = _bad(capsys, out, *base, "--subjects", subject_dir, "--layout", boxes, "--resolution", 64)
    assert str(boxes) in err and "no box for ['b']" in err
    assert "layout file not found" in _bad(capsys, out, *base, "--subjects", subject_dir, "--layout", tmp_path / "x.json")
    assert "no base model" in _bad(capsys, out, "--subjects", subject_dir)
    assert "exclude each other" in _bad(capsys, out, *base, "--subjects", subject_dir, "--resume", "--overwrite")
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert "already has content" in _bad(capsys, out, *base, "--subjects", subject_dir)
    assert (out / "keep.txt").read_text() == "user data"


def test_bad_inputs_needing_the_model(capsys, tiny_models, loras, subject_dir, tmp_path):
    out = tmp_path / "out"
    err = _bad(capsys, out, "--base", tiny_models / "sdxl", "--subjects", subject_dir, "--lora", loras["sd"])
    assert "does not fit the base model" in err and "config.toml says base" in err
    err = _bad(capsys, out / "2", "--base", tiny_models / "sd", "--subjects", subject_dir, "--resolution", 72)
    assert "--resolution 72 is not a multiple of 16" in err


def test_lora_with_modules_the_base_lacks_is_refused(sd_pipe, loras, tmp_path):
    from safetensors.torch import load_file, save_file

    from mudi.generate.lora_loading import load_lora

    state = load_file(str(loras["sd"] / "pytorch_lora_weights.safetensors"))
    renamed = {k.replace("down_blocks.1", "down_blocks.7"): v for k, v in state.items()}
    bad = tmp_path / "bad_lora"
    bad.mkdir()
    save_file(renamed, str(bad / "pytorch_lora_weights.safetensors"))
    with torch.no_grad():
        before = sd_pipe.unet(torch.ones(1, 4, 8, 8), 10, encoder_hidden_states=torch.ones(1, 77, 32)).sample
    with pytest.raises(MudiError, match="do not exist in the base model"):
        load_lora(sd_pipe, bad)
    # the pipeline is left as it was (no half-loaded adapter)
    with torch.no_grad():
        after = sd_pipe.unet(torch.ones(1, 4, 8, 8), 10, encoder_hidden_states=torch.ones(1, 77, 32)).sample
    assert torch.equal(before, after)
    assert not any(hasattr(m, "lora_A") and m.lora_A for m in sd_pipe.unet.modules())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(MudiError, match="not a readable safetensors"):
        load_lora(sd_pipe, garbage)


def test_batched_generation_matches_one_by_one(sd_pipe, subject_dir, tmp_path):
    prompts = [PROMPT, "{c} and {a}"]
    one = generate(cfg(tmp_path / "one", subject_dir, prompts=prompts, n=2), pipe=sd_pipe)
    many = generate(cfg(tmp_path / "many", subject_dir, prompts=prompts, n=2, batch_size=3), pipe=sd_pipe)
    for a, b in zip(one, many):
        diff = np.abs(img(a).astype(int) - img(b))
        assert diff.max() <= 2, diff.max()  # the same images up to batched-kernel rounding
    assert sidecar(tmp_path / "many", 3)["subjects"] == ["c", "a"]
    assert not np.array_equal(img(many[0]), img(many[1]))


def test_given_pipeline_keeps_its_scheduler(sd_pipe, subject_dir, tmp_path):
    before = sd_pipe.scheduler
    generate(cfg(tmp_path / "ddim", subject_dir, scheduler="ddim"), pipe=sd_pipe)
    assert sidecar(tmp_path / "ddim", 0)["scheduler"] == "DDIMScheduler"
    assert sd_pipe.scheduler is before


def test_lora_beyond_attention_round_trips(tiny_models, tmp_path):
    """A LoRA on attention *and* other layers (proj_in/out, feed-forward), saved the way
    `mudi train` saves it, loads with every module and reproduces the trained UNet's output."""
    from mudi.generate.lora_loading import load_lora
    from mudi.models.lora import add_unet_lora, save_diffusers_lora
    from mudi.models.loading import load_pipeline

    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    trained = load_pipeline(str(tiny_models / "sd"))
    add_unet_lora(trained.unet, rank=4, alpha=4, target_modules=targets)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trained.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_diffusers_lora(type(trained), trained.unet, tmp_path / "lora")
    x = (torch.ones(1, 4, 8, 8), 10)
    cond = torch.ones(1, 77, 32)
    with torch.no_grad():
        want = trained.unet(*x, encoder_hidden_states=cond).sample
    pipe = load_pipeline(str(tiny_models / "sd"))
    load_lora(pipe, tmp_path / "lora")
    wrapped = {n.rsplit(".", 1)[-1] for n, m in pipe.unet.named_modules() if getattr(m, "lora_A", None)}
    assert {"to_q", "to_k", "to_v", "proj_in", "proj_out"} <= wrapped
    with torch.no_grad():
        got = pipe.unet(*x, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, want)
