"""mudi.models.loading loaders and mudi.models.tiny models: every tiny part loads and runs; offline errors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mudi.models import loading as models
from mudi.errors import ModelNotAvailableError, MudiError
from mudi.models.families import family_of
from mudi.models.tiny import CLIP_VOCAB_SIZE, TINY_IMAGE_SIZE, build_tiny_models, clip_tokenizer, parse_parts


def _image(h: int = 48, w: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# --- tokenizer ----------------------------------------------------------------------------------


def test_clip_tokenizer_is_the_real_vocabulary():
    tok = clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok.model_max_length == 77
    ids = tok("a photo of a dog").input_ids
    # Known ids of the real CLIP vocabulary.
    assert ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a dog"
    padded = tok("a dog", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77
    assert clip_tokenizer(16).model_max_length == 16


def test_validate_tokenizer_rejects_tiny_vocab():
    from transformers import CLIPTokenizer

    broken = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[], model_max_length=77)
    assert len(broken) == 2
    with pytest.raises(MudiError, match="only 2 tokens"):
        models.validate_tokenizer(broken, "test tokenizer")
    models.validate_tokenizer(clip_tokenizer(), "ok")  # the real one passes


def test_validate_tokenizer_rejects_missing_max_length():
    tok = clip_tokenizer()
    tok.model_max_length = int(1e30)  # what transformers uses when the config lacks it
    with pytest.raises(MudiError, match="model_max_length"):
        models.validate_tokenizer(tok, "test tokenizer")


def test_parse_parts():
    assert parse_parts("sdxl, sam") == ("sdxl", "sam")
    with pytest.raises(MudiError, match="Unknown"):
        parse_parts("sdxl,unet3")


# --- resolution ---------------------------------------------------------------------------------


def test_offline_unknown_hub_id_fails_fast_with_help():
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        models.resolve_model("mudi-test-nonexistent/definitely-not-cached-model", "pipeline")
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert "mudi-test-nonexistent/definitely-not-cached-model" in msg
    assert "offline" in msg
    assert "mudi tiny-models --out" in msg
    assert "local model folder" in msg
    assert elapsed < 5.0, f"offline resolution took {elapsed:.1f}s"


def test_offline_loader_raises_model_not_available():
    with pytest.raises(ModelNotAvailableError):
        models.load_sam("mudi-test-nonexistent/sam-nothing")


def test_online_resolution_paths(monkeypatch):
    """With the hub reachable (simulated): a public id is returned as is for from_pretrained to
    download; a network error falls back to the cache and fails fast when nothing is cached; a hub
    repo without model_index.json is a MudiError, not a traceback."""
    import huggingface_hub
    from diffusers import DiffusionPipeline

    from mudi.models import hub

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, name, **kw: object())
    assert models.resolve_model("someone/public-model", "pipeline") == "someone/public-model"

    def no_index(*args, **kwargs):
        raise OSError("someone/single-file does not appear to have a file named model_index.json.")

    monkeypatch.setattr(DiffusionPipeline, "load_config", no_index)
    with pytest.raises(MudiError, match="not a diffusers pipeline on the hub"):
        models.load_pipeline("someone/single-file")

    def unreachable(self, name, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ModelNotAvailableError, match="unreachable"):
        models.resolve_model("mudi-test-nonexistent/not-cached", "sam")


def test_loaders_cast_when_diffusers_ignores_dtype(tiny_models, monkeypatch):
    """diffusers releases older than the `dtype=` argument ignore it and load float32; the
    loaders then cast, so --dtype fp16 on a GPU gives an fp16 pipeline."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    for cls in (StableDiffusionXLPipeline, AutoencoderKL):
        real = cls.from_pretrained.__func__

        def ignoring(klass, *args, _real=real, **kwargs):
            kwargs.pop("dtype", None)
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(ignoring))
    pipe = models.load_pipeline(str(tiny_models / "sdxl"), dtype=torch.bfloat16, vae=str(tiny_models / "sdxl"))
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert next(part.parameters()).dtype == torch.bfloat16
    assert models.load_vae(str(tiny_models / "sdxl"), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_local_folder_missing_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(MudiError, match="model_index.json is missing"):
        models.resolve_model(str(tmp_path), "pipeline")
    with pytest.raises(MudiError, match="model_index.json is missing"):
        models.load_pipeline(str(tmp_path))


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(MudiError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"), "clip")


def test_kind_mismatch_is_explained(tiny_models):
    with pytest.raises(MudiError, match="diffusers pipeline folder"):
        models.resolve_model(str(tiny_models / "sdxl"), "clip")
    with pytest.raises(MudiError, match="single model folder"):
        models.resolve_model(str(tiny_models / "clip"), "pipeline")
    assert models.resolve_model(str(tiny_models / "sam"), "sam") == str(tiny_models / "sam")


# --- tiny models run through the loaders --------------------------------------------------------


@pytest.mark.parametrize("part", ["sdxl", "sd"])
def test_tiny_pipeline_generates(tiny_models, part):
    pipe = models.load_pipeline(str(tiny_models / part))
    assert family_of(pipe).name == part
    assert pipe.vae_scale_factor == 8
    assert len(pipe.tokenizer) == CLIP_VOCAB_SIZE and pipe.tokenizer.model_max_length == 77
    names = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n, _ in pipe.unet.named_modules() if "attn" in n}
    assert {"attn1.to_q", "attn1.to_k", "attn1.to_v", "to_out.0"} <= names
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    out = pipe("a photo of olis dog", height=64, width=64, num_inference_steps=2, generator=gen, output_type="np")
    img = out.images
    assert img.shape == (1, 64, 64, 3)
    assert np.isfinite(img).all()
    # Deterministic for a fixed generator.
    gen = torch.Generator().manual_seed(0)
    again = pipe("a photo of olis dog", height=64, width=64, num_inference_steps=2, generator=gen, output_type="np")
    np.testing.assert_allclose(img, again.images, atol=1e-5)


def test_pipeline_vae_override(tiny_models):
    # A pipeline folder is accepted as VAE source (its vae/ subfolder is used).
    pipe = models.load_pipeline(str(tiny_models / "sdxl"), vae=str(tiny_models / "sd"))
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


def test_pipeline_with_broken_tokenizer_is_rejected(tiny_models, tmp_path):
    from transformers import CLIPTokenizer

    folder = tmp_path / "sd_broken"
    shutil.copytree(tiny_models / "sd", folder)
    shutil.rmtree(folder / "tokenizer")
    CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[], model_max_length=77).save_pretrained(
        folder / "tokenizer"
    )
    with pytest.raises(MudiError, match="tokenizer has only 2 tokens"):
        models.load_pipeline(str(folder))


