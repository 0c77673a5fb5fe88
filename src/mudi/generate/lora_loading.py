"""Loading a ``mudi train`` LoRA into a pipeline, with one clear error when it does not fit.

A LoRA is the output folder of ``mudi train`` (it holds :data:`LORA_WEIGHTS` and the
``config.toml`` naming the base model, subject set and VAE it was trained with) or a
``.safetensors`` file. :func:`load_lora` checks that every module the file holds weights for
received them, so a LoRA trained on another base model is refused instead of silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mudi.errors import MudiError
from mudi.runtime import quiet_libraries
from mudi.settings import read_section
from mudi.train.config import TrainConfig

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "mudi"


def lora_weights_file(lora: str | Path) -> Path:
    """The LoRA safetensors file of a ``mudi train`` folder (or the file itself)."""
    p = Path(lora)
    if not p.exists():
        raise MudiError(f"{p}: LoRA not found. Pass the output folder of `mudi train` (it holds {LORA_WEIGHTS}).")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise MudiError(f"{p}: a LoRA must be a .safetensors file or a folder holding {LORA_WEIGHTS}.")
        return p
    f = p / LORA_WEIGHTS
    if f.is_file():
        return f
    others = sorted(p.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    raise MudiError(
        f"{p}: no {LORA_WEIGHTS} in this folder. Pass the output folder of a finished `mudi train` run "
        "or a LoRA .safetensors file."
    )


def read_train_config(lora: str | Path) -> dict[str, Any]:
    """The ``config.toml`` written by ``mudi train`` next to the LoRA ({} if there is none)."""
    p = Path(lora)
    folder = p if p.is_dir() else p.parent
    for cand in (folder / "config.toml", folder.parent / "config.toml"):
        if cand.is_file():
            data = read_section(cand, TrainConfig.SECTION)
            data["_path"] = str(cand)
            return data
    return {}


def _lora_modules(weights: Path) -> dict[str, set[str]]:
    """Module names per pipeline component that a LoRA file holds weights for."""
    from safetensors import safe_open

    out: dict[str, set[str]] = {}
    try:
        with safe_open(str(weights), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # noqa: BLE001 - any safetensors parse error is the user's file
        raise MudiError(f"{weights}: not a readable safetensors file ({exc}).") from None
    for k in keys:
        comp, _, rest = k.partition(".")
        if comp not in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3") or ".lora" not in rest:
            continue
        out.setdefault(comp, set()).add(rest[: rest.index(".lora")])
    if not keys:
        raise MudiError(f"{weights}: the LoRA file is empty.")
    return out


def _drop_adapter(pipe) -> None:
    """Remove a (partly) loaded LoRA so a caller's pipeline is left as it was."""
    try:
        with quiet_libraries():
            pipe.unload_lora_weights()
    except Exception:  # noqa: BLE001 - best effort; the caller reports the real error
        pass


def load_lora(pipe, lora: str | Path, *, scale: float = 1.0, base: str = "") -> Path:
    """Load a LoRA into ``pipe`` and check that every weight found a module of the right shape.

    Raises:
        MudiError: the file is missing or unreadable, or the LoRA does not fit the base model
            (shape mismatch, modules the model does not have).
    """
    weights = lora_weights_file(lora)
    expected = _lora_modules(weights)
    hint = (
        f" It was probably trained on another base model than {base!r}; pass the --base it was trained on"
        if base else " It was probably trained on another base model"
    )
    cfg = read_train_config(lora)
    if cfg.get("base"):
        hint += f" (its config.toml says base = {cfg['base']!r})"
    try:
        with quiet_libraries():
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name=ADAPTER_NAME)
    except Exception as exc:  # noqa: BLE001 - diffusers/peft raise RuntimeError, ValueError, KeyError, ...
        _drop_adapter(pipe)
        first = str(exc).strip().splitlines()
        detail = " ".join(first[:2])[:400]
        raise MudiError(f"{lora}: the LoRA does not fit the base model ({type(exc).__name__}: {detail}).{hint}.") from None
    for comp, names in expected.items():
        model = getattr(pipe, comp, None)
        if model is None:
            _drop_adapter(pipe)
            raise MudiError(f"{lora}: the LoRA has weights for {comp}, which this base model lacks.{hint}.")
        have = {n for n, m in model.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in getattr(m, "lora_A", {})}
        missing = sorted(names - have)
        if missing:
            _drop_adapter(pipe)
            raise MudiError(
                f"{lora}: {len(missing)} of the LoRA's {len(names)} {comp} modules do not exist in the base model "
                f"(e.g. {missing[0]!r}).{hint}."
            )
    if scale != 1.0:
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
    return weights


def fuse_lora(pipe) -> None:
    """Merge the loaded ``mudi`` adapter into the weights (at its ``--lora-scale``): sampling then
    runs the plain layers, without the LoRA's extra matmuls. Undo with :func:`unfuse_lora`."""
    with quiet_libraries():
        pipe.fuse_lora(adapter_names=[ADAPTER_NAME])


def unfuse_lora(pipe) -> None:
    """Take a fused LoRA back out of the weights (the adapter stays loaded)."""
    with quiet_libraries():
        pipe.unfuse_lora()
