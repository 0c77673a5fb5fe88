"""Tab 5, Evaluate / compare: Detect-and-Compare of generated folders (:func:`mudi.evaluate`),
the detections drawn on each image, the similarity matrices, success rates, and runs side by
side (:func:`mudi.compare`)."""

from __future__ import annotations

from pathlib import Path

from mudi.errors import MudiError
from mudi.io import write_bytes_atomic
from mudi.ui.common import AppContext, guarded, need, ok, read_section, subject_phrases

MATRICES_SHOWN = 8


def evaluate_folder(ctx: AppContext, gen: str):
    """Evaluate ``gen/<gen>`` into a new ``eval/<gen>-<i>`` folder; the Evaluation."""
    import mudi

    images = ctx.ws.path("gen", gen, "generated folder")
    subjects = read_section(images, "generate").get("subjects")
    if not subjects:
        raise MudiError(f"{gen}: no config.toml naming its subject set; was it made by Generate?")
    out = ctx.ws.path("eval", ctx.ws.fresh_name("eval", gen))
    values = {"images": str(images), "subjects": subjects, "out": str(out), "label": gen, **ctx.preset.evaluate}
    return mudi.evaluate(mudi.EvaluateConfig().updated(values), ctx.options())


def thumbnails(ev) -> list[tuple[str, str]]:
    """Each scored image with its detections drawn (written beside the evaluation), captioned."""
    from mudi.report.thumbnails import result_thumbnail

    phrases = ev.settings.get("subjects")
    phrases = phrases if isinstance(phrases, dict) else subject_phrases(ev.settings["subject_set"])
    items = []
    for r in ev.results:
        data = result_thumbnail(r, phrases)
        if data is None:
            continue
        path = write_bytes_atomic(Path(ev.path) / "detections" / f"{Path(r.name).stem}.jpg", data)
        verdict = "success" if r.success else (r.dnc.count_error or "low D&C") if r.dnc else (r.error or "not scored")
        items.append((str(path), f"{ev.label}/{r.name}: D&C {r.score:.3f} ({verdict})"))
    return items


def summary_markdown(evs) -> str:
    """One table row per run: images, mean D&C, success rate, count errors."""
    lines = ["| run | images | mean D&C | success | count errors |", "|---|---:|---:|---:|---:|"]
    for ev in evs:
        s = ev.summary
        dnc = "n/a" if s.get("dnc_mean") is None else f"{s['dnc_mean']:.3f}"
        succ = "n/a" if s.get("success_rate") is None else f"{100 * s['success_rate']:.0f} %"
        errors = (s.get("n_missing") or 0) + (s.get("n_duplicate") or 0)
        lines.append(f"| {ev.label} | {s.get('n_images')} | {dnc} | {succ} | {errors} |")
    return "\n".join(lines)


def matrices_markdown(ev) -> str:
    """The matched similarity matrix (detected box × subject) of the first images."""
    parts = []
    for r in ev.results[:MATRICES_SHOWN]:
        if r.dnc is None or r.dnc.s_dc is None:
            parts.append(f"**{r.name}**: {r.dnc.count_error if r.dnc else r.error} (no matrix)")
            continue
        head = "| box \\ subject | " + " | ".join(r.subjects) + " |\n|---|" + "---:|" * len(r.subjects)
        rows = [f"| {key} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for key, row in zip(r.subjects, r.dnc.s_dc)]
        parts.append(f"**{r.name}** (D&C {r.score:.3f})\n\n" + head + "\n" + "\n".join(rows))
    return "\n\n".join(parts)


def comparison_markdown(evs) -> str:
    """Pairwise win rates of the runs (``mudi.compare``), when there are several."""
    import mudi

    if len(evs) < 2:
        return ""
    comp = mudi.compare(evs)
    lines = ["**Side by side** (share of shared images where the row run has the higher D&C):", "",
             "| run | " + " | ".join(ev.label for ev in evs) + " |", "|---|" + "---:|" * len(evs)]
    for a in evs:
        cells = ["—" if a is b or comp.win_rate[a.label].get(b.label) is None
                 else f"{100 * comp.win_rate[a.label][b.label]:.0f} %" for b in evs]
        lines.append(f"| {a.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build(ctx: AppContext, gen_choice) -> None:
    """Lay out the tab; registers its dropdown for refreshing."""
    import gradio as gr

    with gr.Row():
        gens = gr.Dropdown(choices=ctx.ws.names("gen"), multiselect=True, label="generated folders",
                           elem_id="eval-gens")
        refresh = gr.Button("↻", scale=0, elem_id="eval-refresh")
    go = gr.Button("Evaluate (Detect-and-Compare)", variant="primary", elem_id="eval-run")
    status = gr.HTML(elem_id="eval-status")
    table = gr.Markdown(elem_id="eval-summary")
    thumbs = gr.Gallery(label="detections", columns=4, elem_id="eval-thumbs")
    with gr.Accordion("similarity matrices", open=False):
        mats = gr.Markdown(elem_id="eval-matrices")

    @guarded(4)
    def on_evaluate(selected):
        evs = [evaluate_folder(ctx, g) for g in need(selected, "one or more generated folders")]
        items = [item for ev in evs for item in thumbnails(ev)]
        text = summary_markdown(evs) + "\n\n" + comparison_markdown(evs)
        return ok(f"evaluated {len(evs)} folder(s)"), text, items, "\n\n".join(matrices_markdown(ev) for ev in evs)

    go.click(on_evaluate, gens, [status, table, thumbs, mats])
    refresh.click(lambda: gr.update(choices=ctx.ws.names("gen")), None, gens)
    gen_choice.append(gens)


__all__ = ["build", "comparison_markdown", "evaluate_folder", "matrices_markdown", "summary_markdown", "thumbnails"]
