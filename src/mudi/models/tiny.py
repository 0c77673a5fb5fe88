"""Tiny random-weight models, saved as ordinary local model folders.

:func:`build_tiny_models` writes one folder per model family that mudi uses (SDXL and SD
pipelines, OWLv2, SAM, DINOv2, CLIP, and the FLUX.1 and SD3 pipelines of :mod:`mudi.models.tiny_dit`). Each folder is a normal ``save_pretrained`` checkpoint
(safetensors), so the loaders in :mod:`mudi.models.loading` open it exactly like a real checkpoint.
The weights are random (seeded), so outputs are meaningless, but every code path runs on
CPU in a fraction of a second: this is what the tests and ``mudi tiny-models`` smoke tests use.

Sizes (what the tiny processors expect):

- ``sdxl`` / ``sd``: VAE scale factor 8 (like the real models), so a 64x64 image is an 8x8x4
  latent. UNet block_out_channels (32, 64), cross-attention dim 64 (SDXL: 32 + 32 from the two
  text encoders) / 32 (SD). Text encoders: hidden 32, 2 layers, the real 49408-token CLIP
  vocabulary, 77 positions.
- ``owlv2``: 64x64 input (patch 16 -> 4x4 = 16 boxes per image), text length 16.
- ``sam``: 64x64 padded input (longest edge 64), 4x4 image embedding, 16x16 low-res masks.
- ``dinov2``: resize shortest edge 32, center crop 32x32, patch 8, hidden 32.
- ``clip``: resize shortest edge 32, center crop 32x32, patch 8, projection dim 32.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from mudi.errors import MudiError
from mudi.models.clip_tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer
from mudi.models.tiny_dit import build_flux, build_sd3
from mudi.models.tiny_qwen import build_flux2_klein, build_qwen_image
from mudi.runtime import forked_rng, quiet_libraries

ALL_PARTS: tuple[str, ...] = ("sdxl", "sd", "owlv2", "sam", "dinov2", "clip", "flux", "sd3", "flux2-klein", "qwen-image")

#: Stable Diffusion v1/v2/XL's training noise schedule (used by the tiny and the toy pipelines).
SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
OWL_MAX_LENGTH = 16

#: Image sizes the tiny processors resize to (pixels, square).
TINY_IMAGE_SIZE = {"owlv2": 64, "sam": 64, "dinov2": 32, "clip": 32}
#: Resolution at which the tiny SD/SDXL pipelines are meant to be run in tests.
TINY_PIPELINE_RESOLUTION = 64

# Byte -> printable unicode table used by CLIP's byte-level BPE (GPT-2 style).


#: The transformer size every tiny text and vision tower shares.
_TINY_TRANSFORMER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def _text_config(max_positions: int = CLIP_MAX_LENGTH, projection_dim: int = 32) -> dict:
    return dict(
        vocab_size=CLIP_VOCAB_SIZE,
        **_TINY_TRANSFORMER,
        max_position_embeddings=max_positions,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _vae(scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_PIPELINE_RESOLUTION,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _unet(cross_attention_dim: int, sdxl: bool, text_embed_dim: int = 32):
    from diffusers import UNet2DConditionModel

    kwargs: dict = {}
    if sdxl:
        time_dim = 8
        kwargs = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + text_embed_dim,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        sample_size=TINY_PIPELINE_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=16,
        **kwargs,
    )


def _build_sdxl(out: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config()))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(projection_dim=32)))
    scheduler = EulerDiscreteScheduler(
        **SD_BETAS,
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=_unet(cross_attention_dim=64, sdxl=True, text_embed_dim=32),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_sd(out: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    scheduler = PNDMScheduler(
        **SD_BETAS,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(scaling_factor=0.18215, force_upcast=False),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config())),
        tokenizer=clip_tokenizer(),
        unet=_unet(cross_attention_dim=32, sdxl=False),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _vision_kwargs(image_size: int, patch_size: int) -> dict:
    return dict(**_TINY_TRANSFORMER, image_size=image_size, patch_size=patch_size)


def _build_owlv2(out: Path) -> None:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    size = TINY_IMAGE_SIZE["owlv2"]
    config = Owlv2Config(
        text_config=_text_config(max_positions=OWL_MAX_LENGTH),
        vision_config=dict(_vision_kwargs(size, 16), hidden_act="quick_gelu"),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=clip_tokenizer(OWL_MAX_LENGTH),
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _build_sam(out: Path) -> None:
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    size = TINY_IMAGE_SIZE["sam"]
    config = SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=size,
            patch_size=16,
            window_size=2,
            global_attn_indexes=(1,),
            num_pos_feats=16,
            mlp_ratio=2.0,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    model = SamModel(config).eval()
    low_res = size // 16 * 4  # the mask decoder upsamples the image embedding 4x
    processor = SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": size},
            pad_size={"height": size, "width": size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _build_dinov2(out: Path) -> None:
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    size = TINY_IMAGE_SIZE["dinov2"]
    model = Dinov2Model(Dinov2Config(**_vision_kwargs(size, 8))).eval()
    processor = BitImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _build_clip(out: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    size = TINY_IMAGE_SIZE["clip"]
    config = CLIPConfig(
        text_config=_text_config(),
        vision_config=dict(_vision_kwargs(size, 8), hidden_act="quick_gelu", projection_dim=32),
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=clip_tokenizer(),
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


_BUILDERS = {
    "sdxl": _build_sdxl,
    "sd": _build_sd,
    "owlv2": _build_owlv2,
    "sam": _build_sam,
    "dinov2": _build_dinov2,
    "clip": _build_clip,
    "flux": lambda out: build_flux(out, _text_config(projection_dim=32)),
    "sd3": lambda out: build_sd3(out, _text_config(projection_dim=32)),
    "flux2-klein": build_flux2_klein,
    "qwen-image": build_qwen_image,
}


def parse_parts(parts: str | Iterable[str]) -> tuple[str, ...]:
    """Normalize ``"sdxl,sd"`` or an iterable of part names; raise MudiError on unknown names."""
    if isinstance(parts, str):
        parts = [p for p in (s.strip() for s in parts.split(",")) if p]
    result = tuple(dict.fromkeys(parts))
    unknown = [p for p in result if p not in _BUILDERS]
    if unknown or not result:
        raise MudiError(
            f"Unknown tiny model part(s) {unknown or parts!r}; choose from {', '.join(ALL_PARTS)}."
        )
    return result


def build_tiny_models(
    out_dir: str | Path, parts: str | Iterable[str] = ALL_PARTS, seed: int = 0
) -> dict[str, Path]:
    """Build tiny random-weight models and save each as a local model folder.

    Args:
        out_dir: folder to write into (created if needed); each part goes to ``out_dir/<part>``.
            Existing part folders are overwritten; callers guarding user outputs should use
            :func:`mudi.io.claim_output_dir` first.
        parts: which of ``sdxl, sd, owlv2, sam, dinov2, clip, flux, sd3, flux2-klein, qwen-image`` to build.
        seed: every part's weights are a deterministic function of (seed, part).

    Returns:
        ``{part: folder}`` for every part written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with quiet_libraries():  # no "Writing model shards" bar per tiny file
        for part in parse_parts(parts):
            folder = out_dir / part
            folder.mkdir(parents=True, exist_ok=True)
            # Seed per part so a part's weights do not depend on which other parts were built.
            with forked_rng(seed * 1000 + ALL_PARTS.index(part)):
                _BUILDERS[part](folder)
            written[part] = folder
    return written


__all__ = [
    "ALL_PARTS",
    "CLIP_MAX_LENGTH",
    "CLIP_VOCAB_SIZE",
    "OWL_MAX_LENGTH",
    "TINY_IMAGE_SIZE",
    "TINY_PIPELINE_RESOLUTION",
    "build_tiny_models",
    "clip_tokenizer",
    "parse_parts",
]
