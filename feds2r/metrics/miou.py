"""Confusion-matrix mIoU over a whole dataset.

Intersections and unions are accumulated over every pixel of the evaluation set and reduced once
at the end (as mmsegmentation's ``IoUMetric``); mIoU is never averaged over batches or images.
Ignore pixels (255) count nowhere.

Which classes the mean counts (``classes``, :data:`MIOU_CLASSES`):

- ``"official"`` (the default): every class whose union is not empty, i.e. present in the ground
  truth *or* predicted. A class the model predicts but the ground truth lacks scores 0 and counts;
  a class neither present nor predicted has no IoU (NaN) and is left out. This is how
  cityscapesScripts (``getIouScoreForLabel``: ``tp / (tp + fp + fn)``, NaN only when that sum is
  0; ``getScoreAverage`` skips NaN) and mmsegmentation (``total_area_to_metrics``: intersect /
  union, then ``nanmean``) count, so figures compare with published ones (docs/evaluation.md).
- ``"present"``: only the classes that occur in the ground truth; a predicted-but-absent class is
  left out (its false positives still lower the IoU of the true classes of those pixels).
  feds2r's convention before the official one became the default, kept for comparisons with
  figures made that way.

When every class occurs in the ground truth the two are equal.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from feds2r.errors import Feds2rError

MIOU_CLASSES = ("official", "present")
"""The conventions of which classes the mean over classes counts (see the module docstring)."""

DEFAULT_MIOU_CLASSES = "official"
"""The convention every evaluation uses unless told otherwise: cityscapesScripts' and mmseg's."""


def check_miou_classes(classes: str) -> str:
    """``classes`` if it is one of :data:`MIOU_CLASSES`, else an error naming them."""
    if classes not in MIOU_CLASSES:
        raise Feds2rError(
            f"unknown mIoU convention {classes!r}; valid: {', '.join(MIOU_CLASSES)} "
            "(docs/evaluation.md)"
        )
    return classes


def iou_from_counts(
    tp: np.ndarray, gt: np.ndarray, pred: np.ndarray, classes: str = DEFAULT_MIOU_CLASSES
) -> np.ndarray:
    """Per-class IoU (float64, same shape as the inputs, (..., K)) from per-class true positives
    ``tp``, ground-truth pixels ``gt`` and predicted pixels ``pred``; NaN for a class that
    ``classes`` leaves out of the mean (no union for "official", no ground truth for "present").
    """
    check_miou_classes(classes)
    tp, gt, pred = (np.asarray(a, dtype=np.float64) for a in (tp, gt, pred))
    union = gt + pred - tp
    counted = union > 0 if classes == "official" else gt > 0
    iou = tp / np.maximum(union, 1)
    return np.where(counted, iou, np.nan)


def class_iou(matrix: np.ndarray | Tensor, classes: str = DEFAULT_MIOU_CLASSES) -> np.ndarray:
    """Per-class IoU of a confusion matrix (K, K) (``matrix[t, p]``) or a batch of them
    (R, K, K) -> (K,) or (R, K); NaN for the classes ``classes`` leaves out of the mean."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    return iou_from_counts(tp, m.sum(axis=-1), m.sum(axis=-2), classes)


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


def iou_summary(iou: np.ndarray, gt: np.ndarray, pixel_acc: float, classes: str) -> dict:
    """The summary of per-class IoU ``iou`` (K,) (NaN: left out of the mean) with the per-class
    ground-truth pixels ``gt`` (K,): ``miou`` and ``pixel_acc`` (percent), ``per_class``
    (percent or None), ``classes_present`` (classes in the ground truth), ``classes_counted``
    (classes in the mean), ``miou_classes`` (the convention) and ``pixels`` (labelled)."""
    counted = ~np.isnan(iou)
    return {
        "miou": float(np.mean(iou[counted]) * 100) if counted.any() else float("nan"),
        "pixel_acc": pixel_acc,
        "per_class": [None if np.isnan(v) else float(v * 100) for v in iou],
        "classes_present": int(np.count_nonzero(np.asarray(gt) > 0)),
        "classes_counted": int(counted.sum()),
        "miou_classes": classes,
        "pixels": int(np.sum(gt)),
    }


class ConfusionMatrix:
    """``matrix[t, p]``: number of pixels of ground-truth class t predicted as class p."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add predictions and labels of any equal shape (train ids; 255 in ``target`` ignored)."""
        self.matrix += pair_counts(target, pred, self.num_classes, self.num_classes, "prediction")

    def iou(self, classes: str = DEFAULT_MIOU_CLASSES) -> np.ndarray:
        """Per-class IoU (K,), NaN for the classes ``classes`` leaves out of the mean (see
        :data:`MIOU_CLASSES`)."""
        return class_iou(self.matrix, classes)

    def summary(self, classes: str = DEFAULT_MIOU_CLASSES) -> dict:
        """``miou``, ``pixel_acc`` (percent), ``per_class`` IoU (percent or None), the classes
        present and counted, the convention (``miou_classes``) and ``pixels``; ``classes``: which
        classes the mean counts (:data:`MIOU_CLASSES`)."""
        m = self.matrix
        labelled = int(m.sum())
        pixel_acc = float(m.diag().sum() / max(labelled, 1) * 100)
        return iou_summary(self.iou(classes), m.sum(dim=1).numpy(), pixel_acc, classes)


__all__ = [
    "CLASS_NAMES",
    "DEFAULT_MIOU_CLASSES",
    "MIOU_CLASSES",
    "ConfusionMatrix",
    "check_miou_classes",
    "class_iou",
    "iou_from_counts",
    "iou_summary",
    "pair_counts",
]
