"""Training data: which example comes when, the finite caption set, and the micro-batch builder.

Example number ``e`` (global over steps, micro-batches and processes) is drawn by
:class:`ExampleSchedule` from ``(seed, e)`` alone -- which photo, the Seg-Mix draws, the VAE
sample noise, the diffusion noise and the timestep -- so there is no sampler state to restore
and a resumed run sees exactly the examples of an uninterrupted one.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from mudi.train.extra import EXTRA_KEY, EXTRA_KIND


# ============================================================================ captions


def _with_composites(caps: list[str], keys: list[str], phrase, k: int, mix: str) -> list[str]:
    """``caps`` plus every composite caption (each subject first, every ordered choice of k − 1 others)."""
    from mudi.compose import composite_caption

    if mix != "none":
        for key in keys:
            others = [o for o in keys if o != key]
            for combo in itertools.permutations(others, k - 1):
                caps.append(composite_caption([phrase(x) for x in (key, *combo)]))
    return list(dict.fromkeys(caps))


def subject_captions(subject_set, k: int, mix: str) -> list[str]:
    """Every caption an instance example can have: photo captions and composite captions
    (current subject first, every ordered choice of the k − 1 others)."""
    caps = [ph.caption for s in subject_set for ph in subject_set.photos(s.key)]
    return _with_composites(caps, subject_set.keys, lambda x: subject_set.subject(x).phrase, k, mix)


def class_captions(class_photos: dict[str, list], class_names: dict[str, str], keys: list[str], k: int, mix: str) -> list[str]:
    """Every caption a prior-preservation (class) example can have."""
    caps = [ph.caption for key in keys for ph in class_photos[key]]
    return _with_composites(caps, keys, lambda x: class_names[x], k, mix)


def default_validation_prompts(subject_set, k: int) -> list[str]:
    """"a photo of a {A} and a {B}" for the first k subjects, then each subject alone."""
    phrases = [s.phrase for s in subject_set]
    if len(phrases) == 1:  # a single-subject run (--only)
        return [f"a photo of a {phrases[0]}"]
    first = phrases[: max(2, min(k, len(phrases)))]
    body = ", ".join(f"a {p}" for p in first[:-1]) + f" and a {first[-1]}"
    return [f"a photo of {body}"] + [f"a photo of a {p}" for p in phrases]


def fill_subjects(prompt: str, subject_set) -> str:
    """Replace ``{key}`` (e.g. ``{a}``) by that subject's phrase ("olis corgi")."""
    for s in subject_set:
        prompt = prompt.replace("{" + s.key + "}", s.phrase)
    return prompt


# ============================================================================ schedule


class ExampleSchedule:
    """Which photo is example number ``e`` and which random streams it uses.

    Photos are visited in a fresh permutation every epoch (epoch = e // number of photos).
    Everything is a function of ``(seed, e)``: no hidden sampler state, so resuming at any
    step reproduces the uninterrupted run exactly.
    """

    def __init__(self, subject_set, seed: int, extra: int = 0):
        self.items = [(s.key, i) for s in subject_set for i in range(len(subject_set.photos(s.key)))]
        self.items += [(EXTRA_KEY, i) for i in range(extra)]  # whole-image examples (--extra-examples)
        self.seed = int(seed)
        self._perm: tuple[int, np.ndarray] | None = None

    def item(self, e: int) -> tuple[str, int]:
        """(subject key, photo index) of example ``e``."""
        n = len(self.items)
        epoch, pos = divmod(int(e), n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, 1, epoch]).permutation(n))
        return self.items[int(self._perm[1][pos])]

    def numpy_rng(self, e: int) -> np.random.Generator:
        """The Seg-Mix random stream of example ``e``."""
        return np.random.default_rng([self.seed, 2, int(e)])

    def crop_rng(self, e: int) -> np.random.Generator:
        """The random-crop stream of example ``e`` (plain photos with ``--plain-crop random``)."""
        return np.random.default_rng([self.seed, 4, int(e)])

    def torch_generator(self, e: int) -> torch.Generator:
        """The noise stream of example ``e`` (VAE sample, diffusion noise, timestep)."""
        seed = int(np.random.default_rng([self.seed, 3, int(e)]).integers(0, 2**62))
        return torch.Generator("cpu").manual_seed(seed)

    def state(self, next_example: int) -> dict[str, Any]:
        """What a checkpoint records about the schedule (informational: it has no state)."""
        return {"kind": "seeded-counter", "seed": self.seed, "next_example": int(next_example), "photos": len(self.items)}


