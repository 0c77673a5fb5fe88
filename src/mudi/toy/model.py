"""Architecture of the toy base model: a small Stable Diffusion (v1-style) pipeline.

64x64 RGB images, a scale-factor-4 VAE (16x16x16 latents, no attention), a small cross-attention UNet with
standard diffusers attention (to_q/to_k/to_v/to_out.0, so LoRA targets work unchanged) and a
small CLIP text encoder over the real CLIP BPE vocabulary. Everything is built from config
objects here; weights come from :mod:`mudi.toy.train`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

RESOLUTION = 64
LATENT_CHANNELS = 16
TEXT_DIM = 128
MAX_TOKENS = 77


@dataclass(frozen=True)
class ToyModelConfig:
    """Sizes of the three networks (defaults: the shipped model)."""

    vae_channels: tuple[int, ...] = (16, 32, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_attention_heads: tuple[int, ...] = (1, 2, 4)
    text_dim: int = TEXT_DIM
    text_layers: int = 3
    text_heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(path: Path | None) -> ToyModelConfig:
    """The sizes in a JSON file of :class:`ToyModelConfig` fields (``--model-config``; None = shipped).

    Raises:
        MudiError: unreadable, not a JSON object, or a field ToyModelConfig does not have.
    """
    from mudi.errors import MudiError

    if path is None:
        return ToyModelConfig()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MudiError(f"--model-config {path}: cannot read it as JSON ({e}).") from None
    names = [f.name for f in fields(ToyModelConfig)]
    if not isinstance(data, dict) or set(data) - set(names):
        raise MudiError(f"--model-config {path}: expected a JSON object with some of the fields {', '.join(names)}.")
    return ToyModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def build_vae(cfg: ToyModelConfig = ToyModelConfig(), scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,  # >= 4 channels per group: per-channel norms erase absolute colour
        sample_size=RESOLUTION,
        scaling_factor=scaling_factor,
        force_upcast=False,
        mid_block_add_attention=False,
    )


def build_unet(cfg: ToyModelConfig = ToyModelConfig()):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    factor = 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=RESOLUTION // factor,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=tuple(cfg.unet_attention_heads),
        cross_attention_dim=cfg.text_dim,
        norm_num_groups=8,
    )


def build_text_encoder(cfg: ToyModelConfig = ToyModelConfig()):
    from transformers import CLIPTextConfig, CLIPTextModel

    from mudi.models.clip_tokenizer import CLIP_VOCAB_SIZE

    conf = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=cfg.text_dim,
        intermediate_size=cfg.text_dim * 4,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=cfg.text_dim,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(conf)


def build_tokenizer():
    from mudi.models.clip_tokenizer import clip_tokenizer

    return clip_tokenizer(MAX_TOKENS)


#: The shipped model predicts v (velocity): a small, briefly trained model predicting epsilon
#: makes large x0 errors at high noise levels (they are amplified by 1/sqrt(alpha_bar)), which
#: ruins sampling; v-prediction keeps those errors bounded.
PREDICTION_TYPE = "v_prediction"


def training_scheduler(prediction_type: str = PREDICTION_TYPE):
    """The DDPM noise schedule used in training (Stable Diffusion v1's betas)."""
    from diffusers import DDPMScheduler

    from mudi.models.tiny import SD_BETAS

    return DDPMScheduler(
        **SD_BETAS,
        clip_sample=False,
        prediction_type=prediction_type,
    )


def sampling_scheduler(prediction_type: str = PREDICTION_TYPE):
    """The scheduler saved with the pipeline (same betas, fast multistep sampler)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(training_scheduler(prediction_type).config, steps_offset=1)
