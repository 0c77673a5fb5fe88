"""mudi: multi-subject personalization of text-to-image diffusion models (MuDI)."""

from mudi.errors import MudiError

__version__ = "0.1.0"
__all__ = ["MudiError", "__version__"]
