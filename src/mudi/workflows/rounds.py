"""Iterative training (METHOD.md §5): train, then rounds of generate → score → keep → fine-tune.

``iterate(config)`` (``mudi train --rounds N``) first trains as ``mudi train`` would (or, with
``first=``, adopts a finished ``mudi train`` folder as that first training), then for each round
k = 1..N:

1. **generate** ``round_images`` images per round prompt with the current LoRA and the
   mean-shifted initialization (settings: the ``generate`` template, e.g. the ``[generate]``
   table of the run file; seed = its seed + 1000·k, so every round draws new images);
2. **evaluate** them with Detect-and-Compare (the ``evaluate`` template / ``[evaluate]`` table
   names the detector and embedder);
3. **keep** the images with D&C ≥ ``keep_threshold`` (default: the evaluation's successes);
   an image with a count error (a subject missing or drawn twice, D&C 0) is never kept.
   Each kept image gets a mask: the union of the boxes the detector matched to the subjects, or
   the layout boxes of the initialization when the detector found none (no segmenter is run:
   the mask only matters for ``--loss-alpha`` < 1);
4. **fine-tune** ``round_steps`` optimizer steps from the current LoRA (``init_lora``) on the
   subject photos, Seg-Mix composites, and every image kept so far as whole-image examples
   with their prompts (``extra_examples``); seed = the run's seed + k.

Output folder::

    OUT/config.toml, OUT/pytorch_lora_weights.safetensors, OUT/lora_kohya.safetensors
                                  the run and the final LoRA (`mudi generate --lora OUT`)
    OUT/rounds.json               per round: images, kept, mean D&C, success rate of its images
    OUT/rounds/0/train/           the first training (a `mudi train` folder)
    OUT/rounds/k/images/          round k's images (with the LoRA of round k - 1) and sidecars
    OUT/rounds/k/eval/            their D&C scores (`mudi evaluate` folder)
    OUT/rounds/k/kept/            the kept images, their masks and examples.jsonl (prompt, D&C)
    OUT/rounds/k/train/           the fine-tune of round k

Every step is skipped when its output is complete, so ``--resume`` continues a stopped run
mid-round (a training resumes from its checkpoint, a generation keeps the images it made), and
on a CPU a resumed run ends with the same LoRA as an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mudi.errors import MudiError
from mudi.evaluate import EvaluateConfig, Evaluation
from mudi.generate import GenerateConfig
from mudi.settings import RunOptions
from mudi.train import TrainConfig
from mudi.train.extra import EXAMPLES_FILE

ROUNDS_DIR = "rounds"
ROUNDS_JSON = "rounds.json"
LORA_FILES = ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors")
#: Generation seeds of round k start at the template's seed + SEED_STRIDE · k.
SEED_STRIDE = 1000


@dataclass
class RoundsResult:
    """What :func:`iterate` made: the folder, the per-round figures and the final LoRA."""

    out: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lora(self) -> Path:
        return self.out / LORA_FILES[0]


def round_dir(out: Path, k: int) -> Path:
    """``OUT/rounds/k``."""
    return out / ROUNDS_DIR / str(k)


def _prompts(cfg: TrainConfig, sset) -> list[str]:
    from mudi.train.data import default_validation_prompts, fill_subjects

    if cfg.round_prompts:
        return [fill_subjects(p, sset) for p in cfg.round_prompts]
    return default_validation_prompts(sset, cfg.k)[:1]


def _check(cfg: TrainConfig, options: RunOptions, first: Path | None = None) -> None:
    """Everything that needs no model, before anything is written."""
    from mudi.io import claim_output_dir
    from mudi.train.plan import init_lora_shape, prepare_run

    cfg.check()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise MudiError("iterative training (--rounds) runs in one process; start it without `accelerate launch` / "
                        "torchrun (each round's training then uses one device).")
    if cfg.rounds < 1:
        raise MudiError("iterative training needs rounds >= 1 (--rounds N).")
    out = Path(cfg.out)
    claim_output_dir(out, overwrite=options.overwrite, resume=options.resume, what="training output")
    if options.resume and out.is_dir() and any(out.iterdir()) and not (out / "config.toml").is_file():
        raise MudiError(f"{out}: no config.toml, so no iterative run to resume there.")
    if first is not None:
        if not _finished(first):
            raise MudiError(f"first={first}: not a finished `mudi train` folder (its summary.json does not say "
                            "finished); train it first or start the rounds without it.")
        init_lora_shape(cfg.updated({"init_lora": str(first)}))  # its weights fit this base model
    prepare_run(_round_config(cfg, 0, out.absolute()),
                RunOptions(resume=True, overwrite=True, device=options.device, progress=False))


def _finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished ``mudi train`` run."""
    from mudi.io import read_json
    from mudi.train.outputs import SUMMARY_NAME

    summary = folder / SUMMARY_NAME
    return summary.is_file() and bool(read_json(summary, "training summary").get("finished"))


