"""A FLUX.1 LoRA in the layout ComfyUI (and kohya sd-scripts, Forge, A1111 forks) reads.

diffusers names a FLUX.1 transformer's layers its own way (``transformer_blocks.0.attn.to_q``);
the original Black Forest Labs checkpoint, which ComfyUI runs, fuses some of them
(``double_blocks.0.img_attn.qkv`` holds q, k and v; ``single_blocks.0.linear1`` holds q, k, v and
the MLP input). ComfyUI maps a LoRA key ``lora_unet_<BFL module path with _ for .>`` onto the
module ``diffusion_model.<BFL module path>`` and adds ``alpha / rank · up @ down`` to its weight.

:func:`flux_comfy_state_dict` converts peft-named LoRA weights (``...to_q.lora_A.weight``)
losslessly: a module that is one diffusers layer keeps its matrices; a fused module gets
``down`` = the parts' ``A`` stacked (rank ``n·r``) and ``up`` = their ``B`` placed block-diagonally,
with ``alpha`` scaled by ``n`` so every part keeps its ``alpha / r`` (a part without a LoRA gets
zero blocks). diffusers' own kohya-FLUX reader splits such a block-diagonal ``up`` back into the
parts (``FluxPipeline.lora_state_dict``), which the tests use to check the mapping.

One diffusers layer has no exact copy: ``norm_out.linear`` (the final adaLN) stores (scale, shift)
where BFL stores (shift, scale); its ``up`` rows are swapped to match. (diffusers' reader ignores
the ``alpha`` of the two ``final_layer`` modules, so it reads them right only at alpha = rank, the
default; ComfyUI applies every alpha.)
"""

from __future__ import annotations

import re

import torch

from mudi.errors import MudiError

#: diffusers layer (inside a double block) → (BFL module, part index, number of parts)
_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0, 3), "attn.to_k": ("img_attn.qkv", 1, 3), "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3), "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
    "attn.to_out.0": ("img_attn.proj", 0, 1), "attn.to_add_out": ("txt_attn.proj", 0, 1),
    "ff.net.0.proj": ("img_mlp.0", 0, 1), "ff.net.2": ("img_mlp.2", 0, 1),
    "ff_context.net.0.proj": ("txt_mlp.0", 0, 1), "ff_context.net.2": ("txt_mlp.2", 0, 1),
    "norm1.linear": ("img_mod.lin", 0, 1), "norm1_context.linear": ("txt_mod.lin", 0, 1),
}
#: diffusers layer (inside a single block) → (BFL module, part index, number of parts)
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": ("linear2", 0, 1), "norm.linear": ("modulation.lin", 0, 1),
}
#: layers outside the blocks
_OTHER = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1",
}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def bfl_module(diffusers_name: str) -> tuple[str, int, int]:
    """The BFL module a diffusers FLUX.1 layer lives in: ``(module path, part index, parts)``.

    Raises MudiError for a layer the BFL checkpoint has no place for.
    """
    m = _BLOCK.match(diffusers_name)
    if m is not None:
        table, prefix = (_DOUBLE, "double_blocks") if m.group(1) == "transformer_blocks" else (_SINGLE, "single_blocks")
        if m.group(3) in table:
            module, part, parts = table[m.group(3)]
            return f"{prefix}.{m.group(2)}.{module}", part, parts
    elif diffusers_name in _OTHER:
        return _OTHER[diffusers_name], 0, 1
    raise MudiError(f"the LoRA layer {diffusers_name!r} has no place in the FLUX.1 checkpoint layout ComfyUI reads; "
                    "train without it (--target-modules) or use the diffusers file.")


def _swap_halves(up: torch.Tensor) -> torch.Tensor:
    first, second = up.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _group(state: dict[str, torch.Tensor]) -> dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, int]]]:
    """peft LoRA weights grouped by BFL module: {module: {part: (A, B, parts)}}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix, which in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if key.endswith(suffix):
                layers.setdefault(key[: -len(suffix)].removeprefix("transformer."), {})[which] = value
                break
        else:
            raise MudiError(f"unexpected LoRA key {key!r} (expected peft .lora_A/.lora_B weights).")
    grouped: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, int]]] = {}
    for name, ab in layers.items():
        if set(ab) != {"A", "B"}:
            raise MudiError(f"the LoRA layer {name!r} lacks its lora_A or lora_B weight.")
        module, part, parts = bfl_module(name)
        up = _swap_halves(ab["B"]) if name == "norm_out.linear" else ab["B"]
        grouped.setdefault(module, {})[part] = (ab["A"], up, parts)
    return grouped


def _fuse(parts: dict[int, tuple[torch.Tensor, torch.Tensor, int]], out_dims: list[int] | None):
    """(down, up) of a fused module: the parts' A stacked, their B block-diagonal (zeros for absent parts)."""
    n = next(iter(parts.values()))[2]
    rank = next(iter(parts.values()))[0].shape[0]
    a0 = next(iter(parts.values()))[0]
    if out_dims is None:
        if len(parts) != n:
            raise MudiError("a fused FLUX module has LoRA parts of unknown size; pass the transformer to export.")
        out_dims = [parts[i][1].shape[0] for i in range(n)]
    down = torch.zeros(n * rank, a0.shape[1], dtype=a0.dtype)
    up = torch.zeros(sum(out_dims), n * rank, dtype=a0.dtype)
    row = 0
    for i in range(n):
        if i in parts:
            a, b, _ = parts[i]
            if a.shape[0] != rank:
                raise MudiError("the parts of a fused FLUX module have different LoRA ranks; use one rank.")
            down[i * rank:(i + 1) * rank] = a
            up[row:row + out_dims[i], i * rank:(i + 1) * rank] = b
        row += out_dims[i]
    return down, up


def flux_comfy_state_dict(state: dict[str, torch.Tensor], alpha: float,
                          part_dims: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Convert peft-named FLUX.1 transformer LoRA weights to ComfyUI/kohya keys.

    Args:
        state: ``{"...to_q.lora_A.weight": A, "...to_q.lora_B.weight": B, ...}`` (an optional
            ``transformer.`` prefix is accepted).
        alpha: the LoRA alpha (scale ``alpha / r``).
        part_dims: output sizes of the parts of each fused BFL module
            (:func:`fused_part_dims`); needed only when a fused module lacks some parts.

    Returns:
        ``{"lora_unet_<module>.lora_down.weight", ".lora_up.weight", ".alpha"}`` for every module.
    """
    out: dict[str, torch.Tensor] = {}
    for module, parts in sorted(_group(state).items()):
        n = next(iter(parts.values()))[2]
        if n == 1:
            down, up = parts[0][0], parts[0][1]
        else:
            down, up = _fuse(parts, (part_dims or {}).get(module))
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha) * n)
    return out


def fused_part_dims(transformer) -> dict[str, list[int]]:
    """Output sizes of the parts of every fused BFL module of a diffusers FLUX.1 transformer."""
    dims: dict[str, dict[int, int]] = {}
    for name, module in transformer.named_modules():
        module = getattr(module, "base_layer", module)  # a layer that carries a LoRA: its frozen Linear
        if isinstance(module, torch.nn.Linear) and _BLOCK.match(name):
            try:
                bfl, part, parts = bfl_module(name)
            except MudiError:
                continue
            if parts > 1:
                dims.setdefault(bfl, {})[part] = module.out_features
    return {k: [v[i] for i in sorted(v)] for k, v in dims.items()}


__all__ = ["bfl_module", "flux_comfy_state_dict", "fused_part_dims"]
