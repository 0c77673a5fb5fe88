"""`mudi demo`: the whole MuDI pipeline, offline, on a CPU, in minutes.

It uses the toy world shipped with mudi (:mod:`mudi.toy`): a small text-to-image base model
trained in-house on procedural scenes, two *similar* personal subjects of the same class that
differ only in their markings (the "two similar dogs" case), and a toy detector and embedder
with the OWLv2 / DINOv2 interfaces, so Detect-and-Compare runs unchanged.

Stages (each in its own folder under OUT, each skipped on ``--resume`` once complete):

1. ``subjects/``  -- the toy subject set, imported with :func:`mudi.prepare.pipeline.import_set`
   (contact sheet included);
2. ``lora_none/``, ``lora_cutmix/``, ``lora_segmix/`` -- one LoRA per training mode
   (DreamBooth, Cut-Mix, Seg-Mix), same seed, steps and schedule, so they compare fairly;
3. ``gen/<method>/`` -- images for the demo prompts, with and without mean-shifted
   initialization (same seeds across methods);
4. ``eval/<method>/`` -- `mudi evaluate` outputs (D&C with the toy detector/embedder);
5. ``report.html`` and ``summary.json`` -- the comparison.

The numbers are whatever the runs give; nothing is tuned per method.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mudi.errors import MudiError
from mudi.io import load_rgb, prepare_output_dir, write_json_atomic, write_text_atomic

#: Success threshold for D&C with the toy detector and embedder. The toy embedder scores blurred
#: objects lower than sharp ones: renders of both subjects passed through the toy model's VAE
#: (a perfect image at the model's fidelity) score a median D&C of 0.84, and 80 % of them reach
#: 0.7 (60 % reach the paper's 0.8); pairs with one identity drawn twice (both striped or both
#: dotted) reach at most 0.53. benchmarks/toy_dnc_calibration.py prints these figures.
TOY_SUCCESS_THRESHOLD = 0.7

DONE = ".done"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: which LoRA (training mix) and which initialization."""

    name: str
    mix: str  # none | cutmix | segmix
    init: str  # none | mudi
    description: str


METHODS: tuple[Method, ...] = (
    Method("dreambooth", "none", "none", "DreamBooth LoRA (no composites), standard noise"),
    Method("cutmix", "cutmix", "none", "Cut-Mix LoRA (whole photos stitched), standard noise"),
    Method("segmix", "segmix", "none", "Seg-Mix LoRA, standard noise (ablation: no initialization)"),
    Method("dreambooth_init", "none", "mudi", "DreamBooth LoRA + mean-shifted initialization (ablation)"),
    Method("mudi", "segmix", "mudi", "MuDI: Seg-Mix LoRA + mean-shifted initialization"),
)


@dataclass
class DemoConfig:
    """Settings of a demo run; the defaults finish in under 10 minutes on a 2-core CPU."""

    out: str = "mudi-demo"
    seed: int = 0
    base: str = ""  # "" = the toy base model shipped with mudi
    # training (per LoRA)
    train_steps: int = 500
    rank: int = 8
    learning_rate: float = 4e-3
    p: float = 0.3
    gradient_accumulation_steps: int = 1
    # generation
    # Measured on the toy model (see the README's demo section and benchmarks/toy_demo_sweep.py):
    # classifier-free guidance makes the toy LoRAs widen and merge the two subjects into one
    # blob, a stronger initialization (γ 5) and a slightly smaller layout (fill 0.7 of a slot)
    # keep them apart. The same settings are used for every method.
    images_per_prompt: int = 8
    steps: int = 20
    guidance: float = 1.0
    gamma: float = 5.0
    fill: float = 0.7
    # evaluation: the success threshold calibrated for the toy embedder (benchmarks/toy_dnc_calibration.py);
    # the paper's 0.8 belongs to OWLv2 + DINOv2.
    success_threshold: float = TOY_SUCCESS_THRESHOLD
    methods: list[str] = field(default_factory=lambda: [m.name for m in METHODS])
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def check(self) -> None:
        known = {m.name for m in METHODS}
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise MudiError(f"unknown demo method(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}.")
        for name in ("train_steps", "rank", "images_per_prompt", "steps"):
            if getattr(self, name) < 1:
                raise MudiError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)}).")
        if not 0.0 <= self.p <= 1.0:
            raise MudiError(f"--p must be in [0, 1] (got {self.p}).")
        if not 0 < self.fill <= 1:
            raise MudiError(f"--fill must be in (0, 1] (got {self.fill}).")
        if not 0 <= self.success_threshold <= 1:
            raise MudiError(f"--success-threshold must be in [0, 1] (got {self.success_threshold}).")
        if not self.guidance >= 0:
            raise MudiError(f"--guidance must be >= 0 (got {self.guidance}).")
        if self.learning_rate <= 0:
            raise MudiError(f"--lr must be positive (got {self.learning_rate}).")


