"""Text fidelity: does the image show what the prompt says (identifiers removed)?

The paper scores text fidelity against the prompt *with the identifier tokens removed and the
descriptive classes kept* ("CLIPs+", "ImageReward+"): "a olis corgi and a hta chow chow on the
beach" is scored as "a corgi and a chow chow on the beach", because a CLIP model has never seen
"olis". :func:`fidelity_prompt` makes that text (via :meth:`SubjectSet.strip_identifiers`).

- :class:`ClipScorer` — CLIP score with ``transformers.CLIPModel`` (loaded through
  :func:`mudi.models.loading.load_clip`). **Convention**: ``100 · max(cos(image, text), 0)``, the
  CLIPScore of torchmetrics (without the 2.5 weight of Hessel et al. 2021). Typical values for
  SDXL images and ViT-L/14 are ~25–35.
- :class:`ImageRewardScorer` — ImageReward, used only when the optional ``image-reward``
  package is importable (it is imported lazily and never required).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from mudi.errors import MudiError


def fidelity_prompt(prompt: str, subject_set) -> str:
    """The prompt with every identifier of ``subject_set`` removed (classes kept)."""
    return subject_set.strip_identifiers(prompt)


def _features(out):
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")
    return pooled


class ClipScorer:
    """CLIP score ``100 · max(cos, 0)`` of images against texts, batched.

    Args:
        model: a CLIP model folder or hub id (default ``openai/clip-vit-large-patch14``), or a
            loaded ``(CLIPModel, CLIPProcessor)`` pair.
        device: torch device.
        batch_size: images (and texts) per forward pass.
    """

    def __init__(self, model=None, *, device: str = "cpu", batch_size: int = 16):
        import torch

        from mudi.models.loading import DEFAULT_CLIP, load_clip, model_pair

        self.model, self.processor, self.name = model_pair(model, load_clip, default=DEFAULT_CLIP, kind="clip",
                                                           device=device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def image_embeds(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        dtype = next(self.model.parameters()).dtype
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                chunk = [im.convert("RGB") for im in images[i : i + self.batch_size]]
                px = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device, dtype)
                f = _features(self.model.get_image_features(pixel_values=px)).float()
                out.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def text_embeds(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tok = self.processor.tokenizer
        max_len = min(int(getattr(tok, "model_max_length", 77) or 77), 77)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = tok(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                          max_length=max_len, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                f = _features(self.model.get_text_features(**enc)).float()
                out.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """One CLIP score per (image, text) pair: ``100 · max(cos, 0)``."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return np.zeros(0)
        # Embed each distinct text once (a run usually repeats a few prompts many times).
        uniq = list(dict.fromkeys(texts))
        t = self.text_embeds(uniq)
        idx = {s: i for i, s in enumerate(uniq)}
        im = self.image_embeds(images)
        cos = np.einsum("nd,nd->n", im, t[[idx[s] for s in texts]])
        return 100.0 * np.maximum(cos, 0.0)

    def __repr__(self) -> str:
        return f"ClipScorer({self.name!r})"


class ImageRewardScorer:
    """ImageReward (Xu et al. 2023) from the optional ``image-reward`` package.

    Raises :class:`MudiError` if the package is not installed, or is installed but fails to import
    (the message then gives the import error); use :func:`image_reward_available` to check first.
    """

    def __init__(self, name: str = "ImageReward-v1.0", *, device: str = "cpu"):
        from mudi.runtime import import_optional

        RM = import_optional("ImageReward", package="image-reward", extra="imagereward", purpose="--image-reward",
                             instead="leave out --image-reward")
        try:
            self.model = RM.load(name, device=device)
        except Exception as exc:
            raise MudiError(f"ImageReward model {name!r} could not be loaded ({exc.__class__.__name__}: {exc}).") from None
        self.name = name

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        out = []
        for im, t in zip(images, texts):
            s = self.model.score(t, [im.convert("RGB")])
            out.append(float(s[0] if isinstance(s, (list, tuple)) else s))
        return np.asarray(out, dtype=np.float64)


def image_reward_available() -> bool:
    """True when the optional ``image-reward`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("ImageReward") is not None


__all__ = ["ClipScorer", "ImageRewardScorer", "fidelity_prompt", "image_reward_available"]
