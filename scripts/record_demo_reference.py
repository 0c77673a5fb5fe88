#!/usr/bin/env python
"""Record the shortened demo's figures in tests/data/demo_reference.json.

tests/test_demo_regression.py runs the same shortened `mudi demo` (mudi.toy.reference: the demo's
defaults with fewer train steps, images and sampling steps) and compares its figures with this
recording. Re-record deliberately, after a change of the demo's defaults or of constraints.txt,
from the repository root, on an install made with the README's commands:

    python scripts/record_demo_reference.py            # about a minute on one core
    python scripts/record_demo_reference.py --check    # run and compare only, write nothing

The recording names the settings, the library versions (those pinned in constraints.txt), the
Python and the CPU kernel kind it was made with; the test names any that differ when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="where to write the record (default: tests/data/demo_reference.json)")
    p.add_argument("--check", action="store_true", help="run and compare with the recording; write nothing")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mudi.toy import reference

    target = Path(args.out) if args.out else ROOT / reference.REFERENCE_PATH
    packages = reference.read_constraints(ROOT / "constraints.txt")
    with tempfile.TemporaryDirectory(prefix="mudi-demo-reference-") as tmp:
        record = reference.run_short_demo(Path(tmp) / "demo", packages)
    if args.check:
        recorded = json.loads(target.read_text(encoding="utf-8"))
        message = "\n\n".join(filter(None, (reference.regression_report(recorded, record),
                                             reference.weight_report(recorded, record))))
        print(message or f"same settings, figures and LoRA weights as {target}")
        return 1 if message else 0
    installed, pinned = record["environment"]["versions"], packages
    off_pin = [f"{k} {installed[k]} (pinned {v})" for k, v in pinned.items() if installed[k].split("+")[0] != v]
    if off_pin:
        print("warning: recording on versions other than constraints.txt's: " + ", ".join(off_pin), file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_target = target.with_suffix(".json.tmp")
    tmp_target.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp_target.replace(target)
    print(f"{'method':<18} {'mean D&C':>9} {'successes':>10} {'count errors':>13}")
    for name, m in record["methods"].items():
        dnc = "n/a" if m["dnc_mean"] is None else f"{m['dnc_mean']:.3f}"
        print(f"{name:<18} {dnc:>9} {m['successes']:>6} / {m['n_images']:<2} {m['count_errors']:>10}")
    print(f"recorded: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
