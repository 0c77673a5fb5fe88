"""Tab 4, Generate: a prompt with subject chips, a layout dragged on a canvas (or auto / LLM),
per-subject sizes, γ, seed and count; :func:`mudi.generate` makes the images beside their init
canvases."""

from __future__ import annotations

import json
from pathlib import Path

from mudi.errors import MudiError
from mudi.ui import canvas
from mudi.ui.common import AppContext, guarded, need, ok, read_section, subject_phrases
from mudi.ui.subjects_tab import MAX_SUBJECTS

LAYOUTS = ("drag", "auto", "llm")


def run_subjects(ctx: AppContext, run: str) -> Path:
    """The subject-set folder a trained run used (from its config.toml)."""
    folder = ctx.ws.path("runs", need(run, "a trained run"), "run")
    subjects = read_section(folder, "train").get("subjects")
    if not subjects or not Path(subjects).is_dir():
        raise MudiError(f"run {run!r}: its subject set is missing (config.toml names {subjects!r}).")
    return Path(subjects)


def generate_config(ctx: AppContext, run: str, prompt: str, layout: str, layout_json: str, sizes: list[float],
                    gamma: float, seed: int, n: int, init: str):
    """The GenerateConfig of one click (a drag layout is written to ``layouts/<out>.json`` first)."""
    import mudi
    from mudi.generate.prompts import resolve_prompt
    from mudi.subjects import SubjectSet

    lora = ctx.ws.path("runs", need(run, "a trained run"), "run")
    if not (lora / "pytorch_lora_weights.safetensors").is_file():
        raise MudiError(f"run {run!r} has not finished training (no LoRA file yet); finish or resume it first.")
    subjects = run_subjects(ctx, run)
    sset = SubjectSet.load(subjects)
    text, named = resolve_prompt(sset, need((prompt or "").strip(), "a prompt"))
    out = ctx.ws.path("gen", ctx.ws.fresh_name("gen", run))
    values = dict(ctx.preset.generate)
    values.update(prompts=[text], out=str(out), lora=str(lora), subjects=str(subjects), n=int(n), seed=int(seed),
                  gamma=float(gamma), init=init, save_init=init == "mudi", base=read_section(lora, "train").get("base"))
    keys = [s.key for s in sset.subjects]
    if layout == "drag":
        path = ctx.ws.folder("layouts") / f"{out.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(canvas.layout_for(layout_json, [s.key for s in named])), encoding="utf-8")
        values["layout"] = str(path)
    else:
        values["layout"] = layout
        values["sizes"] = ",".join(f"{k}={float(v):g}" for k, v in zip(keys, sizes))
    return mudi.GenerateConfig().updated(values)


def layout_text(config) -> str:
    """How the layout was chosen, for the status line (a dragged layout: its boxes)."""
    if config.layout in LAYOUTS:
        return config.layout
    boxes = json.loads(Path(config.layout).read_text(encoding="utf-8"))["boxes"]
    return "dragged boxes " + ", ".join(f"{k} {v}" for k, v in boxes.items())


def result_items(out: Path) -> tuple[list[tuple[str, str]], str | None]:
    """(image, caption) of a generate folder and its init sheet (``None`` without one)."""
    items = []
    for img in sorted(out.glob("[0-9][0-9][0-9][0-9].png")):
        meta = json.loads(img.with_suffix(".json").read_text(encoding="utf-8"))
        items.append((str(img), f"{img.stem}: seed {meta.get('seed')}"))
    sheet = out / "init_sheet.png"
    return items, (str(sheet) if sheet.is_file() else None)


def build(ctx: AppContext, run_choice) -> None:
    """Lay out the tab; registers its dropdowns for refreshing."""
    import gradio as gr

    g = ctx.preset.generate
    with gr.Row():
        runs = gr.Dropdown(choices=ctx.ws.names("runs"), label="trained run", elem_id="gen-run")
        refresh = gr.Button("↻", scale=0, elem_id="gen-refresh")
    prompt = gr.Textbox(label="prompt (click a subject to add it)", elem_id="gen-prompt")
    with gr.Row():
        chips = [gr.Button(visible=False, size="sm", scale=0, min_width=120, elem_id=f"gen-chip-{i}")
                 for i in range(MAX_SUBJECTS)]
    with gr.Row():
        with gr.Column():
            layout = gr.Radio(list(LAYOUTS), value="drag", label="layout (drag the boxes, or auto / LLM)",
                              elem_id="gen-layout")
            board = gr.HTML(canvas.default_layout({}), html_template=canvas.TEMPLATE, css_template=canvas.CSS,
                            js_on_load=canvas.JS, elem_id="gen-canvas")
            sizes = [gr.Slider(0.2, 1.0, value=1.0, step=0.05, visible=False, label=f"size {i + 1}",
                               elem_id=f"gen-size-{i}") for i in range(MAX_SUBJECTS)]
        with gr.Column():
            gamma = gr.Slider(0.0, 8.0, value=g.get("gamma", 3.0), step=0.5, label="γ (init strength)")
            init = gr.Radio(["mudi", "none"], value="mudi", label="initialization")
            seed = gr.Number(0, label="seed", precision=0)
            n = gr.Slider(1, 16, value=2, step=1, label="images", elem_id="gen-n")
    go = gr.Button("Generate", variant="primary", elem_id="gen-run-button")
    status = gr.HTML(elem_id="gen-status")
    with gr.Row():
        images = gr.Gallery(label="images", columns=4, elem_id="gen-images")
        init_sheet = gr.Image(label="init canvases", type="filepath", interactive=False, elem_id="gen-init")

    def on_run(run):
        try:
            phrases = subject_phrases(run_subjects(ctx, run))
        except MudiError:
            phrases = {}
        labels = list(phrases.values())
        return ([canvas.default_layout(phrases)]
                + [gr.update(value=labels[i], visible=True) if i < len(labels) else gr.update(visible=False)
                   for i in range(MAX_SUBJECTS)]
                + [gr.update(label=f"size of {labels[i]}", visible=True) if i < len(labels) else
                   gr.update(visible=False) for i in range(MAX_SUBJECTS)])

    @guarded(3)
    def on_generate(run, prompt_value, layout_value, board_value, gamma_value, seed_value, n_value, init_value,
                    *size_values):
        import mudi

        config = generate_config(ctx, run, prompt_value, layout_value, board_value, list(size_values),
                                 gamma_value, seed_value, n_value, init_value)
        mudi.generate(config, ctx.options())
        items, sheet = result_items(Path(config.out))
        return ok(f"{len(items)} images in {Path(config.out).name}; layout: {layout_text(config)}"), items, sheet

    runs.change(on_run, runs, [board, *chips, *sizes])
    for chip in chips:
        chip.click(lambda p, c: (f"{p} {c}".strip() if p else f"a photo of a {c}"), [prompt, chip], prompt)
    go.click(on_generate, [runs, prompt, layout, board, gamma, seed, n, init, *sizes], [status, images, init_sheet])
    refresh.click(lambda: gr.update(choices=ctx.ws.names("runs")), None, runs)
    run_choice.append(runs)


__all__ = ["build", "generate_config", "result_items", "run_subjects"]
