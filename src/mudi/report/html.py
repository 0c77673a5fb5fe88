"""HTML reports and plots for evaluations (rendered from the numbers, self-contained).

- :func:`render_run_report` — one run: summary table, plots (D&C histogram with the success
  threshold, success / count errors per number of subjects), then every image as a thumbnail
  with its detected boxes (coloured per matched subject, grey on a count error), its S_DC and
  S_GT tables and its scores. Images and plots are embedded as base64, so the file can be
  mailed or archived alone.
- :func:`render_comparison_report` — several runs side by side: one table, one plot
  (:func:`plot_comparison`), pairwise win rates, links to each run's own report.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from mudi.evaluate.scoring import Comparison, Evaluation

#: At most this many images are shown in a run report (all are in scores.csv / per_image.json).
MAX_REPORT_IMAGES = 500

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:2px solid #9c9;border-radius:6px;padding:8px;width:340px;font-size:12px}
.card.fail{border-color:#e88} .card.err{border-color:#aaa;background:#f7f7f7}
.card img{max-width:320px;display:block;margin-bottom:6px}
.mat td{font-family:ui-monospace,Menlo,monospace;font-size:11px;padding:1px 4px}
.muted{color:#777} .bad{color:#b00} .good{color:#070} img.plot{max-width:100%}
"""


# ----------------------------------------------------------------------------- helpers

def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(x, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return _esc(x)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}%"


