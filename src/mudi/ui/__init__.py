"""``mudi ui``: a local web app (Gradio) for the whole workflow, on top of the public API.

Tabs: Subjects (:mod:`mudi.ui.subjects_tab`), Compose (:mod:`mudi.ui.compose_tab`), Train
(:mod:`mudi.ui.train_tab`, with :mod:`mudi.ui.worker`), Generate (:mod:`mudi.ui.generate_tab`,
with the drag-the-boxes :mod:`mudi.ui.canvas`), Evaluate (:mod:`mudi.ui.evaluate_tab`). The
stages do the work; the app gathers inputs, checks uploads (:mod:`mudi.ui.workspace`) and shows
results. Importing this package does not import gradio (an optional extra, ``mudi[ui]``).
"""

from mudi.ui.config import UIConfig

__all__ = ["UIConfig"]
