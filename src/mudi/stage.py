"""Stage packages that are also their entry function: ``mudi.train(config)`` runs
:func:`mudi.train.train`, while ``mudi.train`` stays the package (``mudi.train.TrainConfig``,
``import mudi.train.recipe``, ``unittest.mock.patch("mudi.train.recipe....")`` all work).
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from typing import Callable


def make_callable(package: str, entry: Callable) -> None:
    """Let the already imported ``package`` be called like ``entry`` (same signature and return).

    The call looks ``entry`` up on the package each time, so ``mock.patch("mudi.train.train")``
    reaches ``mudi.train(...)`` too. Called once at the end of a stage package's ``__init__``;
    it changes only that module object's class (no global state).
    """
    module = sys.modules[package]
    name = entry.__name__

    @functools.wraps(entry)
    def call(self, *args, **kwargs):
        return getattr(self, name)(*args, **kwargs)

    cls = type(f"{package}.<stage>", (types.ModuleType,), {"__call__": call, "__module__": package})
    cls.__signature__ = inspect.signature(entry)  # type: ignore[attr-defined]
    module.__class__ = cls
