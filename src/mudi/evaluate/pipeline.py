"""``evaluate(config)``: one folder of generated images → scores on disk (the ``mudi evaluate`` stage).

:class:`EvaluationJob` splits a run in two so several runs can share one model load and still
be checked before anything is written: :meth:`~EvaluationJob.prepare` reads and checks
everything that needs no model, :meth:`~EvaluationJob.run` scores and saves.

Under ``accelerate launch`` (or torchrun) each process scores its share of the images (images
i, i+n, ... of n processes, :class:`mudi.runtime.Processes`); the per-image results are gathered
in their original order and the main process alone writes the one output folder.
"""

from __future__ import annotations

from pathlib import Path

from mudi.errors import MudiError
from mudi.evaluate.config import EvaluateConfig
from mudi.evaluate.folder import EvalItem, collect_folder
from mudi.evaluate.models import EvalModels
from mudi.evaluate.results import Evaluation
from mudi.evaluate.scoring import DetectAndCompare, evaluate_items
from mudi.io import claim_output_dir, write_text_atomic
from mudi.runtime import Processes, processes
from mudi.settings import RunOptions


class EvaluationJob:
    """One evaluation run: ``prepare()`` (no model, nothing written), then ``run(models)``.

    ``processes`` says which share of the images this process scores (default: what
    :func:`mudi.runtime.processes` finds; one process scores them all).
    """

    def __init__(self, config: EvaluateConfig, options: RunOptions | None = None, *,
                 processes: Processes | None = None):
        self.config = config
        self.options = options or RunOptions()
        self.processes = processes
        self.subject_set = None
        self.items: list[EvalItem] = []
        self.queries: dict[str, str] = {}

    @property
    def label(self) -> str:
        """The run's name: ``config.label`` or the images folder's name."""
        return self.config.label or Path(self.config.images).name

    def prepare(self) -> "EvaluationJob":
        """Check the config, refuse a non-empty ``out``, and read the images with their sidecars.

        Raises:
            MudiError: a bad option, a missing folder, or images that do not match the subject set.
        """
        from mudi.subjects import SubjectSet

        config = self.config
        config.check()
        self.processes = self.processes or processes()
        if not config.images:
            raise MudiError("no images to evaluate: set images (--images DIR, a `mudi generate` folder).")
        if not Path(config.images).is_dir():
            raise MudiError(f"--images {config.images}: not a folder.")
        if not config.subjects:
            raise MudiError("--subjects DIR is required to evaluate images (the subject set they personalize).")
        if config.out:
            claim_output_dir(config.out, overwrite=self.options.overwrite, what="evaluation")
        self.subject_set = SubjectSet.load(config.subjects)
        self.items = collect_folder(config.images, self.subject_set, prompt=config.prompt or None,
                                    subject_keys=config.subject_keys or None)
        self.queries = config.query_map(self.subject_set)
        return self

    def run(self, models: EvalModels) -> Evaluation:
        """Score the images with ``models`` and save the results into ``out`` (if set).

        With several processes each scores its share; every process returns the whole
        evaluation and only the main one writes it.

        Raises:
            MudiError: scoring failed on any process (all processes raise, none waits forever).
        """
        if self.subject_set is None:
            self.prepare()
        config = self.config
        procs = self.processes
        engine = DetectAndCompare(self.subject_set, models.detector, models.embedder, threshold=config.threshold,
                                  norm=config.norm, queries=self.queries,
                                  references=models.references(self.subject_set, config.reference_mode))
        try:
            ev = evaluate_items(procs.share(self.items), self.subject_set, models.detector, models.embedder,
                                clip=models.clip, image_reward=models.image_reward,
                                success_threshold=config.success_threshold, batch_size=config.batch_size,
                                engine=engine, progress=self.options.progress and procs.is_main, label=self.label,
                                settings=dict(models.settings(), images=str(config.images)),
                                metrics=models.metrics)
        except MudiError as exc:
            if procs.count == 1:
                raise
            ev = exc
        if procs.count > 1:
            ev = gather_evaluation(ev, procs, config.success_threshold)
        if config.out and procs.is_main:
            self.save(ev)
        elif config.out:
            ev.path = Path(config.out)  # written by the main process
        procs.wait()  # the folder is complete before any process goes on
        return ev

    def save(self, ev: Evaluation) -> Path:
        """Write the results and the resolved config (``config.toml``) into ``out``."""
        out = ev.save(self.config.out, overwrite=True)  # prepare() applied the overwrite policy
        write_text_atomic(out / "config.toml", self.config.to_toml(title="mudi evaluate: the settings of this run"))
        return out


def gather_evaluation(part: Evaluation | MudiError, procs: Processes, success_threshold: float) -> Evaluation:
    """The evaluation of all images from each process's ``part`` (its share, or the error it hit).

    Results come back in the images' order; the summary is computed over all of them; ``seconds``
    is the slowest process's and ``processes`` their number.

    Raises:
        MudiError: some process failed (the same error on every process).
    """
    from mudi.evaluate.summary import summarize

    parts = procs.gather([part])
    failed = [(i, p[0]) for i, p in enumerate(parts) if isinstance(p[0], BaseException)]
    if failed:
        i, exc = failed[0]
        raise MudiError(f"process {i} of {procs.count}: {exc}")
    evs = [p[0] for p in parts]
    results = [evs[i % procs.count].results[i // procs.count] for i in range(sum(len(e.results) for e in evs))]
    settings = dict(evs[0].settings, seconds=max(e.settings.get("seconds", 0.0) for e in evs),
                    processes=procs.count)
    return Evaluation(results, summarize(results, success_threshold), settings, evs[0].label)


def load_models(config: EvaluateConfig, options: RunOptions | None = None, *,
                processes: Processes | None = None) -> EvalModels:
    """The models of ``config`` on the device ``options`` asks for (quiet library logging).

    With several processes a bare ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``).
    """
    from mudi.runtime import pick_device, quiet_libraries

    options = options or RunOptions()
    device = (processes or Processes()).device(pick_device(options.device))
    with quiet_libraries(progress_bars=options.progress):
        return EvalModels.load(config, str(device))


def evaluate(config: EvaluateConfig, options: RunOptions | None = None, *,
             models: EvalModels | None = None, processes: Processes | None = None) -> Evaluation:
    """Evaluate a folder of generated images with Detect-and-Compare, CLIP score and success rate.

    Args:
        config: what to evaluate and how (:class:`~mudi.evaluate.config.EvaluateConfig`).
        options: overwrite / device / progress (:class:`~mudi.settings.RunOptions`).
        models: already loaded models to use instead of the ones ``config`` names.
        processes: this process's share of the images (default: found by
            :func:`mudi.runtime.processes`; under ``accelerate launch`` each process scores
            images i, i+n, ... and the main one writes ``out``).

    Returns:
        The :class:`~mudi.evaluate.results.Evaluation` (also saved into ``config.out`` when set;
        render its HTML report with :func:`mudi.report.write_run_report`).

    Raises:
        MudiError: bad settings, inputs or model names, found before anything is written.
    """
    # 1. Check the inputs and read the images (no model loaded, nothing written)
    job = EvaluationJob(config, options, processes=processes).prepare()
    # 2. Load the models (on this process's device)
    models = models or load_models(config, job.options, processes=job.processes)
    # 3. Score, then save (the output folder is created only now)
    return job.run(models)


__all__ = ["EvaluationJob", "evaluate", "gather_evaluation", "load_models"]
