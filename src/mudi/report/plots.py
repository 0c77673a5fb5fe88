"""Plots of evaluation results, drawn on their own ``Figure`` with the Agg canvas (no pyplot,
no global backend): each function returns PNG bytes."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mudi.evaluate.results import Comparison


def png_bytes(fig: Figure) -> bytes:
    """``fig`` rendered to PNG (100 dpi, tight bounding box)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_dnc_histogram(values: Sequence[float], threshold: float | None = None, title: str = "D&C",
                       count_errors: Sequence[bool] | None = None) -> bytes:
    """Histogram of per-image D&C with the success threshold; count errors (score 0) are
    stacked in their own colour when ``count_errors`` flags them."""
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    vals = np.asarray(list(values), dtype=float)
    lo = min(0.0, float(vals.min())) if vals.size else 0.0
    bins = np.linspace(lo - 0.025, 1.025, max(2, int(round((1.05 - lo) / 0.05))) + 1)
    if count_errors is not None and len(count_errors) == len(vals):
        flags = np.asarray(count_errors, dtype=bool)
        ax.hist([vals[~flags], vals[flags]], bins=bins, stacked=True, color=["#4a7ab7", "#d9534f"],
                edgecolor="white", label=["right count", "count error (scored 0)"])
    else:
        ax.hist(vals, bins=bins, color="#4a7ab7", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#333", linestyle="--", label=f"success threshold {threshold:g}")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("D&C per image")
    ax.set_ylabel("images")
    ax.set_title(title)
    return png_bytes(fig)


def plot_per_k(summary: dict) -> bytes | None:
    """Success rate and count-error rate per number of subjects k (None if there is no k)."""
    per_k = summary.get("per_k") or {}
    if not per_k:
        return None
    ks = sorted(per_k, key=int)
    x = np.arange(len(ks))
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    succ = [per_k[k].get("success_rate") or 0.0 for k in ks]
    cerr = [per_k[k].get("count_error_rate") or 0.0 for k in ks]
    dnc = [per_k[k].get("dnc_mean") or 0.0 for k in ks]
    ax.bar(x - 0.27, succ, 0.27, label="success rate", color="#3a9d5d")
    ax.bar(x, dnc, 0.27, label="mean D&C", color="#4a7ab7")
    ax.bar(x + 0.27, cerr, 0.27, label="count errors", color="#d9534f")
    ax.set_xticks(x, [f"k={k}\n(n={per_k[k]['n_scored']})" for k in ks])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("per number of subjects")
    return png_bytes(fig)


def success_rate_keys(table: Sequence[dict]) -> list[str]:
    """The numbers of subjects k with a ``success_rate_k{k}`` column in a comparison table."""
    return sorted({k[len("success_rate_k"):] for r in table for k in r if k.startswith("success_rate_k")}, key=int)


def _bars(ax, table: Sequence[dict], key: str, title: str, err_key: str | None = None, ylim=(0, 1)) -> None:
    """One bar per run of ``table[i][key]`` (missing values shown as n/a), labelled with its value."""
    labels = [r["label"] for r in table]
    x = np.arange(len(labels))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    vals = [r.get(key) for r in table]
    h = [v if v is not None else 0.0 for v in vals]
    err = [r.get(err_key) or 0.0 for r in table] if err_key else None
    ax.bar(x, h, yerr=err, color=[colors[i % len(colors)] for i in range(len(labels))], capsize=3)
    for i, v in enumerate(vals):
        ax.text(i, (v or 0.0), "n/a" if v is None else f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)


def _success_panel(ax, table: Sequence[dict]) -> None:
    """Success rate per run; grouped by k (and overall) when the runs have several k."""
    ks = success_rate_keys(table)
    thr = table[0].get("success_threshold") if table else None
    title = f"success rate (D&C ≥ {thr:g})" if thr is not None else "success rate"
    if len(ks) <= 1:
        _bars(ax, table, "success_rate", title)
        return
    labels = [r["label"] for r in table]
    x = np.arange(len(labels))
    w = 0.8 / (len(ks) + 1)
    for j, k in enumerate(["all"] + ks):
        key = "success_rate" if k == "all" else f"success_rate_k{k}"
        ax.bar(x + (j - len(ks) / 2) * w, [r.get(key) or 0.0 for r in table], w,
               label="all" if k == "all" else f"k={k}")
    ax.legend(fontsize=8)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)


def _distribution_panel(ax, comp: Comparison) -> None:
    """Box plot of the per-image D&C of each run."""
    labels = [r["label"] for r in comp.table]
    data = [[v for v in run.dnc_by_name.values()] or [np.nan] for run in comp.runs]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(np.arange(1, len(labels) + 1), labels)
    lo = min([0.0] + [min(d) for d in data if np.isfinite(d).all()])
    ax.set_ylim(lo - 0.05, 1.05)
    ax.set_title("per-image D&C")


def plot_comparison(comp: Comparison) -> bytes:
    """One figure comparing runs: mean D&C (± s.e.m.), success rate (per k when k varies),
    count-error rate, CLIP score, and the per-image D&C distribution."""
    table = comp.table
    fig = Figure(figsize=(13, 7.5))
    axes = fig.subplot_mosaic([["dnc", "succ", "cerr"], ["clip", "dist", "dist"]])
    dlo = min([0.0] + [r.get("dnc_mean") or 0.0 for r in table])
    _bars(axes["dnc"], table, "dnc_mean", "mean D&C (± s.e.m.)", "dnc_sem", ylim=(min(0.0, dlo - 0.1), 1))
    _success_panel(axes["succ"], table)
    _bars(axes["cerr"], table, "count_error_rate", "count-error rate")
    top = max([r["clip_score_mean"] for r in table if r.get("clip_score_mean") is not None] + [1.0])
    _bars(axes["clip"], table, "clip_score_mean", "CLIP score (identifiers removed)", ylim=(0, top * 1.2))
    _distribution_panel(axes["dist"], comp)
    fig.tight_layout()
    return png_bytes(fig)


__all__ = ["plot_comparison", "plot_dnc_histogram", "plot_per_k", "png_bytes", "success_rate_keys"]
