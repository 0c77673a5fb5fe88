"""The memory arithmetic of LoRA training on full-size models, printed from configs (no weights, no GPU).

    python benchmarks/memory_plan.py            # the README table
    python benchmarks/memory_plan.py --parts    # and every part of every row

Every figure is mudi's own estimate (:mod:`mudi.train.memory`, the one ``mudi train`` prints before
training): the published architectures are built on the meta device from their config values
(written out below, so nothing is downloaded), weights are counted at the training dtype or
quantized, and the activations of one micro-batch are measured by a meta-device forward of the
denoiser with its LoRA (CUDA autocast and fused attention emulated), with and without gradient
checkpointing. The peak is the larger of the caching phase (denoiser + text encoders + VAE: the
text encoders are freed after the captions are cached) and the training phase.

Models: FLUX.1 [dev] (12B transformer, CLIP-L + T5-XXL), FLUX.2 [klein] 4B (Qwen3-4B text encoder),
SD3.5 medium (2.5B MMDiT-X, CLIP-L + CLIP-G + T5-XXL) and, for reference, SDXL (the configs of
``fullsize_models.py``). All at 1024 px, micro-batch 1 (no prior preservation), bf16 (SDXL fp16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 1e9
CLIP_L = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=768, intermediate_size=3072,
              num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(CLIP_L, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu")
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
VAE16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             layers_per_block=2, force_upcast=True)
ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
#: LoRA targets: attention of every block, and the feed-forward layers where diffusers' FLUX script has them
TARGETS = {"flux1-dev": ATTN + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
           "flux2-klein-4b": ATTN + ("to_qkv_mlp_proj",), "sd35-medium": ATTN,
           "sdxl": ("to_q", "to_k", "to_v", "to_out.0")}
BUDGET = {"flux1-dev": 24, "flux2-klein-4b": 16, "sd35-medium": 16, "sdxl": 24}


def _flux1():
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return (FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
            {"text_encoder (CLIP-L)": CLIPTextModel(CLIPTextConfig(**CLIP_L)),
             "text_encoder_2 (T5-XXL)": T5EncoderModel(T5Config(**T5_XXL))},
            AutoencoderKL(**VAE16, use_quant_conv=False, use_post_quant_conv=False))


def _flux2_klein():
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return (Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20,
                                    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
                                    guidance_embeds=False),
            {"text_encoder (Qwen3-4B)": Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))}, AutoencoderKLFlux2())


def _sd35_medium():
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    return (SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                  dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
            {"text_encoder (CLIP-L)": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
             "text_encoder_2 (CLIP-G)": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
             "text_encoder_3 (T5-XXL)": T5EncoderModel(T5Config(**T5_XXL))},
            AutoencoderKL(**VAE16))


def _sdxl():
    import fullsize_models as fm

    m = fm.pipeline_modules("full", "sdxl")
    return m["unet"], {"text_encoder": m["text_encoder"], "text_encoder_2": m["text_encoder_2"]}, m["vae"]


MODELS = {"flux1-dev": _flux1, "flux2-klein-4b": _flux2_klein, "sd35-medium": _sd35_medium, "sdxl": _sdxl}
#: (label, quantize, gradient checkpointing, 8-bit Adam, VAE offload)
PLANS = [("bf16", "none", False, False, False), ("bf16 + checkpointing", "none", True, False, False),
         ("int8 + checkpointing", "int8", True, False, False), ("nf4 + checkpointing", "nf4", True, False, False),
         ("nf4 + ckpt + 8-bit Adam + VAE offload", "nf4", True, True, True)]


def parts_of(name: str):
    """The meta-device :class:`~mudi.train.memory.PipelineParts` of a model of the table."""
    from mudi.runtime import quiet_libraries
    from mudi.train.memory import PipelineParts

    with torch.device("meta"), quiet_libraries():
        denoiser, encoders, vae = MODELS[name]()
    return PipelineParts(denoiser, encoders, vae)


def plan_rows(name: str, rank: int = 16, resolution: int = 1024, show_parts: bool = False) -> list[dict]:
    """One row per plan of :data:`PLANS`: peak, caching and training phase (GB), whether it fits."""
    from mudi.train.memory import MemorySettings, estimate_memory

    parts, cache, rows = parts_of(name), {}, []
    dtype = torch.float16 if name == "sdxl" else torch.bfloat16
    for label, quantize, ckpt, adam8, offload in PLANS:
        s = MemorySettings(resolution=resolution, dtype=dtype, quantize=quantize, rank=rank, targets=TARGETS[name],
                           checkpointing=ckpt, adam_8bit=adam8, offload_vae=offload, cuda=True)
        est = estimate_memory(parts, s, cache=cache)
        rows.append({"model": name, "plan": label, "peak": est.peak / GB, "caching": est.phase_total("caching") / GB,
                     "training": est.phase_total("training") / GB, "fits": est.peak <= BUDGET[name] * GB})
        if show_parts:
            print(est.table(), flush=True)
    return rows


def explain(name: str, rank: int) -> int:
    """Print the budget error of the plain bf16 run of ``name`` (what ``mudi train`` would print)."""
    from mudi.errors import MudiError
    from mudi.train.memory import MemorySettings
    from mudi.train.memory_check import check_fits

    s = MemorySettings(resolution=1024, dtype=torch.bfloat16, rank=rank, targets=TARGETS[name], cuda=True)
    try:
        est = check_fits(parts_of(name), s, int(BUDGET[name] * GB), f"a {BUDGET[name]} GB card", where=name)
        print(est.table())
    except MudiError as err:
        print(f"error: {err}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Print the table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", action="store_true", help="print every part of every estimate too")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--explain", choices=list(MODELS), help="print the error `mudi train` gives for this model in "
                                                            "bf16 without checkpointing on its card, and stop")
    args = ap.parse_args(argv)
    if args.explain:
        return explain(args.explain, args.rank)
    print(f"LoRA rank {args.rank}, 1024 px, micro-batch 1, AdamW (fp32 moments unless 8-bit), CUDA reserve 1 GB")
    print("| model | plan | caching phase GB | training phase GB | peak GB | fits |")
    print("|---|---|---:|---:|---:|---|")
    for name in args.models:
        for r in plan_rows(name, args.rank, show_parts=args.parts):
            fits = f"{'yes' if r['fits'] else 'no'} ({BUDGET[name]} GB)"
            print(f"| {r['model']} | {r['plan']} | {r['caching']:.1f} | {r['training']:.1f} | {r['peak']:.1f} | {fits} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
