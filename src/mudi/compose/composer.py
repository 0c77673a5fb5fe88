"""The METHOD §2 per-example procedure over a subject set: :class:`Composer`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mudi.compose.cutmix import cut_mix
from mudi.compose.cutout import Crop, crop_photo
from mudi.compose.examples import Example, plain
from mudi.compose.segmix import DEFAULT_LOW, check_segmix, default_margin, seg_mix
from mudi.errors import MudiError
from mudi.subjects import SegmentedPhoto, SubjectSet, parse_subject_values

MIX_KINDS = ("segmix", "cutmix", "none")
#: How class (prior) composites are laid out: "reference" (the reference trainer: class A left, one
#: shared random height, random scales) or "instance" (mudi's old: copy the instance's slots and heights).
CLASS_LAYOUTS = ("reference", "instance")
RELATIVE_SIZE_MEANING = "a fraction of the largest allowed scale; give the biggest subject 1, e.g. a=1,b=0.6"

ClassPhotos = Mapping[str, Sequence[SegmentedPhoto]]


def parse_relative_sizes(spec: str | Mapping[str, float], sset: SubjectSet | None = None, *,
                         option: str = "--relative-sizes") -> dict[str, float]:
    """Parse ``"a=1,b=0.6"`` (or a mapping) into ``{"a": 1.0, "b": 0.6}``: each ratio c in (0, 1] is
    a fraction of the largest allowed Seg-Mix scale (names are keys, identifiers or phrases;
    resolved to keys with ``sset``). An empty spec is an error: leave the option out instead."""
    if not spec or (isinstance(spec, str) and not spec.strip()):
        raise MudiError(f"{option} is empty; give NAME=RATIO pairs, e.g. a=1,b=0.6.")
    return parse_subject_values(spec, sset, low=0.0, high=1.0, option=option, meaning=RELATIVE_SIZE_MEANING)


class Composer:
    """The METHOD §2 per-example procedure over a :class:`SubjectSet`.

    ``example(key, index, rng)``: with probability ``p`` (and ``mix`` != "none") the example of
    subject ``key``'s photo ``index`` becomes a composite of that photo and ``k − 1`` other
    subjects chosen uniformly without replacement, each with a uniformly chosen photo; otherwise
    it is the plain photo. The decision draw ``rng.random()`` is always made (also for
    ``mix="none"``), so the same seed gives the same decisions whatever the mix kind.

    Options: ``low`` (0.75), ``margin`` (32; S/8 below 256 px), ``edge_range`` (S // (2k)), ``relative_sizes``
    (mapping key/identifier/phrase → c in (0, 1]; unlisted subjects get 1; enables
    relative-size mode for every instance composite), ``class_layout`` (:data:`CLASS_LAYOUTS`, see
    :meth:`mix_like`).
    """

    def __init__(
        self,
        subject_set: SubjectSet,
        size: int,
        mix: str = "segmix",
        p: float = 0.3,
        k: int = 2,
        *,
        low: float = DEFAULT_LOW,
        margin: float | None = None,
        edge_range: int | None = None,
        relative_sizes: Mapping[str, float] | None = None,
        class_layout: str = "reference",
    ):
        if mix not in MIX_KINDS:
            raise MudiError(f"unknown mix {mix!r}; choose one of {', '.join(MIX_KINDS)}.")
        if class_layout not in CLASS_LAYOUTS:
            raise MudiError(f"unknown class layout {class_layout!r}; choose one of {', '.join(CLASS_LAYOUTS)}.")
        if not 0 <= p <= 1:
            raise MudiError(f"the composite probability p must be in [0, 1] (got {p}).")
        n = len(subject_set)
        if mix != "none" and not 2 <= k <= n:
            raise MudiError(
                f"k={k} subjects per composite, but the set has {n} subjects; choose 2 <= k <= {n}."
            )
        self.edge_range = check_segmix(size, k, low, margin, edge_range) if mix == "segmix" else edge_range
        self.set = subject_set
        self.size = int(size)
        self.mix = mix
        self.p = float(p)
        self.k = int(k)
        self.low = float(low)
        self.class_layout = class_layout
        self.margin = default_margin(size) if margin is None else float(margin)
        self.relative: dict[str, float] | None = None
        if relative_sizes:
            self.relative = {s.key: 1.0 for s in subject_set}
            self.relative.update(parse_relative_sizes(relative_sizes, subject_set, option="relative sizes"))
        self._crops: dict[tuple[str, int], Crop] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def keys(self) -> list[str]:
        """Subject keys of the set."""
        return self.set.keys

    def phrase(self, key: str) -> str:
        """"identifier class" of subject ``key``."""
        return self.set.subject(key).phrase

    def crop(self, key: str, index: int) -> Crop:
        """Cached bbox crop of photo ``index`` of subject ``key``."""
        ck = (key, index)
        if ck not in self._crops:
            self._crops[ck] = crop_photo(self.set.photos(key)[index])
        return self._crops[ck]

    def _compose(self, kind: str, photos: Sequence[SegmentedPhoto | Crop], phrases: Sequence[str],
                 keys: Sequence[str], indices: Sequence[int], rng: np.random.Generator, *,
                 slots: Sequence[int] | None = None, y_tops: Sequence[int] | None = None,
                 relative: bool = True, same_top: bool = False) -> Example:
        """One composite of ``kind`` with this composer's settings (Cut-Mix needs whole photos);
        ``relative=False`` draws random scales even in relative-size mode."""
        if kind == "cutmix":
            return cut_mix(photos, phrases, self.size, rng, keys=keys, slots=slots, photo_indices=indices)
        rel = [self.relative.get(key, 1.0) for key in keys] if self.relative and relative else None
        return seg_mix(
            photos, phrases, self.size, rng, keys=keys, relative=rel, low=self.low, margin=self.margin,
            edge_range=self.edge_range, slots=slots, y_tops=y_tops, photo_indices=indices, same_top=same_top,
        )

    # ------------------------------------------------------------------ API
    def composite(self, key: str, index: int, rng: np.random.Generator) -> Example:
        """A composite (Seg-Mix or Cut-Mix per ``mix``) of ``key``'s photo ``index`` and k − 1
        other subjects, regardless of p."""
        key = self.set.subject(key).key
        photos_a = self.set.photos(key)
        index = int(index) % len(photos_a)
        others = [s for s in self.keys if s != key]
        chosen = [others[int(i)] for i in rng.choice(len(others), size=self.k - 1, replace=False)]
        keys = [key, *chosen]
        indices = [index] + [int(rng.integers(len(self.set.photos(o)))) for o in chosen]
        if self.mix == "cutmix":
            photos = [self.set.photos(kk)[ii] for kk, ii in zip(keys, indices)]
        else:
            photos = [self.crop(kk, ii) for kk, ii in zip(keys, indices)]
        return self._compose(self.mix, photos, [self.phrase(kk) for kk in keys], keys, indices, rng)

    def example(self, key: str, index: int, rng: np.random.Generator) -> Example:
        """One training example for subject ``key``'s photo ``index`` (METHOD §2)."""
        key = self.set.subject(key).key
        photos = self.set.photos(key)
        index = int(index) % len(photos)
        if rng.random() < self.p and self.mix != "none":
            return self.composite(key, index, rng)
        return plain(photos[index], self.size, photos[index].caption, key=key, photo_index=index)

    def mix_like(
        self,
        class_photos: ClassPhotos | SubjectSet,
        example: Example,
        rng: np.random.Generator,
        *,
        class_names: Mapping[str, str] | None = None,
    ) -> Example:
        """The prior-preservation (class) example matching an instance ``example`` (METHOD §3).

        ``class_photos`` maps each subject key to its segmented class images (or is a
        SubjectSet with the same keys). One class image per subject is chosen uniformly. For a
        composite instance example, the class images of the same subjects are composed with the
        same mix kind and captioned ``a photo of a {class A} and a {class B}, simple background.``
        (class A = the example's subject; class names default to the subjects' descriptive
        classes), laid out by ``class_layout``:

        - ``"reference"`` (default, the reference trainer's class composites): class A in the left
          slot and the others in caption order, one shared random top edge for all, random scales
          (also in relative-size mode);
        - ``"instance"`` (mudi's old layout): the instance's horizontal slots and top edges (clamped
          so each fits), scales as the instance's mode.

        Offsets and the paste order are drawn afresh. For a plain instance example the result is
        the chosen class image of the example's subject as a plain example with its own caption.
        """
        names = {s.key: s.cls for s in self.set}
        if class_names:
            names.update(class_names)
        keys = list(example.subjects)
        chosen = []
        for key in keys:
            ph = _class_photos(class_photos, key)
            i = int(rng.integers(len(ph)))
            chosen.append((i, ph[i]))
        if not example.is_composite:
            i, ph = chosen[0]
            return plain(ph, self.size, ph.caption, key=keys[0], photo_index=i)
        photos, phrases, indices = [ph for _, ph in chosen], [names[key] for key in keys], [i for i, _ in chosen]
        if self.class_layout == "reference":
            return self._compose(example.kind, photos, phrases, keys, indices, rng, slots=list(range(len(keys))),
                                 relative=False, same_top=True)
        slots = [pl.slot for pl in example.placements]
        y_tops = [pl.box[1] for pl in example.placements] if example.kind != "cutmix" else None
        return self._compose(example.kind, photos, phrases, keys, indices, rng, slots=slots, y_tops=y_tops)


def _class_photos(class_photos: ClassPhotos | SubjectSet, key: str) -> Sequence[SegmentedPhoto]:
    """The class (prior) images of subject ``key``; MudiError when there are none."""
    try:
        ph = class_photos.photos(key) if isinstance(class_photos, SubjectSet) else class_photos[key]
    except (KeyError, MudiError):
        ph = []
    if not ph:
        raise MudiError(f"no class (prior) images for subject {key!r}; generate them with `mudi priors`.")
    return ph


__all__ = ["CLASS_LAYOUTS", "MIX_KINDS", "ClassPhotos", "Composer", "parse_relative_sizes"]
