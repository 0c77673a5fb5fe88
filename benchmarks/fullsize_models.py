"""Model configs for ``bench_fullsize.py``: the published architectures, and reduced copies of them.

``full`` holds the config.json values of the checkpoints mudi uses by default (written out
here so no download is needed; checked against the parameter counts of the real checkpoints,
which :func:`parameter_counts` prints):

- ``sdxl``: stabilityai/stable-diffusion-xl-base-1.0 — UNet (320, 640, 1280) channels,
  transformer layers (1, 2, 10), heads (5, 10, 20), cross-attention 2048, ``text_time``
  conditioning (time embed 256, 2816 inputs); text encoders CLIP ViT-L/14 (768 wide, 12 layers)
  and OpenCLIP ViT-bigG/14 (1280 wide, 32 layers, projection 1280); VAE (128, 256, 512, 512),
  scaling 0.13025, ``force_upcast``; Euler scheduler. Native resolution 1024.
- ``sd15``: runwayml/stable-diffusion-v1-5 — UNet (320, 640, 1280, 1280), cross-attention
  768, 8 heads; CLIP ViT-L/14 text encoder; VAE as SDXL's with scaling 0.18215 (its config has
  no ``force_upcast`` key, so diffusers' default, True, applies); PNDM scheduler. Native
  resolution 512.
- ``owlv2``: google/owlv2-base-patch16-ensemble (ViT-B/16 at 960 px, text 512 wide, 16 tokens).
- ``sam``: facebook/sam-vit-huge (ViT-H: 1280 wide, 32 layers, 1024 px, window 14).
- ``dinov2``: facebook/dinov2-base (ViT-B/14, crops of 224 px).
- ``clip``: openai/clip-vit-large-patch14 (ViT-L/14 at 224 px, text 768 wide).

``reduced`` keeps every class, block type and the number of blocks, and shrinks widths, depth
of the transformer stacks and the resolution (see :data:`REDUCED_NOTE`) so a 2-core CPU runs
the same code paths in minutes. ``tiny`` shrinks further, for a smoke test that runs in seconds.

Weights are random (seeded with :func:`mudi.runtime.forked_rng`) and saved with
``save_pretrained`` as safetensors, so mudi opens the folders with its real loaders.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

SCALES = ("full", "reduced", "tiny")
PIPELINES = ("sdxl", "sd15")
VISION = ("owlv2", "sam", "dinov2", "clip")
PARTS = PIPELINES + VISION

#: What ``--scale reduced`` changes, printed with the results.
REDUCED_NOTE = (
    "reduced scale: widths /5 (UNet 64/128/256[/256], VAE 32/64/128/128), SDXL transformer layers "
    "(1,1,2) instead of (1,2,10), text encoders 2-4 layers of 128-256, vision models 2-4 layers of "
    "128-256 at smaller inputs, resolution SDXL 128 px (/8), SD 1.5 128 px (/4: its smallest); same classes and block layout"
)
TINY_NOTE = "tiny scale: smoke-test sizes (UNet 32/64, 64 px); numbers mean nothing"

#: Scheduler settings shared by SD 1.x and SDXL (their training noise schedule).
_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
_CLIP_TOKENS = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
                "pad_token_id": 49407}


def _text(hidden: int, layers: int, heads: int, act: str = "quick_gelu", projection: int = 768) -> dict:
    return dict(_CLIP_TOKENS, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, hidden_act=act, projection_dim=projection)


def _vae(channels: tuple[int, ...], scaling: float, force_upcast: bool, size: int, layers: int = 2,
         groups: int = 32) -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=channels, layers_per_block=layers,
                norm_num_groups=groups, act_fn="silu", sample_size=size, scaling_factor=scaling,
                force_upcast=force_upcast)


def _sdxl(ch, layers, heads, te1, te2, time_dim, vae_ch, res, groups=32) -> dict:
    cross = te1["hidden_size"] + te2["hidden_size"]
    unet = dict(
        sample_size=res // 8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=ch,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=layers, attention_head_dim=heads, cross_attention_dim=cross,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + te2["projection_dim"],
        use_linear_projection=True, norm_num_groups=groups,
    )
    return {"resolution": res, "unet": unet, "text_encoder": te1, "text_encoder_2": te2,
            "vae": _vae(vae_ch, 0.13025, True, res, groups=min(groups, vae_ch[0]))}


def _sd15(ch, heads, te, vae_ch, res, groups=32) -> dict:
    unet = dict(
        sample_size=res // 8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=ch,
        down_block_types=("CrossAttnDownBlock2D",) * (len(ch) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(ch) - 1),
        attention_head_dim=heads, cross_attention_dim=te["hidden_size"], norm_num_groups=groups,
    )
    return {"resolution": res, "unet": unet, "text_encoder": te,
            # the SD 1.5 VAE config has no force_upcast key, so diffusers' default (True) applies
            "vae": _vae(vae_ch, 0.18215, True, res, groups=min(groups, vae_ch[0]))}


def _owlv2(vis_hidden, vis_layers, vis_heads, size, text_hidden, text_layers, text_heads, proj) -> dict:
    text = dict(_text(text_hidden, text_layers, text_heads, projection=proj), max_position_embeddings=16)
    vision = dict(hidden_size=vis_hidden, intermediate_size=4 * vis_hidden, num_hidden_layers=vis_layers,
                  num_attention_heads=vis_heads, image_size=size, patch_size=16, hidden_act="quick_gelu")
    return {"text_config": text, "vision_config": vision, "projection_dim": proj, "image_size": size}


def _sam(hidden, layers, heads, global_idx, size, window=14) -> dict:
    vision = dict(hidden_size=hidden, output_channels=256, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=size, patch_size=16, window_size=window, global_attn_indexes=global_idx, mlp_ratio=4.0)
    return {"vision_config": vision, "prompt_encoder_config": dict(image_size=size, patch_size=16),
            "image_size": size}


def _vit(hidden, layers, heads, size, patch) -> dict:
    return dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, image_size=size, patch_size=patch)


def _clip(vis, text) -> dict:
    vision = dict(vis, hidden_act="quick_gelu", projection_dim=text["projection_dim"])
    return {"vision_config": vision, "text_config": text, "projection_dim": text["projection_dim"],
            "image_size": vis["image_size"]}


CONFIGS: dict[str, dict[str, dict]] = {
    "full": {
        "sdxl": _sdxl((320, 640, 1280), (1, 2, 10), (5, 10, 20), _text(768, 12, 12),
                      _text(1280, 32, 20, act="gelu", projection=1280), 256, (128, 256, 512, 512), 1024),
        "sd15": _sd15((320, 640, 1280, 1280), 8, _text(768, 12, 12), (128, 256, 512, 512), 512),
        "owlv2": _owlv2(768, 12, 12, 960, 512, 12, 8, 512),
        "sam": _sam(1280, 32, 16, (7, 15, 23, 31), 1024),
        "dinov2": dict(_vit(768, 12, 12, 518, 14), crop=224, resize=256),
        "clip": _clip(_vit(1024, 24, 16, 224, 14), _text(768, 12, 12)),
    },
    "reduced": {
        "sdxl": _sdxl((64, 128, 256), (1, 1, 2), (1, 2, 4), _text(128, 2, 2),
                      _text(256, 4, 4, act="gelu", projection=256), 64, (32, 64, 128, 128), 128),
        "sd15": _sd15((64, 128, 256, 256), 8, _text(128, 2, 2), (32, 64, 128, 128), 128),
        "owlv2": _owlv2(192, 4, 4, 480, 128, 2, 2, 128),
        "sam": _sam(160, 4, 4, (1, 3), 256, window=7),
        "dinov2": dict(_vit(192, 4, 4, 518, 14), crop=224, resize=256),
        "clip": _clip(_vit(256, 4, 4, 224, 14), _text(128, 2, 2, projection=128)),
    },
    "tiny": {
        "sdxl": _sdxl((32, 64), (1, 1), (2, 4), _text(32, 2, 4), _text(32, 2, 4, projection=32), 8,
                      (8, 16, 16, 16), 64, groups=16),
        "sd15": _sd15((32, 64), (2, 4), _text(32, 2, 4), (8, 16, 16, 16), 64, groups=16),
        "owlv2": _owlv2(32, 2, 4, 64, 32, 2, 4, 32),
        "sam": _sam(32, 2, 2, (1,), 64, window=2),
        "dinov2": dict(_vit(32, 2, 4, 32, 8), crop=32, resize=32),
        "clip": _clip(_vit(32, 2, 4, 32, 8), _text(32, 2, 4, projection=32)),
    },
}
# tiny UNets have two blocks: fix the SDXL/SD block lists to match.
CONFIGS["tiny"]["sdxl"]["unet"].update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                       transformer_layers_per_block=1)


def config(scale: str, part: str) -> dict:
    """A deep copy of the config of ``part`` at ``scale``."""
    return copy.deepcopy(CONFIGS[scale][part])


# ----------------------------------------------------------------------------- constructors


def _unet(cfg: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**cfg)


def _autoencoder(cfg: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**cfg)


def _text_encoder(cfg: dict, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**cfg))


def pipeline_modules(scale: str, part: str) -> dict[str, torch.nn.Module]:
    """The trainable-size modules of a pipeline (``unet``, ``vae``, text encoders), built on the
    current default device (use ``with torch.device("meta")`` to count parameters for free)."""
    cfg = config(scale, part)
    modules = {"unet": _unet(cfg["unet"]), "vae": _autoencoder(cfg["vae"]),
               "text_encoder": _text_encoder(cfg["text_encoder"])}
    if "text_encoder_2" in cfg:
        modules["text_encoder_2"] = _text_encoder(cfg["text_encoder_2"], with_projection=True)
    return modules


def vision_model(scale: str, part: str) -> torch.nn.Module:
    """The OWLv2 / SAM / DINOv2 / CLIP model of ``part`` at ``scale`` (random weights)."""
    from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, Owlv2Config,
                              Owlv2ForObjectDetection, SamConfig, SamModel)

    cfg = config(scale, part)
    cfg.pop("image_size", None)
    if part == "owlv2":
        return Owlv2ForObjectDetection(Owlv2Config(**cfg)).eval()
    if part == "sam":
        return SamModel(SamConfig(**cfg)).eval()
    if part == "dinov2":
        cfg.pop("crop"), cfg.pop("resize")
        return Dinov2Model(Dinov2Config(**cfg)).eval()
    return CLIPModel(CLIPConfig(**cfg)).eval()


def _vision_processor(scale: str, part: str):
    from transformers import (BitImageProcessorPil, CLIPImageProcessorPil, CLIPProcessor, Owlv2ImageProcessorPil,
                              Owlv2Processor, SamImageProcessorPil, SamProcessor)

    from mudi.models.clip_tokenizer import clip_tokenizer

    cfg = config(scale, part)
    size = cfg.get("image_size")
    if part == "owlv2":
        return Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": size, "width": size}),
                              tokenizer=clip_tokenizer(16))
    if part == "sam":
        low = size // 4
        return SamProcessor(image_processor=SamImageProcessorPil(
            size={"longest_edge": size}, pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low}))
    if part == "dinov2":
        return BitImageProcessorPil(size={"shortest_edge": cfg["resize"]},
                                    crop_size={"height": cfg["crop"], "width": cfg["crop"]}, do_center_crop=True,
                                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                    do_convert_rgb=True)
    return CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": size},
                                                               crop_size={"height": size, "width": size}),
                         tokenizer=clip_tokenizer())


# ----------------------------------------------------------------------------- saving


def _save_pipeline(scale: str, part: str, out: Path, dtype: torch.dtype) -> None:
    from diffusers import (EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    from mudi.models.clip_tokenizer import clip_tokenizer

    m = {k: v.to(dtype) for k, v in pipeline_modules(scale, part).items()}
    if part == "sdxl":
        scheduler = EulerDiscreteScheduler(**_BETAS, prediction_type="epsilon", interpolation_type="linear",
                                           use_karras_sigmas=False, timestep_spacing="leading", steps_offset=1)
        pipe = StableDiffusionXLPipeline(tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), scheduler=scheduler,
                                         force_zeros_for_empty_prompt=True, **m)
    else:
        scheduler = PNDMScheduler(**_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(tokenizer=clip_tokenizer(), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False, **m)
    pipe.save_pretrained(out, safe_serialization=True)


def build(out_dir: Path, scale: str, parts=PARTS, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
          seed: int = 0) -> dict[str, Path]:
    """Write random-weight model folders ``out_dir/<part>`` (weights stored in ``dtype``).

    Modules are initialized on ``device`` (fast on a GPU) and each part is seeded on its own, so
    a part's weights do not depend on which other parts are built. Existing folders are kept
    (delete them to rebuild).
    """
    from mudi.runtime import forked_rng, quiet_libraries

    written = {}
    with quiet_libraries():
        for part in parts:
            folder = Path(out_dir) / part
            done = folder / ".complete"
            if not done.is_file():
                with forked_rng(seed * 1000 + PARTS.index(part)), torch.device(device):
                    if part in PIPELINES:
                        _save_pipeline(scale, part, folder, dtype)
                    else:
                        vision_model(scale, part).to(dtype).save_pretrained(folder, safe_serialization=True)
                        _vision_processor(scale, part).save_pretrained(folder)
                done.write_text("ok\n")
            written[part] = folder
    return written


# ----------------------------------------------------------------------------- parameter counts


def lora_parameters(unet: torch.nn.Module, rank: int, targets: tuple[str, ...]) -> int:
    """Parameters a rank-``rank`` LoRA adds on the Linear layers whose names end with ``targets``
    (peft's rule for a list of names: the module name or its last dotted parts match)."""
    total = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def parameter_counts(scale: str, rank: int, targets: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``{part: {module: parameters}}`` for every part at ``scale``, counted on the meta device
    (no memory, no weights); pipelines also get ``lora`` (rank ``rank`` on ``targets``)."""
    counts: dict[str, dict[str, int]] = {}
    with torch.device("meta"):
        for part in PIPELINES:
            modules = pipeline_modules(scale, part)
            counts[part] = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
            counts[part]["lora"] = lora_parameters(modules["unet"], rank, targets)
        for part in VISION:
            counts[part] = {"model": sum(p.numel() for p in vision_model(scale, part).parameters())}
    return counts
