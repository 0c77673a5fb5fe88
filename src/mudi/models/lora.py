"""LoRA on the UNet: attach, export (diffusers and kohya/ComfyUI formats), restore; the exports
also carry the text encoders' LoRA when they were trained (:mod:`mudi.models.text_lora`).

- :func:`add_unet_lora` attaches a peft LoRA adapter to the UNet attention projections
  (METHOD.md §3: to_q, to_k, to_v, to_out.0; rank 32, alpha 32) and freezes everything else.
- :func:`save_diffusers_lora` writes ``pytorch_lora_weights.safetensors`` with the pipeline
  class's own ``save_lora_weights`` so ``pipe.load_lora_weights(folder)`` reads it back;
  the LoRA config (rank, alpha, targets) goes into the safetensors metadata.
- :func:`save_kohya_lora` writes the same weights with ``lora_unet_*`` keys, ``lora_down`` /
  ``lora_up`` names and one ``alpha`` tensor per module: the format AUTOMATIC1111, ComfyUI,
  SD.Next and InvokeAI load.
- :func:`lora_state_dict` / :func:`load_lora_state_dict` move the trainable weights in and
  out of a training checkpoint (peft key names, exact tensors).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"


def add_unet_lora(unet, *, rank: int, alpha: float, target_modules: list[str], dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and attach a trainable LoRA adapter; return the trainable parameters.

    The adapter's ``B`` matrices start at zero (``init_lora_weights="gaussian"`` draws ``A``
    from N(0, 1/r)), so the adapted UNet starts equal to the base model.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no UNet module matched the LoRA targets {target_modules}")
    return params


#: Module types peft can put a LoRA adapter on (the ones mudi offers as targets).
_LORA_MODULE_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)


def _target_name(name: str) -> str:
    """The short name a target list uses for a module: its last path part (``to_q``), or the
    last two when the last is an index (``to_out.0``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def lora_target_choices(model) -> list[str]:
    """Every short module name a LoRA target list may use on ``model`` (sorted)."""
    return sorted({_target_name(n) for n, m in model.named_modules() if n and isinstance(m, _LORA_MODULE_TYPES)})


def check_lora_targets(model, targets: list[str], *, where: str, part: str = "UNet") -> None:
    """Raise MudiError unless every name in ``targets`` matches a LoRA-capable module of ``model``.

    A target matches like peft matches it: the module's full name, or a name ending in
    ``.<target>``. peft itself only fails when *no* target matches (and then with a traceback).
    """
    from mudi.errors import MudiError

    names = [n for n, m in model.named_modules() if n and isinstance(m, _LORA_MODULE_TYPES)]
    bad = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if bad:
        choices = ", ".join(lora_target_choices(model))
        raise MudiError(
            f"target_modules {', '.join(repr(t) for t in bad)} not found in the {part} of {where}; "
            f"choose among its Linear/Conv layers: {choices}."
        )


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The adapter weights with peft key names (``...to_q.lora_A.weight``), detached, on CPU, contiguous."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(_unwrap(unet))
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def load_lora_state_dict(unet, state: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter weights (from :func:`lora_state_dict`) back into ``unet`` exactly."""
    from peft.utils import get_peft_model_state_dict

    model = _unwrap(unet)
    current = get_peft_model_state_dict(model)
    if set(current) != set(state):
        missing = sorted(set(current) - set(state))[:3]
        extra = sorted(set(state) - set(current))[:3]
        raise ValueError(f"checkpoint LoRA keys do not match the model (missing {missing}, unexpected {extra})")
    # get_peft_model_state_dict strips the adapter name; map back to the live parameters.
    params = dict(model.named_parameters())
    for key, value in state.items():
        live = key.replace(".weight", ".default.weight")
        if live not in params:
            raise ValueError(f"checkpoint key {key} has no matching parameter {live}")
        with torch.no_grad():
            params[live].copy_(value.to(params[live].device, params[live].dtype))


def lora_metadata(unet) -> dict:
    """The adapter's LoRA config as a JSON-able dict (stored beside the weights)."""
    cfg = _unwrap(unet).peft_config["default"]
    meta = {
        "r": int(cfg.r),
        "lora_alpha": float(cfg.lora_alpha),
        "target_modules": sorted(cfg.target_modules),
        "lora_dropout": float(cfg.lora_dropout),
        "init_lora_weights": cfg.init_lora_weights,
    }
    return meta


def save_diffusers_lora(pipeline_cls, unet, out_dir: str | Path, *, component: str = "unet",
                        text_encoders: dict | None = None) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format), atomically.

    ``text_encoders`` (pipeline attribute name → text encoder with a LoRA, ``--train-text-encoder``)
    are stored under their names' prefixes (``text_encoder.``, ``text_encoder_2.``), with their LoRA
    configs, as ``load_lora_weights`` reads them.

    ``pipeline_cls`` is the base model's pipeline class and ``component`` the denoiser ``unet``
    holds the LoRA of (``unet``, or ``transformer`` for FLUX / SD3): the class's
    ``save_lora_weights`` adds the ``unet.`` / ``transformer.`` prefix and metadata that its
    ``load_lora_weights`` expects. Keys stay in peft naming (``...to_q.lora_A.weight``), which diffusers loads
    natively: converting them to the legacy ``lora.down``/``lora.up`` names only works for
    attention layers, and a file mixing both namings (e.g. ``to_q`` plus ``proj_in`` targets)
    silently loses its attention weights on load.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = lora_state_dict(unet)
    extra = {}
    for name, enc in (text_encoders or {}).items():
        extra[f"{name}_lora_layers"] = lora_state_dict(enc)
        extra[f"{name}_lora_adapter_metadata"] = lora_metadata(enc)
    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=out_dir))
    try:
        pipeline_cls.save_lora_weights(
            tmp,
            **{f"{component}_lora_layers": layers, f"{component}_lora_adapter_metadata": lora_metadata(unet)},
            safe_serialization=True,
            **extra,
        )
        os.replace(tmp / DIFFUSERS_WEIGHT_NAME, out_dir / DIFFUSERS_WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / DIFFUSERS_WEIGHT_NAME


_DIFFUSERS_ATTN_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.|^mid_block\.attentions\.0\.")


def _sgm_block_name(key: str, layers_per_block: int) -> str | None:
    """Diffusers UNet attention-block path → the original (SGM) UNet's name, or None.

    ``down_blocks.i.attentions.j`` → ``input_blocks.{1 + i·(L+1) + j}.1``,
    ``mid_block.attentions.0`` → ``middle_block.1``, ``up_blocks.i.attentions.j`` →
    ``output_blocks.{i·(L+1) + j}.1`` (L = layers_per_block); the rest of the path
    (``transformer_blocks.k.attn1.to_q``) is the same in both UNets.
    """
    m = _DIFFUSERS_ATTN_BLOCK.match(key)
    if m is None:
        return None
    rest = key[m.end():]
    if m.group(1) is None:
        return "middle_block.1." + rest
    i, j = int(m.group(2)), int(m.group(3))
    if m.group(1) == "down_blocks":
        return f"input_blocks.{1 + i * (layers_per_block + 1) + j}.1." + rest
    return f"output_blocks.{i * (layers_per_block + 1) + j}.1." + rest


def kohya_state_dict(state: dict[str, torch.Tensor], alpha: float, *,
                     sgm_layers_per_block: int | None = None) -> dict[str, torch.Tensor]:
    """Convert peft-named UNet LoRA weights to kohya names.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`` becomes
    ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight``
    (``lora_B`` → ``lora_up``), plus ``<module>.alpha`` = alpha for every module: the SD 1.x/2.x
    kohya scheme. With ``sgm_layers_per_block`` (SDXL: 2) the blocks get the original UNet's
    names, as kohya's SDXL LoRAs have them (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``);
    that needs every LoRA module inside an attention block, else the diffusers names are kept.
    """
    if sgm_layers_per_block is not None:
        names = {k: _sgm_block_name(k, int(sgm_layers_per_block)) for k in state}
        if all(names.values()):
            state = {names[k]: v for k, v in state.items()}
    return kohya_named(state, "lora_unet_", alpha)


def kohya_named(state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """peft-named LoRA weights → ``{prefix}{module path with _}.lora_down/lora_up.weight`` (``lora_A`` →
    ``lora_down``, ``lora_B`` → ``lora_up``) plus ``<module>.alpha`` = alpha for every module."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for peft_name, kohya_name in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
            if key.endswith(peft_name):
                module = prefix + key[: -len(peft_name)].replace(".", "_")
                out[f"{module}.{kohya_name}.weight"] = value.contiguous()
                out[f"{module}.alpha"] = torch.tensor(float(alpha))
                break
        else:
            raise ValueError(f"unexpected LoRA key {key}")
    return out


def kohya_text_prefixes(names: list[str]) -> dict[str, str]:
    """Kohya key prefix of each text encoder: ``lora_te_`` for a single one, else ``lora_te1_``, ``lora_te2_``."""
    if len(names) == 1:
        return {names[0]: "lora_te_"}
    return {n: f"lora_te{i + 1}_" for i, n in enumerate(names)}


def kohya_text_state_dict(layers: dict[str, dict[str, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """peft-named text-encoder LoRA weights by encoder → kohya keys:
    ``text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`` of ``text_encoder_2`` becomes
    ``lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`` (+ one ``alpha`` per module)."""
    prefixes = kohya_text_prefixes(list(layers))
    out: dict[str, torch.Tensor] = {}
    for name, state in layers.items():
        out.update(kohya_named(state, prefixes[name], alpha))
    return out


def save_kohya_lora(unet, out_path: str | Path, *, alpha: float, family, base: str = "",
                    text_encoders: dict | None = None) -> Path:
    """Write a kohya/ComfyUI-style copy of the UNet LoRA (safetensors, atomically), with the
    text encoders' LoRA (``lora_te_*``, or ``lora_te1_*`` / ``lora_te2_*``) when given.

    ``family`` (a :class:`~mudi.models.families.UNetFamily`) decides the key scheme (SDXL: the
    original UNet's block names, ``lora_unet_input_blocks_*``, as kohya's own SDXL LoRAs) and the
    base-model version A1111 reads. A FLUX.1 transformer's LoRA gets the Black Forest Labs layout
    ComfyUI reads for FLUX (:mod:`mudi.models.comfy_flux`).
    """
    from mudi.models.lora_files import save_safetensors_atomic

    model = _unwrap(unet)
    meta = lora_metadata(unet)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(meta["r"]), "ss_network_alpha": str(alpha),
                "ss_sd_model_name": str(base), "mudi_lora_config": json.dumps(meta)}
    if type(model).__name__ == "FluxTransformer2DModel":
        from mudi.models.comfy_flux import flux_comfy_state_dict, fused_part_dims

        sd = flux_comfy_state_dict(lora_state_dict(model), alpha, fused_part_dims(model))
        metadata.update(ss_network_module="networks.lora_flux", ss_base_model_version="flux1")
    else:
        sd = kohya_state_dict(lora_state_dict(unet), alpha, sgm_layers_per_block=family.kohya_block_layers(model))
        metadata.update(ss_base_model_version=family.kohya_base_version(model), ss_v2=str(family.is_v2(model)))
    if text_encoders:
        sd.update(kohya_text_state_dict({n: lora_state_dict(e) for n, e in text_encoders.items()}, alpha))
    return save_safetensors_atomic(sd, metadata, Path(out_path))


def _unwrap(model):
    """Strip DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


__all__ = [
    "DIFFUSERS_WEIGHT_NAME",
    "KOHYA_WEIGHT_NAME",
    "add_unet_lora",
    "check_lora_targets",
    "kohya_named",
    "kohya_text_prefixes",
    "kohya_text_state_dict",
    "kohya_state_dict",
    "load_lora_state_dict",
    "lora_metadata",
    "lora_target_choices",
    "lora_state_dict",
    "save_diffusers_lora",
    "save_kohya_lora",
]
