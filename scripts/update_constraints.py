#!/usr/bin/env python
"""Update constraints.txt deliberately: re-resolve today's versions of the libraries it pins.

constraints.txt pins the libraries whose kernels and behaviour produce `mudi demo`'s numbers; the
README's install commands use it (`pip install -e . -c constraints.txt`). This script asks pip
(`pip install --dry-run --ignore-installed --report`, nothing is installed) what `pip install -e
".[test]"` resolves today with torch held at its current pin, writes those versions for the names
constraints.txt already pins (pass --add NAME to pin one more), then checks that both README
installs, with and without the test extra, resolve under the new file and pull no torchvision.

    python scripts/update_constraints.py              # rewrite constraints.txt
    python scripts/update_constraints.py --check      # only check that both installs resolve
    python scripts/update_constraints.py --torch 2.14.0

Afterwards: re-record the demo's figures (python scripts/record_demo_reference.py), re-measure the
README's demo table with a full `mudi demo`, and commit the three together. Needs the package index.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
HEADER = """\
# Exact versions of the libraries whose kernels and behaviour produce `mudi demo`'s numbers (the
# README's demo table) and the figures recorded in tests/data/demo_reference.json. The README's
# install commands use it (pip install -e . -c constraints.txt, and the same for ".[test]"), so the
# demo and the tests run on the same versions. `pip install -e .` without it works too; the demo's
# numbers may then differ slightly (LoRA training amplifies tiny kernel differences).
# Updated deliberately, not by hand: python scripts/update_constraints.py resolves today's versions
# of these names for the test extra (gradio's pillow<13 included) with torch held at its pin, then
# re-record (python scripts/record_demo_reference.py) and re-measure the README's demo table.
"""


def _resolve(requirement: str, constraints: Path) -> dict[str, str]:
    """``name -> version`` that pip would install for ``requirement`` under ``constraints`` (dry run)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-c", str(constraints), "-e", requirement]
        subprocess.run(cmd, cwd=ROOT, check=True)
        data = json.loads(report.read_text(encoding="utf-8"))
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in data["install"]}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _check(constraints: Path) -> list[str]:
    """Problems of both README installs under ``constraints``: unresolvable, torchvision pulled, pins missed."""
    from mudi.toy.reference import read_constraints

    pins = {_norm(k): v for k, v in read_constraints(constraints).items()}
    problems = []
    for requirement in (".", ".[test]"):
        try:
            got = _resolve(requirement, constraints)
        except subprocess.CalledProcessError:
            problems.append(f"pip install -e {requirement!r} -c {constraints.name} does not resolve")
            continue
        if "torchvision" in got:
            problems.append(f"pip install -e {requirement!r} pulls torchvision {got['torchvision']}")
        problems += [f"{requirement}: {k} resolves to {got[k]}, pinned {v}" for k, v in pins.items()
                     if k in got and got[k].split("+")[0] != v]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that both installs resolve under constraints.txt")
    p.add_argument("--torch", default=None, help="the torch version to hold (default: the current pin)")
    p.add_argument("--add", action="append", default=[], help="also pin this package (repeatable)")
    args = p.parse_args(argv)
    from mudi.toy.reference import DEFAULT_PACKAGES, read_constraints

    pins = read_constraints(CONSTRAINTS) if CONSTRAINTS.exists() else dict.fromkeys(DEFAULT_PACKAGES, "")
    if not args.check:
        torch_version = args.torch or pins.get("torch") or "2.13.0"
        with tempfile.TemporaryDirectory() as tmp:
            held = Path(tmp) / "torch.txt"
            held.write_text(f"torch=={torch_version}\n", encoding="utf-8")
            resolved = _resolve(".[test]", held)
        names = [*pins, *(n for n in args.add if n not in pins)]
        missing = [n for n in names if _norm(n) not in resolved]
        if missing:
            print(f"not installed by pip install -e '.[test]': {', '.join(missing)}", file=sys.stderr)
            return 1
        lines = [f"{n}=={torch_version if n == 'torch' else resolved[_norm(n)]}" for n in names]
        CONSTRAINTS.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {CONSTRAINTS}:\n" + "\n".join(lines))
    problems = _check(CONSTRAINTS)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("both README installs resolve under constraints.txt" if not problems else "constraints.txt has problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
