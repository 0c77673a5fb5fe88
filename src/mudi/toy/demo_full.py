"""`mudi demo --full`: the demo's curves and its spread over seeds.

Everything goes into subfolders of OUT, each an ordinary demo run (resumable stage by stage):

- ``seed_<s>/`` -- the standard comparison (every method) for ``FULL_SEEDS`` consecutive seeds
  starting at ``--seed``; the summary reports each method's mean and spread (sample standard
  deviation) over them, so no claim rests on one seed;
- ``subjects_<n>/`` -- DreamBooth and MuDI with 3 and 4 similar subjects (the 2-subject point is
  the first seed's run): success rate and mean D&C against the number of subjects, the paper's
  figure;
- ``gamma/<γ>/`` -- the first seed's MuDI LoRA sampled with each initialization strength γ in
  ``FULL_GAMMAS`` (same seeds, same prompts): mean D&C against γ.

OUT/summary.json holds the tables, OUT/report.html the tables and both plots
(``success_vs_subjects.png``, ``dnc_vs_gamma.png``).
"""

from __future__ import annotations

import html
import statistics
from dataclasses import replace
from pathlib import Path

from mudi.io import claim_output_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from mudi.settings import RunOptions

#: Seeds of the repeated comparison (``--seed``, ``--seed`` + 1, ...).
FULL_SEEDS = 3
#: Subject counts of the success-vs-subjects curve.
FULL_SUBJECTS: tuple[int, ...] = (2, 3, 4)
#: Methods of the success-vs-subjects curve (the paper's figure: DreamBooth vs MuDI).
CURVE_METHODS: tuple[str, ...] = ("dreambooth", "mudi")
#: Initialization strengths of the D&C-vs-γ curve (0 = the layout without any shift).
FULL_GAMMAS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 7.0)
FIGURES = ("dnc_mean", "success_rate", "count_errors")


def run_full_demo(config, options: RunOptions | None = None) -> dict:
    """Run the --full demo (see the module docstring); returns the summary written to OUT/summary.json."""
    from mudi.toy.demo import run_demo, run_isolated

    options = options or RunOptions()
    config.check()
    out = Path(config.out)
    claim_output_dir(out, overwrite=options.overwrite, resume=options.resume, what="demo output", create=True)
    sub = RunOptions(resume=options.resume, overwrite=options.overwrite, device="cpu", progress=options.progress)
    seeds = [config.seed + i for i in range(FULL_SEEDS)]
    runs = {s: run_demo(replace(config, seed=s, out=str(out / f"seed_{s}"), full=False), sub) for s in seeds}
    first = runs[seeds[0]]
    curve = {"2": {m: first["methods"][m] for m in CURVE_METHODS if m in first["methods"]}}
    for n in FULL_SUBJECTS:
        if n != 2:
            cfg = replace(config, subjects=n, methods=list(CURVE_METHODS), out=str(out / f"subjects_{n}"), full=False)
            curve[str(n)] = run_demo(cfg, sub)["methods"]
    gammas = run_isolated(lambda: _gamma_curve(config, out / f"seed_{seeds[0]}", out / "gamma", sub))
    summary = {
        "config": first["config"] | {"full": True},
        "versions": first["versions"],
        "seeds": seeds,
        "per_seed": {str(s): {m: {k: r["methods"][m][k] for k in FIGURES} for m in r["methods"]} for s, r in runs.items()},
        "spread": _spread(runs),
        "success_vs_subjects": {n: {m: {k: v[k] for k in FIGURES} for m, v in ms.items()} for n, ms in curve.items()},
        "dnc_vs_gamma": gammas,
    }
    _write_plots(summary, out)
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.html", render_full_report(summary, out))
    return summary


