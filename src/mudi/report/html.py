"""HTML reports and plots for evaluations (rendered from the numbers, self-contained).

- :func:`render_run_report` — one run: summary table, plots (D&C histogram with the success
  threshold, success / count errors per number of subjects), then every image as a thumbnail
  with its detected boxes (coloured per matched subject, grey on a count error), its S_DC and
  S_GT tables and its scores. Images and plots are embedded as base64, so the file can be
  mailed or archived alone.
- :func:`render_comparison_report` — several runs side by side: one table, one plot
  (:func:`mudi.report.plots.plot_comparison`), pairwise win rates, links to each run's own report.
"""

from __future__ import annotations

import base64
import html
from typing import Sequence

import numpy as np
from PIL import Image

from mudi.evaluate.results import Comparison, Evaluation, ImageResult
from mudi.report.plots import plot_comparison, plot_dnc_histogram, plot_per_k, success_rate_keys
from mudi.report.thumbnails import result_thumbnail

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


def _matrix_html(mat, row_labels: Sequence[str], col_labels: Sequence[str], title: str) -> str:
    if mat is None:
        return ""
    rows = [f'<tr><th class="l">{_esc(title)}</th>' + "".join(f"<th>{_esc(c)}</th>" for c in col_labels) + "</tr>"]
    for lab, row in zip(row_labels, mat):
        rows.append(f'<tr><th class="l">{_esc(lab)}</th>' + "".join(f"<td>{float(v):.2f}</td>" for v in row) + "</tr>")
    return '<table class="mat">' + "".join(rows) + "</table>"


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


def comparison_table_html(comp: Comparison) -> str:
    ks = success_rate_keys(comp.table)
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


def _comparison_section(comp: Comparison, links: dict[str, str] | None = None) -> str:
    link_html = ""
    if links:
        link_html = "<p>" + " · ".join(f'<a href="{_esc(href)}">{_esc(lab)}</a>' for lab, href in links.items()) + "</p>"
    return ("<h2>Comparison</h2>" + comparison_table_html(comp) + link_html
            + _img_tag(plot_comparison(comp), "image/png", "plot", "comparison plot"))


def _card(res: ImageResult, thumb: bytes | None, subject_set_phrases: dict[str, str]) -> str:
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


def _intro(ev: Evaluation) -> str:
    thr = ev.summary.get("success_threshold")
    return (f"<h1>mudi evaluate — {_esc(ev.label)}</h1>"
            "<p class='muted'>Detect-and-Compare (MuDI): OWLv2-style detection of every subject's class, count rule "
            "(wrong number of boxes → 0), crops embedded and compared to the reference photos, "
            "D&amp;C = 1 − ‖S_GT − S_DC‖. "
            f"An image is a success when the count is right and D&amp;C ≥ {_fmt(thr, 2)}.</p>")


def _plots(ev: Evaluation) -> str:
    """The D&C histogram and the per-k bars."""
    plots = []
    vals = ev.dnc_values
    if vals:
        flags = [not r.dnc.count_ok for r in ev.results if r.dnc is not None]
        png = plot_dnc_histogram(vals, ev.summary.get("success_threshold"), f"D&C — {ev.label}", flags)
        plots.append(_img_tag(png, "image/png", "plot", "histogram"))
    pk = plot_per_k(ev.summary)
    if pk:
        plots.append(_img_tag(pk, "image/png", "plot", "per k"))
    return "<div>" + " ".join(plots) + "</div>"


def _breakdowns(s: dict, phrases: dict[str, str]) -> str:
    """Tables per k, per subject combination, per subject and per prompt (those that say something)."""
    body = []
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
    return "".join(body)


def _cards(ev: Evaluation, phrases: dict[str, str], max_images: int, images: dict[str, Image.Image]) -> str:
    """One card per image (the first ``max_images``), with its annotated thumbnail."""
    note = ""
    if len(ev.results) > max_images:
        note = (f"<p class='muted'>Showing the first {max_images} of {len(ev.results)} images; "
                "all are in scores.csv and per_image.json.</p>")
    cards = (_card(r, result_thumbnail(r, phrases, images.get(r.name)), phrases) for r in ev.results[:max_images])
    return "<h2>Images</h2>" + note + "<div class='cards'>" + "".join(cards) + "</div>"


def render_run_report(ev: Evaluation, *, comparison: Comparison | None = None,
                      comparison_links: dict[str, str] | None = None,
                      max_images: int = MAX_REPORT_IMAGES, images: dict[str, Image.Image] | None = None) -> str:
    """The HTML report of one run (optionally with a comparison section on top).

    Thumbnails are drawn from ``images`` (by image name) or else read from each result's path.
    """
    phrases = dict(ev.settings.get("subjects") or {})
    body = [_intro(ev)]
    if comparison is not None:
        body.append(_comparison_section(comparison, comparison_links))
    body.append("<h2>Summary</h2>" + _summary_table(ev.summary))
    body.append(_plots(ev))
    body.append(_breakdowns(ev.summary, phrases))
    body.append(_cards(ev, phrases, max_images, images or {}))
    body.append("<h2>Settings</h2>" + _settings_table(ev.settings))
    return _page(f"mudi evaluate — {ev.label}", "".join(body))


def render_comparison_report(comp: Comparison, *, links: dict[str, str] | None = None,
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


__all__ = [
    "MAX_REPORT_IMAGES",
    "comparison_table_html",
    "render_comparison_report",
    "render_run_report",
]
