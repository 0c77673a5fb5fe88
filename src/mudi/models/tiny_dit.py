"""Tiny random-weight diffusion-transformer pipelines (FLUX.1, SD3), built from configs.

Every component is built from a config object, none is downloaded: a tiny transformer, a tiny
16-channel ``AutoencoderKL`` (VAE factor 8, like the real models), tiny CLIP text encoders with
the real CLIP tokenizer, and a tiny T5 encoder whose tokenizer is a Unigram model over the CLIP
vocabulary's words (:func:`t5_tokenizer`). A 64×64 image is an 8×8×16 latent (16 FLUX tokens).
"""

from __future__ import annotations

from pathlib import Path

from mudi.models.clip_tokenizer import _clip_vocab_and_merges, clip_tokenizer

#: The T5 encoder size of the tiny pipelines.
_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
           feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True)


#: CLIP tokens the tiny T5 vocabulary takes (the bytes and the most frequent merges).
T5_PIECES = 4000


def t5_tokenizer(model_max_length: int = 512):
    """A T5 (Unigram, "▁" word marks) tokenizer over the CLIP vocabulary, built offline.

    Pieces: ``<pad>``, ``</s>``, ``<unk>``, ``▁``, then the first :data:`T5_PIECES` CLIP tokens (a
    word-final ``x</w>`` becomes ``▁x``), each scored by its CLIP rank (earlier merges = more frequent).
    """
    from transformers import T5Tokenizer

    vocab, _ = _clip_vocab_and_merges()
    pieces: dict[str, float] = {}
    for i, token in enumerate(list(vocab)[:T5_PIECES]):
        if token.startswith("<|"):
            continue
        piece = "▁" + token[:-4] if token.endswith("</w>") else token
        pieces.setdefault(piece, -1.0 - i * 1e-4)
    scores = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    scores += [(p, s) for p, s in pieces.items() if p != "▁"]
    return T5Tokenizer(vocab=scores, extra_ids=0, model_max_length=model_max_length)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, **_T5))


def _clip_encoder(clip: dict, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**clip)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae16(shift_factor: float, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
                         use_quant_conv=False, use_post_quant_conv=False, shift_factor=shift_factor,
                         scaling_factor=scaling_factor, force_upcast=True)


def build_flux(out: Path, clip: dict) -> None:
    """A tiny FLUX.1 [dev] pipeline (guidance embedding; the FLUX.1 scheduler and VAE constants);
    ``clip``: the tiny CLIP text config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    tok2 = t5_tokenizer(512)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae16(0.1159, 0.3611), text_encoder=_clip_encoder(clip, False),
                        tokenizer=clip_tokenizer(), text_encoder_2=_t5_encoder(len(tok2)), tokenizer_2=tok2,
                        transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)


def build_sd3(out: Path, clip: dict) -> None:
    """A tiny SD3.5-style pipeline (two CLIP encoders with projection, T5; shift 3.0); ``clip``: the
    tiny CLIP text config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
                                        pos_embed_max_size=16)
    tok3 = t5_tokenizer(256)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae16(0.0609, 1.5305),
        text_encoder=_clip_encoder(clip, True), tokenizer=clip_tokenizer(), text_encoder_2=_clip_encoder(clip, True),
        tokenizer_2=clip_tokenizer(), text_encoder_3=_t5_encoder(len(tok3)), tokenizer_3=tok3,
        transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)


__all__ = ["T5_PIECES", "build_flux", "build_sd3", "t5_tokenizer"]
