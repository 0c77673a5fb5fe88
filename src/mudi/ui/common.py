"""What every tab shares: the app context, page messages instead of tracebacks, small readers."""

from __future__ import annotations

import functools
import html
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.ui.config import UIConfig
from mudi.ui.presets import Preset
from mudi.ui.workspace import Workspace
from mudi.ui.worker import TrainWorker


@dataclass
class AppContext:
    """The server-side state of one app: its settings, preset, work folder and training worker."""

    config: UIConfig
    preset: Preset
    ws: Workspace
    worker: TrainWorker

    @property
    def max_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.config.max_upload_mb * 1e6)

    def options(self, **kw) -> RunOptions:
        """RunOptions for a stage started from the page (no progress bars, the app's device)."""
        return RunOptions(device=self.config.device, progress=False, **kw)


def ok(text: str) -> str:
    """A success message for a tab's status line."""
    return f'<div class="mudi-ok">{html.escape(text)}</div>'


def error(text: str) -> str:
    """An error message for a tab's status line (shown in the page, never a traceback)."""
    return f'<div class="mudi-error">Error: {html.escape(text)}</div>'


def guarded(n_outputs: int) -> Callable:
    """Decorate a handler whose first output is a status message: a :class:`MudiError` (or any
    other exception, logged on the server) becomes an error message, the other outputs unchanged."""
    import gradio as gr

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any):
            try:
                return fn(*args)
            except MudiError as exc:
                message = error(str(exc))
            except Exception as exc:  # an unexpected failure: one line in the page, details in the log
                traceback.print_exc()
                message = error(f"unexpected {exc.__class__.__name__}: {exc} (details in the server log)")
            rest = [gr.skip() for _ in range(n_outputs - 1)]
            return (message, *rest) if rest else message

        return run

    return wrap


def subject_phrases(subjects: str | Path) -> dict[str, str]:
    """Key → "identifier class" of a subject-set folder (read from its metadata)."""
    from mudi.subjects import SubjectSet

    return {s.key: s.phrase for s in SubjectSet.load(subjects).subjects}


def read_section(folder: Path, section: str) -> dict:
    """One table of a stage's saved ``config.toml`` (empty when the folder has none)."""
    from mudi.settings import read_section as read

    path = folder / "config.toml"
    return read(path, section) if path.is_file() else {}


def need(value: Any, what: str) -> Any:
    """``value`` when it is set, else a MudiError asking for ``what``."""
    if not value:
        raise MudiError(f"choose {what} first.")
    return value


__all__ = ["AppContext", "error", "guarded", "need", "ok", "read_section", "subject_phrases"]
