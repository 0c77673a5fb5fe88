"""`mudi evaluate`: Detect-and-Compare, CLIP score and success rate of generated images.

Typical uses::

    # one run (a `mudi generate` folder: NNNN.png + NNNN.json sidecars)
    mudi evaluate --images gen/mudi --subjects data/dog6_and_dog2 --out eval/mudi

    # several runs at once, side by side (each run also gets its own full evaluation)
    mudi evaluate --images dreambooth=gen/db --images cutmix=gen/cm --images mudi=gen/mudi \\
        --subjects data/dog6_and_dog2 --out eval/all

    # one run compared with runs evaluated earlier (or with other image folders)
    mudi evaluate --images gen/mudi --subjects S --out eval/mudi --compare eval/db eval/cm

    # only compare finished evaluations (no model is loaded)
    mudi evaluate --compare db=eval/db cutmix=eval/cm mudi=eval/mudi --out eval/cmp
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mudi.errors import MudiError

_LABEL_RE = re.compile(r"^([A-Za-z0-9_.+\-]+)=(.+)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` verb."""
    from mudi.evaluate.dnc import DEFAULT_DETECTION_THRESHOLD, NORMS
    from mudi.evaluate.scoring import DEFAULT_BATCH_SIZE, DEFAULT_SUCCESS_THRESHOLD

    p = subparsers.add_parser(
        "evaluate",
        help="score generated images: Detect-and-Compare (D&C), CLIP score, success rate, HTML report",
        description=(
            "Evaluate multi-subject generations with Detect-and-Compare (MuDI, METHOD.md §6): detect every "
            "subject with OWLv2 (count rule: wrong number of boxes -> 0), embed the crops (DINOv2 or "
            "DreamSim), compare with the reference photos, D&C = 1 - ||S_GT - S_DC||. Also CLIP score against "
            "the prompt with identifiers removed, and the success rate (right count and D&C >= threshold). "
            "Writes scores.csv, per_image.json, scores.json and report.html."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Typical uses::", 1)[1],
    )
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--images", action="append", default=[], metavar="[LABEL=]DIR",
                   help="folder of generated images (NNNN.png + NNNN.json sidecars from `mudi generate`); "
                        "repeat to evaluate several runs side by side")
    g.add_argument("--subjects", type=Path, metavar="DIR", help="the subject-set folder the images personalize")
    g.add_argument("--compare", nargs="+", default=[], metavar="[LABEL=]RUN",
                   help="more runs to put side by side: `mudi evaluate` output folders (read as they are) "
                        "or image folders (evaluated here with the same models)")
    g.add_argument("--prompt", metavar="P", help="prompt of images that have no sidecar JSON (its identifiers say which "
                                    "subjects the images show)")
    g.add_argument("--subject-keys", metavar="KEYS", help="comma-separated subject keys (or identifiers) shown in images "
                                          "without a sidecar, e.g. a,b (default: identifiers in --prompt)")
    g.add_argument("--out", type=Path, required=True, metavar="OUT",
                   help="output folder (one run: its scores and report; several: one subfolder per run "
                        "plus comparison.csv/json/png and report.html)")
    g.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --out")

    m = p.add_argument_group("models")
    m.add_argument("--detector", default=None, metavar="M", help="OWLv2 model folder or hub id "
                                                    "(default google/owlv2-base-patch16-ensemble), or 'toy' "
                                                    "for toy-world images")
    m.add_argument("--embedder", default="dinov2", metavar="dinov2|dreamsim|M",
                   help="dinov2 (facebook/dinov2-base, D&C-DINO), dreamsim (D&C-DS, optional extra), toy "
                        "(toy-world images) or a DINOv2 model folder / hub id (default dinov2)")
    m.add_argument("--clip", default=None, metavar="M|none", help="CLIP model folder or hub id for the CLIP score "
                                                "(default openai/clip-vit-large-patch14); 'none' to skip")
    m.add_argument("--image-reward", action="store_true", help="also compute ImageReward (needs the optional "
                                                                "image-reward package)")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda if available)")
    m.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help=f"images per batch "
                                                                             f"(default {DEFAULT_BATCH_SIZE})")

    s = p.add_argument_group("metric")
    s.add_argument("--threshold", type=float, default=DEFAULT_DETECTION_THRESHOLD, metavar="T",
                   help=f"detection score threshold (default {DEFAULT_DETECTION_THRESHOLD}, as in the paper)")
    s.add_argument("--success-threshold", type=float, default=DEFAULT_SUCCESS_THRESHOLD, metavar="X",
                   help=f"minimum D&C of a successful image (default {DEFAULT_SUCCESS_THRESHOLD})")
    s.add_argument("--norm", choices=NORMS, default="fro", help="matrix norm of D&C (default fro = Frobenius)")
    s.add_argument("--nms", default="0.5", metavar="IOU|none",
                   help="merge overlapping detections above this IoU before counting (default 0.5); "
                        "'none' counts raw OWLv2 boxes as the paper's code does")
    s.add_argument("--reference-mode", choices=("whole", "masked"), default="whole",
                   help="embed reference photos whole (paper, default) or cut out with their masks")
    s.add_argument("--query", action="append", default=[], metavar="KEY=TEXT",
                   help="detection query of a subject (default: its class, e.g. 'corgi'); repeatable")
    s.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- helpers

