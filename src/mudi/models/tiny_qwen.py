"""Tiny random-weight Qwen-Image and FLUX.2 [klein] pipelines, built from configs offline.

Both families encode text with a Qwen language model (Qwen2.5-VL for Qwen-Image, Qwen3 for
FLUX.2 [klein]). Their tokenizer here is a byte-level BPE (the Qwen2 tokenizer class) trained at
build time on English words of the CLIP vocabulary plus the Qwen-Image prompt template, with the
Qwen chat special tokens: the template's system prefix is exactly the 34 tokens that
``QwenImagePipeline`` drops after encoding (:data:`QWEN_TEMPLATE_TOKENS`), as with the real
tokenizer. A chat template of the Qwen3 form (with the empty ``<think>`` block that
``enable_thinking=False`` adds) serves FLUX.2 [klein]'s ``apply_chat_template``.

Sizes: 64 px images are 8×8 latents (VAE factor 8) and 4×4 = 16 image tokens (2×2 patches).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

#: Tokens of the Qwen-Image template's system prefix (``prompt_template_encode_start_idx``).
QWEN_TEMPLATE_TOKENS = 34
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>"]
#: A Qwen-style chat template: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message; the
#: generation prompt opens the assistant turn, with an empty think block unless thinking is on.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
_TEMPLATE = ("system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
             "relationships of the objects and background:\nuser\nassistant\n")


def qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer trained offline (see the module docstring); trained once per
    process, each call returns a fresh copy."""
    return copy.deepcopy(_trained_tokenizer())


@functools.lru_cache(maxsize=1)
def _trained_tokenizer(vocab_size: int = 3000, model_max_length: int = 32768):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from mudi.models.clip_tokenizer import _clip_vocab_and_merges

    vocab, _ = _clip_vocab_and_merges()
    words = [t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha()]
    corpus = [" ".join(words[i : i + 32]) for i in range(0, len(words), 32)] + [_TEMPLATE] * 200
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=_SPECIAL, show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)
    tok.add_special_tokens({"additional_special_tokens": _SPECIAL[1:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _qwen25_vl(tok, hidden: int = 16):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                         rope_theta=1000000.0, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>")),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden),
        hidden_size=hidden, vocab_size=len(tok), bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), image_token_id=ids("<|image_pad|>"))
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_qwen_image(out: Path) -> None:
    """A tiny Qwen-Image pipeline: Qwen2.5-VL text encoder, the causal video VAE (16 channels,
    factor 8, per-channel ``latents_mean``/``latents_std``), the dual-stream transformer, and the
    Qwen-Image scheduler constants (exponential dynamic shift)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from diffusers import QwenImageTransformer2DModel

    tok = qwen_tokenizer()
    check_template(tok)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    mean = [round(float(x), 4) for x in torch.randn(16) * 0.5]  # non-trivial statistics, visible in tests
    std = [round(1.5 + float(x), 4) for x in torch.rand(16)]
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=_qwen25_vl(tok), tokenizer=tok,
                             transformer=transformer)
    pipe.save_pretrained(out, safe_serialization=True)


def check_template(tok) -> None:
    """Raise unless ``tok`` splits the Qwen-Image template prefix into :data:`QWEN_TEMPLATE_TOKENS` tokens."""
    text = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n")
    n = len(tok(text)["input_ids"])
    if n != QWEN_TEMPLATE_TOKENS:
        raise RuntimeError(f"the tiny Qwen tokenizer splits the template prefix into {n} tokens, not "
                           f"{QWEN_TEMPLATE_TOKENS}")


def build_flux2_klein(out: Path) -> None:
    """A tiny FLUX.2 [klein] pipeline: a 28-layer Qwen3 text encoder (the pipeline stacks layers
    9, 18, 27), the FLUX.2 VAE (batch-norm latent statistics over 2×2 patches), the FLUX.2
    transformer without guidance embedding (the base, undistilled model), and the dynamic-shift
    scheduler."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = qwen_tokenizer()
    encoder = Qwen3ForCausalLM(Qwen3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=28,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                           vocab_size=len(tok), max_position_embeddings=1024,
                                           bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                                           eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))).eval()
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                             layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
                             use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():  # non-trivial latent statistics, so the normalization is visible in tests
        vae.bn.running_mean.copy_(torch.randn(64) * 0.3)
        vae.bn.running_var.copy_(torch.rand(64) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok,
                              transformer=transformer, is_distilled=False)
    pipe.save_pretrained(out, safe_serialization=True)


__all__ = ["CHAT_TEMPLATE", "QWEN_TEMPLATE_TOKENS", "build_flux2_klein", "build_qwen_image", "check_template",
           "qwen_tokenizer"]
