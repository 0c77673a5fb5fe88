"""Where and how a stage runs: device, dtype, random generators, and quiet libraries.

Everything here is explicit and scoped: nothing is changed at import time, random numbers come
from generators (or from a forked global RNG that is restored), and library settings changed by
:func:`quiet_libraries` are put back when its ``with`` block ends.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from mudi.errors import MudiError

#: Names accepted by :func:`resolve_dtype` (besides ``auto``).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

#: Loggers that :func:`quiet_libraries` turns down.
LIBRARY_LOGGERS = ("diffusers", "transformers", "peft", "accelerate", "huggingface_hub")

_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def pick_device(name: str = "auto", *, option: str = "--device") -> torch.device:
    """The device ``name`` asks for, checked against this machine.

    ``auto`` (or ``""``) picks CUDA, then Apple MPS, then the CPU. Anything else must be a
    torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that exists here.

    Raises:
        MudiError: not a device, or not available on this machine (the message names ``option``).
    """
    if name in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise MudiError(f"{option} {name!r} is not a device (use auto, cpu, cuda, cuda:1, mps).") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MudiError(f"{option} {name}: CUDA is not available on this machine; use {option} cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MudiError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif dev.type == "mps" and not _mps_available():
        raise MudiError(f"{option} {name}: Apple MPS is not available on this machine; use {option} cpu.")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise MudiError(f"{option} {name!r}: mudi runs on cpu, cuda or mps.")
    return dev


def resolve_dtype(name: str, device: torch.device, *, option: str = "--dtype") -> torch.dtype:
    """``auto`` = fp16 on CUDA, fp32 elsewhere; otherwise one of :data:`DTYPES`."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise MudiError(f"{option} {name!r}: choose auto or one of {', '.join(DTYPES)}.") from None


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device).manual_seed(int(seed))


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Run code that draws from torch's *global* RNG (e.g. peft's LoRA initialisation) as if after
    ``torch.manual_seed(seed)``, and restore the global RNG state afterwards.

    CUDA RNGs are forked too when CUDA is initialised, so the caller's streams are untouched.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@dataclass(frozen=True)
class Processes:
    """This process's share of a job run by several processes (``accelerate launch``, torchrun).

    ``index`` is the global rank, ``count`` the number of processes, ``local_index`` the rank on
    this machine (which GPU is this process's). One process (the default) does all the work.
    """

    index: int = 0
    count: int = 1
    local_index: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes what all processes share (index 0)."""
        return self.index == 0

    def share(self, items: Sequence) -> list:
        """The items this process handles: ``index``, ``index + count``, ... (disjoint, complete)."""
        return list(items[self.index :: self.count])

    def gather(self, mine: list) -> list[list]:
        """Every process's list (by process index) on every process; ``[mine]`` when alone."""
        if self.count == 1:
            return [list(mine)]
        import torch.distributed as dist

        lists: list[Any] = [None] * self.count
        dist.all_gather_object(lists, list(mine))
        return lists

    def merge(self, mine: list) -> list:
        """Undo :meth:`share`: the items of all processes back in their original order."""
        lists = self.gather(mine)
        total = sum(len(part) for part in lists)
        return [lists[i % self.count][i // self.count] for i in range(total)]

    def wait(self) -> None:
        """Block until every process gets here (no-op when alone)."""
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, device: torch.device) -> torch.device:
        """``device`` with this process's GPU: a bare ``cuda`` becomes ``cuda:local_index``."""
        device = torch.device(device)
        if self.count > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_index)
        return device


def processes() -> Processes:
    """The :class:`Processes` this program runs as.

    An initialised ``torch.distributed`` group gives rank and size; else ``WORLD_SIZE > 1`` in the
    environment (set by ``accelerate launch`` and torchrun, with ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``) starts the group through accelerate's ``PartialState``
    (NCCL with CUDA, gloo without); else this is the only process.
    """
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), local)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines, else NCCL
    atexit.register(_close_group)
    return Processes(state.process_index, state.num_processes, state.local_process_index)


