"""Box-prompted segmentation (implements :class:`mudi.protocols.Segmenter`).

- :class:`SamSegmenter`: Segment Anything with one box prompt and a single mask
  (``multimask_output=False``), post-processed back to the photo's own size. This is what
  METHOD.md §1 prescribes. :meth:`SamSegmenter.candidates` gives SAM's three multimask candidates
  with their predicted IoU, for a user to choose from.
- :class:`GrabCutSegmenter`: OpenCV GrabCut initialised from the box. It needs **no model
  weights** and is a fallback only: its masks are rougher than SAM's (check the contact sheet).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from mudi.errors import MudiError
from mudi.geometry import pixel_box


class SamSegmenter:
    """Segment Anything (transformers ``SamModel``) prompted with one box.

    Args:
        model: a name for :func:`mudi.models.loading.load_sam` (hub id or local folder, default
            :data:`mudi.models.loading.DEFAULT_SEGMENTER`), or a loaded ``(SamModel, SamProcessor)`` pair.
        device, dtype: where and how to run the model when loading it by name.
    """

    label = "SAM"

    def __init__(
        self,
        model: str | tuple[Any, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        from mudi.models.loading import DEFAULT_SEGMENTER, load_sam, model_pair

        self.model, self.processor, self.name = model_pair(model, load_sam, default=DEFAULT_SEGMENTER, kind="sam",
                                                           device=device, dtype=dtype)

    def segment(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        """Bool mask (H, W) of the object in ``box`` (pixels of ``image``)."""
        return self._predict(image, box, multimask=False)[0][0]

    def candidates(self, image: Image.Image, box: tuple[float, float, float, float]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """SAM's multimask output for ``box``: bool masks (3, H, W) and their predicted IoU scores
        (3,), best score first (the user picks one when the single mask is wrong)."""
        masks, scores = self._predict(image, box, multimask=True)
        order = np.argsort(-scores, kind="stable")
        return masks[order], scores[order]

    @torch.no_grad()
    def _predict(self, image: Image.Image, box: tuple[float, float, float, float], *, multimask: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(bool masks (K, H, W) at the photo's size, predicted IoU scores (K,)) for one box."""
        image = image.convert("RGB")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise MudiError(f"invalid box {box!r} for segmentation: need x0 < x1 and y0 < y1.")
        inputs = self.processor(images=image, input_boxes=[[[x0, y0, x1, y1]]], return_tensors="pt")
        original_sizes = inputs["original_sizes"]
        reshaped_sizes = inputs["reshaped_input_sizes"]
        device, dtype = self.model.device, self.model.dtype
        model_inputs = {
            k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor) and k not in ("original_sizes", "reshaped_input_sizes")
        }
        outputs = self.model(**model_inputs, multimask_output=multimask)
        masks = self.processor.image_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), original_sizes.cpu(), reshaped_sizes.cpu()
        )
        mask = masks[0]  # (boxes=1, masks=K, H, W)
        stack = np.asarray(mask.reshape(-1, mask.shape[-2], mask.shape[-1]).numpy()).astype(bool)
        if stack.shape[1:] != (image.height, image.width):  # defensive: must be the photo's size
            stack = np.stack([np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(image.size, Image.NEAREST))
                              >= 128 for m in stack])
        scores = outputs.iou_scores.float().cpu().reshape(-1).numpy()
        return stack, scores


class GrabCutSegmenter:
    """Weight-free fallback: OpenCV GrabCut initialised with the box (rougher than SAM).

    Args:
        iterations: GrabCut iterations.
        max_side: photos larger than this are segmented at this size and the mask is scaled
            back (GrabCut is slow on large images).
        seed: OpenCV RNG seed set before every call, so a photo always gets the same mask.
    """

    label = "GrabCut (weight-free fallback, not SAM)"
    name = "grabcut"

    def __init__(self, iterations: int = 5, max_side: int = 512, seed: int = 0):
        self.iterations = int(iterations)
        self.max_side = int(max_side)
        self.seed = int(seed)

    def segment(self, image: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
        """Bool mask (H, W) of the object in ``box``: GrabCut's (probable) foreground."""
        image = image.convert("RGB")
        W, H = image.size
        scale = min(1.0, self.max_side / max(W, H))
        work = image
        if scale < 1.0:
            work = image.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.BILINEAR)
        w, h = work.size
        x0, y0, x1, y1 = pixel_box([v * scale for v in box], (w, h))
        bgr = np.ascontiguousarray(np.asarray(work)[:, :, ::-1])
        if x1 - x0 < 2 or y1 - y0 < 2:
            small = np.zeros((h, w), bool)
            small[y0:y1, x0:x1] = True
        elif x0 == 0 and y0 == 0 and x1 == w and y1 == h:
            # A box covering the whole image leaves GrabCut no background sample: use a
            # one-pixel inset so the border is the background model.
            small = self._grabcut(bgr, (1, 1, max(1, w - 2), max(1, h - 2)))
        else:
            small = self._grabcut(bgr, (x0, y0, x1 - x0, y1 - y0))
        if scale < 1.0:
            mask = np.asarray(Image.fromarray(small.astype(np.uint8) * 255).resize((W, H), Image.BILINEAR)) >= 128
        else:
            mask = small
        return mask

    def _grabcut(self, bgr: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        import cv2

        mask = np.zeros(bgr.shape[:2], np.uint8)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)  # GrabCut's k-means initialisation draws from OpenCV's global RNG
        try:
            cv2.grabCut(bgr, mask, rect, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            # e.g. a single-colour image (no colour models to fit): report an empty mask, so
            # the photo is listed as failed instead of getting a made-up mask
            return np.zeros(bgr.shape[:2], bool)
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


__all__ = ["GrabCutSegmenter", "SamSegmenter"]