def _say(msg: str) -> None:
    print(f"[mudi demo] {msg}", flush=True)


def _stage(folder: Path, resume: bool, what: str, work: Callable[[], None]) -> float:
    """Run one stage into ``folder`` unless --resume finds it complete; returns seconds spent."""
    if resume and (folder / DONE).exists():
        _say(f"{what}: already done, skipping ({folder})")
        return 0.0
    t0 = time.perf_counter()
    _say(f"{what} ...")
    work()
    (folder / DONE).write_text("ok\n")
    dt = time.perf_counter() - t0
    _say(f"{what}: {dt:.1f} s")
    return dt


def demo_resolution() -> int:
    """Image side (px) the demo trains and samples at: the toy model's sampling size."""
    from mudi import toy

    return int(toy.SAMPLING.get("height", 64))


def generation_config(config: DemoConfig, method: Method, demo_dir: Path, gen_dir: Path, base: Path):
    """The `mudi generate` settings of one method: the LoRA and subject set of the demo run in
    ``demo_dir``, images into ``gen_dir``. Shared by the demo and benchmarks/toy_demo_sweep.py."""
    from mudi import toy
    from mudi.generate.pipeline import GenerateConfig

    return GenerateConfig(
        prompts=list(toy.DEMO_PROMPTS), out=str(gen_dir), base=str(base), lora=str(demo_dir / f"lora_{method.mix}"),
        subjects=str(demo_dir / "subjects"), n=config.images_per_prompt, init=method.init, gamma=config.gamma,
        fill=config.fill, steps=config.steps, resolution=demo_resolution(), seed=config.seed,
        guidance=config.guidance, overwrite=True, device="cpu", dtype="float32", progress=config.progress,
        save_init=method.init == "mudi",
    )


def evaluate_method(config: DemoConfig, gen_dir: Path, subject_set, label: str):
    """D&C of a method's images with the toy detector and embedder (an Evaluation)."""
    from mudi import toy
    from mudi.evaluate.scoring import evaluate_folder

    return evaluate_folder(gen_dir, subject_set, toy.ToyDetector(), toy.ToyEmbedder(), clip=None,
                           success_threshold=config.success_threshold, label=label,
                           settings={"detector": "toy", "embedder": "toy"})


