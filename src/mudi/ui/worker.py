"""Training in a background thread of the server: it outlives the browser tab that started it.

One run at a time. A run may start with a phase that generates class images (prior
preservation), counted image by image, before its training steps. The page polls :meth:`TrainWorker.status` (step, ETA, losses, the newest
validation grid, errors as text); *Stop* asks the trainer to stop after the current optimizer
step (a checkpoint is written there), and a stopped run continues with ``RunOptions(resume=True)``
exactly where it stopped.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mudi.errors import MudiError

IDLE, RUNNING, STOPPING, STOPPED, FINISHED, FAILED = "idle", "running", "stopping", "stopped", "finished", "failed"
#: Phases of a run: training steps, or class images generated before training.
TRAINING, CLASS_IMAGES = "training", "class images"


@dataclass
class TrainStatus:
    """A snapshot of the worker, safe to read from any thread."""

    state: str = IDLE
    out: str = ""
    step: int = 0
    total: int = 0
    first_step: int = 0
    started: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    message: str = ""
    phase: str = TRAINING

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at this run's mean step time so far (``None`` before its first step)."""
        done = self.step - self.first_step
        if self.state != RUNNING or done <= 0:
            return None
        rate = ((now or time.time()) - self.started) / done
        return max(0.0, rate * (self.total - self.step))

    def validation_images(self) -> list[Path]:
        """The validation grids written so far, oldest first."""
        folder = Path(self.out) / "validation" if self.out else None
        return sorted(folder.glob("step_*.png")) if folder and folder.is_dir() else []


class TrainWorker:
    """Runs ``train_fn(on_step)`` in a daemon thread and tracks its progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = TrainStatus()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def status(self) -> TrainStatus:
        """A copy of the current status."""
        with self._lock:
            s = self._status
            return TrainStatus(s.state, s.out, s.step, s.total, s.first_step, s.started, list(s.losses), s.message,
                               s.phase)

    @property
    def busy(self) -> bool:
        """True while a run is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, out: str, total: int, first_step: int, train_fn: Callable[[Callable[[int, dict], bool]], object],
              losses: list[tuple[int, float]] | None = None, phase: str = TRAINING) -> None:
        """Start ``train_fn(on_step)`` in the background (``on_step`` returns True when a stop was asked).

        A run that starts in another ``phase`` (class images) counts its items with :meth:`count`
        and switches to training with :meth:`begin_phase`.

        Raises:
            MudiError: a run is already in progress.
        """
        if self.busy:
            raise MudiError("a training run is already in progress; stop it first or wait for it to finish.")
        self._stop.clear()
        with self._lock:
            self._status = TrainStatus(RUNNING, out, first_step, total, first_step, time.time(), list(losses or []),
                                       phase=phase)
        self._thread = threading.Thread(target=self._run, args=(train_fn,), name="mudi-ui-train", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Ask the run to stop after its current step; False when nothing runs."""
        if not self.busy:
            return False
        self._stop.set()
        with self._lock:
            self._status.state = STOPPING
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the run's thread (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def begin_phase(self, phase: str, total: int, first_step: int = 0) -> None:
        """Switch the running job to ``phase``: its counter restarts at ``first_step`` of ``total``."""
        with self._lock:
            s = self._status
            s.phase, s.total, s.step, s.first_step, s.started = phase, total, first_step, first_step, time.time()

    def count(self, done: int) -> bool:
        """Progress of a phase without losses (``done`` items of its total); True when a stop was asked."""
        with self._lock:
            self._status.step = done
        return self._stop.is_set()

    def _on_step(self, step: int, row: dict) -> bool:
        with self._lock:
            self._status.step = step
            self._status.losses.append((step, float(row.get("loss", float("nan")))))
        return self._stop.is_set()

    def _run(self, train_fn) -> None:
        try:
            train_fn(self._on_step)
            with self._lock:
                s = self._status
                s.state = FINISHED if s.step >= s.total else STOPPED
                s.message = ("finished" if s.state == FINISHED else
                             f"stopped after step {s.step} of {s.total}; press Resume to continue")
        except MudiError as exc:
            if self._stop.is_set():  # a phase that cannot checkpoint ends its stop with an error
                with self._lock:
                    self._status.state, self._status.message = STOPPED, f"{exc} Press Start to begin again."
                return
            self._fail(str(exc))
        except Exception as exc:  # shown in the page as one line; the traceback goes to the server log
            traceback.print_exc()
            self._fail(f"unexpected error: {exc.__class__.__name__}: {exc}")

    def _fail(self, message: str) -> None:
        with self._lock:
            self._status.state = FAILED
            self._status.message = message


__all__ = ["CLASS_IMAGES", "FAILED", "FINISHED", "IDLE", "RUNNING", "STOPPED", "STOPPING", "TRAINING", "TrainStatus",
           "TrainWorker"]
