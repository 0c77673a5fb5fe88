"""``bench(config)``: a prompt suite over subject sets and a method → one comparison table.

Steps, each resumable (``--resume`` continues a stopped run in the same ``out``):

1. plan the cases — one per subject set and subject count — and check everything that needs
   no model (suite, subject sets, imported folders); nothing is written before that;
2. images per case into ``out/cases/<case>/images``: ``mudi generate`` with the suite's prompts
   (with ``--resume`` only the missing images are made) or the import of another tool's folder;
3. ``mudi evaluate`` per case into ``out/cases/<case>/eval`` (a finished case is read back, not
   scored again), with one set of models for all cases, references embedded once per subject;
4. the table (:mod:`mudi.bench.table`): ``bench.csv``, ``bench.json``, ``bench.html``.

Under ``accelerate launch`` generation and evaluation split their images across the processes
(:func:`mudi.runtime.processes`); the main process writes the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mudi.bench.config import BenchConfig
from mudi.bench.importer import import_images, plan_import
from mudi.bench.suites import Suite, load_suite
from mudi.bench.table import table_rows, write_table
from mudi.errors import MudiError
from mudi.io import claim_output_dir
from mudi.runtime import Processes, processes
from mudi.settings import RunOptions


@dataclass
class Case:
    """One subject set (its first ``k`` subjects) with the images of one method."""

    name: str
    method: str
    pair: str
    k: int
    subject_set: object
    keys: list[str]
    prompts: list[str] = field(default_factory=list)
    lora: str = ""
    import_plan: list | None = None


@dataclass
class BenchResult:
    """The cases (with their evaluations) and the table rows of a bench run."""

    cases: list[dict]
    rows: list[dict]
    info: dict
    path: Path | None = None


def _method(config: BenchConfig) -> str:
    return config.method or {"images": "imported", "lora": "mudi", "base": "base"}[config.source()]


def plan_cases(config: BenchConfig, suite: Suite) -> list[Case]:
    """The cases of ``config`` (checked; nothing written).

    Raises:
        MudiError: a subject set with fewer subjects than ``--subjects-count`` asks, a bad folder.
    """
    from mudi.subjects import SubjectSet

    src, method, cases = config.source(), _method(config), []
    for i, sdir in enumerate(config.subjects):
        sset = SubjectSet.load(sdir)
        keys = list(sset.keys)
        for k in config.counts() or [len(keys)]:
            if k > len(keys):
                raise MudiError(f"--subjects-count {config.subjects_count}: {sdir} has only {len(keys)} subjects.")
            pair = Path(sdir).name
            case = Case(f"{method}__{pair}__k{k}", method, pair, k, sset, keys[:k])
            if src == "images":
                if k != len(keys) and config.counts():
                    raise MudiError("--subjects-count applies to generated images; imported images show the "
                                    "subjects their prompts.jsonl names.")
                case.import_plan = plan_import(config.images[i], sset)
            else:
                case.lora = config.lora[i] if src == "lora" else ""
                classes = [sset.subject(key).cls for key in case.keys]
                case.prompts = suite.prompts(case.keys, classes, config.prompts_limit)
            cases.append(case)
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise MudiError("two cases share a name: give each --subjects folder its own name.")
    return cases


def _images(case: Case, config: BenchConfig, gen, options: RunOptions, procs: Processes, pipe) -> Path:
    """Make or import the images of ``case``; returns the folder."""
    from mudi.generate import generate

    out = Path(config.out) / "cases" / case.name / "images"
    if case.import_plan is not None:
        if procs.is_main:
            import_images(case.import_plan, out)
        procs.wait()
        return out
    values = {"prompts": case.prompts, "out": str(out), "lora": case.lora, "n": config.n, "seed": config.seed,
              "subjects": str(case.subject_set.root)}
    if config.base:
        values["base"] = config.base
    resume = options.resume and out.is_dir()
    generate(gen.updated(values), RunOptions(resume=resume, overwrite=options.overwrite, device=options.device,
                                             progress=options.progress), pipe=pipe, procs=procs)
    return out


def _evaluate(case: Case, images: Path, config: BenchConfig, ev_config, options: RunOptions, procs: Processes,
              models_box: list):
    """The evaluation of a case (read back when a resumed run finished it)."""
    from mudi.evaluate import EvaluationJob, Evaluation
    from mudi.evaluate.pipeline import load_models
    from mudi.evaluate.results import SCORES_JSON

    out = Path(config.out) / "cases" / case.name / "eval"
    if options.resume and (out / SCORES_JSON).is_file():
        return Evaluation.load(out, label=case.method)
    cfg = ev_config.updated({"images": str(images), "subjects": str(case.subject_set.root), "out": str(out),
                             "label": case.method})
    job = EvaluationJob(cfg, RunOptions(overwrite=True, device=options.device, progress=options.progress),
                        processes=procs).prepare()
    if not models_box:
        models_box.append(load_models(cfg, options, processes=procs))
    return job.run(models_box[0])


def bench(config: BenchConfig, options: RunOptions | None = None, *, generate_config=None, evaluate_config=None,
          models=None, pipe=None, procs: Processes | None = None) -> BenchResult:
    """Run a prompt suite over subject sets for one method, evaluate everything, write the table.

    Args:
        config: suite, cases, method (:class:`~mudi.bench.config.BenchConfig`).
        options: resume / overwrite / device / progress.
        generate_config: how to generate (a :class:`~mudi.generate.GenerateConfig`; its prompts,
            out, lora, subjects, n and seed are set per case).
        evaluate_config: how to evaluate (an :class:`~mudi.evaluate.EvaluateConfig`; images,
            subjects and out are set per case).
        models: already loaded :class:`~mudi.evaluate.EvalModels` to score with.
        pipe: an already loaded base pipeline for generation.
        procs: this process's share (default :func:`mudi.runtime.processes`).

    Returns:
        :class:`BenchResult` (also written into ``config.out`` by the main process).

    Raises:
        MudiError: bad settings or inputs, found before anything is written.
    """
    from mudi.evaluate import EvaluateConfig
    from mudi.generate import GenerateConfig

    options = options or RunOptions()
    # 1. check and plan (nothing written)
    config.check()
    if not config.out:
        raise MudiError("--out is required: the folder for the images, the evaluations and the table.")
    suite = load_suite(config.suite)
    gen = generate_config or GenerateConfig()
    ev_config = evaluate_config or EvaluateConfig()
    ev_config.check()
    cases = plan_cases(config, suite)
    procs = procs or processes()
    claim_output_dir(config.out, overwrite=options.overwrite, resume=options.resume, what="bench")
    procs.wait()  # every process checked OUT before any writes
    # 2-3. images and evaluation, case by case
    models_box = [models] if models is not None else []
    done = []
    for case in cases:
        images = _images(case, config, gen, options, procs, pipe)
        ev = _evaluate(case, images, config, ev_config, options, procs, models_box)
        done.append({"method": case.method, "pair": case.pair, "k": case.k, "name": case.name, "evaluation": ev})
    # 4. the table
    rows = table_rows(done)
    info = {"suite": suite.to_dict(), "method": _method(config), "source": config.source(),
            "models": _models(done), "config": config.to_dict(),
            "cases": [{k: v for k, v in c.items() if k != "evaluation"} | {"eval": str(c["evaluation"].path)}
                      for c in done]}
    if procs.is_main:
        write_table(config.out, rows, info)
    procs.wait()
    return BenchResult(done, rows, info, Path(config.out))


def _models(done: list[dict]) -> dict:
    """Which model produced each number (from the first evaluation's settings)."""
    s = done[0]["evaluation"].settings if done else {}
    keys = ("detector", "embedder", "identity_embedder", "dino_model", "clip_i_model", "clip_t_model", "clip",
            "detection_threshold", "success_threshold", "norm")
    return {k: s.get(k) for k in keys}


__all__ = ["BenchResult", "Case", "bench", "plan_cases"]
