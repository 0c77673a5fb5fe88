"""The settings of a ``mudi bench`` run (:class:`BenchConfig`, the ``[bench]`` table of a run file)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from mudi.errors import MudiError
from mudi.settings import Settings, setting


@dataclass
class BenchConfig(Settings):
    """Which suite, over which subject sets, by which method (``mudi bench``).

    A *case* is one subject set with its images: made here by ``mudi generate`` (a LoRA from
    ``mudi train`` per set, ``--lora``, or the base model alone, ``--base``), or imported from
    another tool's folder (``--images``). ``--subjects``, ``--lora`` and ``--images`` pair up by
    order. How images are generated and evaluated comes from the run file's ``[generate]`` and
    ``[evaluate]`` tables and the evaluation flags.
    """

    SECTION: ClassVar[str] = "bench"

    suite: str = setting("dreambench_multi", "prompt suite: a shipped name (dreambench_multi, mudi_pairs) or a "
                                             "suite JSON file", metavar="NAME|FILE")
    out: str = setting("", "output folder: bench.csv, bench.json, bench.html, cases/<case>/{images,eval}",
                       metavar="OUT")
    subjects: list[str] = setting([], "subject-set folder of a case; repeatable (pairs with --lora / --images "
                                      "by order)", metavar="DIR")
    lora: list[str] = setting([], "LoRA folder from `mudi train` for the subject set at the same position; "
                                  "repeatable", metavar="DIR")
    images: list[str] = setting([], "folder of another tool's images with prompts.jsonl (file, prompt, "
                                    "subjects) for the subject set at the same position; repeatable",
                                metavar="DIR")
    base: str = setting("", "base model to sample (without --lora: the base model alone)", metavar="MODEL")
    method: str = setting("", "name of the method in the table (default: mudi, base or imported)")
    subjects_count: str = setting("", "numbers of subjects per prompt, e.g. 2..5 or 2,3 (the first k subjects "
                                      "of each set); default: all of the set's subjects", metavar="K")
    n: int = setting(1, "images per prompt", metavar="N")
    prompts_limit: int = setting(0, "use only the first N prompts of the suite (0: all)", metavar="N")
    seed: int = setting(0, "seed of the first image of each case", metavar="S")

    def counts(self) -> list[int]:
        """The subject counts ``subjects_count`` asks for (empty: all of each set's subjects)."""
        spec = self.subjects_count.strip()
        if not spec:
            return []
        m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", spec)
        try:
            ks = list(range(int(m[1]), int(m[2]) + 1)) if m else [int(v) for v in spec.split(",") if v.strip()]
        except ValueError:
            ks = []
        if not ks or min(ks) < 1:
            raise MudiError(f"--subjects-count {spec!r}: give a range like 2..5 or a list like 2,3 (each >= 1).")
        return ks

    def source(self) -> str:
        """``lora``, ``base`` or ``images``: where the images of the cases come from."""
        if self.images and (self.lora or self.base):
            raise MudiError("--images imports another tool's images; do not combine it with --lora/--base "
                            "(run `mudi bench` once per method).")
        return "images" if self.images else "lora" if self.lora else "base"

    def check(self) -> None:
        """Check what needs no file: pairing of the lists, counts, numbers.

        Raises:
            MudiError: naming the option and what to do.
        """
        if self.n < 1 or self.prompts_limit < 0:
            raise MudiError("--n must be >= 1 and --prompts-limit >= 0.")
        self.counts()
        src = self.source()
        if not self.subjects:
            raise MudiError("--subjects DIR is required (one per case: the subject set the images personalize).")
        given = {"images": self.images, "lora": self.lora}.get(src)
        if given is not None and len(given) != len(self.subjects):
            raise MudiError(f"{len(self.subjects)} --subjects but {len(given)} --{src}: give one --{src} per "
                            "subject set, in the same order.")
        if src == "base" and not self.base:
            raise MudiError("nothing to benchmark: give --lora (mudi runs), --base (the base model) or --images "
                            "(another tool's images) with each --subjects.")


__all__ = ["BenchConfig"]
