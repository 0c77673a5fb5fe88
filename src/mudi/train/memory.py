"""What a training run will hold in device memory, estimated from configs before any weight is loaded.

:func:`estimate_memory` adds up, for one run:

- the frozen **denoiser** weights at the training dtype, or quantized (``--quantize``: every
  ``nn.Linear`` weight at :data:`~mudi.models.quantize.QUANTIZED_WEIGHT_BYTES`),
- the **text encoders** at the training dtype — resident only while the captions are encoded
  and cached (they are freed afterwards), so they count in the *caching* phase,
- the **VAE** (float32 when its config forces the upcast), unless ``--offload-vae`` keeps it in
  CPU memory; plus the transient of an encode at the training resolution (Seg-Mix composites
  are encoded during training),
- the **LoRA**: float32 weights and gradients, AdamW's two float32 moments (two bytes with 8-bit Adam),
- the **activations** of one micro-batch (doubled with prior preservation), measured on the meta
  device with and without gradient checkpointing (:mod:`mudi.train.activations`),
- on CUDA, a fixed reserve for the CUDA context, cuBLAS/cuDNN workspaces and allocator slack.

The peak is the larger of the caching phase (denoiser + text encoders + VAE) and the training phase
(denoiser + VAE + LoRA state + the larger of activations and the VAE transient). The model parts
come from :func:`meta_parts` (a local pipeline folder's configs, built on the meta device) or
:func:`meta_copy` of loaded modules. The run's check (:mod:`mudi.train.memory_check`) compares the peak with the
device and lists the options that would make it fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

GB = 1e9
#: CUDA context + cuBLAS/cuDNN workspaces + caching-allocator slack (rule of thumb, not measured).
CUDA_RESERVE = int(1.0 * GB)
#: Text tokens the denoiser sees per prompt, by class (the pipelines' defaults).
TEXT_TOKENS = {"UNet2DConditionModel": 77, "FluxTransformer2DModel": 512, "Flux2Transformer2DModel": 512,
               "SD3Transformer2DModel": 77 + 256, "QwenImageTransformer2DModel": 256}


@dataclass
class PipelineParts:
    """The modules whose size matters (meta-device copies are enough)."""

    denoiser: torch.nn.Module
    text_encoders: dict[str, torch.nn.Module] = field(default_factory=dict)
    vae: torch.nn.Module | None = None
    unknown: list[str] = field(default_factory=list)  # components that could not be built (not counted)


@dataclass
class MemorySettings:
    """The run settings the estimate depends on."""

    resolution: int
    dtype: torch.dtype = torch.float16
    quantize: str = "none"
    rank: int = 32
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    batch: int = 1  # examples per denoiser forward (micro-batch, x2 with prior preservation)
    checkpointing: bool = False
    offload_vae: bool = False
    adam_8bit: bool = False
    cuda: bool = True


@dataclass
class MemoryPart:
    """One line of the estimate. ``phase``: caching, training or both; a transient part is the
    largest of its phase's transients, not added to them."""

    name: str
    bytes: int
    phase: str
    note: str = ""
    transient: bool = False


@dataclass
class MemoryEstimate:
    """The parts of a run's device memory and its peak."""

    parts: list[MemoryPart]
    settings: MemorySettings
    activations: dict[str, int] | None = None  # plain / checkpointed bytes (None: no probe)

    def phase_total(self, phase: str) -> int:
        """Bytes held in ``phase`` (``caching`` or ``training``)."""
        mine = [p for p in self.parts if p.phase in (phase, "both")]
        steady = sum(p.bytes for p in mine if not p.transient)
        return steady + max([p.bytes for p in mine if p.transient], default=0)

    @property
    def peak(self) -> int:
        """The larger of the two phases."""
        return max(self.phase_total("caching"), self.phase_total("training"))

    def table(self) -> str:
        """The estimate as aligned text lines (GB)."""
        s = self.settings
        head = (f"memory estimate ({s.resolution} px, micro-batch {s.batch}, rank {s.rank}, "
                f"{str(s.dtype).removeprefix('torch.')}, quantize {s.quantize}, gradient checkpointing "
                f"{'on' if s.checkpointing else 'off'}, VAE {'offloaded' if s.offload_vae else 'on the device'}):")
        rows = [head] + [f"  {p.name:<34s} {p.bytes / GB:7.2f} GB  [{p.phase}{', transient' if p.transient else ''}]"
                         f"{'  ' + p.note if p.note else ''}" for p in self.parts]
        rows.append(f"  {'caching phase':<34s} {self.phase_total('caching') / GB:7.2f} GB")
        rows.append(f"  {'training phase':<34s} {self.phase_total('training') / GB:7.2f} GB")
        rows.append(f"  {'peak':<34s} {self.peak / GB:7.2f} GB")
        return "\n".join(rows)


