"""The demo's ``summary.json`` and ``report.html``: subjects, the comparison table and plot,
per-method image grids (and the iterative row's round)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path

from mudi.io import load_rgb


def library_versions() -> dict[str, str]:
    """Versions of the libraries (and Python) whose kernels produce the demo's numbers, and the CPU
    instruction set torch picked its kernels for (AVX-512 and AVX2 kernels give different numbers)."""
    import platform
    from importlib import metadata

    import torch

    out = {"python": platform.python_version(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in ("torch", "diffusers", "transformers", "peft", "numpy", "scipy", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def demo_summary(config, base: Path, sset, methods, runs, timings: dict[str, float]) -> dict:
    """The demo's summary.json: settings, subjects, prompts, library versions, each method's figures
    (``runs``: their Evaluations) and the stage timings."""
    from mudi import toy

    summary = {
        "seed": config.seed,
        "config": asdict(config),
        "base_model": str(base),
        "subjects": {s.key: s.phrase for s in sset},
        "prompts": list(toy.demo_prompts(config.subjects)),
        "versions": library_versions(),
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
        if m.mix == "iterative":  # images, kept images, mean D&C and success rate of each round
            summary["methods"][m.name]["rounds"] = rounds_summary(Path(config.out))
    return summary


def rounds_summary(out: Path) -> list[dict] | None:
    """The ``rounds.json`` rows of the demo's iterative LoRA (None without one)."""
    path = out / "lora_iterative" / "rounds.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["rounds"]


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


def _rounds_html(out: Path, rounds: list[dict] | None) -> list[str]:
    """The iterative row's rounds: how many images each round made and kept, and the kept images."""
    from mudi.viz import grid

    parts = []
    for r in rounds or []:
        dnc = "n/a" if r.get("dnc_mean") is None else f"{r['dnc_mean']:.3f}"
        parts.append(f"<p>Round {r['round']}: kept {r['kept']} of {r['images']} images (mean D&amp;C {dnc}) "
                     "as training examples of its fine-tune.</p>")
        kept = sorted((out / "lora_iterative" / "rounds" / str(r["round"]) / "kept").glob("[0-9][0-9][0-9][0-9].png"))
        if kept:
            sheet = grid([load_rgb(p) for p in kept[:16]], labels=[p.stem for p in kept[:16]],
                         cols=min(8, len(kept)), cell=96)
            parts.append(f"<img class=grid src='data:image/png;base64,{_png_b64(sheet)}'>")
    return parts


def _count_word(n: int) -> str:
    return {2: "Two", 3: "Three", 4: "Four"}.get(n, str(n))


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
        f"<p>{_count_word(len(summary['subjects']))} similar subjects of the same class that differ only in their markings were learned "
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
        parts.extend(_rounds_html(out, summary["methods"][m.name].get("rounds")))
        inits = sorted((out / "gen" / m.name).glob("[0-9][0-9][0-9][0-9]_init.png"))[:8]
        if inits:
            sheet = grid([load_rgb(p) for p in inits], labels=[p.stem for p in inits], cols=len(inits), cell=128)
            parts.append("<p>Initialization canvases (the segmented reference photos placed by the layout; "
                         "their latents, scaled by γ, shift the initial noise):</p>"
                         f"<img class=grid src='data:image/png;base64,{_png_b64(sheet)}'>")
    parts.append("<h2>Prompts</h2><ul>" + "".join(f"<li>{esc(p)}</li>" for p in summary["prompts"]) + "</ul>")
    versions = summary.get("versions") or {}
    parts.append("<p><small>Library versions: " + ", ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items())
                 + "</small></p>")
    parts.append("<h2>Timings (s)</h2><p>" + ", ".join(f"{esc(k)}: {v}" for k, v in summary["timings_s"].items()) + "</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             ".l{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mudi demo</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")
