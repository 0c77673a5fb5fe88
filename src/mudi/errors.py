"""User-facing errors.

Everything a user can get wrong (a missing folder, a corrupt photo, an option out of range)
raises :class:`MudiError` with a message that says which file, what is wrong and what to do.
The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class MudiError(Exception):
    """An error caused by the user's input; its message is shown as-is."""


class ModelNotAvailableError(MudiError):
    """A model name could not be resolved to a loadable checkpoint (e.g. offline)."""
