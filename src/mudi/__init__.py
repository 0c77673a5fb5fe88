"""mudi: multi-subject personalization of text-to-image diffusion models (MuDI, NeurIPS 2024).

One function per stage, each with a config dataclass that fully describes its run
(every field carries its default and help) and optional :class:`RunOptions`
(resume / overwrite / device / progress)::

    import mudi

    mudi.import_subjects("examples/subjects/dog6_and_dog2", "run/subjects")
    mudi.train(mudi.TrainConfig(subjects="run/subjects", base="stabilityai/stable-diffusion-xl-base-1.0",
                                out="run/lora"))
    mudi.generate(mudi.GenerateConfig(lora="run/lora", out="run/gen",
                                      prompts=["a photo of {a} and {b} playing in the snow"]))
    result = mudi.evaluate(mudi.EvaluateConfig(images="run/gen", subjects="run/subjects", out="run/eval"))

Stages: :func:`prepare` (or :func:`import_subjects`) → :func:`compose` (preview Seg-Mix) →
(:func:`make_class_set` for prior preservation) → :func:`train` (or one LoRA per subject, then
:func:`merge` and a short :func:`train` with ``init_lora``; :func:`iterate` adds rounds of
training on its own best images) → :func:`generate` →
:func:`evaluate` / :func:`compare`, and :func:`bench` (a prompt suite, evaluated into one
table). Everything the ``mudi``
command does goes through these functions. The stage packages (``mudi.prepare``,
``mudi.train``, ...) hold the parts and are themselves callable: ``mudi.train(config)`` runs
:func:`mudi.train.train`.
"""

from mudi.errors import MudiError
from mudi.settings import RunOptions
from mudi.subjects import SubjectSet
from mudi.version import __version__

# The stage packages are callable (mudi.stage.make_callable): mudi.train(config) runs the stage,
# mudi.train.TrainConfig and `import mudi.train.recipe` keep working.
import mudi.bench as bench
import mudi.compose as compose
import mudi.evaluate as evaluate
import mudi.generate as generate
import mudi.prepare as prepare
import mudi.train as train
from mudi.bench import BenchConfig
from mudi.compose import ComposeConfig
from mudi.evaluate import EvaluateConfig, compare
from mudi.generate import GenerateConfig
from mudi.prepare import PrepareConfig, import_subjects
from mudi.train import MergeConfig, PriorsConfig, TrainConfig, make_class_set, merge
from mudi.workflows import iterate

__all__ = [
    "BenchConfig",
    "ComposeConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "MergeConfig",
    "MudiError",
    "PrepareConfig",
    "PriorsConfig",
    "RunOptions",
    "SubjectSet",
    "TrainConfig",
    "__version__",
    "bench",
    "compare",
    "compose",
    "evaluate",
    "generate",
    "import_subjects",
    "iterate",
    "make_class_set",
    "merge",
    "prepare",
    "train",
]
