"""Tab 2, Compose preview: a grid of Seg-Mix (or Cut-Mix) composites with their captions, made by
:func:`mudi.compose` into a new folder each time."""

from __future__ import annotations

from mudi.ui.common import AppContext, guarded, need, ok


def run_compose(ctx: AppContext, subjects: str, n: int, seed: int, mix: str):
    """Compose ``n`` examples of subject set ``subjects`` into ``composites/<set>-<i>``; the ComposeResult."""
    import mudi

    need(subjects, "a subject set")
    src = ctx.ws.path("subjects", subjects, "subject set")
    out = ctx.ws.path("composites", ctx.ws.fresh_name("composites", subjects))
    values = {"subjects": str(src), "out": str(out), "n": int(n), "seed": int(seed), "mix": mix, **ctx.preset.compose}
    return mudi.compose(mudi.ComposeConfig().updated(values), ctx.options())


def gallery_items(result) -> list[tuple[str, str]]:
    """(image path, caption) of every example of a ComposeResult."""
    return [(str(result.out / r["file_name"]), f"{r['kind']}: {r['caption']}") for r in result.records]


def build(ctx: AppContext, subject_choice) -> None:
    """Lay out the tab; ``subject_choice`` is the shared subject-set dropdown's refresh target."""
    import gradio as gr

    gr.Markdown("What training will see: composites of the segmented subjects with their captions "
                "(regenerate with another seed to see more).")
    with gr.Row():
        sets = gr.Dropdown(choices=ctx.ws.names("subjects"), label="subject set", elem_id="compose-set")
        refresh = gr.Button("↻", scale=0, elem_id="compose-refresh")
        mix = gr.Radio(["segmix", "cutmix"], value="segmix", label="mix")
        n = gr.Slider(2, 32, value=8, step=1, label="examples")
        seed = gr.Number(0, label="seed", precision=0)
    go = gr.Button("Compose", variant="primary", elem_id="compose-run")
    status = gr.HTML(elem_id="compose-status")
    grid = gr.Gallery(label="composites", columns=4, elem_id="compose-gallery")

    @guarded(2)
    def on_compose(subjects, n_value, seed_value, mix_value):
        result = run_compose(ctx, subjects, n_value, seed_value, mix_value)
        return ok(f"{len(result.records)} examples ({result.n_composites} composites) in {result.out}"), \
            gallery_items(result)

    go.click(on_compose, [sets, n, seed, mix], [status, grid])
    refresh.click(lambda: gr.update(choices=ctx.ws.names("subjects")), None, sets)
    subject_choice.append(sets)


__all__ = ["build", "gallery_items", "run_compose"]
