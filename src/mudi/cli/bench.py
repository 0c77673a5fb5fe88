"""`mudi bench`: a prompt suite over subject sets for one method → one comparison table.

Typical uses::

    # mudi runs: one LoRA per subject set (the same order), the DreamBench multi-subject prompts
    mudi bench --suite dreambench_multi --subjects sets/dog6_and_dog2 --lora runs/dogs \\
        --subjects sets/monster_toy_and_robot_toy --lora runs/toys --n 4 --out bench/mudi

    # another tool's images: a folder with prompts.jsonl ({"file", "prompt", "subjects"}) per set
    mudi bench --subjects sets/dog6_and_dog2 --images uno/dogs --method UNO --out bench/uno

    # success vs number of subjects (the first k subjects of a set with five)
    mudi bench --subjects sets/five --lora runs/five --subjects-count 2..5 --out bench/count

    # generation and evaluation settings from a run file's [generate] / [evaluate] tables
    mudi bench --config run.toml --subjects S --lora L --out bench/mudi --resume
"""

from __future__ import annotations

import argparse
import dataclasses

HELP = "run a prompt suite over subject sets and score it all: D&C, DINO, CLIP-I/T, identity, success"
EVAL_FIELDS = ("detector", "embedder", "dreamsim_cache", "clip", "dino_model", "clip_i_model", "batch_size",
               "threshold", "success_threshold", "norm", "nms", "reference_mode", "queries")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb (flags from :class:`~mudi.bench.BenchConfig` and the evaluation fields)."""
    from mudi.bench import BenchConfig
    from mudi.evaluate import EvaluateConfig
    from mudi.settings import RunOptions, add_arguments, add_config_argument

    p = subparsers.add_parser("bench", help=HELP, description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("Typical uses::", 1)[1])
    g = p.add_argument_group("suite, cases and method")
    add_config_argument(g, BenchConfig)
    add_arguments(g, BenchConfig, [f.name for f in dataclasses.fields(BenchConfig)])
    add_arguments(p.add_argument_group("evaluation (also the run file's [evaluate] table)"), EvaluateConfig,
                  EVAL_FIELDS)
    add_arguments(p.add_argument_group("running"), RunOptions, ("resume", "overwrite", "device", "progress"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse → configs → bench → print the table's overall rows."""
    from mudi.bench import BenchConfig, bench
    from mudi.evaluate import EvaluateConfig
    from mudi.generate import GenerateConfig
    from mudi.runtime import processes
    from mudi.settings import given_values, resolve, run_options

    config = resolve(BenchConfig, run_file=args.config, values=given_values(args, BenchConfig))
    flags = {k: v for k, v in given_values(args, EvaluateConfig).items() if k in EVAL_FIELDS}
    ev = resolve(EvaluateConfig, run_file=args.config, values=flags)
    gen = GenerateConfig.from_toml(args.config) if args.config else GenerateConfig()
    procs = processes()
    result = bench(config, run_options(args), generate_config=gen, evaluate_config=ev, procs=procs)
    if not procs.is_main:
        return 0
    print(f"{'method':<14} {'group':<28} {'images':>6} {'D&C':>6} {'success':>7} {'ident':>6} {'miss':>5} "
          f"{'dup':>5} {'DINO':>6} {'CLIP-I':>6} {'CLIP-T':>6}")
    fmt = (lambda v: "-" if v is None else f"{v:.3f}")
    for r in result.rows:
        print(f"{r['method'][:14]:<14} {r['group'][:28]:<28} {r['n_scored']:>6} {fmt(r['dnc']):>6} "
              f"{fmt(r['success']):>7} {fmt(r['identity']):>6} {fmt(r['missing']):>5} {fmt(r['duplicate']):>5} "
              f"{fmt(r['dino']):>6} {fmt(r['clip_i']):>6} {fmt(r['clip_t']):>6}")
    print(f"mudi bench: wrote {config.out} (bench.html, bench.csv, bench.json)")
    return 0
