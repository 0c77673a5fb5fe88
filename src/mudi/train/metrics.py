"""Metric logging of a training run: ``train_log.jsonl``, TensorBoard scalars, ``loss.png``.

Only the main process logs. On resume the log is cut back to the resumed step, so a resumed
run's log reads as the uninterrupted run's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mudi.io import write_bytes_atomic, write_text_atomic

LOG_NAME = "train_log.jsonl"
PLOT_NAME = "loss.png"


def read_log(path: Path) -> list[dict]:
    """The rows of a ``train_log.jsonl`` (a line cut by a kill is skipped)."""
    rows = []
    if path.is_file():
        for ln in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(ln))
            except json.JSONDecodeError:
                continue
    return rows


def write_loss_plot(log_path: Path, out_path: Path) -> None:
    """loss.png: per-step loss and its moving average (a matplotlib Figure on the Agg canvas;
    no global backend or pyplot state is touched)."""
    rows = read_log(log_path)
    if not rows:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    win = max(1, min(50, len(loss) // 10))
    if win > 1:
        ma = np.convolve(loss, np.ones(win) / win, mode="valid")
        ax.plot(steps[win - 1 :], ma, lw=1.6, label=f"moving average ({win})")
    if any("loss_prior" in r for r in rows):
        ax.plot(steps, [r.get("loss_prior", float("nan")) for r in rows], lw=0.8, alpha=0.5, label="prior loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss")
    ax.set_title("mudi train")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(out_path, buf.getvalue())


class MetricLogger:
    """Writes the per-step rows of the main process (``active``) to the jsonl log and TensorBoard."""

    def __init__(self, out: Path, *, start_step: int, log_every: int, end_step: int, active: bool = True):
        self.out, self.path = Path(out), Path(out) / LOG_NAME
        self.log_every, self.end_step, self.active = log_every, end_step, active
        self._fh = None
        self.writer = None
        if not active:
            return
        rows = [r for r in read_log(self.path) if r.get("step", 0) <= start_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.writer = self._tensorboard(start_step)
        self._fh = open(self.path, "a", encoding="utf-8")

    def _tensorboard(self, start_step: int):
        """A writer into ``OUT/tensorboard``; ``None`` without the tensorboard package. An installed
        tensorboard that fails (a broken install, an unwritable folder) is reported, not hidden."""
        import importlib.util
        import warnings

        if importlib.util.find_spec("tensorboard") is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step + 1)
        except Exception as exc:
            warnings.warn(f"tensorboard is installed but cannot log this run ({exc.__class__.__name__}: {exc}); "
                          "train_log.jsonl and loss.png are still written. Fix the install (`pip check`) or "
                          "uninstall tensorboard.", stacklevel=2)
            return None

    def log(self, step: int, row: dict) -> None:
        """Record the row of optimizer step ``step`` (the jsonl file every ``log_every`` steps and at the end)."""
        if self._fh and (step % self.log_every == 0 or step == self.end_step):
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        if self.writer is not None:
            for name in ("loss", "lr", "loss_prior"):
                if name in row:
                    self.writer.add_scalar(name, row[name], step)

    def plot(self) -> None:
        """Rewrite loss.png from the log."""
        if self.active:
            write_loss_plot(self.path, self.out / PLOT_NAME)

    def close_log(self) -> None:
        """Close the jsonl file (the plot can still be drawn)."""
        if self._fh:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        """Close the log and the TensorBoard writer."""
        self.close_log()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["LOG_NAME", "MetricLogger", "PLOT_NAME", "read_log", "write_loss_plot"]
