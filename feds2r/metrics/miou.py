"""Confusion-matrix mIoU over a whole dataset.

Intersections and unions are accumulated over every pixel of the evaluation set and reduced once
at the end (as mmsegmentation's ``IoUMetric``); mIoU is never averaged over batches or images.
The mean is taken over the classes that occur in that set's ground truth: a class with no ground
truth pixel has no defined IoU (NaN) and is left out, even if the model predicted it (its false
positives still lower the IoU of the true classes of those pixels). Ignore pixels (255) count
nowhere.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def pair_counts(
    target: Tensor, pred: Tensor, num_classes: int, num_pred: int, what: str = "prediction"
) -> Tensor:
    """``counts[t, p]`` (num_classes, num_pred) int64: pixels of ground-truth class t given id p.

    ``target`` and ``pred`` have any equal shape; pixels whose ``target`` is 255 count nowhere;
    an id of ``pred`` outside 0..num_pred-1 is an error (``what`` names ``pred`` in it).
    """
    if pred.shape != target.shape:
        raise ValueError(f"{what} {tuple(pred.shape)} and label {tuple(target.shape)} differ")
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    keep = target != IGNORE_INDEX
    pred, target = pred[keep], target[keep]
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(f"{what} holds ids outside 0..{num_pred - 1}")
    counts = torch.bincount(target * num_pred + pred, minlength=num_classes * num_pred)
    return counts.view(num_classes, num_pred)


class ConfusionMatrix:
    """``matrix[t, p]``: number of pixels of ground-truth class t predicted as class p."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add predictions and labels of any equal shape (train ids; 255 in ``target`` ignored)."""
        self.matrix += pair_counts(target, pred, self.num_classes, self.num_classes, "prediction")

    def iou(self) -> np.ndarray:
        """Per-class IoU (K,), NaN for classes absent from the ground truth."""
        m = self.matrix.double()
        tp = m.diag()
        gt = m.sum(dim=1)
        union = gt + m.sum(dim=0) - tp
        iou = (tp / union.clamp_min(1)).numpy()
        iou[gt.numpy() == 0] = np.nan
        return iou

    def summary(self) -> dict:
        """``miou``, ``pixel_acc`` (percent), ``per_class`` IoU (percent or None), ``pixels``."""
        iou = self.iou()
        present = ~np.isnan(iou)
        m = self.matrix
        labelled = int(m.sum())
        return {
            "miou": float(np.mean(iou[present]) * 100) if present.any() else float("nan"),
            "pixel_acc": float(m.diag().sum() / max(labelled, 1) * 100),
            "per_class": [None if np.isnan(v) else float(v * 100) for v in iou],
            "classes_present": int(present.sum()),
            "pixels": labelled,
        }


__all__ = ["CLASS_NAMES", "ConfusionMatrix"]
