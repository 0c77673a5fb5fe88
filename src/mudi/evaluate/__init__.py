"""Evaluate generated multi-subject images: Detect-and-Compare, text fidelity, success rate.

Entry points:

- :func:`evaluate` — one ``mudi generate`` folder → :class:`Evaluation` (saved into
  ``config.out``); configured by :class:`EvaluateConfig`.
- :func:`compare` — several runs side by side → :class:`Comparison`.
- :func:`evaluate_images` / :func:`evaluate_folder` — the file-free API over in-memory images
  (or a folder) with any :class:`~mudi.protocols.Detector` and :class:`~mudi.protocols.Embedder`.

Modules, in the order a run uses them: :mod:`~mudi.evaluate.config` (settings),
:mod:`~mudi.evaluate.folder` (images and sidecars), :mod:`~mudi.evaluate.registry` and
:mod:`~mudi.evaluate.models` (detectors and embedders by name), :mod:`~mudi.evaluate.dnc` (the
D&C math), :mod:`~mudi.evaluate.embed`, :mod:`~mudi.evaluate.textfid`,
:mod:`~mudi.evaluate.scoring`, :mod:`~mudi.evaluate.summary`, :mod:`~mudi.evaluate.results`
(what is saved), :mod:`~mudi.evaluate.pipeline` and :mod:`~mudi.evaluate.compare`. Reports and
plots are rendered from the results by :mod:`mudi.report`; this package never imports it.
"""

from mudi.stage import make_callable
from mudi.evaluate.compare import RunSpec, compare, compare_runs, plan_runs
from mudi.evaluate.config import EvaluateConfig
from mudi.evaluate.models import EvalModels
from mudi.evaluate.pipeline import EvaluationJob, evaluate
from mudi.evaluate.registry import register_detector, register_embedder
from mudi.evaluate.results import Comparison, Evaluation, ImageResult
from mudi.evaluate.scoring import DetectAndCompare, evaluate_folder, evaluate_images, evaluate_items
from mudi.evaluate.summary import DEFAULT_SUCCESS_THRESHOLD, summarize

__all__ = [
    "DEFAULT_SUCCESS_THRESHOLD",
    "Comparison",
    "DetectAndCompare",
    "EvalModels",
    "EvaluateConfig",
    "Evaluation",
    "EvaluationJob",
    "ImageResult",
    "RunSpec",
    "compare",
    "compare_runs",
    "evaluate",
    "evaluate_folder",
    "evaluate_images",
    "evaluate_items",
    "plan_runs",
    "register_detector",
    "register_embedder",
    "summarize",
]

make_callable(__name__, evaluate)  # mudi.evaluate(...) runs evaluate(...); the package stays importable
