"""Evaluate generated multi-subject images: Detect-and-Compare, text fidelity, success rate.

Two entry points:

- :func:`evaluate_images` — the file-free API (used by the demo): images (PIL or paths) with a
  prompt and/or the subject keys each shows, a :class:`~mudi.subjects.SubjectSet`, any
  :class:`~mudi.protocols.Detector` and :class:`~mudi.protocols.Embedder`, and optionally a
  :class:`~mudi.evaluate.textfid.ClipScorer`. Returns an :class:`Evaluation` (per-image results +
  summary).
- :func:`evaluate_folder` — the same over a folder written by ``mudi generate`` (``NNNN.png`` +
  ``NNNN.json`` sidecars); images without a sidecar need ``prompt=`` (and/or ``subject_keys=``).

:meth:`Evaluation.write` saves ``scores.csv``, ``per_image.json``, ``scores.json`` (summary)
and ``report.html``. :func:`compare_runs` puts several runs (DreamBooth, Cut-Mix, MuDI, …)
side by side.

**Success rate.** An image is a *success* when the detector finds exactly one box per subject
(no count error) and its D&C is at least ``success_threshold`` (default
:data:`DEFAULT_SUCCESS_THRESHOLD` = 0.8). Why 0.8: on the paper's worked examples a clean image
scores 0.93, a *slightly* mixed one 0.86, a fully mixed subject (a box equally similar to both
subjects, row ≈ [0.5, 0.5]) about 0.64, and one subject drawn twice 0.31. A threshold of 0.8
accepts the clean and barely-mixed images, rejects visible mixing and duplicates, and leaves
~0.1 of slack below a clean score for the pose/crop noise of real generations (with DINOv2
the cross-photo similarities are lower than DreamSim's, so a clean image sits lower too).
It approximates the paper's human criterion "every subject present and none mixed"; change it
with ``success_threshold=`` / ``--success-threshold``. The threshold-free check
``identities_ok`` (every matched box is closest to its own subject) is reported alongside.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from mudi import __version__
from mudi.evaluate.dnc import (
    DEFAULT_DETECTION_THRESHOLD,
    NORMS,
    DncResult,
    crop_box,
    detect_and_compare,
    detect_and_compare_embeddings,
)
from mudi.evaluate.embed import ReferenceEmbeddings
from mudi.errors import MudiError
from mudi.io import list_images, load_rgb, prepare_output_dir, write_json_atomic, write_text_atomic
from mudi.protocols import Detection, Detector, Embedder

#: Minimum D&C of a successful image (see the module docstring for the reasoning).
DEFAULT_SUCCESS_THRESHOLD = 0.8
DEFAULT_BATCH_SIZE = 8
#: Files ``mudi generate`` writes beside the images that are not generations themselves.
ARTIFACT_PATTERNS = (r"^contact_sheet", r"_sheet$", r"_init$", r"_layout$", r"_grid$", r"_boxes$", r"^grid$")

CSV_COLUMNS = [
    "name", "k", "subjects", "dnc", "success", "count_ok", "count_error", "n_boxes",
    "identities_ok", "layout_iou", "clip_score", "image_reward", "prompt", "fidelity_prompt", "seed", "path", "error",
]


# ============================================================================ data types

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

    @property
    def k(self) -> int:
        return len(self.subjects)

    @property
    def score(self) -> float | None:
        return None if self.dnc is None else float(self.dnc.score)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "path": self.path,
            "prompt": self.prompt,
            "fidelity_prompt": self.fidelity_prompt,
            "subjects": list(self.subjects),
            "k": self.k,
            "success": self.success,
            "layout_iou": _r(self.layout_iou),
            "clip_score": _r(self.clip_score),
            "image_reward": _r(self.image_reward),
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

    def to_row(self) -> dict:
        d = self.to_dict()
        row = {c: d.get(c) for c in CSV_COLUMNS}
        row["subjects"] = "+".join(self.subjects)
        return row


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), nd)


@dataclass
class Evaluation:
    """Per-image results, the summary and the settings of one run.

    ``thumbnails`` maps image names to annotated JPEG thumbnails (boxes drawn) for the report;
    it is filled during evaluation and not saved except inside report.html.
    """

    results: list[ImageResult]
    summary: dict
    settings: dict
    label: str = "run"
    thumbnails: dict[str, bytes] = field(default_factory=dict, repr=False)

    def write(self, out: str | Path, *, overwrite: bool = False, report: bool = True,
              comparison: "Comparison | None" = None, comparison_links: dict[str, str] | None = None) -> Path:
        """Write scores.csv, per_image.json, scores.json and report.html into ``out``."""
        out = prepare_output_dir(out, overwrite=overwrite, what="evaluation")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in self.results:
            w.writerow(r.to_row())
        write_text_atomic(out / "scores.csv", buf.getvalue())
        write_json_atomic(out / "per_image.json", [r.to_dict() for r in self.results])
        write_json_atomic(out / "scores.json", {"label": self.label, "summary": self.summary, "settings": self.settings})
        if report:
            from mudi.report.html import render_run_report

            write_text_atomic(out / "report.html", render_run_report(self, comparison=comparison,
                                                                       comparison_links=comparison_links))
        return out

    @property
    def dnc_values(self) -> list[float]:
        return [r.score for r in self.results if r.score is not None]


# ============================================================================ D&C engine

class DetectAndCompare:
    """Detect-and-Compare over batches of images for one subject set.

    Reference embeddings are computed once per subject (:class:`~mudi.evaluate.embed.ReferenceEmbeddings`)
    and S_GT once per subject combination; the crops of a whole batch of images go through the
    embedder together.

    Args:
        subject_set: the subjects (reference photos, classes).
        detector, embedder: any implementations of the protocols.
        threshold: detection score threshold (paper: 0.4).
        norm: ``"fro"`` (default) or ``"spectral"``.
        queries: optional ``{key: text}`` detection queries; default the subject's class
            (identifier removed), e.g. "corgi". Identical queries are asked once.
        reference_mode: ``"whole"`` (paper) or ``"masked"``; see :class:`~mudi.evaluate.embed.ReferenceEmbeddings`.
        diagnose_count_errors: also embed the boxes of count-error images (at most
            ``diagnose_max_boxes``) so their box/subject similarities can be inspected; the
            score of such an image is 0 regardless.
    """

    def __init__(self, subject_set, detector: Detector, embedder: Embedder, *,
                 threshold: float = DEFAULT_DETECTION_THRESHOLD, norm: str = "fro",
                 queries: dict[str, str] | None = None, reference_mode: str = "whole",
                 references: ReferenceEmbeddings | None = None, diagnose_count_errors: bool = True,
                 diagnose_max_boxes: int = 6):
        if norm not in NORMS:
            raise MudiError(f"norm {norm!r} is unknown; choose one of {', '.join(NORMS)}.")
        if not 0.0 <= float(threshold) <= 1.0:
            raise MudiError(f"detection threshold must be in [0, 1], got {threshold}.")
        self.subject_set = subject_set
        self.detector = detector
        self.embedder = embedder
        self.threshold = float(threshold)
        self.norm = norm
        self.queries = dict(queries or {})
        self.diagnose_count_errors = diagnose_count_errors
        self.diagnose_max_boxes = int(diagnose_max_boxes)
        self.references = references or ReferenceEmbeddings(subject_set, embedder, mode=reference_mode)

    def query(self, key: str) -> str:
        return self.queries.get(key) or self.subject_set.subject(key).cls

    def score(self, images: Sequence[Image.Image], subjects: Sequence[Sequence[str]]
              ) -> list[tuple[DncResult, list[Detection]]]:
        """D&C of each image against its own subject keys (lists may differ between images)."""
        if len(images) != len(subjects):
            raise ValueError(f"{len(images)} images but {len(subjects)} subject lists")
        all_keys = [k for ks in subjects for k in ks]
        self.references.ensure(all_keys)
        detections: list[list[Detection] | None] = [None] * len(images)
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, ks in enumerate(subjects):
            groups[tuple(ks)].append(i)
        for ks, idx in groups.items():
            queries = list(dict.fromkeys(self.query(k) for k in ks))
            dets = self.detector.detect([images[i] for i in idx], queries, self.threshold)
            if len(dets) != len(idx):
                raise MudiError(f"detector {self.detector!r} returned {len(dets)} results for {len(idx)} images.")
            for i, d in zip(idx, dets):
                detections[i] = [x for x in d if x.score >= self.threshold]
        # Embed the crops of all images in one embedder call. Images with a count error are
        # embedded too (up to `diagnose_max_boxes` boxes) so the report can show *which*
        # subject is missing or duplicated; their score stays 0.
        crops: list[Image.Image] = []
        spans: list[tuple[int, int] | None] = []
        for i, (im, ks) in enumerate(zip(images, subjects)):
            dets = detections[i] or []
            if dets and (len(dets) == len(ks) or (self.diagnose_count_errors and len(dets) <= self.diagnose_max_boxes)):
                spans.append((len(crops), len(crops) + len(dets)))
                crops.extend(crop_box(im, d.box) for d in dets)
            else:
                spans.append(None)
        emb = np.asarray(self.embedder.embed(crops), dtype=np.float32) if crops else None
        if emb is not None and emb.shape[0] != len(crops):
            raise MudiError(f"embedder {self.embedder!r} returned {emb.shape[0]} rows for {len(crops)} crops.")
        out = []
        for i, ks in enumerate(subjects):
            dets = detections[i] or []
            refs = self.references.for_keys(ks)
            gt = self.references.ground_truth(ks)
            span = spans[i]
            boxes = [d.box for d in dets]
            if span is not None:
                res = detect_and_compare_embeddings(emb[span[0]:span[1]], refs, norm=self.norm, s_gt=gt, boxes=boxes)
            else:  # count error with too many (or no) boxes: no similarities
                res = detect_and_compare(np.zeros((0, len(ks))), gt, norm=self.norm)
                res.boxes = [tuple(float(v) for v in b) for b in boxes]
                res.n_boxes = len(boxes)
            out.append((res, dets))
        return out


# ============================================================================ items

@dataclass
class EvalItem:
    """One image to evaluate: an image (or a path to load lazily) and what it should show."""

    name: str
    subjects: list[str]
    prompt: str | None = None
    image: Image.Image | None = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None

    def load(self) -> Image.Image:
        if self.image is not None:
            return self.image if self.image.mode == "RGB" else self.image.convert("RGB")
        if self.path is None:
            raise MudiError(f"{self.name}: no image given.")
        return load_rgb(self.path)


def _subject_keys(subject_set, prompt: str | None, keys: Sequence[str] | None, where: str) -> list[str]:
    """Resolve the subject keys an image shows: explicit keys (keys, identifiers or phrases
    accepted) or the identifiers found in the prompt."""
    if keys:
        out = []
        for k in keys:
            try:
                out.append(subject_set.subject(str(k)).key)
            except MudiError:
                known = ", ".join(f"{s.key} ({s.phrase})" for s in subject_set)
                raise MudiError(
                    f"{where}names subject {k!r}, which is not in the subject set "
                    f"{subject_set.root or '(in memory)'} (it has {known}). Pass the subject set the "
                    "images were generated with (--subjects)."
                ) from None
        if len(set(out)) != len(out):
            raise MudiError(f"{where}names a subject twice: {list(keys)}.")
        return out
    if prompt is None:
        raise MudiError(f"{where}no prompt and no subject keys: cannot tell which subjects it shows.")
    found = [s.key for s in subject_set.subjects_in_prompt(prompt)]
    if not found:
        idents = ", ".join(s.identifier for s in subject_set)
        raise MudiError(
            f"{where}the prompt {prompt!r} contains none of the identifiers of the subject set "
            f"{subject_set.root or '(in memory)'} ({idents}). Pass the subject set the images were "
            "generated with, or say which subjects it shows (--subject-keys)."
        )
    return found


def make_items(images: Sequence[Image.Image | str | Path], subject_set, *,
               prompts: Sequence[str | None] | str | None = None,
               subjects: Sequence[Sequence[str] | None] | None = None,
               names: Sequence[str] | None = None) -> list[EvalItem]:
    """Build :class:`EvalItem` s from images plus prompts and/or subject keys (one per image)."""
    n = len(images)
    if isinstance(prompts, str) or prompts is None:
        prompts = [prompts] * n
    if subjects is None:
        subjects = [None] * n
    if len(prompts) != n or len(subjects) != n:
        raise MudiError(f"{n} images but {len(prompts)} prompts and {len(subjects)} subject lists.")
    items = []
    for i, im in enumerate(images):
        name = names[i] if names else (Path(im).stem if isinstance(im, (str, Path)) else f"{i:04d}")
        keys = _subject_keys(subject_set, prompts[i], subjects[i], f"image {name}: ")
        item = EvalItem(name, keys, prompts[i])
        if isinstance(im, (str, Path)):
            item.path = Path(im)
        elif isinstance(im, Image.Image):
            item.image = im
        else:
            item.error = f"not an image: {type(im).__name__}"
        items.append(item)
    return items


def _is_artifact(path: Path) -> bool:
    return any(re.search(p, path.stem) for p in ARTIFACT_PATTERNS)


def collect_folder(images_dir: str | Path, subject_set, *, prompt: str | None = None,
                   subject_keys: Sequence[str] | None = None) -> list[EvalItem]:
    """Read a ``mudi generate`` folder: images + sidecar JSONs, checked against the subject set.

    Images without a sidecar use ``prompt`` / ``subject_keys``; if neither is given that is an
    error (raised before anything is computed). A sidecar naming a subject the set does not
    have, or an identifier that differs from the set's, is an error too. A sidecar that is not
    valid JSON makes only that image an error entry.
    """
    images_dir = Path(images_dir)
    files = [p for p in list_images(images_dir) if not _is_artifact(p)]
    if not files:
        raise MudiError(f"{images_dir}: no images found (expected NNNN.png files from `mudi generate`).")
    items: list[EvalItem] = []
    missing: list[str] = []
    problems: list[str] = []
    for p in files:
        side = p.with_suffix(".json")
        if not side.exists():
            if prompt is None and not subject_keys:
                missing.append(p.name)
                continue
            try:
                keys = _subject_keys(subject_set, prompt, subject_keys, "")
            except MudiError as exc:
                raise MudiError(f"{p} has no sidecar JSON and --prompt/--subject-keys do not work: {exc}") from None
            items.append(EvalItem(p.stem, keys, prompt, path=p, meta={"sidecar": None}))
            continue
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            items.append(EvalItem(p.stem, [], None, path=p, error=f"{side.name}: unreadable sidecar ({exc})"))
            continue
        sp = meta.get("prompt")
        sp = sp if isinstance(sp, str) else prompt
        try:
            keys = _subject_keys(subject_set, sp, meta.get("subjects") or subject_keys, f"{side}: ")
            phrases = meta.get("phrases")
            if isinstance(phrases, list) and meta.get("subjects") and len(phrases) == len(keys):
                for key, ph in zip(keys, phrases):
                    subj = subject_set.subject(key)
                    if isinstance(ph, str) and " ".join(ph.lower().split()) != " ".join(subj.phrase.lower().split()):
                        raise MudiError(
                            f"{side}: subject {key!r} is {ph!r} in the sidecar but {subj.phrase!r} in the subject "
                            f"set {subject_set.root or '(in memory)'}. Pass the subject set the images were "
                            "generated with" + (f" (sidecar says: {meta['subject_set']})." if meta.get("subject_set") else ".")
                        )
        except MudiError as exc:
            problems.append(str(exc))
            continue
        items.append(EvalItem(p.stem, keys, sp, path=p, meta=meta))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise MudiError(
            f"{images_dir}: {len(missing)} image(s) have no sidecar JSON: {', '.join(missing[:5])}{more}. "
            "Images from `mudi generate` come with NNNN.json sidecars; for other images pass --prompt "
            "(with the subject identifiers) and/or --subject-keys to say what they show."
        )
    if problems:
        more = f"\n(and {len(problems) - 3} more such problems)" if len(problems) > 3 else ""
        raise MudiError("the images do not match the subject set:\n" + "\n".join(problems[:3]) + more)
    return items


# ============================================================================ evaluation

def _thumbnail(image: Image.Image, result: ImageResult, subject_set, side: int = 320) -> bytes:
    from mudi.viz import draw_boxes

    # Small generations (64 px test images) are scaled up too, so boxes and labels stay legible.
    scale = side / max(image.size)
    thumb = image.convert("RGB").resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.BICUBIC if scale < 1 else Image.NEAREST)
    colors = [(255, 0, 64), (0, 140, 255), (0, 180, 60), (255, 150, 0), (170, 0, 255), (0, 200, 200)]
    dnc = result.dnc
    if dnc is not None and dnc.matched is not None and dnc.boxes:
        for k, i in enumerate(dnc.matched):
            b = [v * scale for v in dnc.boxes[i]]
            label = subject_set.subject(result.subjects[k]).cls
            thumb = draw_boxes(thumb, [b], [label], color=colors[k % len(colors)], width=2)
    elif dnc is not None and dnc.boxes:
        thumb = draw_boxes(thumb, [[v * scale for v in b] for b in dnc.boxes],
                           [f"{d.score:.2f}" for d in result.detections], color=(128, 128, 128), width=2)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def layout_iou(res: ImageResult) -> float | None:
    """Mean IoU between each subject's matched box and its planned box in the sidecar layout
    (``layout: [{key, box}]`` from ``mudi generate``): did each subject land where the layout
    put it? ``None`` without a layout or on a count error."""
    layout = res.meta.get("layout")
    boxes = res.dnc.matched_boxes if res.dnc is not None else None
    if not isinstance(layout, list) or not boxes:
        return None
    planned = {}
    for entry in layout:
        if isinstance(entry, dict) and isinstance(entry.get("box"), (list, tuple)) and len(entry["box"]) == 4:
            planned[str(entry.get("key"))] = [float(v) for v in entry["box"]]
    ious = [_iou(b, planned[k]) for k, b in zip(res.subjects, boxes) if k in planned]
    return float(np.mean(ious)) if ious else None


def evaluate_items(items: Sequence[EvalItem], subject_set, detector: Detector, embedder: Embedder, *,
                   clip=None, image_reward=None, threshold: float = DEFAULT_DETECTION_THRESHOLD,
                   success_threshold: float = DEFAULT_SUCCESS_THRESHOLD, norm: str = "fro",
                   batch_size: int = DEFAULT_BATCH_SIZE, queries: dict[str, str] | None = None,
                   reference_mode: str = "whole", engine: DetectAndCompare | None = None,
                   progress: bool = False, thumbnails: bool = True, label: str = "run",
                   settings: dict | None = None) -> Evaluation:
    """Score :class:`EvalItem` s in batches; a bad image becomes an error entry, never an abort."""
    if not 0.0 <= float(success_threshold) <= 1.0:
        raise MudiError(f"success threshold must be in [0, 1], got {success_threshold}.")
    if batch_size < 1:
        raise MudiError(f"batch size must be >= 1, got {batch_size}.")
    engine = engine or DetectAndCompare(subject_set, detector, embedder, threshold=threshold, norm=norm,
                                        queries=queries, reference_mode=reference_mode)
    results: list[ImageResult] = []
    thumbs: dict[str, bytes] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"evaluate {label}", unit="img", file=sys.stderr)
    n_ok = 0
    t0 = time.perf_counter()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        loaded: list[tuple[EvalItem, Image.Image, ImageResult]] = []
        for it in chunk:
            res = ImageResult(it.name, list(it.subjects), it.prompt,
                              subject_set.strip_identifiers(it.prompt) if it.prompt else None,
                              str(it.path) if it.path else None, meta=dict(it.meta))
            results.append(res)
            if it.error:
                res.error = it.error
                continue
            try:
                loaded.append((it, it.load(), res))
            except MudiError as exc:
                res.error = str(exc)
            except Exception as exc:  # anything PIL throws at a broken file
                res.error = f"{it.name}: unreadable image ({exc.__class__.__name__}: {exc})"
        _score_batch(engine, loaded, clip, image_reward, n_ok == 0)
        for it, im, res in loaded:
            if res.error is None:
                res.success = bool(res.dnc.count_ok and res.dnc.score >= success_threshold)
                res.layout_iou = layout_iou(res)
                n_ok += 1
                if thumbnails:
                    thumbs[res.name] = _thumbnail(im, res, subject_set)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    s = dict(settings or {})
    s.update({
        "detection_threshold": engine.threshold,
        "success_threshold": float(success_threshold),
        "norm": engine.norm,
        "reference_mode": engine.references.mode,
        "queries": {k: engine.query(k) for k in subject_set.keys},
        "detector": s.get("detector") or repr(detector),
        "embedder": s.get("embedder") or repr(embedder),
        "clip": s.get("clip") or (repr(clip) if clip is not None else None),
        "image_reward": repr(image_reward) if image_reward is not None else None,
        "subject_set": str(subject_set.root) if subject_set.root else None,
        "subjects": {s_.key: s_.phrase for s_ in subject_set},
        "mudi_version": __version__,
        "seconds": round(elapsed, 2),
    })
    return Evaluation(results, summarize(results, success_threshold), s, label, thumbs)


def _score_batch(engine: DetectAndCompare, loaded, clip, image_reward, nothing_worked_yet: bool) -> None:
    """Score loaded images; on a failure retry one by one so one bad image cannot stop the run.

    If every image fails before any image of the run has worked, the problem is the setup (a
    model that does not fit, …) rather than the images, and it is raised as a MudiError.
    """
    if not loaded:
        return
    try:
        _score_group(engine, loaded, clip, image_reward)
        return
    except MudiError:
        raise
    except Exception:
        pass
    failures: list[BaseException] = []
    for one in loaded:
        try:
            _score_group(engine, [one], clip, image_reward)
        except MudiError:
            raise
        except Exception as exc:
            failures.append(exc)
            one[2].error = f"{one[0].name}: scoring failed ({exc.__class__.__name__}: {exc})"
    if nothing_worked_yet and len(failures) == len(loaded):
        exc = failures[0]
        raise MudiError(
            f"scoring failed on every image of the first batch ({exc.__class__.__name__}: {exc}); "
            "check that the detector, embedder and CLIP models are what you meant."
        ) from exc


def _score_group(engine: DetectAndCompare, loaded, clip, image_reward) -> None:
    ims = [im for _, im, _ in loaded]
    dnc = engine.score(ims, [res.subjects for _, _, res in loaded])
    texts = [res.fidelity_prompt for _, _, res in loaded]
    with_text = [i for i, t in enumerate(texts) if t]
    clip_scores = ir_scores = None
    if clip is not None and with_text:
        clip_scores = clip.score([ims[i] for i in with_text], [texts[i] for i in with_text])
    if image_reward is not None and with_text:
        ir_scores = image_reward.score([ims[i] for i in with_text], [texts[i] for i in with_text])
    for j, (_, _, res) in enumerate(loaded):
        res.dnc, res.detections = dnc[j]
    for n, i in enumerate(with_text):
        if clip_scores is not None:
            loaded[i][2].clip_score = float(clip_scores[n])
        if ir_scores is not None:
            loaded[i][2].image_reward = float(ir_scores[n])


def evaluate_images(images: Sequence[Image.Image | str | Path], subject_set, detector: Detector,
                    embedder: Embedder, clip=None, *, prompts: Sequence[str | None] | str | None = None,
                    subjects: Sequence[Sequence[str] | None] | None = None, names: Sequence[str] | None = None,
                    **kwargs) -> Evaluation:
    """Evaluate in-memory images (or image paths) — the file-free API.

    Args:
        images: PIL images or paths.
        subject_set: the :class:`~mudi.subjects.SubjectSet` the images personalize.
        detector, embedder: protocol implementations (OWLv2 + DINOv2, the toy world's, fakes…).
        clip: optional :class:`~mudi.evaluate.textfid.ClipScorer` (or anything with ``score(images, texts)``).
        prompts: one prompt per image (or one for all); the subjects an image shows are the
            identifiers found in it unless ``subjects`` says otherwise.
        subjects: per image, the subject keys it shows, in order.
        names: per-image names for the outputs.
        **kwargs: see :func:`evaluate_items` (threshold, success_threshold, norm, batch_size, …).

    Returns:
        :class:`Evaluation` with ``results`` (one :class:`ImageResult` per image, same order) and
        ``summary`` (see :func:`summarize`).
    """
    items = make_items(images, subject_set, prompts=prompts, subjects=subjects, names=names)
    return evaluate_items(items, subject_set, detector, embedder, clip=clip, **kwargs)


def evaluate_folder(images_dir: str | Path, subject_set, detector: Detector, embedder: Embedder, clip=None, *,
                    prompt: str | None = None, subject_keys: Sequence[str] | None = None,
                    **kwargs) -> Evaluation:
    """Evaluate a ``mudi generate`` output folder (images + sidecar JSONs); see :func:`evaluate_images`."""
    items = collect_folder(images_dir, subject_set, prompt=prompt, subject_keys=subject_keys)
    settings = dict(kwargs.pop("settings", None) or {})
    settings["images"] = str(images_dir)
    kwargs.setdefault("label", Path(images_dir).name)
    return evaluate_items(items, subject_set, detector, embedder, clip=clip, settings=settings, **kwargs)


# ============================================================================ summary

def _stats(values: Sequence[float]) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "std": None, "sem": None}
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {"mean": round(float(a.mean()), 6), "std": round(std, 6), "sem": round(std / math.sqrt(a.size), 6)}


def _group_summary(rs: Sequence[ImageResult]) -> dict:
    scored = [r for r in rs if r.dnc is not None]
    n = len(scored)
    dnc = _stats([r.dnc.score for r in scored])
    ok = [r for r in scored if r.dnc.count_ok]
    clip = _stats([r.clip_score for r in scored if r.clip_score is not None])
    ir = _stats([r.image_reward for r in scored if r.image_reward is not None])
    frac = (lambda c: round(c / n, 6) if n else None)
    p_succ = sum(1 for r in scored if r.success) / n if n else 0.0
    return {
        "n_images": len(rs),
        "n_scored": n,
        "n_errors": sum(1 for r in rs if r.error),
        "dnc_mean": dnc["mean"],
        "dnc_std": dnc["std"],
        "dnc_sem": dnc["sem"],
        "dnc_mean_count_ok": _stats([r.dnc.score for r in ok])["mean"],
        "success_rate": frac(sum(1 for r in scored if r.success)),
        "success_rate_sem": round(math.sqrt(p_succ * (1 - p_succ) / n), 6) if n else None,
        "n_success": sum(1 for r in scored if r.success),
        "count_error_rate": frac(n - len(ok)),
        "n_missing": sum(1 for r in scored if r.dnc.count_error == "missing"),
        "n_duplicate": sum(1 for r in scored if r.dnc.count_error == "duplicate"),
        "identities_ok_rate": frac(sum(1 for r in scored if r.dnc.identities_ok)),
        "layout_iou_mean": _stats([r.layout_iou for r in scored if r.layout_iou is not None])["mean"],
        "clip_score_mean": clip["mean"],
        "clip_score_std": clip["std"],
        "image_reward_mean": ir["mean"],
    }


def _per_subject(results: Sequence[ImageResult]) -> dict:
    """Per subject, over right-count images: mean similarity of its matched box to its own
    references (``own``, compare with ``gt_self`` = S_GT[k, k]) and to the most similar *other*
    subject (``other``, compare with ``gt_other``). A subject whose ``other`` is high is being
    mixed with (or replaced by) another one."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        d = r.dnc
        if d is None or d.s_dc is None:
            continue
        for k, key in enumerate(r.subjects):
            row, gt = d.s_dc[k], d.s_gt[k]
            others = [j for j in range(len(r.subjects)) if j != k]
            acc[key]["own"].append(float(row[k]))
            acc[key]["gt_self"].append(float(gt[k]))
            if others:
                acc[key]["other"].append(float(max(row[j] for j in others)))
                acc[key]["gt_other"].append(float(max(gt[j] for j in others)))
    return {key: {"n": len(v["own"]), **{name: (round(float(np.mean(vals)), 4) if vals else None)
                                         for name, vals in ((n_, v[n_]) for n_ in ("own", "gt_self", "other", "gt_other"))}}
            for key, v in sorted(acc.items())}


def summarize(results: Sequence[ImageResult], success_threshold: float = DEFAULT_SUCCESS_THRESHOLD) -> dict:
    """Summary of a run: overall, per number of subjects k, per subject combination, per prompt.

    ``dnc_mean`` counts count errors as 0 (as the paper does); ``dnc_mean_count_ok`` averages only
    images with the right count. Rates are over scored images (errors excluded).
    """
    out = _group_summary(results)
    out["success_threshold"] = float(success_threshold)
    by_k: dict[int, list[ImageResult]] = defaultdict(list)
    by_combo: dict[str, list[ImageResult]] = defaultdict(list)
    by_prompt: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        if r.error:
            continue
        by_k[r.k].append(r)
        by_combo["+".join(r.subjects)].append(r)
        by_prompt[r.fidelity_prompt or r.prompt or ""].append(r)
    out["per_k"] = {str(k): _group_summary(v) for k, v in sorted(by_k.items())}
    out["per_subjects"] = {c: _group_summary(v) for c, v in sorted(by_combo.items())}
    out["per_prompt"] = {p: {key: g[key] for key in ("n_scored", "dnc_mean", "success_rate", "count_error_rate",
                                                      "clip_score_mean")}
                         for p, g in ((p, _group_summary(v)) for p, v in by_prompt.items())}
    out["per_subject"] = _per_subject(results)
    out["errors"] = [{"name": r.name, "error": r.error} for r in results if r.error]
    return out


# ============================================================================ comparison

@dataclass
class RunData:
    """A run as needed for comparison: label, summary, per-image scores keyed by name."""

    label: str
    summary: dict
    settings: dict
    per_image: list[dict]
    path: Path | None = None

    @property
    def dnc_by_name(self) -> dict[str, float]:
        return {d["name"]: float(d["dnc"]) for d in self.per_image if d.get("dnc") is not None}

    @classmethod
    def from_evaluation(cls, ev: Evaluation, path: Path | None = None) -> "RunData":
        return cls(ev.label, ev.summary, ev.settings, [r.to_dict() for r in ev.results], path)

    @classmethod
    def load(cls, folder: str | Path, label: str | None = None) -> "RunData":
        """Load a ``mudi evaluate`` output folder (scores.json + per_image.json)."""
        folder = Path(folder)
        sj, pj = folder / "scores.json", folder / "per_image.json"
        if not sj.exists():
            raise MudiError(f"{folder}: no scores.json; is this a `mudi evaluate` output folder?")
        try:
            scores = json.loads(sj.read_text(encoding="utf-8"))
            per = json.loads(pj.read_text(encoding="utf-8")) if pj.exists() else []
            summary = scores["summary"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MudiError(f"{sj}: not a mudi evaluation summary ({exc}). Re-run `mudi evaluate`.") from None
        return cls(label or scores.get("label") or folder.name, summary, scores.get("settings", {}), per, folder)


@dataclass
class Comparison:
    runs: list[RunData]
    table: list[dict]
    win_rate: dict[str, dict[str, float | None]]
    n_shared: dict[str, dict[str, int]]

    def to_dict(self) -> dict:
        return {"runs": self.table, "win_rate": self.win_rate, "n_shared_images": self.n_shared}


TABLE_KEYS = ("n_images", "n_scored", "n_errors", "dnc_mean", "dnc_sem", "dnc_mean_count_ok", "success_rate",
              "count_error_rate", "n_missing", "n_duplicate", "identities_ok_rate", "layout_iou_mean", "clip_score_mean",
              "image_reward_mean", "success_threshold")


def compare_runs(runs: Sequence[RunData]) -> Comparison:
    """Side-by-side table of runs plus pairwise win rates.

    ``win_rate[a][b]`` is the share of images present in both runs (matched by name — the same
    prompt and seed when both come from ``mudi generate`` with the same settings) where run a has
    the higher D&C (ties count half); ``None`` when they share no image.
    """
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise MudiError(f"run labels must be unique, got {labels}; name them with LABEL=PATH.")
    ks = sorted({k for r in runs for k in r.summary.get("per_k", {})}, key=int)
    table = []
    for r in runs:
        row = {"label": r.label, "path": str(r.path) if r.path else None}
        row.update({k: r.summary.get(k) for k in TABLE_KEYS})
        for k in ks:
            g = r.summary.get("per_k", {}).get(k)
            row[f"success_rate_k{k}"] = g.get("success_rate") if g else None
            row[f"dnc_mean_k{k}"] = g.get("dnc_mean") if g else None
        table.append(row)
    win: dict[str, dict[str, float | None]] = {}
    shared: dict[str, dict[str, int]] = {}
    for a in runs:
        win[a.label], shared[a.label] = {}, {}
        da = a.dnc_by_name
        for b in runs:
            if a is b:
                continue
            db = b.dnc_by_name
            common = sorted(set(da) & set(db))
            shared[a.label][b.label] = len(common)
            if not common:
                win[a.label][b.label] = None
                continue
            w = sum(1.0 if da[n] > db[n] else 0.5 if da[n] == db[n] else 0.0 for n in common)
            win[a.label][b.label] = round(w / len(common), 4)
    return Comparison(list(runs), table, win, shared)


def write_comparison(comp: Comparison, out: str | Path) -> dict[str, Path]:
    """comparison.csv, comparison.json and comparison.png in ``out`` (which must exist)."""
    from mudi.report.html import plot_comparison

    out = Path(out)
    cols = list(dict.fromkeys(k for row in comp.table for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in comp.table:
        w.writerow(row)
    paths = {
        "csv": write_text_atomic(out / "comparison.csv", buf.getvalue()),
        "json": write_json_atomic(out / "comparison.json", comp.to_dict()),
    }
    from mudi.io import write_bytes_atomic

    paths["png"] = write_bytes_atomic(out / "comparison.png", plot_comparison(comp))
    return paths


__all__ = [
    "DEFAULT_SUCCESS_THRESHOLD",
    "Comparison",
    "DetectAndCompare",
    "EvalItem",
    "Evaluation",
    "ImageResult",
    "RunData",
    "collect_folder",
    "compare_runs",
    "evaluate_folder",
    "evaluate_images",
    "evaluate_items",
    "make_items",
    "summarize",
    "write_comparison",
]