# ------------------------------------------------------------------------------------ sizes
def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype, quantize: str = "none") -> int:
    """Bytes of ``module``'s weights at ``dtype``; with ``quantize``, every ``nn.Linear`` weight quantized."""
    from mudi.models.quantize import QUANTIZED_WEIGHT_BYTES

    per = _bytes(dtype)
    linear = {id(m.weight): m for m in module.modules() if isinstance(m, torch.nn.Linear)} if quantize != "none" else {}
    total = 0.0
    for p in module.parameters():
        if id(p) in linear:
            total += p.numel() * QUANTIZED_WEIGHT_BYTES[quantize]
            if quantize == "int8":
                total += linear[id(p)].out_features * per  # one scale per output row
        else:
            total += p.numel() * per
    return int(total)


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_parameter_count(denoiser: torch.nn.Module, rank: int, targets) -> int:
    """Parameters of a rank-``rank`` LoRA on the ``targets`` (Linear and Conv2d layers, as peft builds it)."""
    count = 0
    for name, m in denoiser.named_modules():
        if not _matches(name, targets):
            continue
        if isinstance(m, torch.nn.Linear):
            count += rank * (m.in_features + m.out_features)
        elif isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            count += rank * (m.in_channels * kh * kw + m.out_channels)
    return count


def _vae_parts(vae, s: MemorySettings) -> list[MemoryPart]:
    if vae is None:
        return []
    upcast = bool(getattr(getattr(vae, "config", None), "force_upcast", False))
    dtype = torch.float32 if upcast else s.dtype
    channels = list(getattr(vae.config, "block_out_channels", [128]))[0]
    transient = 3 * channels * s.resolution**2 * _bytes(dtype)  # three full-resolution feature maps alive
    weights = MemoryPart("VAE weights", 0 if s.offload_vae else weight_bytes(vae, dtype), "both",
                         "in CPU memory (--offload-vae)" if s.offload_vae else ("float32 (force_upcast)" if upcast else ""))
    return [weights, MemoryPart("VAE encode (on-the-fly composites)", transient, "training", "rule of thumb",
                                transient=True)]


