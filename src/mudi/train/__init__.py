"""Stage 3, train: DreamBooth-LoRA with Seg-Mix (METHOD.md §2–§3) on SD 1.x/2.x and SDXL.

``train(config, options)`` runs :class:`~mudi.train.recipe.LoRATrainer`; :class:`TrainConfig`
describes a run (every field with its default and help). :func:`make_class_set` with
:class:`PriorsConfig` makes the class images of prior preservation (``mudi priors``);
:func:`merge` with :class:`MergeConfig` combines LoRAs (``mudi merge``, modular customization).
"""

from mudi.stage import make_callable
from mudi.train.config import TrainConfig
from mudi.train.merge import MergeConfig, MergeResult, merge
from mudi.train.priors import PriorsConfig, make_class_set
from mudi.train.recipe import TrainResult, train

__all__ = ["MergeConfig", "MergeResult", "PriorsConfig", "TrainConfig", "TrainResult", "make_class_set", "merge", "train"]

make_callable(__name__, train)  # mudi.train(...) runs train(...); the package stays importable
