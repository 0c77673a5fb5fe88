"""`mudi merge`: several LoRAs (one per subject, say) into one — modular customization
(library: :func:`mudi.train.merge.merge`; the rules are documented there)."""

from __future__ import annotations

import argparse

HELP = "merge LoRAs (e.g. one per subject) into one LoRA (modular customization)"
_OPTIONS = ("loras", "out", "rule", "weights", "rank", "subjects")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``merge`` verb (flags from :class:`~mudi.train.merge.MergeConfig`)."""
    from mudi.settings import RunOptions, add_arguments, add_config_argument
    from mudi.train.merge import MergeConfig

    p = subparsers.add_parser(
        "merge",
        help=HELP,
        description=(
            "Combine LoRAs trained separately into one LoRA folder that `mudi generate --lora` and "
            "`pipe.load_lora_weights` read. --rule concat (default) stacks the ranks so every LoRA's update "
            "is kept exactly (merged update = sum of w_i x update_i); --rule sum re-factors that sum to --rank "
            "by SVD. Then separate the identities with a short Seg-Mix fine-tune: "
            "`mudi train --init-lora MERGED --mix segmix --steps 200 ...`."
        ),
    )
    add_config_argument(p, MergeConfig)
    add_arguments(p, MergeConfig, _OPTIONS)
    add_arguments(p, RunOptions, ("overwrite",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mudi merge``; returns the exit status."""
    from mudi.settings import given_values, resolve, run_options
    from mudi.train.merge import MergeConfig, merge

    config = resolve(MergeConfig, run_file=args.config, values=given_values(args, MergeConfig))
    result = merge(config, run_options(args))
    subjects = ", ".join(result.info["subjects"].values()) or "unknown subjects"
    print(f"mudi merge: {len(config.loras)} LoRAs ({subjects}) merged by {config.rule} into {result.out} "
          f"(rank {result.rank}).")
    subjects_dir = {s.get("subjects_dir") for s in result.info["sources"]}
    where = config.subjects or (subjects_dir.pop() if len(subjects_dir) == 1 else "") or "SUBJECTS"
    print(f"  fine-tune with: mudi train --init-lora {result.out} --mix segmix --subjects {where} --steps 200 --out OUT")
    return 0
