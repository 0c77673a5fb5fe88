"""Several runs side by side (DreamBooth, Cut-Mix, MuDI, …): :func:`compare`.

A run is an :class:`~mudi.evaluate.results.Evaluation` in memory, a ``mudi evaluate`` output
folder (read as it is), or a folder of generated images (evaluated here, all with the same
models). :func:`plan_runs` turns ``[LABEL=]PATH`` specs into :class:`RunSpec` s with unique
labels and output folders, the way ``mudi evaluate --images … --compare …`` lays them out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mudi.errors import MudiError
from mudi.evaluate.config import EvaluateConfig
from mudi.evaluate.models import EvalModels
from mudi.evaluate.pipeline import EvaluationJob, load_models
from mudi.evaluate.results import SCORES_JSON, Comparison, Evaluation
from mudi.io import claim_output_dir
from mudi.runtime import Processes
from mudi.runtime import processes as find_processes
from mudi.settings import RunOptions

_LABEL_RE = re.compile(r"^([A-Za-z0-9_.+\-]+)=(.+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+\-]+")

TABLE_KEYS = ("n_images", "n_scored", "n_errors", "dnc_mean", "dnc_sem", "dnc_mean_count_ok", "success_rate",
              "count_error_rate", "n_missing", "n_duplicate", "identities_ok_rate", "layout_iou_mean", "clip_score_mean",
              "image_reward_mean", "success_threshold")


@dataclass
class RunSpec:
    """One run of a comparison: its label, where it comes from and (for images) where it goes.

    ``kind`` is ``"images"`` (a folder to evaluate into ``dest``) or ``"evaluation"`` (a
    ``mudi evaluate`` output folder, read as it is). ``primary`` marks runs given with
    ``--images`` (as opposed to ``--compare``).
    """

    label: str
    path: Path
    kind: str
    dest: Path | None = None
    primary: bool = False


def split_label(spec: str) -> tuple[str | None, Path]:
    """``"LABEL=PATH"`` → (label, path); a plain path (even one containing '=') → (None, path)."""
    m = _LABEL_RE.match(spec)
    if m and not Path(spec).exists():
        return m.group(1), Path(m.group(2))
    return None, Path(spec)


def default_label(path: Path, taken: set[str]) -> str:
    """A label from the folder name (parent prefixed for generic names), unique among ``taken``."""
    base = _UNSAFE.sub("_", path.resolve().name) or "run"
    if base in ("scores", "eval", "images", "out") and path.resolve().parent.name:
        base = _UNSAFE.sub("_", path.resolve().parent.name) + "_" + base
    label, i = base, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _compare_kind(spec: str, path: Path) -> str:
    if (path / SCORES_JSON).exists():
        return "evaluation"
    if (path / "comparison.json").exists():
        subs = sorted(p.name for p in path.iterdir() if (p / SCORES_JSON).exists())
        raise MudiError(f"--compare {spec}: {path} is a comparison of several runs; pass its run folders "
                        f"instead ({', '.join(subs) or 'none found'}).")
    if path.is_dir():
        return "images"
    raise MudiError(f"--compare {spec}: expected a `mudi evaluate` output folder (with {SCORES_JSON}) or a "
                    "folder of generated images.")


def plan_runs(images: Sequence[str], compare: Sequence[str], out: str | Path) -> list[RunSpec]:
    """The runs of ``--images [LABEL=]DIR …`` and ``--compare [LABEL=]RUN …`` and their outputs.

    One image folder is written to ``out`` itself, several to ``out/LABEL``; image folders given
    to ``--compare`` go to ``out/compare/LABEL``; evaluation folders are only read.

    Raises:
        MudiError: nothing to do, a missing folder, a label used twice, or ``--compare`` alone
            with fewer than two runs.
    """
    if not images and not compare:
        raise MudiError("nothing to evaluate: give --images DIR (a `mudi generate` folder) and/or --compare RUN ...")
    out = Path(out)
    taken: set[str] = set()
    runs: list[RunSpec] = []
    for flag, specs in (("--images", images), ("--compare", compare)):
        for spec in specs:
            label, path = split_label(spec)
            if flag == "--images" and not path.is_dir():
                raise MudiError(f"--images {spec}: {path} is not a folder.")
            if flag == "--compare" and not path.exists():
                raise MudiError(f"--compare {spec}: {path} not found.")
            label = label or default_label(path, taken)
            if label in taken:
                raise MudiError(f"run label {label!r} is used twice; name runs with LABEL=PATH.")
            taken.add(label)
            kind = "images" if flag == "--images" else _compare_kind(spec, path)
            runs.append(RunSpec(label, path, kind, primary=flag == "--images"))
    if not any(r.kind == "images" for r in runs) and len(runs) < 2:
        raise MudiError("--compare alone needs at least two runs to put side by side.")
    primary = [r for r in runs if r.primary]
    for r in runs:
        if r.kind == "images":
            r.dest = (out if len(primary) == 1 else out / r.label) if r.primary else out / "compare" / r.label
    return runs


def compare_runs(runs: Sequence[Evaluation]) -> Comparison:
    """Side-by-side table of runs plus pairwise win rates.

    ``win_rate[a][b]`` is the share of images present in both runs (matched by name — the same
    prompt and seed when both come from ``mudi generate`` with the same settings) where run a has
    the higher D&C (ties count half); ``None`` when they share no image.
    """
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise MudiError(f"run labels must be unique, got {labels}; name them with LABEL=PATH.")
    ks = sorted({k for r in runs for k in r.summary.get("per_k", {})}, key=int)
    table = []
    for r in runs:
        row = {"label": r.label, "path": str(r.path) if r.path else None}
        row.update({k: r.summary.get(k) for k in TABLE_KEYS})
        for k in ks:
            g = r.summary.get("per_k", {}).get(k)
            row[f"success_rate_k{k}"] = g.get("success_rate") if g else None
            row[f"dnc_mean_k{k}"] = g.get("dnc_mean") if g else None
        table.append(row)
    win: dict[str, dict[str, float | None]] = {}
    shared: dict[str, dict[str, int]] = {}
    for a in runs:
        win[a.label], shared[a.label] = {}, {}
        da = a.dnc_by_name
        for b in runs:
            if a is b:
                continue
            db = b.dnc_by_name
            common = sorted(set(da) & set(db))
            shared[a.label][b.label] = len(common)
            if not common:
                win[a.label][b.label] = None
                continue
            w = sum(1.0 if da[n] > db[n] else 0.5 if da[n] == db[n] else 0.0 for n in common)
            win[a.label][b.label] = round(w / len(common), 4)
    return Comparison(list(runs), table, win, shared)


def _as_spec(run: RunSpec | str | Path, out: Path | None, taken: set[str]) -> RunSpec:
    if isinstance(run, RunSpec):
        return run
    label, path = split_label(str(run))
    label = label or default_label(path, taken)
    taken.add(label)
    kind = _compare_kind(str(run), path)
    return RunSpec(label, path, kind, out / "compare" / label if (kind == "images" and out) else None)


def _entry(run, config: EvaluateConfig | None, options: RunOptions, out: Path | None,
           taken: set[str], procs: Processes) -> Evaluation | EvaluationJob:
    """A finished evaluation (read now) or a prepared job for a folder of images."""
    if isinstance(run, Evaluation):
        return run
    spec = _as_spec(run, out, taken)
    if spec.kind == "evaluation":
        return Evaluation.load(spec.path, spec.label)
    if config is None:
        raise MudiError(f"run {spec.label}: {spec.path} is a folder of images; pass an EvaluateConfig "
                        "(with subjects) to evaluate it.")
    run_config = config.updated({"images": str(spec.path), "label": spec.label,
                                 "out": str(spec.dest) if spec.dest else ""})
    return EvaluationJob(run_config, options, processes=procs).prepare()


def compare(runs: Sequence[Evaluation | RunSpec | str | Path], config: EvaluateConfig | None = None,
            options: RunOptions | None = None, *, out: str | Path | None = None,
            models: EvalModels | None = None, processes: Processes | None = None) -> Comparison:
    """Put runs side by side: a table of their summaries and pairwise win rates.

    Args:
        runs: :class:`~mudi.evaluate.results.Evaluation` s, ``mudi evaluate`` output folders,
            folders of generated images (``[LABEL=]PATH`` strings), or :class:`RunSpec` s.
        config: how to evaluate the image folders among ``runs`` (needs ``subjects``); its
            ``images``, ``out`` and ``label`` are set per run.
        options: overwrite / device / progress.
        out: folder for ``comparison.csv`` and ``comparison.json`` (image folders without a
            destination are evaluated into ``out/compare/LABEL``).
        models: already loaded models for the image folders.
        processes: this process's share of each image folder (default: found by
            :func:`mudi.runtime.processes`); the main process writes every output.

    Returns:
        The :class:`~mudi.evaluate.results.Comparison` (runs in the given order). Render it with
        :func:`mudi.report.write_comparison_report`.

    Raises:
        MudiError: a bad run, setting or model name, found before anything is written.
    """
    options = options or RunOptions()
    procs = processes or find_processes()
    out = Path(out) if out else None
    # 1. Read the finished evaluations, check every image folder (no model, nothing written)
    if out is not None:
        claim_output_dir(out, overwrite=options.overwrite, what="evaluation")
    taken = {r.label for r in runs if isinstance(r, (Evaluation, RunSpec))}
    entries = [_entry(r, config, options, out, taken, procs) for r in runs]
    # 2. Load the models once, if any folder needs them
    jobs = [e for e in entries if isinstance(e, EvaluationJob)]
    if jobs and models is None:
        models = load_models(jobs[0].config, options, processes=procs)
    # 3. Evaluate the image folders (each saved into its own folder)
    evaluations = [e if isinstance(e, Evaluation) else e.run(models) for e in entries]
    # 4. Table and win rates
    comparison = compare_runs(evaluations)
    if out is not None and procs.is_main:
        out.mkdir(parents=True, exist_ok=True)  # claimed in step 1
        comparison.save(out)
    procs.wait()
    return comparison


__all__ = ["RunSpec", "TABLE_KEYS", "compare", "compare_runs", "default_label", "plan_runs", "split_label"]
