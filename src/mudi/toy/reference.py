"""The demo's recorded figures: a shortened `mudi demo` whose every number is compared with a
recording, so that a change in results (a dependency upgrade, another CPU kernel, a new default)
is seen the day it happens instead of when a user's numbers no longer match the README.

This module is the one definition of that shortened run and of the comparison.
``scripts/record_demo_reference.py`` runs it and writes ``tests/data/demo_reference.json``
(figures + settings + library versions); ``tests/test_demo_regression.py`` runs it again and
compares. The run is `mudi demo` with its defaults (seed, schedule, sampling settings, the default
method list) except for the few fields in :data:`SHORT_DEMO` that make it last about a minute.
"""

from __future__ import annotations

import datetime
import json
import platform
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from mudi.settings import RunOptions
from mudi.toy.demo import DemoConfig, run_demo

#: What the shortened demo changes in `mudi demo`'s defaults; everything else is the default.
SHORT_DEMO = {"train_steps": 40, "images_per_prompt": 2, "steps": 10}
#: Mean and per-image D&C may differ by this much; counts and successes must match exactly.
DNC_TOLERANCE = 1e-3
#: Relative change of a LoRA fingerprint that counts as a change (one install is bitwise repeatable).
WEIGHT_TOLERANCE = 1e-9
#: The same on another CPU kernel kind (e.g. AVX2 against an AVX-512 recording): float kernels differ
#: there by design (a 40-step LoRA moves by ~4e-5 relative), so only a larger drift counts as a change.
OTHER_CPU_WEIGHT_TOLERANCE = 1e-3
#: The command that re-records the reference (run from the repository root).
RECORD_COMMAND = "python scripts/record_demo_reference.py"
#: Where the command writes it, relative to the repository root.
REFERENCE_PATH = "tests/data/demo_reference.json"
#: Libraries recorded when no constraints file names them.
DEFAULT_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
                    "huggingface_hub", "numpy", "scipy", "pillow", "opencv-python-headless")


def short_demo_config(out: Path | str) -> DemoConfig:
    """`mudi demo`'s configuration with :data:`SHORT_DEMO` applied, writing into ``out``."""
    return DemoConfig().updated({**SHORT_DEMO, "out": str(out)})


def recorded_settings(config: DemoConfig) -> dict:
    """The settings that determine the figures (the output folder does not)."""
    settings = asdict(config)
    settings.pop("out")
    return settings


def read_constraints(path: Path | str) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of a pip constraints file (comments skipped)."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def environment(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict:
    """Python, the CPU kind torch dispatches its kernels for, and the installed versions of ``packages``."""
    from importlib import metadata

    import torch

    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "versions": versions}


def method_figures(summary_row: dict, per_image: list[dict]) -> dict:
    """One method's figures: the summary's and, per image, D&C, success and count errors."""
    images = {d["name"]: {"dnc": None if d.get("dnc") is None else round(d["dnc"], 6),
                          "success": bool(d.get("success")), "missing": d.get("missing") or 0,
                          "duplicate": d.get("duplicate") or 0} for d in per_image}
    return {
        "n_images": summary_row["n_images"],
        "dnc_mean": summary_row["dnc_mean"],
        "successes": sum(i["success"] for i in images.values()),
        "count_errors": summary_row["count_errors"],
        "missing": summary_row["count_errors_missing"] or 0,
        "duplicate": summary_row["count_errors_duplicate"] or 0,
        "per_image": images,
    }


def lora_fingerprints(out: Path) -> dict:
    """Per LoRA folder of a demo run: parameter count, L2 norm and alternating-sign sum of all its
    tensors (float64, keys sorted). Kernel-level drift (another CPU kind, another attention kernel)
    moves these in the 7th digit long before it moves the shortened demo's figures."""
    import torch
    from safetensors.torch import load_file

    prints = {}
    for path in sorted(Path(out).glob("lora_*/pytorch_lora_weights.safetensors")):
        tensors = load_file(path)
        flat = torch.cat([tensors[k].double().flatten() for k in sorted(tensors)])
        prints[path.parent.name] = {"n": flat.numel(), "l2": float(flat.norm()),
                                    "alternating_sum": float(flat[0::2].sum() - flat[1::2].sum())}
    return prints


