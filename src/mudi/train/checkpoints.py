"""Checkpoints of a training run, and the policy of resuming one.

A checkpoint ``OUT/checkpoints/step_XXXXXX/`` (written to a temp folder, fsynced, renamed) holds
the LoRA weights, the optimizer state, the step and the python/numpy/torch RNG states of the
training scope; with the example schedule being a pure function of ``(seed, example number)``,
that is all a resumed run needs to end with exactly the LoRA of an uninterrupted one (CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mudi.errors import MudiError
from mudi.train.config import RESUME_SAFE_FIELDS, TrainConfig

CONFIG_NAME = "config.toml"
CKPT_DIR = "checkpoints"
#: Keys of ``OUT/config.toml`` files written before invocation options left the config.
LEGACY_INVOCATION_KEYS = ("device", "progress", "resume", "overwrite", "stop_after")


def _ckpt_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (their state.json exists) sorted by step."""
    root = Path(out) / CKPT_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name.startswith("step_") and (d / "state.json").is_file():
                try:
                    found.append((int(d.name[5:]), d))
                except ValueError:
                    pass
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _optimizer_to_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        meta_state[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
                meta_state[str(pid)][k] = "<tensor>"
            else:
                meta_state[str(pid)][k] = v
    return tensors, {"state": meta_state, "param_groups": sd["param_groups"]}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"state.{pid}.{k}"] if v == "<tensor>" else v) for k, v in st.items()}
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def _set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "python" in js:
        v, st, g = js["python"]
        random.setstate((v, tuple(st), g))
    if "numpy" in js:
        a, keys, pos, has, cached = js["numpy"]
        np.random.set_state((a, np.asarray(keys, dtype=np.uint32), pos, has, cached))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def training_rngs(seed: int) -> Iterator[None]:
    """The scope of a training run's global RNGs (torch, python, numpy): seeded with ``seed`` on
    entry, as a run's LoRA initialisation (and LoRA dropout) expects, and restored on exit, so the
    caller's random state is untouched. Checkpoints save and restore the states inside the scope."""
    from mudi.runtime import forked_rng

    py, np_state = random.getstate(), np.random.get_state()
    try:
        with forked_rng(seed):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def _lora_tensors(unet, text_encoders: dict | None) -> dict[str, torch.Tensor]:
    """The UNet LoRA (peft names) and each trained text encoder's, prefixed with its name (``text_encoder.``)."""
    from mudi.models.lora import lora_state_dict

    tensors = lora_state_dict(unet)
    for name, enc in (text_encoders or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in lora_state_dict(enc).items()})
    return tensors


def _load_lora_tensors(unet, text_encoders: dict | None, lora: dict[str, torch.Tensor]) -> None:
    from mudi.models.lora import load_lora_state_dict

    names = tuple(f"{n}." for n in (text_encoders or {}))
    load_lora_state_dict(unet, {k: v for k, v in lora.items() if not k.startswith(names)})
    for name, enc in (text_encoders or {}).items():
        load_lora_state_dict(enc, {k[len(name) + 1:]: v for k, v in lora.items() if k.startswith(f"{name}.")})


def save_checkpoint(out: Path, step: int, unet, optimizer, *, scaler=None, sampler: dict, keep: int,
                    extra: dict | None = None, export: Callable[[Path], Any] | None = None,
                    text_encoders: dict | None = None) -> Path:
    """Write ``OUT/checkpoints/step_XXXXXX`` atomically (temp folder + rename) and prune old ones.

    Tensors (LoRA weights -- the text encoders' prefixed with their names --, optimizer state,
    torch RNG) go to safetensors, the rest to JSON.
    """
    from safetensors.torch import save_file

    root = Path(out) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / _ckpt_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file(_lora_tensors(unet, text_encoders), str(tmp / "lora.safetensors"))
        if export is not None:  # the LoRA of this step in diffusers format: pipe.load_lora_weights(folder)
            export(tmp)
        opt_tensors, opt_meta = _optimizer_to_tensors(optimizer)
        rng_js, rng_tensors = _rng_state()
        save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
        state = {"step": int(step), "optimizer": opt_meta, "scaler": scaler.state_dict() if scaler is not None else None,
                 "rng": rng_js, "sampler": sampler, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=float), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step (resume after a kill during pruning)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # prune: keep the newest `keep` checkpoints, and leftovers of interrupted writes
    for _, d in list_checkpoints(out)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(".step_*"):
        shutil.rmtree(d, ignore_errors=True)
    return final


