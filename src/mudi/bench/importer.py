"""Images made by any other tool, brought into a bench run (:func:`import_images`).

The folder holds the images and a ``prompts.jsonl`` (or ``prompts.csv``) saying, per image, the
prompt it was made from and the subjects it should show:

    {"file": "uno_0001.png", "prompt": "a dog and a dog in the jungle", "subjects": ["a", "b"]}

``subjects`` are keys (or identifiers) of the subject set; without them the identifiers found in
the prompt decide. In ``prompts.csv`` the columns are ``file,prompt,subjects`` with keys joined
by ``+`` (``a+b``). Every line is checked against the subject set before anything is written;
then each image is copied as ``NNNN.png`` with a ``NNNN.json`` sidecar (the layout of a
``mudi generate`` folder), so ``mudi evaluate`` reads it like any run. Images already imported
are kept (a stopped import continues).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mudi.errors import MudiError
from mudi.evaluate.folder import resolve_subject_keys
from mudi.io import load_rgb, save_image_atomic, write_json_atomic

PROMPT_FILES = ("prompts.jsonl", "prompts.csv")


def read_prompt_table(folder: str | Path) -> list[dict]:
    """The rows of ``prompts.jsonl`` / ``prompts.csv`` in ``folder``: ``{file, prompt, subjects}``.

    Raises:
        MudiError: no prompt file, or a line that cannot be read.
    """
    folder = Path(folder)
    found = [folder / n for n in PROMPT_FILES if (folder / n).is_file()]
    if not found:
        raise MudiError(f"--images {folder}: no prompts.jsonl or prompts.csv saying each image's prompt and "
                        'subjects, e.g. {"file": "0001.png", "prompt": "a dog and a cat on the beach", '
                        '"subjects": ["a", "b"]}.')
    path, rows = found[0], []
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"line {n} is not a JSON object")
                    rows.append(row)
        else:
            with path.open(encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    subj = (row.get("subjects") or "").strip()
                    rows.append({**row, "subjects": [s for s in subj.split("+") if s] or None})
    except (ValueError, UnicodeDecodeError) as exc:
        raise MudiError(f"{path}: unreadable ({exc}).") from None
    for n, row in enumerate(rows, 1):
        if not row.get("file") or not isinstance(row.get("prompt", ""), str):
            raise MudiError(f"{path}: entry {n} needs \"file\" (and a \"prompt\" string).")
    if not rows:
        raise MudiError(f"{path}: no images listed.")
    return rows


def plan_import(folder: str | Path, subject_set) -> list[tuple[Path, dict]]:
    """Each image's source path and sidecar, checked against ``subject_set`` (nothing written).

    Raises:
        MudiError: a missing image, or subjects the set does not have (the first few are listed).
    """
    folder = Path(folder)
    plan, problems = [], []
    for row in read_prompt_table(folder):
        src = folder / str(row["file"])
        prompt = row.get("prompt") or None
        try:
            if not src.is_file():
                raise MudiError(f"{src}: no such image.")
            keys = resolve_subject_keys(subject_set, prompt, row.get("subjects"), f"{row['file']}: ")
        except MudiError as exc:
            problems.append(str(exc))
            continue
        plan.append((src, {"prompt": prompt, "subjects": keys, "source": str(src), "imported": True,
                           "seed": row.get("seed")}))
    if problems:
        more = f"\n(and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MudiError(f"--images {folder}: these images cannot be imported:\n" + "\n".join(problems[:3]) + more)
    return plan


def import_images(plan: list[tuple[Path, dict]], out: str | Path) -> Path:
    """Copy the planned images into ``out`` as ``NNNN.png`` + ``NNNN.json`` (existing pairs kept)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (src, meta) in enumerate(plan):
        png, side = out / f"{i:04d}.png", out / f"{i:04d}.json"
        if png.exists() and side.exists():
            continue
        save_image_atomic(load_rgb(src), png)
        write_json_atomic(side, meta)
    return out


__all__ = ["PROMPT_FILES", "import_images", "plan_import", "read_prompt_table"]
