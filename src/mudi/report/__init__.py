"""Reports of evaluations: self-contained HTML pages and plots rendered from
:mod:`mudi.evaluate`'s results (this package reads them; evaluation never imports it).

- :func:`write_run_report` — ``report.html`` of one run (summary, plots, every image with its boxes);
- :func:`write_comparison_report` — ``report.html`` comparing runs;
- :func:`write_comparison_plot` — ``comparison.png``;
- :func:`comparison_links` — relative links from a comparison page to each run's report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from PIL import Image

from mudi.errors import MudiError
from mudi.evaluate.results import Comparison, Evaluation
from mudi.io import write_bytes_atomic, write_text_atomic
from mudi.report.html import render_comparison_report, render_run_report
from mudi.report.plots import plot_comparison

REPORT_HTML = "report.html"


def write_run_report(ev: Evaluation, folder: str | Path | None = None, *, comparison: Comparison | None = None,
                     links: dict[str, str] | None = None, images: dict[str, Image.Image] | None = None) -> Path:
    """Write ``report.html`` of ``ev`` into ``folder`` (default: where ``ev`` was saved).

    Args:
        comparison: a comparison to show on top (with ``links`` to the other runs' reports).
        images: in-memory images by name for the thumbnails (default: read from the results' paths).
    """
    folder = Path(folder) if folder is not None else ev.path
    if folder is None:
        raise MudiError(f"run {ev.label}: it was not saved; say which folder its report goes to.")
    return write_text_atomic(folder / REPORT_HTML, render_run_report(ev, comparison=comparison,
                                                                     comparison_links=links, images=images))


def write_comparison_plot(comp: Comparison, out: str | Path) -> Path:
    """Write ``comparison.png`` into ``out``."""
    return write_bytes_atomic(Path(out) / "comparison.png", plot_comparison(comp))


def write_comparison_report(comp: Comparison, out: str | Path, *, links: dict[str, str] | None = None) -> Path:
    """Write ``report.html`` comparing the runs of ``comp`` into ``out``."""
    return write_text_atomic(Path(out) / REPORT_HTML, render_comparison_report(comp, links=links))


def relative_link(target: Path, start: Path) -> str:
    """A relative href from folder ``start`` to ``target`` (absolute file URL if impossible)."""
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:
        return Path(target).resolve().as_uri()


def comparison_links(comp: Comparison, out: str | Path, *, written: Iterable[Path] = (),
                     skip: Path | None = None) -> dict[str, str]:
    """Links from ``out`` to the report of each run that has one (or is in ``written``), except ``skip``."""
    out, written = Path(out), {Path(p) for p in written}
    links = {}
    for run in comp.runs:
        if run.path is None or run.path == skip:
            continue
        target = run.path / REPORT_HTML
        if target.exists() or run.path in written:
            links[run.label] = relative_link(target, out)
    return links


__all__ = [
    "comparison_links",
    "relative_link",
    "render_comparison_report",
    "render_run_report",
    "write_comparison_plot",
    "write_comparison_report",
    "write_run_report",
]