def _spread(runs: dict[int, dict]) -> dict[str, dict[str, float | None]]:
    """Per method: mean and sample standard deviation over the seeds of each figure."""
    methods = next(iter(runs.values()))["methods"]
    out: dict[str, dict[str, float | None]] = {}
    for m in methods:
        row: dict[str, float | None] = {}
        for k in FIGURES:
            vals = [r["methods"][m][k] for r in runs.values() if r["methods"][m][k] is not None]
            row[f"{k}_mean"] = round(statistics.fmean(vals), 4) if vals else None
            row[f"{k}_std"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else None
        out[m] = row
    return out


def _gamma_curve(config, demo_dir: Path, out: Path, options: RunOptions) -> dict[str, dict]:
    """MuDI's images and D&C for each γ in FULL_GAMMAS, from the LoRA of the run in ``demo_dir``."""
    from mudi import toy
    from mudi.evaluate import Evaluation
    from mudi.generate import generate
    from mudi.subjects import SubjectSet
    from mudi.toy.demo import DONE, METHODS, _toy_pipeline, evaluate_method, generation_config

    base = Path(config.base) if config.base else toy.base_model_path()
    mudi = next(m for m in METHODS if m.name == "mudi")
    sset = SubjectSet.load(demo_dir / "subjects")
    pipe = None
    curve: dict[str, dict] = {}
    for gamma in FULL_GAMMAS:
        folder = out / f"{gamma:g}"
        if not (options.resume and (folder / DONE).exists()):
            pipe = pipe or _toy_pipeline(base)
            cfg = replace(config, gamma=gamma, seed=int(demo_dir.name.split("_")[-1]))
            generate(generation_config(cfg, mudi, demo_dir, folder / "images", base),
                     RunOptions(overwrite=True, device="cpu", progress=options.progress), pipe=pipe)
            ev = evaluate_method(cfg, folder / "images", sset, f"mudi_gamma_{gamma:g}")
            ev.save(folder / "eval", overwrite=True)
            (folder / DONE).write_text("ok\n")
        s = Evaluation.load(folder / "eval").summary
        curve[f"{gamma:g}"] = {"dnc_mean": s.get("dnc_mean"), "success_rate": s.get("success_rate")}
    return curve


def _line_plot(xs, series: dict[str, list], xlabel: str, ylabel: str, title: str) -> bytes:
    from matplotlib.figure import Figure

    from mudi.report.plots import png_bytes

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for name, ys in series.items():
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xticks(list(xs))
    ax.grid(alpha=0.3)
    ax.legend()
    return png_bytes(fig)


def _write_plots(summary: dict, out: Path) -> None:
    curve = summary["success_vs_subjects"]
    ns = sorted(curve, key=int)
    series = {m: [curve[n].get(m, {}).get("success_rate") for n in ns] for m in CURVE_METHODS}
    ns = [int(n) for n in ns]
    write_bytes_atomic(out / "success_vs_subjects.png",
                       _line_plot(ns, series, "number of subjects", "success rate", "Success rate vs subjects"))
    gam = summary["dnc_vs_gamma"]
    xs = [float(g) for g in gam]
    write_bytes_atomic(out / "dnc_vs_gamma.png", _line_plot(
        xs, {"MuDI": [gam[g]["dnc_mean"] for g in gam]}, "initialization strength γ", "mean D&C", "Mean D&C vs γ"))


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.0f} %" if pct else f"{v:.3f}"


def render_full_report(summary: dict, out: Path) -> str:
    """The --full page: the spread over seeds, both curves and links to every run's own report."""
    from mudi.toy.demo_report import _png_b64

    from PIL import Image

    esc = html.escape
    rows = "".join(
        f"<tr><td class=l>{esc(m)}</td><td>{_fmt(r['dnc_mean_mean'])} ± {_fmt(r['dnc_mean_std'])}</td>"
        f"<td>{_fmt(r['success_rate_mean'], True)} ± {_fmt(r['success_rate_std'], True)}</td>"
        f"<td>{_fmt(r['count_errors_mean'])}</td></tr>" for m, r in summary["spread"].items())
    parts = [f"<h1>mudi demo --full</h1><h2>Over seeds {', '.join(map(str, summary['seeds']))} (mean ± std)</h2>"
             "<table><tr><th class=l>method</th><th>mean D&amp;C</th><th>success</th><th>count errors</th></tr>"
             f"{rows}</table>",
             "<p>" + " · ".join(f"<a href='seed_{s}/report.html'>seed {s}</a>" for s in summary["seeds"]) + "</p>"]
    for name, title in (("success_vs_subjects", "Success rate vs number of subjects"), ("dnc_vs_gamma", "Mean D&C vs γ")):
        img = out / f"{name}.png"
        if img.exists():
            parts.append(f"<h2>{esc(title)}</h2><img src='data:image/png;base64,{_png_b64(Image.open(img))}'>")
    parts.append("<p><small>" + ", ".join(f"{esc(k)} {esc(v)}" for k, v in summary["versions"].items()) + "</small></p>")
    style = "body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mudi demo --full</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