def test_tiny_owlv2_detects(tiny_models):
    model, processor = models.load_owlv2(str(tiny_models / "owlv2"))
    assert not model.training
    img = _image()
    inputs = processor(text=[["a dog", "a toy"]], images=img, return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (TINY_IMAGE_SIZE["owlv2"],) * 2
    assert inputs["input_ids"].shape == (2, 16)
    with torch.no_grad():
        out = model(**inputs)
    n_boxes = (TINY_IMAGE_SIZE["owlv2"] // 16) ** 2
    assert out.logits.shape == (1, n_boxes, 2)
    results = processor.post_process_grounded_object_detection(
        out, threshold=0.0, target_sizes=[(img.height, img.width)], text_labels=[["a dog", "a toy"]]
    )
    boxes = results[0]["boxes"]
    assert boxes.shape == (n_boxes, 4)
    assert torch.isfinite(boxes).all() and torch.isfinite(results[0]["scores"]).all()
    assert set(results[0]["text_labels"]) <= {"a dog", "a toy"}


def test_tiny_sam_box_prompt_mask(tiny_models):
    model, processor = models.load_sam(str(tiny_models / "sam"))
    img = _image(48, 80)
    inputs = processor(img, input_boxes=[[[5.0, 5.0, 40.0, 30.0]]], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (64, 64)
    with torch.no_grad():
        out = model(**inputs, multimask_output=False)
    assert out.pred_masks.shape == (1, 1, 1, 16, 16)
    masks = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    assert masks[0].shape == (1, 1, 48, 80)
    assert masks[0].dtype == torch.bool


def test_tiny_dinov2_embeddings(tiny_models):
    model, processor = models.load_dinov2(str(tiny_models / "dinov2"))
    inputs = processor(images=[_image(), _image(seed=1)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs)
    assert out.pooler_output.shape == (2, 32)
    assert out.last_hidden_state.shape == (2, 1 + (32 // 8) ** 2, 32)
    assert torch.isfinite(out.pooler_output).all()
    assert not torch.allclose(out.pooler_output[0], out.pooler_output[1])


def test_tiny_clip_embeddings(tiny_models):
    model, processor = models.load_clip(str(tiny_models / "clip"))
    img_emb = models.clip_image_embeds(model, processor, [_image(), _image(seed=1)])
    txt_emb = models.clip_text_embeds(model, processor, ["a dog", "a photo of a toy robot"])
    assert img_emb.shape == (2, 32) and txt_emb.shape == (2, 32)
    torch.testing.assert_close(img_emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(txt_emb.norm(dim=-1), torch.ones(2))
    # transformers 5: get_image_features returns an output object, embedding in .pooler_output
    with torch.no_grad():
        raw = model.get_image_features(**processor(images=[_image()], return_tensors="pt"))
    feats = raw if isinstance(raw, torch.Tensor) else raw.pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(feats, dim=-1), img_emb[:1])


# --- builder -------------------------------------------------------------------------------------


def test_build_is_deterministic_and_safetensors(tmp_path):
    from safetensors.torch import load_file

    a = build_tiny_models(tmp_path / "a", parts=("dinov2",), seed=3)
    b = build_tiny_models(tmp_path / "b", parts=["dinov2"], seed=3)
    c = build_tiny_models(tmp_path / "c", parts="dinov2", seed=4)
    assert set(a) == {"dinov2"}
    wa = load_file(a["dinov2"] / "model.safetensors")
    wb = load_file(b["dinov2"] / "model.safetensors")
    wc = load_file(c["dinov2"] / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert not list(a["dinov2"].glob("*.bin"))


def test_tiny_folder_layout(tiny_models):
    for part in ("sdxl", "sd"):
        index = json.loads((tiny_models / part / "model_index.json").read_text())
        assert index["_class_name"] == ("StableDiffusionXLPipeline" if part == "sdxl" else "StableDiffusionPipeline")
        assert list((tiny_models / part / "unet").glob("*.safetensors"))
    for part in ("owlv2", "sam", "dinov2", "clip"):
        assert (tiny_models / part / "config.json").is_file()
        assert (tiny_models / part / "model.safetensors").is_file()
    for part, cls in (("flux", "FluxPipeline"), ("sd3", "StableDiffusion3Pipeline")):
        assert json.loads((tiny_models / part / "model_index.json").read_text())["_class_name"] == cls
        assert list((tiny_models / part / "transformer").glob("*.safetensors"))
    total = sum(f.stat().st_size for f in Path(tiny_models).rglob("*") if f.is_file())
    assert total < 100 * 2**20


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_tiny_models(tmp_path, capsys):
    from mudi.cli import main

    out = tmp_path / "tiny"
    assert main(["tiny-models", "--out", str(out), "--parts", "dinov2,sam"]) == 0
    printed = capsys.readouterr().out
    assert "dinov2" in printed and "sam" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dinov2", "sam"]
    model, _ = models.load_dinov2(str(out / "dinov2"))
    assert model.config.hidden_size == 32
    # A non-empty folder is not reused without --overwrite (exit 2, message, no traceback).
    assert main(["tiny-models", "--out", str(out), "--parts", "dinov2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tiny-models", "--out", str(out), "--parts", "dinov2", "--overwrite"]) == 0
    assert main(["tiny-models", "--out", str(tmp_path / "x"), "--parts", "nope"]) == 2
    assert "Unknown tiny model part" in capsys.readouterr().err
