"""Horizontal slots shared by Seg-Mix and Cut-Mix: the canvas is split into k equal vertical
slots ``[round(i·S/k), round((i+1)·S/k))`` and a random permutation decides which subject takes
which slot."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mudi.errors import MudiError


def slot_bounds(size: int, k: int) -> list[tuple[int, int]]:
    """The k equal vertical slots ``[round(i·S/k), round((i+1)·S/k))``."""
    edges = [round(i * size / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def assign_slots(k: int, rng: np.random.Generator, slots: Sequence[int] | None, where: str) -> list[int]:
    """The slot of each subject: a random permutation of 0..k-1 (one draw), or ``slots`` checked."""
    if slots is None:
        return [int(v) for v in rng.permutation(k)]
    slot_of = [int(v) for v in slots]
    if sorted(slot_of) != list(range(k)):
        raise MudiError(f"{where}: slots {slot_of} must be a permutation of 0..{k - 1}.")
    return slot_of


def anchor(slot: int, k: int) -> str:
    """How a subject sits in its slot: ``left`` of the middle, ``right`` of it, or ``center``."""
    mid = (k - 1) / 2
    if slot < mid:
        return "left"
    if slot > mid:
        return "right"
    return "center"


__all__ = ["anchor", "assign_slots", "slot_bounds"]
