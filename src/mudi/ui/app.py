"""The ``mudi ui`` app: five tabs over the public API, one work folder, one training worker.

:func:`build_app` makes the Gradio Blocks (tests drive it in a browser); :func:`serve` checks
the settings and launches it.
"""

from __future__ import annotations

from pathlib import Path

from mudi.errors import MudiError
from mudi.ui.config import UIConfig
from mudi.ui.presets import DEFAULT_PRESET, custom_preset, get_preset
from mudi.ui.workspace import KINDS, Workspace
from mudi.ui.worker import TrainWorker

CSS = """
.mudi-error { color: #b00020; font-weight: 600; }
.mudi-ok { color: #1b5e20; }
#subjects-candidates .grid-container { grid-template-columns: repeat(3, minmax(100px, 1fr)); }
"""


def require_gradio():
    """Import gradio, or a MudiError telling how to install it (the core install does not need it)."""
    try:
        import gradio
    except ImportError:
        raise MudiError("mudi ui needs the optional web-app packages: pip install 'mudi[ui]'.") from None
    return gradio


def make_context(config: UIConfig):
    """The app's context (settings, preset, work folder, worker), after checking the settings."""
    from mudi.ui.common import AppContext

    config.check()
    preset = custom_preset(config.base) if config.base else get_preset(DEFAULT_PRESET)
    ws = Workspace(config.workdir)
    if ws.root.exists() and not ws.root.is_dir():
        raise MudiError(f"--workdir {ws.root}: is a file; choose a folder.")
    return AppContext(config, preset, ws, TrainWorker())


def build_app(config: UIConfig, ctx=None):
    """The Gradio Blocks of the app and its context (nothing is served yet)."""
    gr = require_gradio()
    from mudi.ui import compose_tab, evaluate_tab, generate_tab, subjects_tab, train_tab

    ctx = ctx or make_context(config)
    ctx.ws.root.mkdir(parents=True, exist_ok=True)
    choices: dict[str, list] = {"subjects": [], "runs": [], "gen": []}
    with gr.Blocks(title="mudi") as demo:
        gr.Markdown(f"# mudi — multi-subject personalization\nWork folder: `{ctx.ws.root}`")
        tabs = []
        with gr.Tab("1. Subjects", elem_id="tab-subjects") as tab:
            tabs.append(tab)
            subjects_tab.build(ctx)
        with gr.Tab("2. Compose", elem_id="tab-compose") as tab:
            tabs.append(tab)
            compose_tab.build(ctx, choices["subjects"])
        with gr.Tab("3. Train", elem_id="tab-train") as tab:
            tabs.append(tab)
            train_tab.build(ctx, choices["subjects"], choices["runs"])
        with gr.Tab("4. Generate", elem_id="tab-generate") as tab:
            tabs.append(tab)
            generate_tab.build(ctx, choices["runs"])
        with gr.Tab("5. Evaluate", elem_id="tab-evaluate") as tab:
            tabs.append(tab)
            evaluate_tab.build(ctx, choices["gen"])
        outputs = [d for kind in choices for d in choices[kind]]

        def refresh():
            return [gr.update(choices=ctx.ws.names(kind)) for kind in choices for _ in choices[kind]]

        for tab in tabs:
            tab.select(refresh, None, outputs)
        demo.load(refresh, None, outputs)
    return demo, ctx


def serve(config: UIConfig) -> None:
    """Check the settings, build the app and serve it until interrupted."""
    require_gradio()
    ctx = make_context(config)
    demo, ctx = build_app(config, ctx)
    print(f"mudi ui: work folder {ctx.ws.root}; base model: {ctx.preset.description or ctx.preset.base}", flush=True)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=config.host, server_port=config.port, inbrowser=not config.no_browser,
        auth=config.credentials(), allowed_paths=[str(ctx.ws.root)], max_file_size=int(config.max_upload_mb * 1e6),
        show_error=False, css=CSS, share=False)


def workdir_kinds(root: Path) -> dict[str, Path]:
    """The folders of each kind under ``root`` (for the README and tests)."""
    return {k: root / k for k in KINDS}


__all__ = ["build_app", "make_context", "require_gradio", "serve"]
