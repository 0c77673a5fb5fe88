"""``UIConfig`` (the flags of ``mudi ui``) and the checks that keep the server safe to run.

Safety rules: the server binds 127.0.0.1 unless ``--host`` says otherwise, and any other host
needs ``--auth user:pass`` (or ``MUDI_UI_AUTH``); everything the page writes stays inside
``--workdir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from mudi.errors import MudiError
from mudi.settings import Settings, setting

#: Environment variable holding ``user:pass`` when ``--auth`` is not given.
AUTH_ENV = "MUDI_UI_AUTH"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class UIConfig(Settings):
    """How ``mudi ui`` serves the app (never saved with a run)."""

    SECTION: ClassVar[str] = "ui"

    host: str = setting("127.0.0.1", "address to bind; any address but 127.0.0.1/localhost needs --auth")
    port: int = setting(7860, "port to listen on")
    workdir: str = setting("mudi-ui", "folder holding everything the app makes (subject sets, runs, images)",
                           metavar="DIR")
    base: str = setting("", "base SD/SDXL model (folder or hub id); empty = the toy world, offline", metavar="MODEL")
    auth: str = setting("", f"USER:PASSWORD required to open the page (or set {AUTH_ENV}); needed for any "
                            "--host other than 127.0.0.1", metavar="USER:PASS")
    no_browser: bool = setting(False, "do not open a browser tab")
    max_upload_mb: float = setting(20.0, "largest accepted upload, in MB", metavar="MB")
    device: str = setting("auto", "device of every stage: auto, cpu, cuda, cuda:N or mps")

    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` from ``--auth`` or ``MUDI_UI_AUTH``; ``None`` when neither is set."""
        raw = self.auth or os.environ.get(AUTH_ENV, "")
        if not raw:
            return None
        user, sep, password = raw.partition(":")
        if not sep or not user or not password:
            where = "--auth" if self.auth else AUTH_ENV
            raise MudiError(f"{where}: give USER:PASSWORD (both parts non-empty).")
        return user, password

    def check(self) -> None:
        """Refuse unsafe or impossible settings before anything starts (nothing is written)."""
        if not 0 < self.port < 65536:
            raise MudiError(f"--port {self.port}: give a port between 1 and 65535.")
        if self.max_upload_mb <= 0:
            raise MudiError(f"--max-upload-mb {self.max_upload_mb}: must be positive.")
        if not self.workdir:
            raise MudiError("--workdir: give the folder the app may write into.")
        creds = self.credentials()
        if self.host not in LOCAL_HOSTS and creds is None:
            raise MudiError(
                f"--host {self.host}: other machines could reach the app; give --auth USER:PASSWORD (or set "
                f"{AUTH_ENV}) to require a login, or keep the default --host 127.0.0.1."
            )


__all__ = ["AUTH_ENV", "LOCAL_HOSTS", "UIConfig"]