def _adopt_first(first: Path, out: Path) -> None:
    """Round 0 = a copy of the finished training ``first``: its top-level files (LoRA files, config,
    summary, log; not its checkpoints nor hidden files), the summary, which marks the copy
    finished, written last."""
    from mudi.train.outputs import SUMMARY_NAME

    folder = round_dir(out, 0) / "train"
    if _finished(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted((f for f in first.iterdir() if f.is_file() and not f.name.startswith(".")),
                   key=lambda f: f.name == SUMMARY_NAME)
    for f in files:
        shutil.copyfile(f, folder / f".{f.name}.tmp")
        (folder / f".{f.name}.tmp").replace(folder / f.name)


def _round_config(cfg: TrainConfig, k: int, out: Path) -> TrainConfig:
    """The training of round ``k`` (0 = the first training)."""
    values: dict[str, Any] = {"rounds": 0, "out": str(round_dir(out, k) / "train")}
    if k > 0:
        kept = [str(round_dir(out, j) / "kept") for j in range(1, k + 1)
                if (round_dir(out, j) / "kept" / EXAMPLES_FILE).is_file()
                and (round_dir(out, j) / "kept" / EXAMPLES_FILE).read_text().strip()]
        values.update({"init_lora": str(round_dir(out, k - 1) / "train"), "max_train_steps": cfg.round_steps,
                       "extra_examples": list(cfg.extra_examples) + kept, "seed": cfg.seed + k})
    return cfg.updated(values)


def _train_round(cfg: TrainConfig, k: int, out: Path, options: RunOptions) -> None:
    from mudi.train import train

    folder = round_dir(out, k) / "train"
    if _finished(folder):
        return
    run = RunOptions(resume=True, overwrite=True, device=options.device, progress=options.progress)
    result = train(_round_config(cfg, k, out), run)
    if not result.finished:
        raise MudiError(f"{folder}: round {k}'s training did not finish.")


def _generate_round(cfg: TrainConfig, k: int, out: Path, template: GenerateConfig, sset,
                    options: RunOptions, pipe=None) -> Path:
    from mudi.generate import generate

    folder = round_dir(out, k) / "images"
    gen = template.updated({"lora": str(round_dir(out, k - 1) / "train"), "subjects": cfg.subjects,
                            "prompts": _prompts(cfg, sset), "n": cfg.round_images, "out": str(folder),
                            "seed": template.seed + SEED_STRIDE * k, "base": cfg.base})
    gen.check()
    generate(gen, RunOptions(resume=True, device=options.device, progress=options.progress), pipe=pipe)
    return folder


def _evaluate_round(cfg: TrainConfig, k: int, out: Path, template: EvaluateConfig, options: RunOptions,
                    models=None) -> Evaluation:
    from mudi.evaluate import evaluate

    folder = round_dir(out, k) / "eval"
    if (folder / "scores.json").is_file():
        return Evaluation.load(folder)
    ev = template.updated({"images": str(round_dir(out, k) / "images"), "subjects": cfg.subjects, "out": str(folder)})
    ev.check()
    return evaluate(ev, RunOptions(overwrite=True, device=options.device, progress=options.progress), models=models)


def _kept_mask(result, sidecar: dict, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The subjects' area of a kept image: the matched detection boxes, else the init layout boxes."""
    w, h = size
    boxes, source = list(result.dnc.boxes) if result.dnc is not None else [], "detections"
    if not boxes:
        boxes, source = [item["box"] for item in sidecar.get("layout") or []], "layout"
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int(y0)):min(h, int(np.ceil(y1))), max(0, int(x0)):min(w, int(np.ceil(x1)))] = True
    if not mask.any():
        mask[:] = True
        source = "whole image"
    return mask, source


def keep_image(result, threshold: float) -> bool:
    """Whether a round image is kept: every subject detected once (no count error), and a success
    of the evaluation (``threshold`` -1) or a D&C of at least ``threshold``."""
    if result.dnc is None or not result.dnc.count_ok:
        return False
    return bool(result.success) if threshold == -1 else result.score >= threshold


def _keep_round(cfg: TrainConfig, k: int, out: Path, evaluation: Evaluation) -> int:
    """Copy the images above the threshold, with their masks, into ``OUT/rounds/k/kept``; returns how many."""
    from PIL import Image

    from mudi.io import mask_to_image, read_json, save_image_atomic
    from mudi.train.extra import write_examples

    folder = round_dir(out, k) / "kept"
    if (folder / EXAMPLES_FILE).is_file():
        return sum(1 for ln in (folder / EXAMPLES_FILE).read_text().splitlines() if ln.strip())
    images = round_dir(out, k) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for r in evaluation.results:
        if not keep_image(r, cfg.keep_threshold):
            continue
        image = Path(r.path) if r.path else images / f"{r.name}.png"
        sidecar = read_json(image.with_suffix(".json"), "image sidecar") if image.with_suffix(".json").is_file() else {}
        with Image.open(image) as im:
            size = im.size
            shutil.copyfile(image, folder / image.name)
        mask, source = _kept_mask(r, sidecar, size)
        save_image_atomic(mask_to_image(mask), folder / f"mask_{image.stem}.png")
        items.append({"file_name": image.name, "mask_path": f"mask_{image.stem}.png",
                      "text": sidecar.get("prompt") or r.prompt or "", "subjects": list(r.subjects),
                      "dnc": r.score, "mask_source": source})
    write_examples(folder, items)
    return len(items)