# ============================================================================ micro-batches


@dataclass
class MicroBatch:
    """The examples of one micro-batch: latents (instance and class), their captions and noise."""

    roles: list[str] = field(default_factory=list)  # "instance" or "class" per row
    latents: list[torch.Tensor] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # plain / segmix / cutmix
    weights: list[torch.Tensor] = field(default_factory=list)  # mask loss weights of every row (alpha < 1)
    noise: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)


class MicroBatchBuilder:
    """Builds micro-batch number ``g`` (global over processes) from the schedule.

    Instance examples are :meth:`Composer.example` with the plain ones taken from a cache (their
    resize/crop and VAE encoding done once); with prior preservation each instance example gets a
    class example mixed like it. Random draws per example, in order: the Seg-Mix decision and
    draws (numpy stream), then per row the VAE sample noise, the diffusion noise, the timestep.
    """

    def __init__(self, *, composer, schedule: ExampleSchedule, latents, plain_examples: dict, batch_size: int,
                 p: float, mix: str, loss_alpha: float, num_train_timesteps: int = 1000, loss_mask: str = "composites",
                 class_photos: dict | None = None, class_names: dict | None = None,
                 segmix_start_step: int = 0, examples_per_step: int = 1,
                 draw_timestep: Callable[[torch.Generator], torch.Tensor] | None = None, plain_crop: str = "center"):
        self.composer, self.schedule, self.latents = composer, schedule, latents
        self.plain_examples = plain_examples
        self.batch_size, self.p, self.mix, self.loss_alpha = batch_size, p, mix, loss_alpha
        self.loss_mask = loss_mask
        self.num_train_timesteps = num_train_timesteps
        self.draw_timestep = draw_timestep or self._uniform_timestep  # the objective's (flow: a σ)
        self.class_photos, self.class_names = class_photos, class_names
        self.segmix_start_step, self.examples_per_step = segmix_start_step, examples_per_step
        self.plain_crop = plain_crop  # "random": plain photos cropped anew per example (crop stream of e)

    def instance_example(self, key: str, idx: int, rng: np.random.Generator, e: int = 0):
        """Composer.example, with the plain examples taken from the cache.

        Same random draws as Composer.example: one ``rng.random()`` decides (always drawn),
        then Composer.composite draws the rest for a composite. Example ``e`` belongs to
        optimizer step ``e // examples_per_step``; before ``segmix_start_step`` it is plain.
        """
        started = e // self.examples_per_step >= self.segmix_start_step
        if key == EXTRA_KEY:  # a kept whole image: always as it is
            return self.plain_examples[(key, idx)]
        if rng.random() < self.p and self.mix != "none" and started:
            return self.composer.composite(key, idx, rng)
        return self.plain_examples[(key, idx)]

    def build(self, g: int) -> MicroBatch:
        """Micro-batch number ``g``."""
        batch = MicroBatch()
        for b in range(self.batch_size):
            e = g * self.batch_size + b
            key, idx = self.schedule.item(e)
            rng, gen = self.schedule.numpy_rng(e), self.schedule.torch_generator(e)
            ex = self.instance_example(key, idx, rng, e)
            pairs = [("instance", ex)]
            if self.class_photos is not None:
                pairs.append(("class", self.composer.mix_like(self.class_photos, ex, rng, class_names=self.class_names)))
            if self.plain_crop == "random" and ex.kind == "plain":
                crop = self.schedule.crop_rng(e)  # instance crop first, then the class photo's
                pairs = [(role, self.random_crop(x, role, crop)) for role, x in pairs]
            for role, x in pairs:
                self._add_row(batch, role, x, gen)
        return batch

    def _add_row(self, batch: MicroBatch, role: str, x, gen: torch.Generator) -> None:
        from mudi.compose import loss_weight_map

        z = self.latents.sample(self._distribution(role, x), gen)
        batch.roles.append(role)
        batch.latents.append(z)
        batch.captions.append(x.caption)
        batch.kinds.append(x.kind)
        if self.loss_alpha < 1.0:
            grid = tuple(z.shape[-2:])
            weighted = x.kind != "plain" if self.loss_mask == "composites" else role == "instance"
            w = loss_weight_map(x.mask, self.loss_alpha, grid) if weighted else np.ones(grid, np.float32)
            batch.weights.append(torch.from_numpy(w)[None, None])
        batch.noise.append(torch.randn(z.shape, generator=gen, dtype=torch.float32))
        batch.timesteps.append(self.draw_timestep(gen))

    def _uniform_timestep(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (1,), generator=gen)

    def random_crop(self, x, role: str, rng: np.random.Generator):
        """Plain example ``x`` cropped at a random offset of its resized photo (two draws, always);
        ``x`` itself when the resized photo is square (its only crop)."""
        from mudi.compose import plain, plain_resized_size

        pl, size = x.placements[0], self.composer.size
        photos = self.composer.set.photos(pl.key) if role == "instance" else self.class_photos[pl.key]
        ph = photos[pl.photo]
        nw, nh = plain_resized_size(ph, size)
        offset = (int(rng.integers(0, nw - size + 1)), int(rng.integers(0, nh - size + 1)))
        if (nw, nh) == (size, size):
            return x
        return plain(ph, size, x.caption, key=pl.key, photo_index=pl.photo, offset=offset)

    def _distribution(self, role: str, x):
        """The VAE latent distribution of an example: cached for plain photos with a single crop
        (every one with ``--plain-crop center``) and extra examples, encoded for composites and random crops."""
        random = x.kind == "plain" and self.plain_crop == "random" and not single_crop(x)
        if x.kind not in ("plain", EXTRA_KIND) or random:
            return self.latents.distribution(x.image)
        pl = x.placements[0]
        owner = pl.key if role == "instance" else self.class_names[pl.key]
        return self.latents.cached((role, owner, pl.photo), x.image)