def run_short_demo(out: Path | str, packages: Iterable[str] = DEFAULT_PACKAGES) -> dict:
    """Run the shortened demo into ``out`` (a new or empty folder) and return its record:
    settings, environment and every default method's figures."""
    out = Path(out)
    config = short_demo_config(out)
    summary = run_demo(config, RunOptions(progress=False))
    methods = {}
    for name, row in summary["methods"].items():
        per_image = json.loads((out / "eval" / name / "per_image.json").read_text(encoding="utf-8"))
        methods[name] = method_figures(row, per_image)
    return {
        "about": f"figures of the shortened `mudi demo` (mudi.toy.reference); written by {RECORD_COMMAND}, "
                 "compared by tests/test_demo_regression.py; re-record deliberately, never edit by hand",
        "recorded": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": recorded_settings(config),
        "environment": environment(packages),
        "methods": methods,
        "lora_fingerprints": lora_fingerprints(out),
    }


def _close(a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol


def _fmt(x) -> str:
    return "none" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def figure_differences(reference: dict, current: dict, tol: float = DNC_TOLERANCE) -> list[str]:
    """What differs between two records' figures: methods, D&C beyond ``tol``, any count or success."""
    out = []
    ref_m, cur_m = reference["methods"], current["methods"]
    for name in [m for m in ref_m if m not in cur_m]:
        out.append(f"{name}: recorded, but not run now")
    for name in [m for m in cur_m if m not in ref_m]:
        out.append(f"{name}: run now, but not in the recording")
    for name in [m for m in ref_m if m in cur_m]:
        r, c = ref_m[name], cur_m[name]
        for key in ("n_images", "dnc_mean", "successes", "count_errors", "missing", "duplicate"):
            same = _close(r[key], c[key], tol) if key == "dnc_mean" else r[key] == c[key]
            if not same:
                out.append(f"{name}: {key} recorded {_fmt(r[key])}, now {_fmt(c[key])}")
        for image in sorted(set(r["per_image"]) | set(c["per_image"])):
            ri, ci = r["per_image"].get(image), c["per_image"].get(image)
            if ri is None or ci is None:
                out.append(f"{name} image {image}: {'not recorded' if ri is None else 'not made now'}")
                continue
            changed = [f"{k} {_fmt(ri[k])} -> {_fmt(ci[k])}" for k in ("dnc", "success", "missing", "duplicate")
                       if not (_close(ri[k], ci[k], tol) if k == "dnc" else ri[k] == ci[k])]
            if changed:
                out.append(f"{name} image {image}: " + ", ".join(changed))
    return out


def weight_differences(reference: dict, current: dict, tol: float = WEIGHT_TOLERANCE) -> list[str]:
    """LoRA fingerprints that moved (relative change above ``tol``) or are missing on one side."""
    ref, cur = reference.get("lora_fingerprints", {}), current.get("lora_fingerprints", {})
    out = []
    for name in sorted(set(ref) | set(cur)):
        if name not in ref or name not in cur:
            out.append(f"{name}: {'not recorded' if name not in ref else 'not trained now'}")
            continue
        moved = [f"{k} {ref[name][k]!r} -> {cur[name][k]!r}" for k in ("n", "l2", "alternating_sum")
                 if abs(ref[name][k] - cur[name][k]) > tol * max(abs(ref[name][k]), 1.0)]
        if moved:
            out.append(f"{name}: " + ", ".join(moved))
    return out


def setting_differences(reference: dict, current: dict) -> list[str]:
    """Settings of the shortened demo (demo defaults included) that differ from the recording."""
    ref, cur = reference["settings"], current["settings"]
    return [f"--{k.replace('_', '-')}: recorded {ref.get(k, 'absent')}, now {cur.get(k, 'absent')}"
            for k in sorted(set(ref) | set(cur)) if ref.get(k, "absent") != cur.get(k, "absent")]


def environment_differences(reference: dict, current: dict) -> list[str]:
    """Library versions, Python and CPU kernel kind that differ from the recording's."""
    ref, cur = reference["environment"], current["environment"]
    out = [f"{k}: recorded {ref.get(k)}, now {cur.get(k)}" for k in ("python", "machine", "cpu_capability")
           if ref.get(k) != cur.get(k)]
    rv, cv = ref.get("versions", {}), cur.get("versions", {})
    out += [f"{k}: recorded {rv.get(k, 'not recorded')}, now {cv.get(k, 'not recorded')}"
            for k in sorted(set(rv) | set(cv)) if rv.get(k) != cv.get(k)]
    return out


def regression_report(reference: dict, current: dict, tol: float = DNC_TOLERANCE,
                      max_lines: int = 40) -> str | None:
    """The failure message when the settings or figures differ from the recording (None when they
    agree): what differs, the version/CPU differences that may explain it, how to re-record."""
    settings, figures = setting_differences(reference, current), figure_differences(reference, current, tol)
    if not settings and not figures:
        return None
    lines = [f"The shortened demo differs from {REFERENCE_PATH} (recorded {reference.get('recorded', '?')}; "
             f"D&C tolerance {tol}, counts exact):"]
    if settings:
        lines += ["settings (demo defaults or mudi.toy.reference.SHORT_DEMO changed):"]
        lines += [f"  {d}" for d in settings]
    if figures:
        lines += ["figures:"] + [f"  {d}" for d in figures[:max_lines]]
        if len(figures) > max_lines:
            lines.append(f"  ... and {len(figures) - max_lines} more")
    lines += _cause_and_fix(reference, current)
    return "\n".join(lines)


def weight_tolerance(reference: dict, current: dict) -> float:
    """:data:`WEIGHT_TOLERANCE` on the CPU kernel kind of the recording, else :data:`OTHER_CPU_WEIGHT_TOLERANCE`."""
    same = reference["environment"].get("cpu_capability") == current["environment"].get("cpu_capability")
    return WEIGHT_TOLERANCE if same else OTHER_CPU_WEIGHT_TOLERANCE


def weight_report(reference: dict, current: dict, tol: float | None = None) -> str | None:
    """The failure message when the LoRA weights moved against the recording (None when they did not);
    ``tol`` defaults to :func:`weight_tolerance`."""
    tol = weight_tolerance(reference, current) if tol is None else tol
    moved = weight_differences(reference, current, tol)
    if not moved:
        return None
    lines = [f"The shortened demo's LoRA weights moved against {REFERENCE_PATH} (relative tolerance {tol}):"]
    lines += [f"  {d}" for d in moved]
    lines += ["Kernel-level drift: the short run's figures may still agree, but the full demo trains "
              f"{DemoConfig().train_steps} steps per LoRA",
              "and amplifies such differences, so its numbers (the README's table) will likely not reproduce here."]
    return "\n".join(lines + _cause_and_fix(reference, current))


def _cause_and_fix(reference: dict, current: dict) -> list[str]:
    env = environment_differences(reference, current)
    lines = ["installed versions / CPU that differ from the recording (a likely cause):"]
    lines += [f"  {d}" for d in env] if env else ["  none: same versions, Python and CPU kernel kind"]
    return lines + [
        "If the change is intended (a new demo default, a deliberate constraints.txt update, another machine",
        f"kind), re-record with `{RECORD_COMMAND}`, commit {REFERENCE_PATH}, and re-measure the README's demo",
        "table with a full `mudi demo`. Otherwise something changed the demo's numbers: find what."]
