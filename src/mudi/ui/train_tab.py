"""Tab 3, Train: the common options, a run in the background worker, live progress, stop/resume.

The run is :func:`mudi.train` with ``on_step`` feeding the page; it lives in the server, so
closing the browser does not stop it, and reopening the page shows it again. A stopped run
resumes with ``RunOptions(resume=True)`` from its checkpoint (bitwise the same LoRA on a CPU).
Regularization is DCO (the default), prior preservation (a class set chosen or generated, see
:mod:`mudi.ui.priors`) or none.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from mudi.errors import MudiError
from mudi.ui.common import AppContext, guarded, need, ok
from mudi.ui.priors import EXISTING, GENERATE, SOURCES, class_images_config, class_set_choices, only_class_images
from mudi.ui.priors import prior_fields, start_with_class_images
from mudi.ui.worker import CLASS_IMAGES, RUNNING, STOPPING

#: The page's regularization choices (label, TrainConfig.reg); DCO first, the default.
REGULARIZATION = (("DCO", "dco"), ("prior preservation", "prior"), ("none", "none"))


def new_run_config(ctx: AppContext, subjects: str, name: str, base: str, mix: str, steps: int, rank: int,
                   lr: float, reg: str, resolution: int, prior_source: str = EXISTING, prior_folder: str = ""):
    """The TrainConfig of a new run ``runs/<name>`` (preset values, then the page's), checked.

    With ``reg == "prior"`` the class set is ``prior_folder`` (``prior_source`` :data:`EXISTING`,
    checked as ``mudi train --prior-dir`` checks it) or the run's own ``class_set`` folder, made
    before training (:data:`GENERATE`)."""
    import mudi

    need(subjects, "a subject set")
    out = ctx.ws.path("runs", name, "run name")
    if out.is_dir() and any(out.iterdir()) and not only_class_images(out):
        raise MudiError(f"a run named {name!r} exists; press Resume to continue it, or choose another name.")
    subject_dir = str(ctx.ws.path("subjects", subjects, "subject set"))
    values = dict(ctx.preset.train)
    values.update(subjects=subject_dir, out=str(out),
                  base=base or ctx.preset.base, mix=mix, max_train_steps=int(steps), rank=int(rank),
                  alpha=float(rank), learning_rate=float(lr), resolution=int(resolution))
    values.update(prior_fields(ctx, out, subject_dir, reg, prior_source, prior_folder))
    config = mudi.TrainConfig().updated(values)
    config.check()
    return config


def start_new(ctx: AppContext, config, prior_source: str = EXISTING, prior_n: int = 0) -> None:
    """Start a run made by :func:`new_run_config`: plain, or class images first (``prior_source``
    :data:`GENERATE` with ``reg == "prior"``, ``prior_n`` images per class)."""
    if config.reg == "prior" and prior_source == GENERATE:
        start_with_class_images(ctx, config, class_images_config(ctx, config, prior_n))
    else:
        start(ctx, config, resume=False)


def saved_run(ctx: AppContext, name: str):
    """The TrainConfig of run ``runs/<name>``, to resume it with its own settings."""
    import mudi

    out = ctx.ws.path("runs", need(name, "a run"), "run")
    if not (out / "config.toml").is_file():
        raise MudiError(f"run {name!r} has no config.toml: it never started; start it anew.")
    return mudi.TrainConfig.from_toml(out / "config.toml").updated({"out": str(out)})


def read_losses(out: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of a run's train_log.jsonl."""
    log = out / "train_log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in rows if "loss" in r]


def start(ctx: AppContext, config, *, resume: bool) -> None:
    """Hand the run to the background worker (refused while another one runs)."""
    import mudi

    # a run folder holding only the class set of an earlier start: the run starts beside it
    options = ctx.options(resume=resume, overwrite=not resume and only_class_images(Path(config.out)))
    losses = read_losses(Path(config.out)) if resume else []
    ctx.worker.start(config.out, config.max_train_steps, losses[-1][0] if losses else 0,
                     lambda on_step: mudi.train(config, options, on_step=on_step), losses=losses)


def progress_html(ctx: AppContext) -> str:
    """The progress bar, step count, ETA and state of the worker's run."""
    s = ctx.worker.status()
    if not s.out:
        return '<div class="mudi-progress">No training run yet.</div>'
    pct = 100.0 * s.step / s.total if s.total else 0.0
    eta = s.eta_seconds()
    eta_text = f", ETA {int(eta // 60)} min {int(eta % 60)} s" if eta is not None else ""
    msg = f" — {html.escape(s.message)}" if s.message else ""
    cls = "mudi-error" if s.state == "failed" else "mudi-progress"
    unit = "class image" if s.phase == CLASS_IMAGES else "step"
    return (f'<div class="{cls}" id="train-state" data-state="{s.state}">{html.escape(Path(s.out).name)}: '
            f'{s.state}, {unit} {s.step} / {s.total}{eta_text}{msg}</div>'
            f'<progress max="{s.total}" value="{s.step}" style="width:100%"></progress> <span>{pct:.0f} %</span>')


def loss_frame(ctx: AppContext):
    """The loss curve of the worker's run as a DataFrame for a LinePlot."""
    import pandas as pd

    losses = ctx.worker.status().losses
    return pd.DataFrame({"step": [s for s, _ in losses], "loss": [v for _, v in losses]})


def validation_items(ctx: AppContext) -> list[tuple[str, str]]:
    """The run's validation grids, newest first, captioned with their step."""
    grids = ctx.worker.status().validation_images()
    return [(str(p), f"step {int(p.stem.split('_')[-1])}") for p in reversed(grids)]


def build(ctx: AppContext, subject_choice, run_choice) -> None:
    """Lay out the tab; registers its dropdowns for refreshing."""
    import gradio as gr

    t = ctx.preset.train
    gr.Markdown(f"Base model: **{ctx.preset.description or ctx.preset.base}**. Training runs in the background: "
                "closing the page does not stop it.")
    with gr.Row():
        sets = gr.Dropdown(choices=ctx.ws.names("subjects"), label="subject set", elem_id="train-set")
        name = gr.Textbox("run1", label="run name", elem_id="train-name")
        base = gr.Textbox(ctx.preset.base, label="base model (hub id or folder)", elem_id="train-base")
    with gr.Row():
        mix = gr.Radio(["segmix", "cutmix", "none"], value="segmix", label="mix (none = DreamBooth)")
        steps = gr.Number(t.get("max_train_steps", 2010), label="steps", precision=0, elem_id="train-steps")
        rank = gr.Number(t.get("rank", 32), label="LoRA rank", precision=0)
        lr = gr.Number(t.get("learning_rate", 1e-4), label="learning rate")
        reg = gr.Radio(list(REGULARIZATION), value="dco", label="regularization", elem_id="train-reg")
        res = gr.Number(t.get("resolution", 0), label="resolution (0 = the model's)", precision=0)
    prior_source, prior_dir, prior_n = prior_controls(ctx, reg)
    with gr.Row():
        go = gr.Button("Start", variant="primary", elem_id="train-start")
        stop = gr.Button("Stop", elem_id="train-stop")
        runs = gr.Dropdown(choices=ctx.ws.names("runs"), label="run to resume", elem_id="train-run")
        resume = gr.Button("Resume", elem_id="train-resume")
    status = gr.HTML(elem_id="train-status")
    bar = gr.HTML(progress_html(ctx), elem_id="train-progress")
    with gr.Row():
        curve = gr.LinePlot(loss_frame(ctx), x="step", y="loss", label="loss", elem_id="train-loss")
        grids = gr.Gallery(label="validation images", columns=1, elem_id="train-validation")

    @guarded(1)
    def on_start(*values):
        source, n = values[-3], values[-1]
        config = new_run_config(ctx, *values[:-1])
        start_new(ctx, config, source, n)
        first = "class images, then " if config.reg == "prior" and source == GENERATE else ""
        return ok(f"training {Path(config.out).name}: {first}{config.max_train_steps} steps")

    @guarded(1)
    def on_resume(run):
        config = saved_run(ctx, run)
        start(ctx, config, resume=True)
        return ok(f"resuming {run}")

    @guarded(1)
    def on_stop():
        if not ctx.worker.stop():
            raise MudiError("no training run is in progress.")
        return ok("stopping after the current step (a checkpoint is written there)")

    go.click(on_start, [sets, name, base, mix, steps, rank, lr, reg, res, prior_source, prior_dir, prior_n], status)
    resume.click(on_resume, runs, status)
    stop.click(on_stop, None, status)
    seen = gr.State(None)

    def on_tick(last):
        s = ctx.worker.status()
        now = (s.out, s.state, s.step, len(s.validation_images()))
        if now == last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), last
        changed = last is None or now[:2] != last[:2]
        runs_now = gr.update(choices=ctx.ws.names("runs")) if changed else gr.skip()
        sets_now = gr.update(choices=class_set_choices(ctx)) if changed else gr.skip()
        return progress_html(ctx), loss_frame(ctx), validation_items(ctx), runs_now, sets_now, now

    gr.Timer(1.0).tick(on_tick, seen, [bar, curve, grids, runs, prior_dir, seen], show_progress="hidden")
    subject_choice.append(sets)
    run_choice.append(runs)


