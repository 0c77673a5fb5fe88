"""Result types of an evaluation and the files they are saved as.

One type per artifact:

- :class:`Evaluation` — one run: per-image :class:`ImageResult` s, the summary and the settings.
  :meth:`Evaluation.save` writes ``scores.csv``, ``per_image.json`` and ``scores.json`` into a
  folder; :meth:`Evaluation.load` reads such a folder back into the same type.
- :class:`Comparison` — several runs side by side (table, pairwise win rates), saved as
  ``comparison.csv`` and ``comparison.json`` by :meth:`Comparison.save`.

The HTML report and the plots are rendered from these types by :mod:`mudi.report`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from mudi.errors import MudiError
from mudi.evaluate.dnc import DncResult
from mudi.io import claim_output_dir, write_json_atomic, write_text_atomic
from mudi.protocols import Detection

CSV_COLUMNS = [
    "name", "k", "subjects", "dnc", "success", "count_ok", "count_error", "n_boxes",
    "identities_ok", "layout_iou", "clip_score", "image_reward", "dino", "clip_i", "clip_t", "identity", "missing",
    "duplicate", "prompt", "fidelity_prompt", "seed", "path", "error",
]
#: Files :meth:`Evaluation.save` writes.
SCORES_JSON, PER_IMAGE_JSON, SCORES_CSV = "scores.json", "per_image.json", "scores.csv"


def rounded(x: float | None, nd: int = 4) -> float | None:
    """``x`` rounded to ``nd`` decimals; ``None`` for ``None`` and non-finite values."""
    return None if x is None or not math.isfinite(float(x)) else round(float(x), nd)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """CSV text with a header row of ``columns``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for row in rows:
        w.writerow(row)
    return buf.getvalue()


@dataclass
class ImageResult:
    """Scores of one image. ``error`` is set (and scores are ``None``) when it could not be scored."""

    name: str
    subjects: list[str]
    prompt: str | None = None
    fidelity_prompt: str | None = None
    path: str | None = None
    dnc: DncResult | None = None
    detections: list[Detection] = field(default_factory=list)
    clip_score: float | None = None
    image_reward: float | None = None
    success: bool | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)
    #: mean IoU of each subject's matched box with its box in the sidecar's layout (None if n/a)
    layout_iou: float | None = None
    #: DINO / CLIP-I (whole image vs the references), CLIP-T (raw cosine to the fidelity prompt)
    dino: float | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    #: detect-then-compare identity score (mean over subjects; per subject, 0 when absent)
    identity: float | None = None
    identity_per_subject: dict = field(default_factory=dict)
    #: subjects without a box, and boxes beyond the first of a subject
    missing: int | None = None
    duplicate: int | None = None

    @property
    def k(self) -> int:
        """Number of subjects the image should show."""
        return len(self.subjects)

    @property
    def score(self) -> float | None:
        """The image's D&C (``None`` when it was not scored)."""
        return None if self.dnc is None else float(self.dnc.score)

    def to_dict(self) -> dict:
        """JSON-ready dict (one entry of ``per_image.json``)."""
        d = {
            "name": self.name,
            "path": self.path,
            "prompt": self.prompt,
            "fidelity_prompt": self.fidelity_prompt,
            "subjects": list(self.subjects),
            "k": self.k,
            "success": self.success,
            "layout_iou": rounded(self.layout_iou),
            "clip_score": rounded(self.clip_score),
            "image_reward": rounded(self.image_reward),
            "dino": rounded(self.dino),
            "clip_i": rounded(self.clip_i),
            "clip_t": rounded(self.clip_t),
            "identity": rounded(self.identity),
            "identity_per_subject": dict(self.identity_per_subject),
            "missing": self.missing,
            "duplicate": self.duplicate,
            "error": self.error,
            "seed": self.meta.get("seed"),
            "detections": [
                {"box": [round(float(v), 2) for v in d.box], "score": round(float(d.score), 4), "label": int(d.label)}
                for d in self.detections
            ],
        }
        if self.dnc is not None:
            d.update(self.dnc.to_dict())
        else:
            d.update({"dnc": None, "count_ok": None, "count_error": None, "n_boxes": None, "identities_ok": None})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageResult":
        """The inverse of :meth:`to_dict` (numbers as rounded there)."""
        dets = [Detection(tuple(x["box"]), float(x["score"]), int(x["label"])) for x in d.get("detections") or []]
        meta = {"seed": d["seed"]} if d.get("seed") is not None else {}
        return cls(d["name"], list(d.get("subjects") or []), d.get("prompt"), d.get("fidelity_prompt"), d.get("path"),
                   DncResult.from_dict(d) if d.get("dnc") is not None else None, dets, d.get("clip_score"),
                   d.get("image_reward"), d.get("success"), d.get("error"), meta, d.get("layout_iou"),
                   d.get("dino"), d.get("clip_i"), d.get("clip_t"), d.get("identity"),
                   dict(d.get("identity_per_subject") or {}), d.get("missing"), d.get("duplicate"))

    def to_row(self) -> dict:
        """One row of ``scores.csv``."""
        d = self.to_dict()
        row = {c: d.get(c) for c in CSV_COLUMNS}
        row["subjects"] = "+".join(self.subjects)
        return row


