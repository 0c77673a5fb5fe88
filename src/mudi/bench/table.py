"""The comparison table of a bench run: means with bootstrap confidence intervals, overall, per
number of subjects and per subject pair; written as CSV, JSON and HTML (:func:`write_table`).

**Confidence intervals**: percentile bootstrap over the images of a group — resample the
images with replacement :data:`N_BOOTSTRAP` times (seeded, so the table is reproducible), take
the mean each time, report the 2.5th and 97.5th percentiles (:func:`bootstrap_ci`).
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from mudi.evaluate.results import csv_text
from mudi.io import write_json_atomic, write_text_atomic

#: Per-image values the table averages, in column order (``success`` as 0/1; D&C 0 on a count error).
METRICS = ("dnc", "success", "identity", "missing", "duplicate", "dino", "clip_i", "clip_t", "clip_score")
N_BOOTSTRAP = 1000
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], *, n: int = N_BOOTSTRAP, level: float = LEVEL,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of ``values`` (``(None, None)`` when empty)."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None, None
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(n, a.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def image_values(res) -> dict[str, float | None]:
    """The table's values of one :class:`~mudi.evaluate.results.ImageResult` (``None`` = not measured)."""
    if res.error is not None or res.dnc is None:
        return {m: None for m in METRICS}
    return {"dnc": float(res.dnc.score), "success": float(bool(res.success)), "identity": res.identity,
            "missing": res.missing, "duplicate": res.duplicate, "dino": res.dino, "clip_i": res.clip_i,
            "clip_t": res.clip_t, "clip_score": res.clip_score}


def group_row(method: str, group: str, results: Sequence, seed: int = 0) -> dict:
    """One table row: mean and bootstrap interval of every metric over ``results``."""
    vals = [image_values(r) for r in results]
    row: dict = {"method": method, "group": group, "n_images": len(results),
                 "n_scored": sum(1 for v in vals if v["dnc"] is not None)}
    for m in METRICS:
        xs = [v[m] for v in vals if v[m] is not None]
        lo, hi = bootstrap_ci(xs, seed=seed)
        row[m] = round(float(np.mean(xs)), 4) if xs else None
        row[f"{m}_lo"] = None if lo is None else round(lo, 4)
        row[f"{m}_hi"] = None if hi is None else round(hi, 4)
    return row


def table_rows(cases: Sequence[dict]) -> list[dict]:
    """Rows of the comparison table from the bench's cases (``{method, pair, k, evaluation}``):
    per method all images, then per number of subjects (``k=N``), then per pair (``pair=NAME``)."""
    by_method: dict[str, list] = defaultdict(list)
    by_k: dict[tuple[str, int], list] = defaultdict(list)
    by_pair: dict[tuple[str, str], list] = defaultdict(list)
    for case in cases:
        rs = case["evaluation"].results
        by_method[case["method"]].extend(rs)
        by_k[(case["method"], int(case["k"]))].extend(rs)
        by_pair[(case["method"], case["pair"])].extend(rs)
    rows = [group_row(m, "all", rs) for m, rs in by_method.items()]
    if len({k for _, k in by_k}) > 1:
        rows += [group_row(m, f"k={k}", rs) for (m, k), rs in sorted(by_k.items())]
    rows += [group_row(m, f"pair={p}", rs) for (m, p), rs in sorted(by_pair.items())]
    return rows


def _cell(row: dict, m: str) -> str:
    v = row.get(m)
    if v is None:
        return "–"
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    return f"{v:.3f} <small>[{lo:.3f}, {hi:.3f}]</small>" if lo is not None else f"{v:.3f}"


def render_html(rows: Sequence[dict], info: dict) -> str:
    """A self-contained HTML page of the table, with the suite and the models behind each number."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in ("method", "group", "images", *METRICS))
    body = "".join(
        "<tr>" + f"<td>{esc(r['method'])}</td><td>{esc(r['group'])}</td><td>{r['n_scored']}/{r['n_images']}</td>"
        + "".join(f"<td>{_cell(r, m)}</td>" for m in METRICS) + "</tr>" for r in rows)
    models = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in info.get("models", {}).items())
    suite = info.get("suite", {})
    return (
        "<!doctype html><meta charset='utf-8'><title>mudi bench</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;"
        "text-align:right}td:nth-child(-n+2){text-align:left}small{color:#777}</style>"
        f"<h1>mudi bench: {esc(str(suite.get('name', '')))}</h1>"
        f"<p>{esc(str(suite.get('description', '')))}<br><small>{esc(str(suite.get('source', '')))}</small></p>"
        f"<p>Means with {int(LEVEL * 100)} % bootstrap intervals over images ({N_BOOTSTRAP} resamples). "
        "D&amp;C counts a count error as 0; success is the share of images with the right count and D&amp;C "
        "above the threshold; missing / duplicate are subjects per image; CLIP-T is the raw cosine, "
        "clip_score 100·max(cos, 0).</p>"
        f"<table><tr>{head}</tr>{body}</table><h2>Models</h2><ul>{models}</ul>"
    )


def write_table(out: str | Path, rows: list[dict], info: dict) -> dict[str, Path]:
    """Write ``bench.csv``, ``bench.json`` (rows + suite + models + cases) and ``bench.html`` into ``out``."""
    out = Path(out)
    cols = ["method", "group", "n_images", "n_scored"] + [c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
    return {
        "csv": write_text_atomic(out / "bench.csv", csv_text(rows, cols)),
        "json": write_json_atomic(out / "bench.json", {**info, "rows": rows}),
        "html": write_text_atomic(out / "bench.html", render_html(rows, info)),
    }


__all__ = ["LEVEL", "METRICS", "N_BOOTSTRAP", "bootstrap_ci", "group_row", "image_values", "render_html",
           "table_rows", "write_table"]