def _img_tag(data: bytes, mime: str, cls: str = "", alt: str = "") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:{mime};base64,{b64}">'


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _matrix_html(mat, row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> str:
    if mat is None:
        return ""
    rows = [f'<tr><th class="l">{_esc(title)}</th>' + "".join(f"<th>{_esc(c)}</th>" for c in col_labels) + "</tr>"]
    for lab, row in zip(row_labels, mat):
        rows.append(f'<tr><th class="l">{_esc(lab)}</th>' + "".join(f"<td>{float(v):.2f}</td>" for v in row) + "</tr>")
    return '<table class="mat">' + "".join(rows) + "</table>"


# ----------------------------------------------------------------------------- plots

def plot_dnc_histogram(values: Sequence[float], threshold: float | None = None, title: str = "D&C",
                       count_errors: Sequence[bool] | None = None) -> bytes:
    """Histogram of per-image D&C with the success threshold; count errors (score 0) are
    stacked in their own colour when ``count_errors`` flags them."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
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
    return _fig_png(fig)


def plot_per_k(summary: dict) -> bytes | None:
    """Success rate and count-error rate per number of subjects k (None if there is no k)."""
    per_k = summary.get("per_k") or {}
    if not per_k:
        return None
    plt = _plt()
    ks = sorted(per_k, key=int)
    x = np.arange(len(ks))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
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
    return _fig_png(fig)


def plot_comparison(comp: "Comparison") -> bytes:
    """One figure comparing runs: mean D&C (± s.e.m.), success rate (per k when k varies),
    count-error rate, CLIP score, and the per-image D&C distribution."""
    plt = _plt()
    labels = [r["label"] for r in comp.table]
    x = np.arange(len(labels))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplot_mosaic([["dnc", "succ", "cerr"], ["clip", "dist", "dist"]], figsize=(13, 7.5))

    def bars(ax, key, title, err_key=None, ylim=(0, 1)):
        vals = [r.get(key) for r in comp.table]
        h = [v if v is not None else 0.0 for v in vals]
        err = [r.get(err_key) or 0.0 for r in comp.table] if err_key else None
        ax.bar(x, h, yerr=err, color=[colors[i % len(colors)] for i in range(len(labels))], capsize=3)
        for i, v in enumerate(vals):
            ax.text(i, (v or 0.0), "n/a" if v is None else f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels, rotation=20, ha="right")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(title)

    dlo = min([0.0] + [r.get("dnc_mean") or 0.0 for r in comp.table])
    bars(axes["dnc"], "dnc_mean", "mean D&C (± s.e.m.)", "dnc_sem", ylim=(min(0.0, dlo - 0.1), 1))
    ks = sorted({k[len("success_rate_k"):] for r in comp.table for k in r if k.startswith("success_rate_k")}, key=int)
    ax = axes["succ"]
    if len(ks) > 1:
        w = 0.8 / (len(ks) + 1)
        for j, k in enumerate(["all"] + ks):
            key = "success_rate" if k == "all" else f"success_rate_k{k}"
            ax.bar(x + (j - len(ks) / 2) * w, [r.get(key) or 0.0 for r in comp.table], w,
                   label="all" if k == "all" else f"k={k}")
        ax.legend(fontsize=8)
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        thr = comp.table[0].get("success_threshold")
        ax.set_title(f"success rate (D&C ≥ {thr:g})" if thr is not None else "success rate")
    else:
        thr = comp.table[0].get("success_threshold") if comp.table else None
        bars(ax, "success_rate", f"success rate (D&C ≥ {thr:g})" if thr is not None else "success rate")
    bars(axes["cerr"], "count_error_rate", "count-error rate")
    clip_vals = [r.get("clip_score_mean") for r in comp.table]
    top = max([v for v in clip_vals if v is not None] + [1.0])
    bars(axes["clip"], "clip_score_mean", "CLIP score (identifiers removed)", ylim=(0, top * 1.2))
    ax = axes["dist"]
    data = [[v for v in run.dnc_by_name.values()] or [np.nan] for run in comp.runs]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(np.arange(1, len(labels) + 1), labels)
    lo = min([0.0] + [min(d) for d in data if np.isfinite(d).all()])
    ax.set_ylim(lo - 0.05, 1.05)
    ax.set_title("per-image D&C")
    fig.tight_layout()
    return _fig_png(fig)


# ----------------------------------------------------------------------------- html

_SUMMARY_ROWS = [
    ("images", "n_images", "int"), ("scored", "n_scored", "int"), ("errors (unreadable…)", "n_errors", "int"),
    ("mean D&C (count errors = 0)", "dnc_mean", "f"), ("  ± s.e.m.", "dnc_sem", "f"),
    ("mean D&C over right-count images", "dnc_mean_count_ok", "f"), ("success rate", "success_rate", "pct"),
    ("count-error rate", "count_error_rate", "pct"), ("  missing subject", "n_missing", "int"),
    ("  duplicated subject / extra box", "n_duplicate", "int"),
    ("identities OK (each box closest to its subject)", "identities_ok_rate", "pct"),
    ("layout IoU (matched box vs planned box)", "layout_iou_mean", "f"),
    ("CLIP score (identifiers removed)", "clip_score_mean", "f"), ("ImageReward", "image_reward_mean", "f"),
]


def _val(v, kind: str) -> str:
    return _pct(v) if kind == "pct" else (_fmt(v) if kind == "f" else _fmt(v))


def _summary_table(summary: dict) -> str:
    rows = "".join(f'<tr><th class="l">{_esc(name)}</th><td>{_val(summary.get(key), kind)}</td></tr>'
                   for name, key, kind in _SUMMARY_ROWS
                   if not (key in ("image_reward_mean", "layout_iou_mean") and summary.get(key) is None))
    return f"<table>{rows}</table>"


def _group_table(groups: dict, first: str) -> str:
    if not groups:
        return ""
    head = (f'<tr><th class="l">{_esc(first)}</th><th>n</th><th>mean D&amp;C</th><th>success</th>'
            "<th>count errors</th><th>CLIP</th></tr>")
    rows = "".join(
        f'<tr><td class="l">{_esc(k)}</td><td>{g.get("n_scored")}</td><td>{_fmt(g.get("dnc_mean"))}</td>'
        f'<td>{_pct(g.get("success_rate"))}</td><td>{_pct(g.get("count_error_rate"))}</td>'
        f'<td>{_fmt(g.get("clip_score_mean"))}</td></tr>'
        for k, g in groups.items())
    return f"<table>{head}{rows}</table>"


def _per_subject_table(per: dict, phrases: dict[str, str]) -> str:
    head = ("<tr><th class='l'>subject</th><th>n</th><th>own</th><th>S_GT self</th><th>other</th>"
            "<th>S_GT other</th></tr>")
    rows = "".join(f"<tr><td class='l'>{_esc(phrases.get(k, k))}</td><td>{v.get('n')}</td><td>{_fmt(v.get('own'))}</td>"
                   f"<td>{_fmt(v.get('gt_self'))}</td><td>{_fmt(v.get('other'))}</td><td>{_fmt(v.get('gt_other'))}</td></tr>"
                   for k, v in per.items())
    return f"<table>{head}{rows}</table>"


def _settings_table(settings: dict) -> str:
    rows = "".join(f'<tr><th class="l">{_esc(k)}</th><td class="l">{_esc(v)}</td></tr>' for k, v in settings.items())
    return f"<table>{rows}</table>"


def comparison_table_html(comp: "Comparison") -> str:
    ks = sorted({k[len("success_rate_k"):] for r in comp.table for k in r if k.startswith("success_rate_k")}, key=int)
    head = "<tr><th class='l'>run</th><th>images</th><th>mean D&amp;C</th><th>± s.e.m.</th><th>success</th>"
    if len(ks) > 1:
        head += "".join(f"<th>success k={k}</th>" for k in ks)
    with_layout = any(r.get("layout_iou_mean") is not None for r in comp.table)
    head += "<th>count errors</th><th>identities OK</th>" + ("<th>layout IoU</th>" if with_layout else "")
    head += "<th>CLIP</th></tr>"
    best_dnc = max((r.get("dnc_mean") or -1) for r in comp.table)
    rows = []
    for r in comp.table:
        bold = (lambda s: f"<b>{s}</b>") if (r.get("dnc_mean") or -1) == best_dnc else (lambda s: s)
        cells = [f"<td class='l'>{bold(_esc(r['label']))}</td>", f"<td>{_fmt(r.get('n_scored'))}</td>",
                 f"<td>{bold(_fmt(r.get('dnc_mean')))}</td>", f"<td>{_fmt(r.get('dnc_sem'))}</td>",
                 f"<td>{_pct(r.get('success_rate'))}</td>"]
        if len(ks) > 1:
            cells += [f"<td>{_pct(r.get(f'success_rate_k{k}'))}</td>" for k in ks]
        cells += [f"<td>{_pct(r.get('count_error_rate'))}</td>", f"<td>{_pct(r.get('identities_ok_rate'))}</td>"]
        if with_layout:
            cells.append(f"<td>{_fmt(r.get('layout_iou_mean'))}</td>")
        cells.append(f"<td>{_fmt(r.get('clip_score_mean'))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f"<table>{head}{''.join(rows)}</table>"
    labels = [r["label"] for r in comp.table]
    if len(labels) > 1:
        wr = ["<tr><th class='l'>row beats column</th>" + "".join(f"<th>{_esc(l)}</th>" for l in labels) + "</tr>"]
        for a in labels:
            cells = "".join("<td>–</td>" if a == b else
                            f"<td>{_pct(comp.win_rate[a][b])} <span class='muted'>(n={comp.n_shared[a][b]})</span></td>"
                            for b in labels)
            wr.append(f"<tr><th class='l'>{_esc(a)}</th>{cells}</tr>")
        table += ("<p class='muted'>Win rate: share of images with the same name in both runs (same prompt and "
                  "seed) where the row run has the higher D&amp;C (ties count half).</p>"
                  f"<table>{''.join(wr)}</table>")
    return table


def _comparison_section(comp: "Comparison", links: dict[str, str] | None = None) -> str:
    link_html = ""
    if links:
        link_html = "<p>" + " · ".join(f'<a href="{_esc(href)}">{_esc(lab)}</a>' for lab, href in links.items()) + "</p>"
    return ("<h2>Comparison</h2>" + comparison_table_html(comp) + link_html
            + _img_tag(plot_comparison(comp), "image/png", "plot", "comparison plot"))


def _card(res, ev: "Evaluation", subject_set_phrases: dict[str, str]) -> str:
    d = res.dnc
    if res.error:
        cls, status = "card err", f"<span class='bad'>error: {_esc(res.error)}</span>"
    elif res.success:
        cls, status = "card", "<span class='good'>success</span>"
    else:
        why = f"count error ({d.count_error}: {d.n_boxes} box(es) for {d.n_subjects} subjects)" if d and not d.count_ok \
            else "D&amp;C below threshold"
        cls, status = "card fail", f"<span class='bad'>{why}</span>"
    parts = [f'<div class="{cls}">']
    thumb = ev.thumbnails.get(res.name)
    if thumb:
        parts.append(_img_tag(thumb, "image/jpeg", alt=res.name))
    parts.append(f"<b>{_esc(res.name)}</b> — {status}<br>")
    if d is not None:
        parts.append(f"D&amp;C <b>{_fmt(d.score)}</b> · boxes {d.n_boxes}/{d.n_subjects}"
                     f" · CLIP {_fmt(res.clip_score, 1)}"
                     + (f" · layout IoU {_fmt(res.layout_iou, 2)}" if res.layout_iou is not None else "") + "<br>")
    if res.prompt:
        parts.append(f"<span class='muted'>{_esc(res.prompt)}</span><br>")
    if d is not None:
        names = [subject_set_phrases.get(k, k) for k in res.subjects]
        if d.s_dc is not None:
            parts.append(_matrix_html(d.s_dc, [f"box of {n}" for n in names], names, "S_DC"))
        elif d.s_dc_raw is not None and len(d.s_dc_raw):
            parts.append(_matrix_html(d.s_dc_raw, [f"box {i}" for i in range(len(d.s_dc_raw))], names,
                                      "S_DC (unmatched)"))
        parts.append(_matrix_html(d.s_gt, names, names, "S_GT"))
    parts.append("</div>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def render_run_report(ev: "Evaluation", *, comparison: "Comparison | None" = None,
                      comparison_links: dict[str, str] | None = None,
                      max_images: int = MAX_REPORT_IMAGES) -> str:
    """The HTML report of one run (optionally with a comparison section on top)."""
    s = ev.summary
    phrases = dict(ev.settings.get("subjects") or {})
    body = [f"<h1>mudi evaluate — {_esc(ev.label)}</h1>"]
    thr = s.get("success_threshold")
    body.append(
        "<p class='muted'>Detect-and-Compare (MuDI): OWLv2-style detection of every subject's class, count rule "
        "(wrong number of boxes → 0), crops embedded and compared to the reference photos, "
        "D&amp;C = 1 − ‖S_GT − S_DC‖. "
        f"An image is a success when the count is right and D&amp;C ≥ {_fmt(thr, 2)}.</p>")
    if comparison is not None:
        body.append(_comparison_section(comparison, comparison_links))
    body.append("<h2>Summary</h2>" + _summary_table(s))
    vals = ev.dnc_values
    plots = []
    if vals:
        flags = [not r.dnc.count_ok for r in ev.results if r.dnc is not None]
        plots.append(_img_tag(plot_dnc_histogram(vals, thr, f"D&C — {ev.label}", flags), "image/png", "plot",
                              "histogram"))
    pk = plot_per_k(s)
    if pk:
        plots.append(_img_tag(pk, "image/png", "plot", "per k"))
    body.append("<div>" + " ".join(plots) + "</div>")
    if len(s.get("per_k") or {}) > 1:
        body.append("<h2>Per number of subjects</h2>" + _group_table({f"k={k}": g for k, g in s["per_k"].items()}, "k"))
    if len(s.get("per_subjects") or {}) > 1:
        body.append("<h2>Per subject combination</h2>" + _group_table(s["per_subjects"], "subjects"))
    if s.get("per_subject"):
        body.append("<h2>Per subject</h2><p class='muted'>Over right-count images: similarity of each subject's "
                    "matched box to its own references (compare with S_GT[k,k]) and to the most similar other "
                    "subject (compare with the S_GT off-diagonal). A high <i>other</i> means this subject is mixed "
                    "with or replaced by another.</p>" + _per_subject_table(s["per_subject"], phrases))
    if s.get("per_prompt"):
        body.append("<h2>Per prompt</h2>" + _group_table(s["per_prompt"], "prompt (identifiers removed)"))
    body.append("<h2>Images</h2>")
    shown = ev.results[:max_images]
    if len(ev.results) > max_images:
        body.append(f"<p class='muted'>Showing the first {max_images} of {len(ev.results)} images; "
                    "all are in scores.csv and per_image.json.</p>")
    body.append("<div class='cards'>" + "".join(_card(r, ev, phrases) for r in shown) + "</div>")
    body.append("<h2>Settings</h2>" + _settings_table(ev.settings))
    return _page(f"mudi evaluate — {ev.label}", "".join(body))


def render_comparison_report(comp: "Comparison", *, links: dict[str, str] | None = None,
                             title: str = "mudi evaluate — comparison") -> str:
    """The HTML page comparing runs (table, plot, win rates, per-k tables, links to each run)."""
    body = [f"<h1>{_esc(title)}</h1>", _comparison_section(comp, links)]
    for run in comp.runs:
        if len(run.summary.get("per_k") or {}) > 1:
            body.append(f"<h2>{_esc(run.label)}: per number of subjects</h2>"
                        + _group_table({f"k={k}": g for k, g in run.summary["per_k"].items()}, "k"))
    body.append("<h2>Runs</h2><table><tr><th class='l'>run</th><th class='l'>from</th><th class='l'>embedder</th>"
                "<th class='l'>detector</th></tr>" + "".join(
                    f"<tr><td class='l'>{_esc(r.label)}</td><td class='l'>{_esc(r.path or r.settings.get('images'))}</td>"
                    f"<td class='l'>{_esc(r.settings.get('embedder'))}</td><td class='l'>{_esc(r.settings.get('detector'))}</td></tr>"
                    for r in comp.runs) + "</table>")
    return _page(title, "".join(body))


def relative_link(target: Path, start: Path) -> str:
    """A relative href from folder ``start`` to ``target`` (absolute file URL if impossible)."""
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:
        return Path(target).resolve().as_uri()


__all__ = [
    "MAX_REPORT_IMAGES",
    "comparison_table_html",
    "plot_comparison",
    "plot_dnc_histogram",
    "plot_per_k",
    "relative_link",
    "render_comparison_report",
    "render_run_report",
]
