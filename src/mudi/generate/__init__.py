"""Stage 4, generate: sample multi-subject images with a personalized model and mean-shifted
initialization (METHOD.md §4).

``generate(config)`` runs a whole job (see :mod:`mudi.generate.pipeline`); :class:`GenerateConfig`
describes it. The parts: :mod:`~mudi.generate.prompts` (placeholders, prompt files),
:mod:`~mudi.generate.lora_loading`, :mod:`~mudi.generate.layout` and
:mod:`~mudi.generate.llm_layout` (where the subjects go), :mod:`~mudi.generate.init` (the
mean-shifted initial latents), :mod:`~mudi.generate.jobs` (one job per image, sidecars, resume),
:mod:`~mudi.generate.sampling` and :mod:`~mudi.generate.sheets`.
"""

from mudi.stage import make_callable
from mudi.generate.config import NEGATIVE_PROMPT, SCHEDULERS, GenerateConfig, GenerateWarning
from mudi.generate.pipeline import generate
from mudi.generate.prompts import read_prompts_file

__all__ = ["GenerateConfig", "GenerateWarning", "NEGATIVE_PROMPT", "SCHEDULERS", "generate", "read_prompts_file"]

make_callable(__name__, generate)  # mudi.generate(...) runs generate(...); the package stays importable