@dataclass
class Evaluation:
    """Per-image results, the summary and the settings of one run.

    ``path`` is the folder it was saved to or loaded from (``None`` for an unsaved one).
    """

    results: list[ImageResult]
    summary: dict
    settings: dict
    label: str = "run"
    path: Path | None = None

    @property
    def dnc_values(self) -> list[float]:
        """D&C of every scored image, in order."""
        return [r.score for r in self.results if r.score is not None]

    @property
    def dnc_by_name(self) -> dict[str, float]:
        """D&C by image name, rounded as in ``per_image.json`` (so saved and loaded runs agree)."""
        return {r.name: round(r.score, 6) for r in self.results if r.score is not None}

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``scores.csv``, ``per_image.json`` and ``scores.json`` into ``out``.

        Raises:
            MudiError: ``out`` already has content and ``overwrite`` is false.
        """
        out = claim_output_dir(out, overwrite=overwrite, what="evaluation", option="", create=True)
        write_text_atomic(out / SCORES_CSV, csv_text([r.to_row() for r in self.results], CSV_COLUMNS))
        write_json_atomic(out / PER_IMAGE_JSON, [r.to_dict() for r in self.results])
        write_json_atomic(out / SCORES_JSON, {"label": self.label, "summary": self.summary, "settings": self.settings})
        self.path = out
        return out

    @classmethod
    def load(cls, folder: str | Path, label: str | None = None) -> "Evaluation":
        """Read a folder written by :meth:`save` (``scores.json`` + ``per_image.json``).

        Raises:
            MudiError: no ``scores.json`` there, or it is not an evaluation summary.
        """
        folder = Path(folder)
        sj, pj = folder / SCORES_JSON, folder / PER_IMAGE_JSON
        if not sj.exists():
            raise MudiError(f"{folder}: no {SCORES_JSON}; is this a `mudi evaluate` output folder?")
        try:
            scores = json.loads(sj.read_text(encoding="utf-8"))
            per = json.loads(pj.read_text(encoding="utf-8")) if pj.exists() else []
            summary = scores["summary"]
            results = [ImageResult.from_dict(d) for d in per]
        except (ValueError, KeyError, TypeError) as exc:
            raise MudiError(f"{sj}: not a mudi evaluation ({exc}). Re-run `mudi evaluate`.") from None
        return cls(results, summary, scores.get("settings", {}), label or scores.get("label") or folder.name, folder)


@dataclass
class Comparison:
    """Runs side by side: one table row per run and pairwise win rates (see :func:`~mudi.evaluate.compare.compare_runs`)."""

    runs: list[Evaluation]
    table: list[dict]
    win_rate: dict[str, dict[str, float | None]]
    n_shared: dict[str, dict[str, int]]

    def to_dict(self) -> dict:
        """The content of ``comparison.json``."""
        return {"runs": self.table, "win_rate": self.win_rate, "n_shared_images": self.n_shared}

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``comparison.csv`` and ``comparison.json`` into the existing folder ``out``."""
        out = Path(out)
        cols = list(dict.fromkeys(k for row in self.table for k in row))
        return {
            "csv": write_text_atomic(out / "comparison.csv", csv_text(self.table, cols)),
            "json": write_json_atomic(out / "comparison.json", self.to_dict()),
        }


__all__ = ["CSV_COLUMNS", "Comparison", "Evaluation", "ImageResult", "csv_text", "rounded"]
