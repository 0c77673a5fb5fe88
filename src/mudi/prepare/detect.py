"""Open-vocabulary detection with OWLv2 (implements :class:`mudi.protocols.Detector`).

OWLv2 pads every image to a square (at the bottom and right) before resizing it, and predicts
boxes relative to that padded square. :class:`Owlv2Detector` therefore scales the boxes by the
padded side ``max(h, w)`` and clamps them to the real image, so the boxes it returns are in
pixels of the image that was passed in. Boxes that fall entirely into the padding are dropped.

OWLv2 predicts one box per image patch, so a single object is often found several times by
neighbouring patches. By default overlapping boxes (IoU > 0.5, whatever their query) are merged
by non-maximum suppression, keeping the highest score; pass ``nms_iou=None`` to get the raw
boxes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mudi.errors import MudiError
from mudi.geometry import box_iou, clamp_box
from mudi.protocols import Detection

#: Default IoU above which two boxes count as the same object.
DEFAULT_NMS_IOU = 0.5


def nms(detections: Sequence[Detection], iou: float) -> list[Detection]:
    """Class-agnostic non-maximum suppression: keep the best box of every overlapping group."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(box_iou(det.box, k.box) <= iou for k in kept):
            kept.append(det)
    return kept


class Owlv2Detector:
    """OWLv2 text-queried detector.

    Args:
        model: a model name for :func:`mudi.models.loading.load_owlv2` (hub id or local folder,
            default :data:`mudi.models.loading.DEFAULT_DETECTOR`), or an already loaded
            ``(Owlv2ForObjectDetection, Owlv2Processor)`` pair.
        device: where to run the model (``"cpu"``, ``"cuda"``); ignored for a loaded pair
            except that inputs are moved to the model's device.
        batch_size: images per forward pass.
        nms_iou: IoU for class-agnostic non-maximum suppression, or ``None`` for raw boxes.
    """

    def __init__(
        self,
        model: str | tuple[Any, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 4,
        nms_iou: float | None = DEFAULT_NMS_IOU,
    ):
        from mudi.models.loading import DEFAULT_DETECTOR, load_owlv2, model_pair

        self.model, self.processor, self.name = model_pair(model, load_owlv2, default=DEFAULT_DETECTOR, kind="owlv2",
                                                           device=device, dtype=dtype)
        if batch_size < 1:
            raise MudiError(f"detector batch size must be >= 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.nms_iou = nms_iou

    @torch.no_grad()
    def detect(
        self, images: Sequence[Image.Image], queries: Sequence[str], threshold: float
    ) -> list[list[Detection]]:
        """Detections per image for all ``queries`` at once, with score >= ``threshold``.

        Boxes are in pixels of each input image (x1/y1 exclusive), clamped to the image;
        ``label`` indexes ``queries``. Detections are sorted by decreasing score.
        """
        queries = [str(q) for q in queries]
        if not queries:
            raise MudiError("the detector needs at least one text query.")
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            results.extend(self._detect_batch(batch, queries, threshold))
        return results

    def _detect_batch(self, images: list[Image.Image], queries: list[str], threshold: float) -> list[list[Detection]]:
        inputs = self.processor(text=[queries] * len(images), images=images, return_tensors="pt")
        device = self.model.device
        dtype = self.model.dtype
        inputs = {
            k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        outputs = self.model(**inputs)
        # Boxes are predicted relative to the zero-padded square (padding at bottom/right):
        # scale by the square's side, then clamp to the real image.
        squares = [(max(im.height, im.width),) * 2 for im in images]
        post = getattr(self.processor, "post_process_grounded_object_detection", None)
        if post is None:  # older transformers
            post = self.processor.post_process_object_detection
        # post-processing keeps scores strictly above its threshold; filter >= ourselves
        raw = post(outputs=outputs, threshold=-1.0, target_sizes=squares)
        out: list[list[Detection]] = []
        for im, res in zip(images, raw):
            dets: list[Detection] = []
            scores = res["scores"].float().cpu().numpy()
            labels = res["labels"].cpu().numpy()
            boxes = res["boxes"].float().cpu().numpy()
            keep = np.isfinite(scores) & (scores >= threshold)
            for score, label, box in zip(scores[keep], labels[keep], boxes[keep]):
                x0, y0, x1, y1 = clamp_box(box, im.size)
                if x1 - x0 < 1.0 or y1 - y0 < 1.0:  # outside the image (in the padding) or degenerate
                    continue
                dets.append(Detection((x0, y0, x1, y1), float(score), int(label)))
            dets.sort(key=lambda d: -d.score)
            if self.nms_iou is not None:
                dets = nms(dets, self.nms_iou)
            out.append(dets)
        return out


__all__ = ["DEFAULT_NMS_IOU", "Owlv2Detector", "nms"]