def single_crop(x) -> bool:
    """Whether plain example ``x`` is the only S×S crop of its resized photo (a square photo)."""
    x0, y0, x1, y1 = x.placements[0].box
    return (x1 - x0, y1 - y0) == x.image.size


class BatchPrefetcher:
    """Builds micro-batches in one background thread, in the order they will be asked for, up to
    ``depth`` ahead: the Seg-Mix composites and their VAE encoding overlap the denoiser's steps.

    A micro-batch is a pure function of its number (see :class:`ExampleSchedule`) and a single
    worker builds them one after the other, so the batches and their order are those of building
    them on the main thread.
    """

    def __init__(self, build: Callable[[int], MicroBatch], order: Iterable[int], depth: int = 2):
        self._build, self._order = build, iter(order)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mudi-batches")
        self._pending: deque[tuple[int, Future]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        g = next(self._order, None)
        if g is not None:
            self._pending.append((g, self._pool.submit(self._build, g)))

    def get(self, g: int) -> MicroBatch:
        """Micro-batch ``g`` (the next one in the order given; an error in the worker is raised here)."""
        if not self._pending or self._pending[0][0] != g:
            expected = self._pending[0][0] if self._pending else None
            raise RuntimeError(f"micro-batch {g} asked for, but the prefetcher's next one is {expected}")
        _, future = self._pending.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        """Stop the worker (batches not started are dropped; a running one is waited for)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


__all__ = ["BatchPrefetcher", "ExampleSchedule", "MicroBatch", "MicroBatchBuilder", "class_captions", "single_crop", "default_validation_prompts",
           "fill_subjects", "subject_captions"]
