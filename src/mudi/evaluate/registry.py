"""Named detectors and embedders for Detect-and-Compare, and the plugins that add more.

``--detector NAME`` and ``--embedder NAME`` (and the same fields of
:class:`~mudi.evaluate.config.EvaluateConfig`) look a name up here. mudi registers its own
models (``owlv2``; ``dinov2``, ``dreamsim``); other packages add theirs from a plugin: a
function named by an entry point in the ``mudi.plugins`` group, e.g. in ``pyproject.toml``::

    [project.entry-points."mudi.plugins"]
    toy = "mudi.toy:register"

Plugins are loaded lazily, the first time a name is not found, so importing mudi never imports
them. A factory is called as ``factory(model, device=..., batch_size=..., **extra)``: ``model``
is the model folder or hub id the user gave (``None`` for a plain registered name); detector
factories also get ``nms_iou``, embedder factories ``dreamsim_cache``. Factories accept and
ignore options they do not use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from mudi.errors import MudiError

#: Entry-point group scanned for plugins (each entry point names a ``register()`` function).
PLUGIN_GROUP = "mudi.plugins"

Factory = Callable[..., Any]


@dataclass
class Registry:
    """Factories by name for one kind of component (``"detector"`` or ``"embedder"``).

    ``fallback`` builds the component from a model folder or hub id that is not a registered
    name (e.g. any DINOv2 checkpoint for the embedder).
    """

    kind: str
    fallback: str
    factories: dict[str, Factory] = field(default_factory=dict)

    def register(self, name: str, factory: Factory) -> None:
        """Make ``name`` build ``factory(...)``; registering the same name again replaces it."""
        if not name or "/" in name:
            raise ValueError(f"a {self.kind} name must be a non-empty word without '/', got {name!r}")
        self.factories[name] = factory

    def names(self) -> list[str]:
        """Registered names (plugins loaded first), sorted."""
        load_plugins()
        return sorted(self.factories)

    def resolve(self, spec: str | None, *, option: str) -> tuple[Factory, str | None]:
        """The factory for ``spec`` and the model argument to call it with.

        A registered name gives its factory with ``model=None``; a model folder or a hub id
        (``org/name``) gives the ``fallback`` factory with ``model=spec``.

        Raises:
            MudiError: ``spec`` is neither a registered name (after loading plugins) nor a
                model folder / hub id; the message lists the registered names.
        """
        spec = spec or self.fallback
        if spec not in self.factories:
            load_plugins()
        if spec in self.factories:
            return self.factories[spec], None
        if "/" in spec or "\\" in spec or Path(spec).exists():
            return self.factories[self.fallback], spec
        raise MudiError(
            f"{option} {spec!r}: no {self.kind} has this name and it is not a model folder or hub id "
            f"(org/name). Registered {self.kind}s: {', '.join(self.names())}."
        )

    def build(self, spec: str | None, *, option: str, **options) -> Any:
        """Resolve ``spec`` and call its factory with ``options``."""
        factory, model = self.resolve(spec, option=option)
        return factory(model, **options)


def _owlv2(model: str | None, *, device="cpu", batch_size: int = 4, nms_iou: float | None = None, **_):
    from mudi.prepare.detect import Owlv2Detector

    return Owlv2Detector(model, device=device, batch_size=batch_size, nms_iou=nms_iou)


def _dinov2(model: str | None, *, device="cpu", batch_size: int = 16, **_):
    from mudi.evaluate.embed import Dinov2Embedder

    return Dinov2Embedder(model, device=device, batch_size=batch_size)


def _dreamsim(model: str | None, *, device="cpu", batch_size: int = 16, dreamsim_cache: str = "", **_):
    from mudi.evaluate.embed import DreamSimEmbedder

    return DreamSimEmbedder(device=device, batch_size=batch_size, cache_dir=dreamsim_cache or None)


DETECTORS = Registry("detector", "owlv2", {"owlv2": _owlv2})
EMBEDDERS = Registry("embedder", "dinov2", {"dinov2": _dinov2, "dreamsim": _dreamsim})

_plugins_loaded = False


def load_plugins(*, force: bool = False) -> None:
    """Call every ``register()`` named in the ``mudi.plugins`` entry-point group (once).

    A plugin that fails to load is skipped with a warning: it must not break the names that work.
    """
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()()
        except Exception as exc:  # a broken third-party plugin: its names stay unknown
            warnings.warn(f"mudi plugin {entry.name!r} ({entry.value}) failed to load: {exc}", stacklevel=2)


def register_detector(name: str, factory: Factory) -> None:
    """Make ``--detector name`` build ``factory(model, device=, batch_size=, nms_iou=)``."""
    DETECTORS.register(name, factory)


def register_embedder(name: str, factory: Factory) -> None:
    """Make ``--embedder name`` build ``factory(model, device=, batch_size=)``."""
    EMBEDDERS.register(name, factory)


def make_detector(spec: str | None = None, **options):
    """A detector by registered name (default ``owlv2``) or OWLv2 model folder / hub id."""
    return DETECTORS.build(spec, option="--detector", **options)


def make_embedder(spec: str | None = None, **options):
    """An embedder by registered name (default ``dinov2``) or DINOv2 model folder / hub id."""
    return EMBEDDERS.build(spec, option="--embedder", **options)


__all__ = [
    "DETECTORS",
    "EMBEDDERS",
    "PLUGIN_GROUP",
    "Registry",
    "load_plugins",
    "make_detector",
    "make_embedder",
    "register_detector",
    "register_embedder",
]
