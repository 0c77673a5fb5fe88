"""Families whose diffusers classes only exist in newer diffusers releases.

mudi allows older diffusers releases than the ones that added some pipelines
(``QwenImagePipeline``: 0.35.0, ``Flux2KleinPipeline``: 0.37.0). A family mixing in
:class:`NeedsDiffusers` names the release it needs; with an older diffusers, recognizing or
loading such a model folder raises a :class:`~mudi.errors.MudiError` that says which version to
install, while every other family keeps working (a missing class is a stand-in that matches no
loaded pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from mudi.errors import MudiError


def installed_diffusers() -> str:
    """The installed diffusers version string."""
    import diffusers

    return str(getattr(diffusers, "__version__", "unknown"))


class NeedsDiffusers:
    """Mixin for a :class:`~mudi.models.families.flow.FlowFamily` whose classes are recent."""

    #: the first diffusers release with the family's pipeline and transformer classes
    min_diffusers: ClassVar[str] = ""
    #: how the error names the models ("FLUX.2 [klein]")
    label: ClassVar[str] = ""

    def missing_error(self, class_name: str) -> MudiError:
        """The error for a diffusers release without ``class_name``."""
        return MudiError(
            f"{self.label} models need diffusers >= {self.min_diffusers} (it has {class_name}); the installed "
            f"diffusers is {installed_diffusers()}. Upgrade it: pip install -U 'diffusers>={self.min_diffusers}'.")

    def _class(self, class_name: str):
        import diffusers

        cls = getattr(diffusers, class_name, None)
        if cls is not None:
            return cls
        error = self.missing_error(class_name)

        def fail(*args, **kwargs):
            raise error

        # a stand-in: no loaded pipeline is an instance of it, loading through it raises the error
        return type(class_name, (), {"from_pretrained": staticmethod(fail), "from_config": staticmethod(fail),
                                     "load_config": staticmethod(fail), "missing": error})

    def require(self) -> None:
        """Raise the MudiError when the installed diffusers lacks the family's classes."""
        for name in (self.pipeline_names[0], self.transformer_class_name):
            missing = getattr(self._class(name), "missing", None)
            if missing is not None:
                raise missing

    def pipeline_class(self):
        """The diffusers pipeline class (a stand-in raising the MudiError when it is missing)."""
        return self._class(self.pipeline_names[0])

    def transformer_class(self):
        """The diffusers transformer class (a stand-in raising the MudiError when it is missing)."""
        return self._class(self.transformer_class_name)

    def inspect(self, folder: Path, index: dict, base: str):
        """The family's folder check, after making sure diffusers has its classes."""
        self.require()
        return super().inspect(folder, index, base)


__all__ = ["NeedsDiffusers", "installed_diffusers"]
