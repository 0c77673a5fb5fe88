"""``ComposeConfig``: what `mudi compose` (and :func:`mudi.compose.compose`) writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mudi.compose.composer import MIX_KINDS, parse_relative_sizes
from mudi.compose.segmix import DEFAULT_LOW, DEFAULT_SEGMIX_MARGIN, MARGIN_FULL_FROM
from mudi.errors import MudiError
from mudi.settings import Settings, setting


@dataclass
class ComposeConfig(Settings):
    """A preview of the training examples of a subject set (METHOD.md §2)."""

    SECTION: ClassVar[str] = "compose"

    subjects: str = setting("", "subject-set folder (metadata.jsonl)", metavar="DIR")
    out: str = setting("", "output folder (new or empty)", metavar="OUT")
    n: int = setting(16, "number of examples to write", metavar="N")
    seed: int = setting(0, "random seed")
    size: int = setting(1024, "canvas side S in pixels (1024 is the SDXL training size)")
    mix: str = setting("segmix", "composition kind", choices=MIX_KINDS)
    p: float = setting(1.0, "probability that an example is a composite (1 shows only composites)")
    k: int = setting(2, "subjects per composite")
    relative_sizes: str = setting(
        "", "fixed relative sizes, e.g. a=1,b=0.6 (scale = m*C, 0 < C <= 1; unlisted subjects get 1)",
        metavar="NAME=C,...")
    low: float = setting(DEFAULT_LOW, "Seg-Mix scale range: low fraction of the largest scale m")
    segmix_margin: float = setting(
        -1.0, f"Seg-Mix margin in pixels; -1 = {DEFAULT_SEGMIX_MARGIN} px, or S/8 for canvases under "
        f"{MARGIN_FULL_FROM} px", flag="--margin")
    edge_range: int = setting(0, "Seg-Mix horizontal offset range in pixels; 0 = S/(2k), i.e. S/4 for two subjects")

    def check(self) -> None:
        """Cheap checks of every value (no file is read)."""
        if not self.subjects:
            raise MudiError("--subjects: give the subject-set folder (a `mudi prepare` output).")
        if not self.out:
            raise MudiError("--out: give the output folder for the composites.")
        if self.n <= 0:
            raise MudiError(f"--n must be a positive number of examples (got {self.n}).")
        if self.size < 16:
            raise MudiError(f"--size must be at least 16 pixels (got {self.size}).")
        if not 0 <= self.p <= 1:
            raise MudiError(f"--p must be a probability in [0, 1] (got {self.p}).")
        if self.k < 2:
            raise MudiError(f"--k must be at least 2 subjects per composite (got {self.k}).")
        if self.segmix_margin < 0 and self.segmix_margin != -1:
            raise MudiError(f"--margin must be >= 0, or -1 for the default (got {self.segmix_margin}).")
        if self.edge_range < 0:
            raise MudiError(f"--edge-range must be >= 1 pixel, or 0 for the default (got {self.edge_range}).")
        if self.relative_sizes:
            parse_relative_sizes(self.relative_sizes)

    @property
    def margin_px(self) -> float | None:
        """The Seg-Mix margin for :class:`~mudi.compose.Composer` (``None`` = its default)."""
        return None if self.segmix_margin == -1 else self.segmix_margin

    @property
    def edge_range_px(self) -> int | None:
        """The edge range for :class:`~mudi.compose.Composer` (``None`` = its default)."""
        return self.edge_range or None


__all__ = ["ComposeConfig"]
