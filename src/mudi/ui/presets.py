"""Worlds the UI can run on without a base model: named presets that plugins register.

``mudi ui`` with no ``--base`` uses the preset named ``toy``, which the toy world registers from
its ``mudi.plugins`` entry point (the product never imports the toy world). A preset says which
base model to load and the settings that suit it, as plain values for the stage configs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from mudi.errors import MudiError

#: The preset ``mudi ui`` uses when no base model is given.
DEFAULT_PRESET = "toy"


@dataclass(frozen=True)
class Preset:
    """A base model and the stage settings that suit it (field values of the stage configs)."""

    name: str
    base: str
    description: str = ""
    #: Masks: a detector name of the evaluation registry ("" = PrepareConfig's OWLv2) and the
    #: segmenter (a SAM checkpoint or "grabcut"; "" = PrepareConfig's SAM).
    detector: str = ""
    segmenter: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    compose: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    #: PriorsConfig values for class images generated from the page (prior preservation).
    priors: dict[str, Any] = field(default_factory=dict)
    #: A note shown under the prior-preservation choice (e.g. what the base draws for a class).
    priors_note: str = ""


_PRESETS: dict[str, Callable[[], Preset] | str] = {}


def register_preset(name: str, factory: Callable[[], Preset] | str) -> None:
    """Make ``factory()`` the preset called ``name`` (registering a name again replaces it).

    ``factory`` may be a ``"module:function"`` reference, imported only when the preset is first
    used (as an entry point is), so registering a preset imports nothing.
    """
    if not name or "/" in name:
        raise ValueError(f"a preset name must be a non-empty word without '/', got {name!r}")
    _PRESETS[name] = factory


def preset_names() -> list[str]:
    """The registered presets (plugins loaded first), sorted."""
    _load_plugins()
    return sorted(_PRESETS)


def get_preset(name: str = DEFAULT_PRESET) -> Preset:
    """The preset ``name``.

    Raises:
        MudiError: no plugin registered it (e.g. the toy world is not installed).
    """
    if name not in _PRESETS:
        _load_plugins()
    if name not in _PRESETS:
        known = ", ".join(sorted(_PRESETS)) or "none"
        raise MudiError(f"no UI preset named {name!r} is installed (known: {known}); give --base MODEL "
                        "(a diffusers SD/SDXL folder or hub id) instead.")
    factory = _PRESETS[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory()


def custom_preset(base: str) -> Preset:
    """The preset of a user-given base model: every stage's own defaults (OWLv2 + SAM masks)."""
    return Preset(name="custom", base=base, description=f"base model {base}", detector="", segmenter="")


def _load_plugins() -> None:
    from mudi.evaluate.registry import load_plugins

    load_plugins()


__all__ = ["DEFAULT_PRESET", "Preset", "custom_preset", "get_preset", "preset_names", "register_preset"]
