"""Compose: training examples from a subject set (METHOD.md §2).

- :func:`compose` / :class:`ComposeConfig`: write N examples to a folder (what `mudi compose` does).
- :class:`Composer`: the per-example procedure training uses (Seg-Mix, Cut-Mix or plain).
- :func:`seg_mix`, :func:`cut_mix`, :func:`plain`: the three kinds of example.
- :func:`paste_crop`: the one way a segmented photo is pasted into a canvas (also used by
  generation's initialization canvas).

Pure PIL/numpy: no torch and no model.
"""

from mudi.stage import make_callable
from mudi.compose.composer import MIX_KINDS, ClassPhotos, Composer, parse_relative_sizes
from mudi.compose.config import ComposeConfig
from mudi.compose.cutmix import cut_mix
from mudi.compose.cutout import RESAMPLE, WHITE, Crop, binary_mask, crop_photo, paste_crop, white_canvas
from mudi.compose.examples import Example, Placement, composite_caption, loss_weight_map, plain, plain_resized_size
from mudi.compose.preview import ComposeResult, compose
from mudi.compose.segmix import (
    DEFAULT_LOW,
    DEFAULT_SEGMIX_MARGIN,
    MARGIN_FULL_FROM,
    default_edge_range,
    default_margin,
    max_scale,
    seg_mix,
)
from mudi.compose.slots import slot_bounds

__all__ = [
    "DEFAULT_LOW",
    "DEFAULT_SEGMIX_MARGIN",
    "MARGIN_FULL_FROM",
    "MIX_KINDS",
    "RESAMPLE",
    "WHITE",
    "ClassPhotos",
    "ComposeConfig",
    "ComposeResult",
    "Composer",
    "Crop",
    "Example",
    "Placement",
    "binary_mask",
    "compose",
    "composite_caption",
    "crop_photo",
    "cut_mix",
    "default_edge_range",
    "default_margin",
    "loss_weight_map",
    "max_scale",
    "parse_relative_sizes",
    "paste_crop",
    "plain",
    "plain_resized_size",
    "seg_mix",
    "slot_bounds",
    "white_canvas",
]

make_callable(__name__, compose)  # mudi.compose(...) runs compose(...); the package stays importable
