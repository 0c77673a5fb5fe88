"""Scoring images with Detect-and-Compare, text fidelity and the success rule.

- :class:`DetectAndCompare` — the D&C engine for one subject set: detection, crops, embeddings,
  matching, score; references embedded once.
- :func:`evaluate_items` — score :class:`~mudi.evaluate.folder.EvalItem` s in batches into an
  :class:`~mudi.evaluate.results.Evaluation` (a bad image becomes an error entry).
- :func:`evaluate_images` / :func:`evaluate_folder` — the same from in-memory images or from a
  ``mudi generate`` folder.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mudi.version import __version__
from mudi.errors import MudiError
from mudi.evaluate.dnc import (
    DEFAULT_DETECTION_THRESHOLD,
    DEFAULT_NORM,
    NORMS,
    DncResult,
    crop_box,
    detect_and_compare,
    detect_and_compare_embeddings,
)
from mudi.evaluate.embed import ReferenceEmbeddings
from mudi.evaluate.folder import EvalItem, collect_folder, make_items
from mudi.evaluate.global_metrics import apply_detection_metrics
from mudi.evaluate.results import Evaluation, ImageResult
from mudi.evaluate.summary import DEFAULT_SUCCESS_THRESHOLD, summarize
from mudi.geometry import box_iou
from mudi.protocols import Detection, Detector, Embedder

DEFAULT_BATCH_SIZE = 8

Loaded = tuple[EvalItem, Image.Image, ImageResult]


class DetectAndCompare:
    """Detect-and-Compare over batches of images for one subject set.

    Reference embeddings are computed once per subject (:class:`~mudi.evaluate.embed.ReferenceEmbeddings`)
    and S_GT once per subject combination; the crops of a whole batch of images go through the
    embedder together.

    Args:
        subject_set: the subjects (reference photos, classes).
        detector, embedder: any implementations of the protocols.
        threshold: detection score threshold (paper: 0.4).
        norm: ``"spectral"`` (default, the reference demo's ``ord=2``) or ``"fro"`` (Frobenius).
        queries: optional ``{key: text}`` detection queries; default the subject's class
            (identifier removed), e.g. "corgi". Identical queries are asked once.
        reference_mode: ``"whole"`` (paper) or ``"masked"``; see :class:`~mudi.evaluate.embed.ReferenceEmbeddings`.
        references: reference embeddings to reuse (e.g. shared by several runs).
        diagnose_count_errors: also embed the boxes of count-error images (at most
            ``diagnose_max_boxes``) so their box/subject similarities can be inspected; the
            score of such an image is 0 regardless.
    """

    def __init__(self, subject_set, detector: Detector, embedder: Embedder, *,
                 threshold: float = DEFAULT_DETECTION_THRESHOLD, norm: str = DEFAULT_NORM,
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
        """The detection query of subject ``key`` (its class unless overridden)."""
        return self.queries.get(key) or self.subject_set.subject(key).cls

    def score(self, images: Sequence[Image.Image], subjects: Sequence[Sequence[str]]
              ) -> list[tuple[DncResult, list[Detection]]]:
        """D&C of each image against its own subject keys (lists may differ between images)."""
        if len(images) != len(subjects):
            raise ValueError(f"{len(images)} images but {len(subjects)} subject lists")
        # 1. references of every subject shown (embedded once)
        self.references.ensure([k for ks in subjects for k in ks])
        # 2. detection, one detector call per subject combination
        detections = self.detect(images, subjects)
        # 3. crops of all images through the embedder at once
        emb, spans = self.embed_crops(images, subjects, detections)
        # 4. similarities, matching and score per image
        return [(self.compare(ks, dets, emb, span), dets) for ks, dets, span in zip(subjects, detections, spans)]

    def detect(self, images: Sequence[Image.Image], subjects: Sequence[Sequence[str]]) -> list[list[Detection]]:
        """Detections above the threshold per image, asking for the classes of its subjects."""
        detections: list[list[Detection]] = [[] for _ in images]
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
        return detections

    def embed_crops(self, images, subjects, detections) -> tuple[np.ndarray | None, list[tuple[int, int] | None]]:
        """Embeddings of all crops and each image's row span (``None``: not embedded).

        Images with a count error are embedded too (up to ``diagnose_max_boxes`` boxes) so the
        report can show *which* subject is missing or duplicated; their score stays 0.
        """
        crops: list[Image.Image] = []
        spans: list[tuple[int, int] | None] = []
        for im, ks, dets in zip(images, subjects, detections):
            if dets and (len(dets) == len(ks) or (self.diagnose_count_errors and len(dets) <= self.diagnose_max_boxes)):
                spans.append((len(crops), len(crops) + len(dets)))
                crops.extend(crop_box(im, d.box) for d in dets)
            else:
                spans.append(None)
        emb = np.asarray(self.embedder.embed(crops), dtype=np.float32) if crops else None
        if emb is not None and emb.shape[0] != len(crops):
            raise MudiError(f"embedder {self.embedder!r} returned {emb.shape[0]} rows for {len(crops)} crops.")
        return emb, spans

    def compare(self, keys: Sequence[str], dets: list[Detection], emb: np.ndarray | None,
                span: tuple[int, int] | None) -> DncResult:
        """The D&C result of one image from its rows of ``emb``."""
        refs = self.references.for_keys(keys)
        gt = self.references.ground_truth(keys)
        boxes = [d.box for d in dets]
        if span is not None:
            return detect_and_compare_embeddings(emb[span[0]:span[1]], refs, norm=self.norm, s_gt=gt, boxes=boxes)
        # count error with too many (or no) boxes: no similarities
        res = detect_and_compare(np.zeros((0, len(keys))), gt, norm=self.norm)
        res.boxes = [tuple(float(v) for v in b) for b in boxes]
        res.n_boxes = len(boxes)
        return res


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
    ious = [box_iou(b, planned[k]) for k, b in zip(res.subjects, boxes) if k in planned]
    return float(np.mean(ious)) if ious else None


# ----------------------------------------------------------------------------- batches

def _load(chunk: Sequence[EvalItem], subject_set, results: list[ImageResult]) -> list[Loaded]:
    """One :class:`ImageResult` per item (appended to ``results``) and the images that loaded."""
    loaded: list[Loaded] = []
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
    return loaded


def _score_batch(engine: DetectAndCompare, loaded: list[Loaded], clip, image_reward, nothing_worked_yet: bool,
                 metrics=None) -> None:
    """Score loaded images; on a failure retry one by one so one bad image cannot stop the run.

    If every image fails before any image of the run has worked, the problem is the setup (a
    model that does not fit, …) rather than the images, and it is raised as a MudiError.
    """
    if not loaded:
        return
    try:
        _score_group(engine, loaded, clip, image_reward, metrics)
        return
    except MudiError:
        raise
    except Exception:
        pass
    failures: list[BaseException] = []
    for one in loaded:
        try:
            _score_group(engine, [one], clip, image_reward, metrics)
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


def _score_group(engine: DetectAndCompare, loaded: list[Loaded], clip, image_reward, metrics=None) -> None:
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
        apply_detection_metrics(res)
    if metrics is not None:
        metrics.apply(engine.subject_set, ims, [res for _, _, res in loaded])
    for n, i in enumerate(with_text):
        if clip_scores is not None:
            loaded[i][2].clip_score = float(clip_scores[n])
        if ir_scores is not None:
            loaded[i][2].image_reward = float(ir_scores[n])


def _finish(loaded: list[Loaded], success_threshold: float) -> int:
    """Success and layout IoU of the scored images; returns how many were scored."""
    n = 0
    for _, _, res in loaded:
        if res.error is None:
            res.success = bool(res.dnc.count_ok and res.dnc.score >= success_threshold)
            res.layout_iou = layout_iou(res)
            n += 1
    return n


def _settings(engine: DetectAndCompare, success_threshold: float, clip, image_reward, given: dict | None,
              metrics=None) -> dict:
    """What the run used (saved in scores.json)."""
    sset = engine.subject_set
    s = dict(given or {})
    s.update({
        "detection_threshold": engine.threshold,
        "success_threshold": float(success_threshold),
        "norm": engine.norm,
        "reference_mode": engine.references.mode,
        "queries": {k: engine.query(k) for k in sset.keys},
        "detector": s.get("detector") or repr(engine.detector),
        "embedder": s.get("embedder") or repr(engine.embedder),
        "clip": s.get("clip") or (repr(clip) if clip is not None else None),
        "image_reward": repr(image_reward) if image_reward is not None else None,
        "subject_set": str(sset.root) if sset.root else None,
        "subjects": {s_.key: s_.phrase for s_ in sset},
        "mudi_version": __version__,
        "identity_embedder": s.get("embedder") or repr(engine.embedder),
    })
    s.update(metrics.settings() if metrics is not None else {"dino_model": None, "clip_i_model": None,
                                                              "clip_t_model": None})
    return s


def evaluate_items(items: Sequence[EvalItem], subject_set, detector: Detector, embedder: Embedder, *,
                   clip=None, image_reward=None, threshold: float = DEFAULT_DETECTION_THRESHOLD,
                   success_threshold: float = DEFAULT_SUCCESS_THRESHOLD, norm: str = DEFAULT_NORM,
                   batch_size: int = DEFAULT_BATCH_SIZE, queries: dict[str, str] | None = None,
                   reference_mode: str = "whole", engine: DetectAndCompare | None = None,
                   progress: bool = False, label: str = "run", settings: dict | None = None,
                   metrics=None) -> Evaluation:
    """Score :class:`~mudi.evaluate.folder.EvalItem` s in batches; a bad image becomes an error
    entry, never an abort. ``engine`` reuses a :class:`DetectAndCompare` (and its references);
    ``metrics`` (:class:`~mudi.evaluate.global_metrics.ImageMetrics`) adds DINO, CLIP-I, CLIP-T."""
    # 1. check the settings
    if not 0.0 <= float(success_threshold) <= 1.0:
        raise MudiError(f"success threshold must be in [0, 1], got {success_threshold}.")
    if batch_size < 1:
        raise MudiError(f"batch size must be >= 1, got {batch_size}.")
    # 2. the D&C engine
    engine = engine or DetectAndCompare(subject_set, detector, embedder, threshold=threshold, norm=norm,
                                        queries=queries, reference_mode=reference_mode)
    # 3. score batch by batch
    results: list[ImageResult] = []
    bar = _progress_bar(len(items), label) if progress else None
    n_ok = 0
    t0 = time.perf_counter()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        loaded = _load(chunk, subject_set, results)
        _score_batch(engine, loaded, clip, image_reward, n_ok == 0, metrics)
        n_ok += _finish(loaded, success_threshold)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    # 4. summary and settings
    s = _settings(engine, success_threshold, clip, image_reward, settings, metrics)
    s["seconds"] = round(time.perf_counter() - t0, 2)
    return Evaluation(results, summarize(results, success_threshold), s, label)


def _progress_bar(total: int, label: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"evaluate {label}", unit="img", file=sys.stderr)


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
        :class:`~mudi.evaluate.results.Evaluation` with ``results`` (one per image, same order)
        and ``summary`` (see :func:`~mudi.evaluate.summary.summarize`).
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


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DetectAndCompare",
    "evaluate_folder",
    "evaluate_images",
    "evaluate_items",
    "layout_iou",
]