def _close_group() -> None:
    """Destroy the process group this program started, before the interpreter tears down: left to
    static destructors, gloo's worker threads can be destroyed unjoined and the process aborts
    ("terminate called without an active exception") although its work finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def import_optional(module: str, *, package: str, extra: str, purpose: str, instead: str = ""):
    """Import ``module`` of an optional extra, or say exactly why it cannot be used.

    A package that is not installed and one that is installed but fails to import (a missing
    dependency, a version clash such as an old package under transformers 5) get different
    messages; the second names the exception so the user can fix it.

    Args:
        module: what to import, e.g. ``"ImageReward"``.
        package: the pip package that provides it, e.g. ``"image-reward"``.
        extra: mudi's extra that installs it (``pip install 'mudi[EXTRA]'``).
        purpose: what needs it, e.g. ``"--image-reward"``.
        instead: what to do without it, e.g. ``"leave out --image-reward"``.

    Raises:
        MudiError: not installed, or installed but broken (with the import error's text).
    """
    otherwise = f", or {instead}" if instead else ""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in _parents(module):
            raise MudiError(f"{purpose} needs the optional {package!r} package, which is not installed. Install "
                            f"it with `pip install 'mudi[{extra}]'`{otherwise}.") from None
        broken: Exception = exc
    except Exception as exc:  # an installed package whose own import code fails
        broken = exc
    raise MudiError(
        f"{purpose} needs the optional {package!r} package: it is installed but `import {module}` fails with "
        f"{broken.__class__.__name__}: {broken}. This is usually a version clash with the installed torch or "
        f"transformers, or a dependency of {package!r} that is missing: run `pip check`, then install versions "
        f"that work together{otherwise}."
    ) from broken


def _parents(module: str) -> set[str]:
    """``a.b.c`` → {``a``, ``a.b``, ``a.b.c``}: the names whose absence means "not installed"."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


class _DropTorchvisionFallback(logging.Filter):
    """Hides transformers' "<X>ImageProcessor requires torchvision; falling back to ...Pil" notes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


@contextlib.contextmanager
def quiet_libraries(*, progress_bars: bool = False) -> Iterator[None]:
    """Inside the block: library loggers show errors only, the torchvision-fallback note is hidden,
    and (unless ``progress_bars``) diffusers/transformers/hub progress bars are off. Everything is
    restored on exit, also after an exception."""
    loggers = [logging.getLogger(n) for n in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    drop = _DropTorchvisionFallback()
    import_logger = logging.getLogger("transformers.utils.import_utils")
    import_logger.addFilter(drop)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    restore_bars = [] if progress_bars else _disable_progress_bars()
    try:
        yield
    finally:
        for enable in restore_bars:
            enable()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        import_logger.removeFilter(drop)


def _disable_progress_bars() -> list:
    """Turn off the libraries' progress bars; return the callables that turn back on those that were on."""
    undo = []
    for module in ("diffusers.utils.logging", "transformers.utils.logging", "huggingface_hub.utils"):
        try:
            lib = __import__(module, fromlist=["_"])
        except ImportError:
            continue
        enabled = getattr(lib, "is_progress_bar_enabled", None) or getattr(lib, "are_progress_bars_disabled", None)
        if enabled is None:
            continue
        if enabled.__name__ == "are_progress_bars_disabled":
            was_on = not enabled()
            off, on = lib.disable_progress_bars, lib.enable_progress_bars
        else:
            was_on = enabled()
            off, on = lib.disable_progress_bar, lib.enable_progress_bar
        if was_on:
            off()
            undo.append(on)
    return undo


__all__ = ["DTYPES", "Processes", "forked_rng", "generator", "import_optional", "pick_device", "processes",
           "quiet_libraries", "resolve_dtype"]
