"""Image embedders for Detect-and-Compare, and the per-subject reference-embedding cache.

Both embedders implement :class:`mudi.protocols.Embedder` (``embed(images) -> (N, D)``
L2-normalised float32):

- :class:`Dinov2Embedder` — D&C-DINO: a DINOv2 model (``transformers.Dinov2Model`` loaded
  through :func:`mudi.models.loading.load_dinov2`); the embedding is the mean of **all** output tokens
  of ``last_hidden_state`` (CLS and patch tokens), L2-normalised. Images go through the model in
  batches of ``batch_size``.
- :class:`DreamSimEmbedder` — D&C-DS: the ``dreamsim`` package (optional extra
  ``pip install mudi[dreamsim]``; it is imported only when this class is instantiated), with
  weights only from the folder given as ``--dreamsim-cache``.

:class:`ReferenceEmbeddings` embeds each subject's reference photos once and keeps them, so an
evaluation of N images embeds the references K·n times in total instead of N·K·n times.

Embedders are built by name with :func:`mudi.evaluate.registry.make_embedder`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError
from mudi.protocols import Embedder

def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class Dinov2Embedder:
    """DINOv2 embeddings: mean of all output tokens, L2-normalised (D&C-DINO).

    Args:
        model: a model folder or hub id (default ``facebook/dinov2-base``, as in the paper), or
            an already loaded ``(model, processor)`` pair.
        device: ``"cpu"``, ``"cuda"``, …
        batch_size: images per forward pass.
    """

    #: what ``model=None`` loads (``None``: facebook/dinov2-base), and the kind named in loading errors
    DEFAULT_MODEL: str | None = None
    KIND = "dinov2"
    #: ``mean`` of all output tokens (D&C-DINO) or the ``cls`` token alone (DreamBench's DINO)
    POOLING = "mean"

    def __init__(self, model=None, *, device: str = "cpu", batch_size: int = 16):
        import torch

        from mudi.models.loading import DEFAULT_DINO, load_dinov2, model_pair

        default = self.DEFAULT_MODEL or DEFAULT_DINO
        self.model, self.processor, self.name = model_pair(model, load_dinov2, default=default, kind=self.KIND,
                                                           device=device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        #: number of images embedded so far (handy to check that references are embedded once)
        self.n_embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        images = [im.convert("RGB") for im in images]
        if not images:
            return np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        out = []
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            for chunk in _batches(images, self.batch_size):
                inputs = self.processor(images=list(chunk), return_tensors="pt")
                pixel_values = inputs["pixel_values"].to(self.device, dtype)
                hidden = self.model(pixel_values=pixel_values).last_hidden_state  # (B, T, D)
                pooled = hidden[:, 0].float() if self.POOLING == "cls" else hidden.float().mean(dim=1)
                out.append(pooled.cpu().numpy())
        self.n_embedded += len(images)
        return _l2(np.concatenate(out, axis=0))

    def __repr__(self) -> str:
        return f"Dinov2Embedder({self.name!r})"


class DreamSimEmbedder:
    """DreamSim embeddings (D&C-DS), from the optional ``dreamsim`` package.

    The weights come only from ``cache_dir`` (``--dreamsim-cache``): nothing is downloaded and
    no ``torch.hub`` code runs (see :mod:`mudi.evaluate.dreamsim`).
    """

    def __init__(self, *, device: str = "cpu", batch_size: int = 16, cache_dir: str | None = None,
                 dreamsim_type: str = "ensemble"):
        import torch

        from mudi.evaluate.dreamsim import load_dreamsim

        self.model, self.preprocess = load_dreamsim(cache_dir, device=str(device), dreamsim_type=dreamsim_type)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.name = f"dreamsim-{dreamsim_type}"
        self.n_embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _batches([im.convert("RGB") for im in images], self.batch_size):
                x = torch.cat([self.preprocess(im) for im in chunk], dim=0).to(self.device)
                out.append(self.model.embed(x).float().cpu().numpy())
        self.n_embedded += len(images)
        if not out:
            return np.zeros((0, 1), dtype=np.float32)
        return _l2(np.concatenate(out, axis=0))

    def __repr__(self) -> str:
        return f"DreamSimEmbedder({self.name!r})"


# ----------------------------------------------------------------------------- references

def masked_reference(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The subject alone: mask-bbox crop with the background painted white, padded square."""
    from mudi.evaluate.dnc import pad_to_square
    from mudi.geometry import mask_bbox

    x0, y0, x1, y1 = mask_bbox(mask)
    arr = np.where(mask[..., None], image, 255).astype(np.uint8)[y0:y1, x0:x1]
    return pad_to_square(Image.fromarray(arr))


class ReferenceEmbeddings:
    """Reference-photo embeddings of each subject of a set, computed once and reused.

    ``refs[key]`` is an (n_k, D) array; :meth:`ground_truth` gives S_GT for any ordered list of
    subject keys (cached per tuple). Photos of all requested subjects not yet embedded go through
    the embedder together, in its own batches.

    Args:
        subject_set: a :class:`mudi.subjects.SubjectSet`.
        embedder: any :class:`~mudi.protocols.Embedder`.
        mode: ``"whole"`` (default, as in the paper: the reference photo as it is) or
            ``"masked"`` (the subject cut out with its mask on white, padded square — closer to
            what the detected crops look like).
    """

    MODES = ("whole", "masked")

    def __init__(self, subject_set, embedder: Embedder, *, mode: str = "whole"):
        if mode not in self.MODES:
            raise MudiError(f"reference mode {mode!r} is unknown; choose one of {', '.join(self.MODES)}.")
        self.subject_set = subject_set
        self.embedder = embedder
        self.mode = mode
        self._refs: dict[str, np.ndarray] = {}
        self._gt: dict[tuple[str, ...], np.ndarray] = {}

    def _images(self, key: str) -> list[Image.Image]:
        photos = self.subject_set.photos(key)
        if self.mode == "masked":
            return [masked_reference(p.image, p.mask) for p in photos]
        return [Image.fromarray(p.image) for p in photos]

    def ensure(self, keys: Sequence[str]) -> None:
        """Embed the references of every key not embedded yet (one embedder call)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._refs]
        if not todo:
            return
        images: list[Image.Image] = []
        counts: list[int] = []
        for k in todo:
            ims = self._images(k)
            if not ims:
                raise MudiError(f"subject {k!r} has no reference photos.")
            images.extend(ims)
            counts.append(len(ims))
        emb = np.asarray(self.embedder.embed(images), dtype=np.float32)
        if emb.shape[0] != len(images):
            raise MudiError(f"embedder {self.embedder!r} returned {emb.shape[0]} rows for {len(images)} images.")
        start = 0
        for k, n in zip(todo, counts):
            self._refs[k] = emb[start : start + n]
            start += n

    def get(self, key: str) -> np.ndarray:
        self.ensure([key])
        return self._refs[key]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.get(key)

    def for_keys(self, keys: Sequence[str]) -> list[np.ndarray]:
        self.ensure(keys)
        return [self._refs[k] for k in keys]

    def ground_truth(self, keys: Sequence[str]) -> np.ndarray:
        """S_GT for the subjects ``keys`` in this order (K × K), cached."""
        from mudi.evaluate.dnc import ground_truth_similarity

        t = tuple(keys)
        if t not in self._gt:
            self._gt[t] = ground_truth_similarity(self.for_keys(t))
        return self._gt[t]


__all__ = [
    "Dinov2Embedder",
    "DreamSimEmbedder",
    "ReferenceEmbeddings",
    "masked_reference",
]