def load_checkpoint(path: Path, unet, optimizer, *, scaler=None, text_encoders: dict | None = None) -> dict[str, Any]:
    """Restore LoRA weights, optimizer state, scaler and RNG states; return the state JSON."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        lora = load_file(str(path / "lora.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors raises its own errors
        raise MudiError(f"{path}: checkpoint is unreadable ({exc}); delete it to resume from an older one.") from None
    _load_lora_tensors(unet, text_encoders, lora)
    opt_sd = _optimizer_from_tensors({k: v for k, v in tensors.items() if k.startswith("state.")}, state["optimizer"])
    optimizer.load_state_dict(opt_sd)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state.get("rng", {}), {k: v for k, v in tensors.items() if k.startswith("rng.")})
    return state


class Checkpointer:
    """Saves the run's checkpoints and restores the newest one (the trainer's view of this module)."""

    def __init__(self, out: Path, *, keep: int, unet, optimizer, scaler=None,
                 export: Callable[[Path], Any] | None = None, extra: dict | None = None,
                 text_encoders: dict | None = None):
        self.out, self.keep = Path(out), keep
        self.unet, self.optimizer, self.scaler = unet, optimizer, scaler
        self.export, self.extra, self.text_encoders = export, extra, text_encoders

    def save(self, step: int, sampler: dict) -> Path:
        """Checkpoint after optimizer step ``step``."""
        return save_checkpoint(self.out, step, self.unet, self.optimizer, scaler=self.scaler, sampler=sampler,
                               keep=self.keep, extra=self.extra, export=self.export, text_encoders=self.text_encoders)

    def restore_latest(self) -> int:
        """Load the newest complete checkpoint; return its step (0 when there is none)."""
        ckpts = list_checkpoints(self.out)
        if not ckpts:
            return 0
        state = load_checkpoint(ckpts[-1][1], self.unet, self.optimizer, scaler=self.scaler,
                                text_encoders=self.text_encoders)
        return int(state["step"])


# ============================================================================ resume policy


def abs_if_local(p: str) -> str:
    """An existing local path made absolute; anything else (a hub id) unchanged."""
    if not p:
        return p
    path = Path(p).expanduser()
    return str(path.resolve()) if path.exists() else p


#: Options whose default changed after runs could be saved without them (issue 12): a run's
#: ``config.toml`` that lacks one was made with this value, so resuming it keeps that value.
OLD_DEFAULTS = {"plain_crop": "center", "loss_mask": "instance", "class_layout": "instance"}


def saved_config(path: Path) -> TrainConfig:
    """The ``OUT/config.toml`` of a run (also one written when invocation options were saved in it,
    or before an option existed: it gets the value the run was made with, :data:`OLD_DEFAULTS`;
    a run saved before ``reg`` existed is ``prior`` with a class set, else unregularized)."""
    from mudi.settings import read_section

    values = {k: v for k, v in read_section(path, TrainConfig.SECTION).items() if k not in LEGACY_INVOCATION_KEYS}
    old = {k: v for k, v in OLD_DEFAULTS.items() if k in TrainConfig.__dataclass_fields__}
    if "reg" not in values:
        old["reg"] = "prior" if values.get("prior_dir") else "none"
    return TrainConfig().updated({**old, **values}, where=str(path))


def resolve_resume(cfg: TrainConfig) -> TrainConfig:
    """Merge a ``--resume`` request with the run's saved config.

    The saved config wins. A data/method option given with a value that differs both from the
    saved one and from the default is refused (it would change the run); the resume-safe
    options (steps, checkpoint/validation intervals, ...) are taken from the request.
    """
    out = Path(cfg.out)
    saved_path = out / CONFIG_NAME
    if not saved_path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise MudiError(f"{out}: nothing to resume ({CONFIG_NAME} is missing); it is not a `mudi train` output folder.")
        return cfg  # killed before anything was written: start from scratch
    saved = saved_config(saved_path)
    default = TrainConfig()
    for f in saved.to_dict():
        if f in RESUME_SAFE_FIELDS:
            continue
        given, was = getattr(cfg, f), getattr(saved, f)
        same = abs_if_local(given) == abs_if_local(was) if f in ("subjects", "base", "prior_dir", "vae") else given == was
        if same or given == getattr(default, f):
            continue
        raise MudiError(
            f"{saved_path}: --resume with {f} = {given!r}, but the run was started with {was!r}. "
            "A resumed run keeps its data and method options; only the step count and the checkpoint/validation "
            "intervals may change. Start a new --out for other options."
        )
    merged = {f: getattr(cfg, f) if (f == "out" or getattr(cfg, f) != getattr(default, f)) else getattr(saved, f)
              for f in RESUME_SAFE_FIELDS}
    return saved.updated(merged)


__all__ = ["CKPT_DIR", "CONFIG_NAME", "Checkpointer", "abs_if_local", "list_checkpoints", "load_checkpoint",
           "resolve_resume", "save_checkpoint", "saved_config", "training_rngs"]
