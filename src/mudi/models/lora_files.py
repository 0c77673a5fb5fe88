"""LoRA files as tables of low-rank factors: read, write, and the update each module adds.

A LoRA file holds, per adapted module, a down factor ``A`` (``r × in``, or ``r × in × kh × kw``
for a convolution) and an up factor ``B`` (``out × r``, or ``out × r × 1 × 1``), and a scale
``s = alpha / r``: the module's weight becomes ``W + s · B A``. :class:`LoraTable` holds that
for one file, whatever its naming:

- the diffusers file (``pytorch_lora_weights.safetensors``: ``unet.<module>.lora_A.weight`` /
  ``lora_B``, the adapter config — ``r``, ``lora_alpha``, targets — in the
  ``lora_adapter_metadata`` entry of the safetensors header, as ``save_lora_weights`` writes it);
- the kohya/ComfyUI copy (``<module>.lora_down.weight`` / ``lora_up`` and one ``alpha`` tensor
  per module).

:func:`read_diffusers_lora` / :func:`write_diffusers_lora` and :func:`read_kohya_lora` /
:func:`write_kohya_lora` move tables in and out of files; :meth:`LoraTable.delta` is the dense
update ``s · B A`` of one module (what merging must preserve).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mudi.errors import MudiError

#: The safetensors header entry where diffusers keeps the adapter config.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
_DIFFUSERS_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight")


@dataclass
class LoraModule:
    """One adapted module: down factor ``a``, up factor ``b``, scale ``s`` (update = s · b a)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The adapted weight's shape: (out, in) or (out, in, kh, kw)."""
        return (int(self.b.shape[0]), *map(int, self.a.shape[1:]))

    def delta(self) -> torch.Tensor:
        """The dense update ``s · B A`` (float64), shaped like the module's weight."""
        a = self.a.double().reshape(self.rank, -1)
        b = self.b.double().reshape(self.b.shape[0], self.rank)
        d = self.scale * (b @ a)
        return d.reshape(self.b.shape[0], *self.a.shape[1:])


@dataclass
class LoraTable:
    """The modules of one LoRA file (module name → factors) and the file's header metadata."""

    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def adapter_config(self, component: str = "unet") -> dict:
        """The diffusers adapter config of ``component`` ({} when the file has none)."""
        raw = self.metadata.get(ADAPTER_METADATA_KEY)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Module → the shape of its update (the adapted weight's shape)."""
        return {n: m.weight_shape for n, m in self.modules.items()}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise MudiError(f"{path}: not a readable safetensors LoRA file ({exc}).") from None


def _pairs(tensors: dict[str, torch.Tensor], suffixes: tuple[str, str], path: Path) -> dict[str, tuple]:
    out: dict[str, list] = {}
    for key, value in tensors.items():
        for i, suffix in enumerate(suffixes):
            if key.endswith(suffix):
                out.setdefault(key[: -len(suffix)], [None, None])[i] = value
    for name, (a, b) in out.items():
        if a is None or b is None:
            raise MudiError(f"{path}: module {name} has only one of its two LoRA factors; the file is damaged.")
        if a.shape[0] != b.shape[1]:
            raise MudiError(f"{path}: module {name} has factors of ranks {a.shape[0]} and {b.shape[1]}.")
    if not out:
        raise MudiError(f"{path}: no LoRA factors found (expected keys ending in {suffixes[0]} / {suffixes[1]}).")
    return {k: (v[0], v[1]) for k, v in out.items()}


def read_diffusers_lora(path: str | Path) -> LoraTable:
    """A diffusers-format LoRA file as a table; scale = lora_alpha / r of each component's config
    (alpha = r, scale 1, when the file carries no config, as diffusers assumes)."""
    path = Path(path)
    tensors, metadata = _read(path)
    table = LoraTable({}, metadata, path)
    for name, (a, b) in _pairs(tensors, _DIFFUSERS_SUFFIXES, path).items():
        component = name.split(".", 1)[0]
        cfg = table.adapter_config(component)
        if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            raise MudiError(f"{path}: rsLoRA, DoRA and per-module rank/alpha patterns are not supported here.")
        alpha = float(cfg.get("lora_alpha", a.shape[0]))
        table.modules[name] = LoraModule(a, b, alpha / int(cfg.get("r", a.shape[0])))
    return table


def read_kohya_lora(path: str | Path) -> LoraTable:
    """A kohya-format LoRA file as a table; scale = the module's ``alpha`` tensor / its rank."""
    path = Path(path)
    tensors, metadata = _read(path)
    table = LoraTable({}, metadata, path)
    for name, (a, b) in _pairs(tensors, _KOHYA_SUFFIXES, path).items():
        alpha = tensors.get(f"{name}.alpha")
        scale = float(alpha) / a.shape[0] if alpha is not None else 1.0
        table.modules[name] = LoraModule(a, b, scale)
    return table


def lora_file(path: str | Path, option: str) -> Path:
    """The diffusers LoRA file of a ``mudi train``/``mudi merge`` folder (or the file itself);
    MudiError naming ``option`` when there is none."""
    p = Path(path)
    weights = p / DIFFUSERS_FILE if p.is_dir() else p
    if not weights.is_file():
        raise MudiError(f"{option} {path}: no {DIFFUSERS_FILE} there; pass the folder of a finished `mudi train` "
                        "or `mudi merge` run.")
    return weights


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out_path: Path) -> Path:
    """safetensors file written atomically (temporary file beside it, then a rename)."""
    from safetensors.torch import save_file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def write_diffusers_lora(table: LoraTable, out_path: str | Path, adapter_config: dict[str, dict]) -> Path:
    """Write ``table`` as a diffusers LoRA file (what ``pipe.load_lora_weights`` reads).

    Every module's scale must equal its component's ``lora_alpha / r`` in ``adapter_config``
    (component → peft LoRA config); the config goes into the header as ``save_lora_weights`` puts it.
    """
    meta = {f"{comp}.{k}": v for comp, cfg in adapter_config.items() for k, v in cfg.items()}
    tensors: dict[str, torch.Tensor] = {}
    for name, m in table.modules.items():
        cfg = adapter_config[name.split(".", 1)[0]]
        if abs(m.scale - float(cfg["lora_alpha"]) / int(cfg["r"])) > 1e-9 or m.rank != int(cfg["r"]):
            raise ValueError(f"{name}: rank {m.rank} / scale {m.scale} do not match the adapter config {cfg}")
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = m.a, m.b
    header = {ADAPTER_METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True), "format": "pt"}
    return save_safetensors_atomic(tensors, header, Path(out_path))


def write_kohya_lora(table: LoraTable, out_path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``table`` in kohya naming (``lora_down`` / ``lora_up`` / ``alpha = scale · rank``)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, m in table.modules.items():
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = m.a, m.b
        tensors[f"{name}.alpha"] = torch.tensor(float(m.scale * m.rank))
    return save_safetensors_atomic(tensors, dict(metadata), Path(out_path))


__all__ = ["ADAPTER_METADATA_KEY", "DIFFUSERS_FILE", "LoraModule", "LoraTable", "lora_file", "read_diffusers_lora",
           "read_kohya_lora", "save_safetensors_atomic", "write_diffusers_lora", "write_kohya_lora"]
