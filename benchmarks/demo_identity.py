"""Are two `mudi demo` runs the same? Compares LoRA tensors and metadata (checkout paths
normalised), every generated image byte for byte, and the per-method numbers of summary.json.

Used to check that a refactoring changed nothing:

    mudi demo --out runs/before            # on the old commit
    mudi demo --out runs/after             # on the new one
    python benchmarks/demo_identity.py runs/before runs/after

safetensors writes its header metadata in no fixed order, so files are compared by content
(tensors + metadata), not by hash. Optimizer checkpoints are skipped (they hold RNG states).
Exit status 0 when everything is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def _normalise(meta: dict | None) -> dict:
    """Metadata with absolute checkout paths (…/src/mudi/assets/…) reduced to the part below src/."""
    return {k: re.sub(r"\S*/src/mudi/", "<src>/mudi/", v) for k, v in (meta or {}).items()}


def compare_loras(a: Path, b: Path) -> list[str]:
    import torch
    from safetensors import safe_open

    problems = []
    for f in sorted(a.rglob("*.safetensors")):
        if "optimizer" in f.name:
            continue
        g = b / f.relative_to(a)
        if not g.exists():
            problems.append(f"missing in {b}: {f.relative_to(a)}")
            continue
        x, y = safe_open(str(f), "pt"), safe_open(str(g), "pt")
        if set(x.keys()) != set(y.keys()) or not all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()):
            problems.append(f"tensors differ: {f.relative_to(a)}")
        elif _normalise(x.metadata()) != _normalise(y.metadata()):
            problems.append(f"metadata differs: {f.relative_to(a)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="first demo output folder")
    ap.add_argument("b", type=Path, help="second demo output folder")
    args = ap.parse_args(argv)
    problems = compare_loras(args.a, args.b)
    n_lora = sum(1 for f in args.a.rglob("*.safetensors") if "optimizer" not in f.name)
    images = sorted((args.a / "gen").rglob("*.png"))
    differ = [f for f in images if not (args.b / f.relative_to(args.a)).is_file()
              or (args.b / f.relative_to(args.a)).read_bytes() != f.read_bytes()]
    problems += [f"image differs: {f.relative_to(args.a)}" for f in differ]
    ma = json.loads((args.a / "summary.json").read_text())["methods"]
    mb = json.loads((args.b / "summary.json").read_text())["methods"]
    if ma != mb:
        problems.append("summary.json method numbers differ")
    print(f"{n_lora} LoRA files, {len(images)} images, summary of {len(ma)} methods compared")
    for p in problems[:20]:
        print("  " + p)
    print("identical" if not problems else f"{len(problems)} differences")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