def _split_label(spec: str) -> tuple[str | None, Path]:
    m = _LABEL_RE.match(spec)
    if m and not Path(spec).exists():
        return m.group(1), Path(m.group(2))
    return None, Path(spec)


def _default_label(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.+\-]+", "_", path.resolve().name) or "run"
    if base in ("scores", "eval", "images", "out") and path.resolve().parent.name:
        base = re.sub(r"[^A-Za-z0-9_.+\-]+", "_", path.resolve().parent.name) + "_" + base
    label, i = base, 2
    while label in taken:
        label, i = f"{base}_{i}", i + 1
    return label


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _nms(spec: str) -> float | None:
    if spec.lower() in ("none", "off", "no"):
        return None
    try:
        v = float(spec)
    except ValueError:
        raise MudiError(f"--nms {spec!r}: give an IoU in (0, 1] or 'none'.") from None
    if not 0.0 < v <= 1.0:
        raise MudiError(f"--nms {spec!r}: the IoU must be in (0, 1].")
    return v


def _queries(specs: list[str], subject_set) -> dict[str, str]:
    out = {}
    for spec in specs:
        if "=" not in spec:
            raise MudiError(f"--query {spec!r}: expected KEY=TEXT, e.g. a='corgi dog'.")
        k, text = spec.split("=", 1)
        out[subject_set.subject(k.strip()).key] = text.strip()
    return out


def _print_table(rows: list[tuple[str, dict]]) -> None:
    def f(v, pct: bool = False, nd: int = 3) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.{nd}f}"

    print(f"{'run':<20} {'images':>6} {'D&C':>7} {'±sem':>6} {'success':>8} {'count err':>9} {'CLIP':>6}")
    for label, s in rows:
        print(f"{label[:20]:<20} {s.get('n_scored', 0):>6} {f(s.get('dnc_mean')):>7} {f(s.get('dnc_sem')):>6} "
              f"{f(s.get('success_rate'), True):>8} {f(s.get('count_error_rate'), True):>9} "
              f"{f(s.get('clip_score_mean'), nd=2):>6}")