def _finish(cfg: TrainConfig, out: Path, rows: list[dict]) -> None:
    """The final LoRA files and rounds.json at the top of OUT."""
    from mudi.io import write_json_atomic

    last = round_dir(out, cfg.rounds) / "train"
    for name in LORA_FILES:
        if (last / name).is_file():
            shutil.copyfile(last / name, out / f".{name}.tmp")
            (out / f".{name}.tmp").replace(out / name)
    write_json_atomic(out / ROUNDS_JSON, {"rounds": rows, "final_lora": str(last.resolve())})


def _resolved(config: TrainConfig, options: RunOptions, generate: GenerateConfig | None,
              evaluate: EvaluateConfig | None) -> tuple[TrainConfig, GenerateConfig, EvaluateConfig]:
    """The run's three configs: those saved in ``OUT/config.toml`` when resuming (the given
    ``max_train_steps``-like bookkeeping is not consulted), else the given ones or the defaults."""
    saved = Path(config.out) / "config.toml"
    if options.resume and saved.is_file():
        return (TrainConfig.from_toml(saved), GenerateConfig.from_toml(saved), EvaluateConfig.from_toml(saved))
    return config, generate or GenerateConfig(), evaluate or EvaluateConfig()


def _save_run(out: Path, config: TrainConfig, generate: GenerateConfig, evaluate: EvaluateConfig) -> None:
    """``OUT/config.toml``: the [train] table and the rounds' [generate] / [evaluate] templates
    (``mudi generate --lora OUT`` reads the [train] table; an API key is never written)."""
    from mudi.io import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    tables = [config.to_toml(title="mudi train --rounds: iterative training (the [generate] and [evaluate] "
                                   "tables are the rounds' settings)"),
              generate.updated({"llm_api_key": ""}).to_toml(), evaluate.to_toml()]
    write_text_atomic(out / "config.toml", "\n".join(tables))


def iterate(config: TrainConfig, options: RunOptions | None = None, *, generate: GenerateConfig | None = None,
            evaluate: EvaluateConfig | None = None, pipe=None, eval_models=None,
            first: str | Path | None = None) -> RoundsResult:
    """Iterative training (see the module docstring).

    Args:
        config: the training, with ``rounds`` ≥ 1 and the round settings (``round_steps``,
            ``round_images``, ``round_prompts``, ``keep_threshold``).
        options: resume / overwrite / device / progress.
        generate: template of the rounds' generation settings (prompts, n, out, lora are set
            per round); default :class:`GenerateConfig`'s defaults (initialization on).
        evaluate: template of the rounds' evaluation settings (detector, embedder, thresholds).
        pipe: an already loaded base pipeline for the rounds' generation (as ``generate(pipe=)``;
            the LoRA is loaded into it and unloaded again); training loads its own.
        eval_models: already loaded detector/embedder for the rounds' evaluation (as ``evaluate(models=)``).
        first: a finished ``mudi train`` folder (same base model, same LoRA shape as ``config``) that
            is the first training: copied into ``OUT/rounds/0/train`` instead of training round 0,
            so round 1 generates with its LoRA and fine-tunes from it.

    Raises:
        MudiError: a user mistake, found before anything is written.
    """
    from mudi.subjects import SubjectSet

    options = options or RunOptions()
    config, generate, evaluate = _resolved(config, options, generate, evaluate)
    first = Path(first).absolute() if first else None
    _check(config, options, first)
    out = Path(config.out).absolute()
    if options.overwrite and not options.resume:  # a fresh start: nothing of an earlier run is reused
        shutil.rmtree(out / ROUNDS_DIR, ignore_errors=True)
    _save_run(out, config, generate, evaluate)
    sset = SubjectSet.load(config.subjects)
    if first is not None:
        _adopt_first(first, out)
    _train_round(config, 0, out, options)
    rows = []
    for k in range(1, config.rounds + 1):
        _generate_round(config, k, out, generate, sset, options, pipe)
        evaluation = _evaluate_round(config, k, out, evaluate, options, eval_models)
        kept = _keep_round(config, k, out, evaluation)
        _train_round(config, k, out, options)
        values = evaluation.dnc_values
        rows.append({"round": k, "images": len(evaluation.results), "kept": kept,
                     "dnc_mean": float(np.mean(values)) if values else None,
                     "success_rate": evaluation.summary.get("success_rate")})
        print(f"mudi train: round {k}/{config.rounds}: kept {kept} of {len(evaluation.results)} images "
              f"(mean D&C {rows[-1]['dnc_mean']}).", file=sys.stderr)
    _finish(config, out, rows)
    return RoundsResult(out, rows)


__all__ = ["ROUNDS_DIR", "ROUNDS_JSON", "RoundsResult", "iterate", "round_dir"]