def prior_controls(ctx: AppContext, reg):
    """The class-set controls shown when ``reg`` is prior preservation: where the class images
    come from, an existing folder, or how many to generate per class."""
    import gradio as gr

    from mudi.train import PriorsConfig

    with gr.Group(visible=False) as box:
        with gr.Row():
            source = gr.Radio(list(SOURCES), value=EXISTING, label="class images", elem_id="train-prior-source")
            folder = gr.Dropdown(class_set_choices(ctx), value=None, allow_custom_value=True, elem_id="train-prior-dir",
                                 label="class-set folder (from `mudi priors`; a path, or relative to the work folder)")
            n = gr.Number(PriorsConfig().n, label="images per class", precision=0, minimum=1, visible=False,
                          elem_id="train-prior-n")
        gr.Markdown("Prior preservation trains on class images of the base model beside the subjects' photos "
                    "(`mudi priors` + `mudi train --prior-dir`). Generated ones go to the run folder "
                    f"(`runs/<name>/class_set`) before training starts. {ctx.preset.priors_note}".strip())
    reg.change(lambda r: gr.update(visible=r == "prior"), reg, box)
    source.change(lambda s: (gr.update(visible=s == EXISTING), gr.update(visible=s == GENERATE)), source, [folder, n])
    return source, folder, n


def busy(ctx: AppContext) -> bool:
    """True while the worker trains (or is stopping)."""
    return ctx.worker.status().state in (RUNNING, STOPPING)


__all__ = ["REGULARIZATION", "build", "busy", "loss_frame", "new_run_config", "prior_controls", "progress_html",
           "read_losses", "saved_run", "start", "start_new", "validation_items"]
