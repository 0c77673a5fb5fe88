"""The ComfyUI/kohya copy of a FLUX.1 LoRA: key layout, lossless fusing, diffusers reads it back."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mudi.errors import MudiError
from mudi.models.comfy_flux import bfl_module, flux_comfy_state_dict, fused_part_dims
from mudi.models.lora import save_kohya_lora

#: every diffusers FLUX.1 layer that has a place in the BFL checkpoint (short names, as LoRA targets)
ALL_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
               "norm1_context.linear", "proj_mlp", "proj_out", "norm.linear", "x_embedder", "context_embedder",
               "linear_1", "linear_2", "norm_out.linear"]


def _tiny_flux(**kw):
    from diffusers import FluxTransformer2DModel

    cfg = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24, guidance_embeds=True,
               axes_dims_rope=(4, 6, 6))
    cfg.update(kw)
    return FluxTransformer2DModel(**cfg)


def _delta(down, up, alpha):
    return (float(alpha) / down.shape[0]) * (up.float() @ down.float())


def test_bfl_names_of_diffusers_layers():
    assert bfl_module("transformer_blocks.3.attn.to_k") == ("double_blocks.3.img_attn.qkv", 1, 3)
    assert bfl_module("transformer_blocks.0.attn.add_v_proj") == ("double_blocks.0.txt_attn.qkv", 2, 3)
    assert bfl_module("transformer_blocks.0.ff_context.net.2") == ("double_blocks.0.txt_mlp.2", 0, 1)
    assert bfl_module("single_transformer_blocks.7.proj_mlp") == ("single_blocks.7.linear1", 3, 4)
    assert bfl_module("single_transformer_blocks.7.proj_out") == ("single_blocks.7.linear2", 0, 1)
    assert bfl_module("proj_out") == ("final_layer.linear", 0, 1)
    assert bfl_module("time_text_embed.guidance_embedder.linear_2") == ("guidance_in.out_layer", 0, 1)
    with pytest.raises(MudiError, match="no place in the FLUX.1 checkpoint"):
        bfl_module("transformer_blocks.0.attn.norm_q")


def test_tiny_flux_lora_exports_every_module_losslessly(tmp_path):
    from peft import LoraConfig

    torch.manual_seed(0)
    model = _tiny_flux()
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=ALL_TARGETS, init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    # the trainer's kohya/ComfyUI copy (save_kohya_lora) takes the FLUX.1 layout for a FLUX transformer
    path = save_kohya_lora(model, tmp_path / "lora.safetensors", alpha=8.0, family=None, base="tiny")
    sd = load_file(path)
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata()["ss_base_model_version"] == "flux1"
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in sd}
    expected = {f"lora_unet_double_blocks_{i}_{m}" for i in range(2) for m in
                ("img_attn_qkv", "txt_attn_qkv", "img_attn_proj", "txt_attn_proj", "img_mlp_0", "img_mlp_2",
                 "txt_mlp_0", "txt_mlp_2", "img_mod_lin", "txt_mod_lin")}
    expected |= {f"lora_unet_single_blocks_{i}_{m}" for i in range(2) for m in ("linear1", "linear2", "modulation_lin")}
    expected |= {"lora_unet_" + m for m in ("img_in", "txt_in", "time_in_in_layer", "time_in_out_layer",
                                            "vector_in_in_layer", "vector_in_out_layer", "guidance_in_in_layer",
                                            "guidance_in_out_layer", "final_layer_linear",
                                            "final_layer_adaLN_modulation_1")}
    assert modules == expected
    # the fused delta is the diffusers parts' deltas stacked in BFL order (q, k, v[, mlp])
    mods = dict(model.named_modules())

    def part_delta(name):
        layer = mods[name]
        return 2.0 * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach()

    fused = _delta(sd["lora_unet_single_blocks_1_linear1.lora_down.weight"],
                   sd["lora_unet_single_blocks_1_linear1.lora_up.weight"], sd["lora_unet_single_blocks_1_linear1.alpha"])
    stacked = torch.cat([part_delta(f"single_transformer_blocks.1.{p}") for p in
                         ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
    torch.testing.assert_close(fused, stacked)
    qkv = _delta(sd["lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight"],
                 sd["lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight"], sd["lora_unet_double_blocks_0_txt_attn_qkv.alpha"])
    torch.testing.assert_close(qkv, torch.cat([part_delta(f"transformer_blocks.0.attn.add_{c}_proj") for c in "qkv"]))
    # the final adaLN: BFL keeps (shift, scale), diffusers (scale, shift)
    ada = _delta(sd["lora_unet_final_layer_adaLN_modulation_1.lora_down.weight"],
                 sd["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"], 8.0)
    scale, shift = part_delta("norm_out.linear").chunk(2)
    torch.testing.assert_close(ada, torch.cat([shift, scale]))


def test_adapter_on_some_parts_of_a_fused_module(tmp_path):
    """The FLUX family's default targets put no LoRA on proj_mlp: linear1 still has q, k, v and a
    zero block of the MLP input's size (read from the frozen layers under the LoRA layers)."""
    from peft import LoraConfig

    torch.manual_seed(0)
    model = _tiny_flux(num_layers=1, num_single_layers=1)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert fused_part_dims(model)["single_blocks.0.linear1"] == [32, 32, 32, 128]
    sd = load_file(save_kohya_lora(model, tmp_path / "k.safetensors", alpha=2.0, family=None))
    up = sd["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert up.shape == (224, 8) and up[96:].abs().sum() == 0 and up[:96].abs().sum() > 0


def test_fused_module_with_some_parts_gets_zero_blocks():
    model = _tiny_flux(num_layers=1, num_single_layers=1)
    dims = fused_part_dims(model)
    assert dims["single_blocks.0.linear1"] == [32, 32, 32, 128] and dims["double_blocks.0.img_attn.qkv"] == [32] * 3
    a, b = torch.randn(2, 32), torch.randn(32, 2)
    sd = flux_comfy_state_dict({"transformer_blocks.0.attn.to_k.lora_A.weight": a,
                                "transformer_blocks.0.attn.to_k.lora_B.weight": b}, 2.0, dims)
    up = sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    assert up.shape == (96, 6) and float(sd["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 6.0
    full = _delta(sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], up, 6.0)
    torch.testing.assert_close(full[32:64], b @ a)
    assert full[:32].abs().sum() == 0 and full[64:].abs().sum() == 0
    with pytest.raises(MudiError, match="unknown size"):
        flux_comfy_state_dict({"transformer_blocks.0.attn.to_k.lora_A.weight": a,
                               "transformer_blocks.0.attn.to_k.lora_B.weight": b}, 2.0)


def test_diffusers_flux_loader_reads_the_export_back(tmp_path):
    """Full FLUX.1 widths (diffusers' kohya-FLUX reader assumes them), two blocks, weights only
    for the LoRA: FluxPipeline.lora_state_dict splits the fused modules back into the same layers."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    gen = torch.Generator().manual_seed(0)
    rank = 2
    state = {}
    for name, module in meta.named_modules():
        if isinstance(module, torch.nn.Linear):
            try:
                bfl_module(name)
            except MudiError:
                continue
            state[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen)
            state[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen)
    assert len(state) == 2 * (14 + 6 + 10)
    comfy = flux_comfy_state_dict(state, float(rank), fused_part_dims(meta))  # alpha = rank: scale 1
    save_file(comfy, tmp_path / "comfy.safetensors")
    loaded = FluxPipeline.lora_state_dict(str(tmp_path / "comfy.safetensors"))
    loaded = loaded[0] if isinstance(loaded, tuple) else loaded
    layers = {k.removesuffix(".lora_A.weight") for k in state if k.endswith("lora_A.weight")}
    assert {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in loaded} == layers
    loaded = {k.removeprefix("transformer."): v for k, v in loaded.items()}  # diffusers leaves final_layer unprefixed
    for layer in layers:
        got = loaded[f"{layer}.lora_B.weight"].float() @ loaded[f"{layer}.lora_A.weight"].float()
        torch.testing.assert_close(got, state[f"{layer}.lora_B.weight"] @ state[f"{layer}.lora_A.weight"],
                                   msg=lambda m, layer=layer: f"{layer}: {m}")