def run_demo(config: DemoConfig) -> dict:
    """Run the demo; returns the summary (also written to OUT/summary.json)."""
    import torch

    config.check()
    # The toy models are small: one thread is as fast as two, and it stays fast when other work
    # shares the CPU (OpenMP threads spin-waiting for a descheduled peer cost seconds per step).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if not config.progress:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        return _run_demo(config)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: DemoConfig) -> dict:
    import torch

    from mudi import toy
    from mudi.train.config import TrainConfig
    from mudi.evaluate.scoring import RunData, compare_runs, write_comparison
    from mudi.generate.pipeline import generate
    from mudi.models.loading import load_pipeline
    from mudi.prepare.pipeline import import_set
    from mudi.subjects import SubjectSet
    from mudi.train.recipe import train

    base = Path(config.base) if config.base else toy.base_model_path()
    out = Path(config.out)
    if config.resume and out.exists():
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output_dir(out, overwrite=config.overwrite, what="demo output")
    methods = [m for m in METHODS if m.name in config.methods]
    mixes = list(dict.fromkeys(m.mix for m in methods))
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    # 1. subjects ------------------------------------------------------------------------
    raw = out / "toy_photos"
    subjects_dir = out / "subjects"

    def make_subjects() -> None:
        toy.make_subject_set(raw, seed=config.seed, overwrite=True)
        import_set(raw, subjects_dir, overwrite=True)

    timings["prepare"] = _stage(subjects_dir, config.resume, "1/4 prepare the toy subjects", make_subjects)
    sset = SubjectSet.load(subjects_dir)
    resolution = demo_resolution()

    # 2. train one LoRA per mix ------------------------------------------------------------
    for mix in mixes:
        lora_dir = out / f"lora_{mix}"

        def do_train(mix=mix, lora_dir=lora_dir) -> None:
            cfg = TrainConfig(
                subjects=str(subjects_dir), base=str(base), out=str(lora_dir), resolution=resolution,
                mix=mix, p=config.p, rank=config.rank, alpha=float(config.rank),
                learning_rate=config.learning_rate, max_train_steps=config.train_steps,
                gradient_accumulation_steps=config.gradient_accumulation_steps, seed=config.seed + 42,
                checkpoint_every=max(50, config.train_steps // 2), validate_every=-1, device="cpu",
                progress=config.progress, overwrite=True, resume=config.resume and (lora_dir / "checkpoints").exists(),
            )
            train(cfg)

        timings[f"train_{mix}"] = _stage(lora_dir, config.resume, f"2/4 train LoRA --mix {mix}", do_train)

    # 3. generate ---------------------------------------------------------------------------
    pipe = load_pipeline(str(base), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    for m in methods:
        gen_dir = out / "gen" / m.name

        def do_generate(m=m, gen_dir=gen_dir) -> None:
            generate(generation_config(config, m, out, gen_dir, base), pipe=pipe)

        timings[f"generate_{m.name}"] = _stage(gen_dir, config.resume, f"3/4 generate: {m.description}", do_generate)

    # 4. evaluate ---------------------------------------------------------------------------
    runs: list[RunData] = []
    for m in methods:
        eval_dir = out / "eval" / m.name

        def do_eval(m=m, eval_dir=eval_dir) -> None:
            evaluate_method(config, out / "gen" / m.name, sset, m.name).write(eval_dir, overwrite=True)

        timings[f"evaluate_{m.name}"] = _stage(eval_dir, config.resume, f"4/4 evaluate {m.name}", do_eval)
        runs.append(RunData.load(eval_dir, label=m.name))

    comp = compare_runs(runs)
    write_comparison(comp, out)
    timings["total"] = time.perf_counter() - t_start

    summary = {
        "seed": config.seed,
        "config": asdict(config),
        "base_model": str(base),
        "subjects": {s.key: s.phrase for s in sset},
        "prompts": list(toy.DEMO_PROMPTS),
        "methods": {},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    for m, run in zip(methods, runs):
        s = run.summary
        summary["methods"][m.name] = {
            "description": m.description,
            "training_mix": m.mix,
            "initialization": m.init,
            "n_images": s.get("n_scored"),
            "dnc_mean": s.get("dnc_mean"),
            "dnc_mean_count_ok": s.get("dnc_mean_count_ok"),
            "success_rate": s.get("success_rate"),
            "count_errors": (s.get("n_missing") or 0) + (s.get("n_duplicate") or 0),
            "count_errors_missing": s.get("n_missing"),
            "count_errors_duplicate": s.get("n_duplicate"),
            "identities_ok_rate": s.get("identities_ok_rate"),
        }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.html", render_demo_report(out, summary, methods))
    _say(f"done in {timings['total']:.0f} s: {out / 'report.html'}")
    return summary


# ------------------------------------------------------------------------------ report

def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _method_grid(out: Path, method: str, cell: int = 128):
    """Grid of a method's images labelled with their D&C (from the evaluation)."""
    from mudi.viz import grid

    per_image = json.loads((out / "eval" / method / "per_image.json").read_text(encoding="utf-8"))
    images, labels = [], []
    for d in per_image:
        path = d.get("path")
        if not path:
            continue
        images.append(load_rgb(path))
        dnc = d.get("dnc")
        tag = "count error" if d.get("count_error") or (isinstance(dnc, dict) and not dnc.get("count_ok", True)) else ""
        score = dnc.get("score") if isinstance(dnc, dict) else dnc
        labels.append(f"D&C {score:.2f} {tag}".strip() if isinstance(score, (int, float)) else "not scored")
    cols = max(1, min(8, len(images)))
    return grid(images, labels=labels, cols=cols, cell=cell)


def render_demo_report(out: Path, summary: dict, methods) -> str:
    """A self-contained HTML page: subjects, per-method image grids, the table and the plot."""
    from mudi.viz import grid

    esc = html.escape
    rows = []
    for m in methods:
        s = summary["methods"][m.name]

        def f(v, pct=False):
            if v is None:
                return "n/a"
            return f"{100 * v:.0f} %" if pct else f"{v:.3f}"

        rows.append(
            f"<tr><td class=l><b>{esc(m.name)}</b><br><small>{esc(m.description)}</small></td>"
            f"<td>{esc(m.mix)}</td><td>{esc(m.init)}</td><td>{s['n_images']}</td>"
            f"<td>{f(s['dnc_mean'])}</td><td>{f(s['success_rate'], True)}</td>"
            f"<td>{s['count_errors']} ({s['count_errors_missing']} missing, {s['count_errors_duplicate']} duplicate)</td></tr>"
        )
    parts = [
        "<h1>mudi demo — identity decoupling on the toy world</h1>",
        "<p>Two similar subjects of the same class that differ only in their markings were learned "
        "by one LoRA per training mode from five photos each, then drawn together. Detect-and-Compare "
        "(D&amp;C) scores each image with the toy detector and embedder: 1 is perfect, 0 a count error "
        f"(a missing or duplicated subject). Success: right count and D&amp;C ≥ {summary['config']['success_threshold']}.</p>",
        "<h2>Subjects</h2>",
    ]
    sheet = out / "subjects" / "contact_sheet.png"
    if sheet.exists():
        parts.append(f"<img class=sheet src='data:image/png;base64,{_png_b64(load_rgb(sheet))}'>")
    parts.append("<p>" + ", ".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in summary["subjects"].items()) + "</p>")
    parts.append(
        "<h2>Results</h2><table><tr><th class=l>method</th><th>training mix</th><th>initialization</th>"
        "<th>images</th><th>mean D&amp;C</th><th>success rate</th><th>count errors</th></tr>"
        + "".join(rows) + "</table>"
    )
    plot = out / "comparison.png"
    if plot.exists():
        parts.append(f"<img class=plot src='data:image/png;base64,{_png_b64(load_rgb(plot))}'>")
    c = summary["config"]
    parts.append(
        f"<p><small>Settings (same for every method): LoRA rank {c['rank']}, {c['train_steps']} steps at lr "
        f"{c['learning_rate']:g}, composite probability p = {c['p']:g}; sampling {c['steps']} steps, guidance "
        f"{c['guidance']:g}, {c['images_per_prompt']} images per prompt; initialization γ = {c['gamma']:g}, layout "
        f"fill {c['fill']:g}; seed {summary['seed']}.</small></p>"
    )
    for m in methods:
        parts.append(f"<h2>{esc(m.name)}</h2><p>{esc(m.description)} — "
                     f"<a href='eval/{esc(m.name)}/report.html'>per-image report</a></p>")
        parts.append(f"<img class=grid src='data:image/png;base64,{_png_b64(_method_grid(out, m.name))}'>")
        inits = sorted((out / "gen" / m.name).glob("[0-9][0-9][0-9][0-9]_init.png"))[:8]
        if inits:
            sheet = grid([load_rgb(p) for p in inits], labels=[p.stem for p in inits], cols=len(inits), cell=128)
            parts.append("<p>Initialization canvases (the segmented reference photos placed by the layout; "
                         "their latents, scaled by γ, shift the initial noise):</p>"
                         f"<img class=grid src='data:image/png;base64,{_png_b64(sheet)}'>")
    parts.append("<h2>Prompts</h2><ul>" + "".join(f"<li>{esc(p)}</li>" for p in summary["prompts"]) + "</ul>")
    parts.append("<h2>Timings (s)</h2><p>" + ", ".join(f"{esc(k)}: {v}" for k, v in summary["timings_s"].items()) + "</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             ".l{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mudi demo</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