# ----------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> int:
    from mudi.evaluate.scoring import RunData, collect_folder, compare_runs, evaluate_items, write_comparison
    from mudi.io import prepare_output_dir, write_text_atomic
    from mudi.report.html import relative_link, render_comparison_report

    if not args.images and not args.compare:
        raise MudiError("nothing to evaluate: give --images DIR (a `mudi generate` folder) and/or --compare RUN ...")
    if args.batch_size < 1:
        raise MudiError(f"--batch-size must be >= 1, got {args.batch_size}.")
    for name in ("threshold", "success_threshold"):
        v = getattr(args, name)
        if not 0.0 <= v <= 1.0:
            raise MudiError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}.")
    nms_iou = _nms(args.nms)

    # ---- which runs: (label, images dir) to evaluate, and finished evaluations to load
    taken: set[str] = set()
    taken_order: list[str] = []
    to_eval: list[tuple[str, Path, bool]] = []  # (label, dir, primary?)
    loaded: list[RunData] = []
    for spec in args.images:
        label, path = _split_label(spec)
        if not path.is_dir():
            raise MudiError(f"--images {spec}: {path} is not a folder.")
        label = label or _default_label(path, taken)
        if label in taken:
            raise MudiError(f"run label {label!r} is used twice; name runs with LABEL=DIR.")
        taken.add(label)
        taken_order.append(label)
        to_eval.append((label, path, True))
    for spec in args.compare:
        label, path = _split_label(spec)
        if not path.exists():
            raise MudiError(f"--compare {spec}: {path} not found.")
        label = label or _default_label(path, taken)
        if label in taken:
            raise MudiError(f"run label {label!r} is used twice; name runs with LABEL=PATH.")
        taken.add(label)
        taken_order.append(label)
        if (path / "scores.json").exists():
            loaded.append(RunData.load(path, label))
        elif (path / "comparison.json").exists():
            subs = sorted(p.name for p in path.iterdir() if (p / "scores.json").exists())
            raise MudiError(f"--compare {spec}: {path} is a comparison of several runs; pass its run folders "
                            f"instead ({', '.join(subs) or 'none found'}).")
        elif path.is_dir():
            to_eval.append((label, path, False))
        else:
            raise MudiError(f"--compare {spec}: expected a `mudi evaluate` output folder (with scores.json) or a "
                            "folder of generated images.")

    if not to_eval and len(loaded) < 2:
        raise MudiError("--compare alone needs at least two runs to put side by side.")
    primary = [r for r in to_eval if r[2]]
    single = len(primary) == 1
    if args.out.exists() and not args.overwrite:
        prepare_output_dir(args.out, overwrite=False, what="evaluation")  # refuses a non-empty folder early

    # ---- validate every folder against the subject set before loading any model
    evaluations = []
    if to_eval:
        if args.subjects is None:
            raise MudiError("--subjects DIR is required to evaluate images (the subject set they personalize).")
        from mudi.subjects import SubjectSet

        sset = SubjectSet.load(args.subjects)
        keys = [k.strip() for k in args.subject_keys.split(",") if k.strip()] if args.subject_keys else None
        items = {label: collect_folder(path, sset, prompt=args.prompt, subject_keys=keys)
                 for label, path, _ in to_eval}
        queries = _queries(args.query, sset)
    out = prepare_output_dir(args.out, overwrite=args.overwrite, what="evaluation")
    if to_eval:
        # ---- models
        from mudi.prepare.detect import Owlv2Detector
        from mudi.evaluate.embed import ReferenceEmbeddings, make_embedder
        from mudi.evaluate.scoring import DetectAndCompare
        from mudi.models.loading import DEFAULT_CLIP, DEFAULT_DETECTOR

        device = _device(args.device)
        print(f"mudi evaluate: loading models on {device} ...", file=sys.stderr)
        if args.detector == "toy":
            from mudi.toy.vision import ToyDetector

            detector = ToyDetector()
        else:
            detector = Owlv2Detector(args.detector or DEFAULT_DETECTOR, device=device, batch_size=args.batch_size,
                                     nms_iou=nms_iou)
        embedder = make_embedder(args.embedder, device=device, batch_size=args.batch_size)
        clip = None
        if (args.clip or "").lower() != "none":
            from mudi.evaluate.textfid import ClipScorer

            clip = ClipScorer(args.clip or DEFAULT_CLIP, device=device, batch_size=args.batch_size)
        image_reward = None
        if args.image_reward:
            from mudi.evaluate.textfid import ImageRewardScorer

            image_reward = ImageRewardScorer(device=device)
        refs = ReferenceEmbeddings(sset, embedder, mode=args.reference_mode)  # shared by all runs
        engine = DetectAndCompare(sset, detector, embedder, threshold=args.threshold, norm=args.norm,
                                  queries=queries, references=refs)
        settings_base = {
            "detector": "toy" if args.detector == "toy" else f"{detector.name} (nms_iou={nms_iou})",
            "embedder": getattr(embedder, "name", repr(embedder)),
            "clip": getattr(clip, "name", None),
            "device": device,
            "command": "mudi " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("mudi") else None,
        }
        for label, path, is_primary in to_eval:
            ev = evaluate_items(items[label], sset, detector, embedder, clip=clip, image_reward=image_reward,
                                success_threshold=args.success_threshold, batch_size=args.batch_size,
                                engine=engine, progress=True, label=label,
                                settings=dict(settings_base, images=str(path)))
            if single and is_primary:
                dest = out
            elif is_primary:
                dest = out / label
            else:
                dest = out / "compare" / label
            evaluations.append((ev, dest, is_primary))

    # ---- comparison
    order = {label: i for i, label in enumerate(taken_order)}  # runs in the order they were given
    runs = sorted([RunData.from_evaluation(ev, dest) for ev, dest, _ in evaluations] + loaded,
                  key=lambda r: order[r.label])
    comp = compare_runs(runs) if len(runs) > 1 else None
    links = None
    if comp is not None:
        links = {}
        for r in runs:
            target = (r.path / "report.html") if r.path is not None else None
            if target is not None and (target.exists() or any(d == r.path for _, d, _ in evaluations)):
                if not (single and r.path == out):
                    links[r.label] = relative_link(target, out)
    for ev, dest, is_primary in evaluations:
        on_top = comp if (single and is_primary) else None
        ev.write(dest, overwrite=args.overwrite or dest == out, report=not args.no_report,
                 comparison=on_top, comparison_links=links if on_top else None)
    if comp is not None:
        write_comparison(comp, out)
        if not single and not args.no_report:
            write_text_atomic(out / "report.html", render_comparison_report(comp, links=links))

    _print_table([(r.label, r.summary) for r in runs])
    for ev, _, _ in evaluations:
        if ev.summary.get("n_errors"):
            print(f"{ev.label}: {ev.summary['n_errors']} image(s) could not be scored (see per_image.json):",
                  file=sys.stderr)
            for e in ev.summary["errors"][:5]:
                print(f"  {e['name']}: {e['error']}", file=sys.stderr)
    what = "report.html, scores.json" if single or comp is None else "report.html, comparison.json"
    print(f"mudi evaluate: wrote {out} ({what})")
    return 0
