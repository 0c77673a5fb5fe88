"""Captions of the toy world: the caption grammar, made-up words, and whole captioned datasets.

Captions list the objects left to right ("a photo of a striped red circle and a blue square on
grass"); see :func:`caption`. Split from :mod:`mudi.toy.world`, which draws the scenes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mudi.toy.world import BACKGROUNDS, RESERVED_WORDS, Scene, ToyObject, render_scene, sample_scene


def object_phrase(obj: ToyObject, with_colour: bool = True, with_texture: bool = True) -> str:
    words = []
    if with_texture and obj.texture != "plain":
        words.append(obj.texture)
    if with_colour:
        words.append(obj.colour)
    words.append(obj.shape)
    return " ".join(words)


def join_phrases(phrases: Sequence[str]) -> str:
    """'a x', 'a x and a y', 'a x, a y and a z'."""
    items = [f"a {p}" for p in phrases]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


_CONSONANTS = "bcdfghjklmnprstvwxz"
_VOWELS = "aeiouy"


def made_up_word(rng: np.random.Generator) -> str:
    """A random pronounceable 3-5 letter word (like the identifiers users pick: "sks", "olis").

    Never one of :data:`RESERVED_WORDS` (the training recipe of the shipped model relies on it).
    """
    while True:
        n = int(rng.integers(3, 6))
        start = int(rng.integers(0, 2))
        word = "".join(
            str(rng.choice(list(_CONSONANTS if (i + start) % 2 == 0 else _VOWELS))) for i in range(n)
        )
        if word not in RESERVED_WORDS:
            return word


def caption(
    scene: Scene, rng: np.random.Generator | None = None, p_drop_attr: float = 0.15, p_made_up: float = 0.0
) -> str:
    """Caption from the grammar, objects listed left to right.

    With `rng`, each object independently drops its colour / texture word with probability
    `p_drop_attr` (so the model also learns bare class phrases like "a circle"), and, with
    probability `p_made_up`, gets a made-up word in front of its class word ("a striped
    vokip circle"). The latter teaches the base model what a real text-to-image model already
    knows: an unknown word in front of a class word still means an object of that class, which
    is what DreamBooth identifiers ("a wip circle") rely on.
    """
    objs = sorted(scene.objects, key=lambda o: o.cx)
    phrases = []
    for o in objs:
        wc = wt = True
        if rng is not None:
            wc = rng.random() >= p_drop_attr
            wt = rng.random() >= p_drop_attr
        phrase = object_phrase(o, wc, wt)
        if rng is not None and p_made_up > 0 and rng.random() < p_made_up:
            words = phrase.split()
            phrase = " ".join(words[:-1] + [made_up_word(rng), words[-1]])
        phrases.append(phrase)
    return "a photo of " + join_phrases(phrases) + BACKGROUNDS[scene.background]


def render_dataset(n: int, seed: int, resolution: int = 64) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` random scenes: uint8 images (n, R, R, 3), captions, scene descriptions."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    caps: list[str] = []
    scenes: list[Scene] = []
    for i in range(n):
        sc = sample_scene(rng, resolution)
        images[i], _ = render_scene(sc)
        caps.append(caption(sc, rng))
        scenes.append(sc)
    return images, caps, scenes
