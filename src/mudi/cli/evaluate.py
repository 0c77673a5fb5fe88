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

    # settings from the [evaluate] table of a run file (flags override it)
    mudi evaluate --config run.toml --images gen/mudi --out eval/mudi
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mudi.errors import MudiError

HELP = "score generated images: Detect-and-Compare (D&C), CLIP score, success rate, HTML report"
DESCRIPTION = (
    "Evaluate multi-subject generations with Detect-and-Compare (MuDI, METHOD.md §6): detect every "
    "subject with OWLv2 (count rule: wrong number of boxes -> 0), embed the crops (DINOv2 or "
    "DreamSim), compare with the reference photos, D&C = 1 - ||S_GT - S_DC||. Also CLIP score against "
    "the prompt with identifiers removed, and the success rate (right count and D&C >= threshold). "
    "Writes scores.csv, per_image.json, scores.json, config.toml and report.html."
)
INPUT_FIELDS = ("subjects", "out", "prompt", "subject_keys")
MODEL_FIELDS = ("detector", "embedder", "dreamsim_cache", "clip", "dino_model", "clip_i_model", "image_reward",
                "batch_size")
METRIC_FIELDS = ("threshold", "success_threshold", "norm", "nms", "reference_mode", "queries", "report")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` verb (flags from :class:`~mudi.evaluate.EvaluateConfig`'s fields)."""
    from mudi.evaluate import EvaluateConfig
    from mudi.settings import RunOptions, add_arguments, add_config_argument

    p = subparsers.add_parser("evaluate", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("Typical uses::", 1)[1])
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--images", dest="image_runs", action="append", default=[], metavar="[LABEL=]DIR",
                   help="folder of generated images (NNNN.png + NNNN.json sidecars from `mudi generate`); "
                        "repeat to evaluate several runs side by side (one subfolder of --out each)")
    g.add_argument("--compare", nargs="+", default=[], metavar="[LABEL=]RUN",
                   help="more runs to put side by side: `mudi evaluate` output folders (read as they are) "
                        "or image folders (evaluated here with the same models, into OUT/compare/LABEL)")
    add_config_argument(g, EvaluateConfig)
    add_arguments(g, EvaluateConfig, INPUT_FIELDS)
    add_arguments(p.add_argument_group("models"), EvaluateConfig, MODEL_FIELDS)
    add_arguments(p.add_argument_group("metric"), EvaluateConfig, METRIC_FIELDS)
    add_arguments(p.add_argument_group("running"), RunOptions, ("overwrite", "device", "progress"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse → config → evaluate / compare → reports → print the table."""
    from mudi.evaluate import EvaluateConfig, compare, evaluate, plan_runs
    from mudi.runtime import processes
    from mudi.settings import given_values, resolve, run_options

    # 1. The config: defaults, then the run file's [evaluate] table, then the flags
    config = resolve(EvaluateConfig, run_file=args.config, values=given_values(args, EvaluateConfig))
    options = run_options(args)
    images = args.image_runs or ([f"{config.label}={config.images}" if config.label else config.images]
                                 if config.images else [])
    if not config.out and (images or args.compare):
        raise MudiError("--out is required: the folder for the scores and the report.")
    # 2. The runs and where each goes
    runs = plan_runs(images, args.compare, config.out)
    # 3. Evaluate (one run) or evaluate and compare (several); under `accelerate launch` each
    #    process scores its share of the images and the main process writes everything
    procs = processes()
    if len(runs) == 1:
        single = runs[0]
        ev = evaluate(config.updated({"images": str(single.path), "label": single.label, "out": str(single.dest)}),
                      options, processes=procs)
        comp, evaluations = None, [ev]
    else:
        comp = compare(runs, config, options, out=config.out, processes=procs)
        evaluations = comp.runs
    if not procs.is_main:
        return 0
    _reports(config, runs, evaluations, comp)
    # 4. Tell the user
    _print_summary(evaluations, [r for r, ev in zip(runs, evaluations) if r.kind == "images"], config.out)
    return 0


def _reports(config, runs, evaluations, comp) -> None:
    """report.html of every run evaluated now, comparison.png, and the comparison page."""
    from mudi.report import comparison_links, write_comparison_plot, write_comparison_report, write_run_report

    fresh = [ev for spec, ev in zip(runs, evaluations) if spec.kind == "images"]
    primary = [ev for spec, ev in zip(runs, evaluations) if spec.primary]
    on_top = primary[0] if len(primary) == 1 and comp is not None else None
    links = None
    if comp is not None:
        links = comparison_links(comp, config.out, written=[ev.path for ev in fresh],
                                 skip=on_top.path if on_top is not None else None)
        write_comparison_plot(comp, config.out)
    if not config.report:
        return
    for ev in fresh:
        write_run_report(ev, comparison=comp if ev is on_top else None, links=links if ev is on_top else None)
    if comp is not None and on_top is None:
        write_comparison_report(comp, config.out, links=links)


def _fmt(v, pct: bool = False, nd: int = 3) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.{nd}f}"


def _print_summary(evaluations, fresh_specs, out: str) -> None:
    print(f"{'run':<20} {'images':>6} {'D&C':>7} {'±sem':>6} {'success':>8} {'count err':>9} {'CLIP':>6} "
          f"{'ident':>6} {'miss':>5} {'dup':>5} {'DINO':>6} {'CLIP-I':>6} {'CLIP-T':>6}")
    for ev in evaluations:
        s = ev.summary
        print(f"{ev.label[:20]:<20} {s.get('n_scored', 0):>6} {_fmt(s.get('dnc_mean')):>7} {_fmt(s.get('dnc_sem')):>6} "
              f"{_fmt(s.get('success_rate'), True):>8} {_fmt(s.get('count_error_rate'), True):>9} "
              f"{_fmt(s.get('clip_score_mean'), nd=2):>6} {_fmt(s.get('identity_mean')):>6} "
              f"{_fmt(s.get('missing_mean'), nd=2):>5} {_fmt(s.get('duplicate_mean'), nd=2):>5} "
              f"{_fmt(s.get('dino_mean')):>6} {_fmt(s.get('clip_i_mean')):>6} {_fmt(s.get('clip_t_mean')):>6}")
    fresh = {spec.label for spec in fresh_specs}
    for ev in evaluations:
        if ev.label in fresh and ev.summary.get("n_errors"):
            print(f"{ev.label}: {ev.summary['n_errors']} image(s) could not be scored (see per_image.json):",
                  file=sys.stderr)
            for e in ev.summary["errors"][:5]:
                print(f"  {e['name']}: {e['error']}", file=sys.stderr)
    single = len(evaluations) == 1 or sum(1 for s in fresh_specs if s.primary) == 1
    what = "report.html, scores.json" if single else "report.html, comparison.json"
    print(f"mudi evaluate: wrote {out} ({what})")