# ------------------------------------------------------------------------------------ activations
def probe_inputs(denoiser, batch: int, resolution: int, dtype: torch.dtype) -> dict:
    """Meta-device keyword arguments of one training forward of ``denoiser`` (by its class)."""
    cfg, kind = denoiser.config, type(denoiser).__name__
    meta = dict(device="meta", dtype=dtype)
    text = TEXT_TOKENS.get(kind)
    if kind == "UNet2DConditionModel":
        side = resolution // 8
        args = {"sample": torch.empty(batch, cfg.in_channels, side, side, **meta),
                "timestep": torch.zeros(batch, dtype=torch.long, device="meta"),
                "encoder_hidden_states": torch.empty(batch, text, cfg.cross_attention_dim, **meta)}
        if cfg.addition_embed_type == "text_time":
            pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            args["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, **meta),
                                         "time_ids": torch.empty(batch, 6, **meta)}
        return args
    if kind in ("FluxTransformer2DModel", "Flux2Transformer2DModel"):
        tokens = (resolution // 16) ** 2  # VAE /8, then 2x2 patches packed into channels
        ids = 3 if kind == "FluxTransformer2DModel" else len(cfg.axes_dims_rope)
        args = {"hidden_states": torch.empty(batch, tokens, cfg.in_channels, **meta),
                "encoder_hidden_states": torch.empty(batch, text, cfg.joint_attention_dim, **meta),
                "timestep": torch.empty(batch, **meta), "img_ids": torch.empty(tokens, ids, **meta),
                "txt_ids": torch.empty(text, ids, **meta)}
        if kind == "FluxTransformer2DModel":
            args["pooled_projections"] = torch.empty(batch, cfg.pooled_projection_dim, **meta)
        if cfg.guidance_embeds:
            args["guidance"] = torch.empty(batch, **meta)
        return args
    if kind == "SD3Transformer2DModel":
        side = resolution // 8
        return {"hidden_states": torch.empty(batch, cfg.in_channels, side, side, **meta),
                "encoder_hidden_states": torch.empty(batch, text, cfg.joint_attention_dim, **meta),
                "pooled_projections": torch.empty(batch, cfg.pooled_projection_dim, **meta),
                "timestep": torch.empty(batch, **meta)}
    raise NotImplementedError(f"no memory probe for a {kind} denoiser")


def activation_bytes(denoiser, s: MemorySettings, cache: dict | None = None) -> dict[str, int] | None:
    """Activation bytes (plain / checkpointed) of one micro-batch: a LoRA-carrying meta copy of
    ``denoiser`` runs one forward (:func:`~mudi.train.activations.measure_activations`); None
    when the denoiser class has no probe. ``cache`` keeps results between calls."""
    key = (id(denoiser), s.batch, s.resolution, s.rank, tuple(s.targets), s.dtype)
    if cache is not None and key in cache:
        return cache[key]
    result = _measure(denoiser, s)
    if cache is not None:
        cache[key] = result
    return result


def _measure(denoiser, s: MemorySettings) -> dict[str, int] | None:
    import warnings

    from peft import LoraConfig, inject_adapter_in_model

    from mudi.runtime import quiet_libraries
    from mudi.train.activations import measure_activations

    model = meta_copy(denoiser)
    try:
        kwargs = probe_inputs(model, s.batch, s.resolution, s.dtype)
    except NotImplementedError:
        return None
    with quiet_libraries(), torch.random.fork_rng(devices=[]):
        model.to(s.dtype).requires_grad_(False)  # frozen weights in the training dtype: no autocast copies
        model = inject_adapter_in_model(LoraConfig(r=s.rank, lora_alpha=s.rank, target_modules=list(s.targets)), model)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # LoRA weights are float32, as in training
            p.requires_grad_(True)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dtype-mismatch notes of meta kernels
        return measure_activations(model, lambda: model(**kwargs), s.dtype)


# ------------------------------------------------------------------------------------ the estimate
def estimate_memory(parts: PipelineParts, s: MemorySettings, cache: dict | None = None) -> MemoryEstimate:
    """Every part of the run's device memory (see the module docstring); ``cache`` keeps activation
    measurements between calls on the same parts."""
    quantized = f" ({s.quantize})" if s.quantize != "none" else ""
    rows = [MemoryPart(f"denoiser weights{quantized}", weight_bytes(parts.denoiser, s.dtype, s.quantize), "both",
                       type(parts.denoiser).__name__)]
    for name, enc in parts.text_encoders.items():
        rows.append(MemoryPart(f"{name} weights", weight_bytes(enc, s.dtype), "caching",
                               f"{type(enc).__name__}; freed after caching"))
    rows += _vae_parts(parts.vae, s)
    rows += [MemoryPart(f"{name} weights", 0, "caching", "not estimated: its class could not be built")
             for name in parts.unknown]
    lora = lora_parameter_count(parts.denoiser, s.rank, s.targets)
    per = 4 + 4 + (2 if s.adam_8bit else 8)
    rows.append(MemoryPart("LoRA weights + grads + optimizer", lora * per, "training",
                           f"{lora / 1e6:.1f} M params x {per} B ({'8-bit Adam' if s.adam_8bit else 'AdamW fp32'})"))
    act = activation_bytes(parts.denoiser, s, cache)
    if act is None:
        rows.append(MemoryPart("activations", 0, "training", "not estimated for this denoiser class"))
    else:
        which = "checkpointed" if s.checkpointing else "plain"
        other = "plain" if s.checkpointing else "checkpointed"
        rows.append(MemoryPart("activations", act[which], "training",
                               f"meta-device forward; {other}: {act[other] / GB:.2f} GB", transient=True))
    if s.cuda:
        rows.append(MemoryPart("CUDA context + workspaces", CUDA_RESERVE, "both", "rule of thumb"))
    return MemoryEstimate(rows, s, act)


# ------------------------------------------------------------------------------------ meta models
def meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy of a diffusers or transformers model built from its config on the meta device."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        if hasattr(module, "from_config") and hasattr(module, "config"):  # diffusers
            return type(module).from_config(module.config)
        return type(module)(module.config)  # transformers


def _meta_component(folder: Path, name: str, library: str, class_name: str):
    import diffusers
    import transformers

    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            return cls.from_config(cls.load_config(str(folder / name)))
        config = transformers.AutoConfig.from_pretrained(str(folder / name))
        return getattr(transformers, class_name)(config)


def meta_parts(folder: str | Path) -> PipelineParts:
    """The denoiser, text encoders and VAE of a local pipeline folder, built from their configs on
    the meta device (no weights read)."""
    from mudi.models.families import read_config

    folder = Path(folder)
    index = read_config(folder / "model_index.json", "the pipeline")
    modules, unknown = {}, []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        if name in ("transformer", "unet", "vae") or name.startswith("text_encoder"):
            try:
                modules[name] = _meta_component(folder, name, entry[0], entry[1])
            except (AttributeError, OSError, TypeError, ValueError):  # a class or config mudi cannot build
                if name in ("transformer", "unet"):
                    raise
                unknown.append(f"{name} ({entry[1]})")
    denoiser = modules.pop("transformer", None) or modules.pop("unet")
    vae = modules.pop("vae", None)
    return PipelineParts(denoiser, dict(sorted(modules.items())), vae, unknown)


__all__ = ["CUDA_RESERVE", "GB", "MemoryEstimate", "MemoryPart", "MemorySettings", "PipelineParts", "activation_bytes",
           "estimate_memory", "lora_parameter_count", "meta_copy", "meta_parts", "probe_inputs", "weight_bytes"]
