"""The unsupervised evaluation protocol: clusters mapped to classes, then mIoU and pixel accuracy.

A clustering model predicts cluster ids, not classes. As in STEGO and the unsupervised
segmentation literature it builds on (Ji et al., IIC, ICCV 2019), clusters are mapped to the 19
classes by a mapping fitted once on a labelled ``dev`` set and applied unchanged to every test
set:

- ``hungarian``: one-to-one, the assignment of clusters to classes that maximises the number of
  correctly labelled dev pixels (``scipy.optimize.linear_sum_assignment`` on the cluster-by-class
  confusion matrix). With K < 19 some classes get no cluster; with K > 19 the clusters left
  unmatched predict no class, so their pixels count as errors.
- ``majority``: the over-clustering variant (K > 19): each cluster maps to the class most of its
  dev pixels belong to (several clusters may share a class).

Counts are accumulated over whole sets (a (K, 19) confusion matrix) and reduced once, as
:mod:`feds2r.metrics.miou` does, with the same conventions of which classes the mean counts
(``classes``; by default cityscapesScripts' and mmseg's: every class in the ground truth or
predicted); ignore pixels (255) count nowhere.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from feds2r.data.labels import NUM_CLASSES
from feds2r.errors import Feds2rError
from feds2r.metrics.miou import (
    DEFAULT_MIOU_CLASSES,
    ConfusionMatrix,
    iou_from_counts,
    iou_summary,
    pair_counts,
)

UNMATCHED = -1
"""The class of a cluster that the mapping leaves without one (its pixels count as wrong)."""

MAPPINGS = ("hungarian", "majority")


class ClusterConfusion:
    """``matrix[k, c]``: pixels of cluster k whose ground-truth class is c, over a whole set."""

    def __init__(self, num_clusters: int, num_classes: int = NUM_CLASSES) -> None:
        self.num_clusters, self.num_classes = num_clusters, num_classes
        self.matrix = torch.zeros(num_clusters, num_classes, dtype=torch.int64)

    def update(self, clusters: Tensor, target: Tensor) -> None:
        """Add cluster maps and labels of equal shape (e.g. (B, H, W); 255 in ``target``
        ignored)."""
        counts = pair_counts(target, clusters, self.num_classes, self.num_clusters, "cluster map")
        self.matrix += counts.T


def fit_mapping(confusion: np.ndarray | Tensor, mode: str = "hungarian") -> np.ndarray:
    """Cluster -> class, (K,) int (:data:`UNMATCHED` for a cluster without a class).

    ``confusion`` (K, C): pixel counts of cluster k with true class c on the fitting set.
    """
    m = np.asarray(confusion, dtype=np.float64)
    if m.ndim != 2:
        raise Feds2rError(f"the confusion matrix must be (clusters, classes), got {m.shape}")
    mapping = np.full(m.shape[0], UNMATCHED, dtype=np.int64)
    if mode == "hungarian":
        rows, cols = linear_sum_assignment(m, maximize=True)
        mapping[rows] = cols
    elif mode == "majority":
        mapping[:] = m.argmax(axis=1)
    else:
        raise Feds2rError(f"unknown cluster mapping {mode!r}; valid: {', '.join(MAPPINGS)}")
    return mapping


def apply_mapping(clusters: Tensor, mapping: np.ndarray) -> Tensor:
    """Class map of the same shape as ``clusters`` (long; :data:`UNMATCHED` where unmapped)."""
    table = torch.as_tensor(mapping, dtype=torch.long)
    return table[clusters.long().cpu()]


def mapped_confusion(confusion: np.ndarray | Tensor, mapping: np.ndarray) -> ConfusionMatrix:
    """The class confusion matrix (:class:`ConfusionMatrix`, ``matrix[t, p]``) of the clusters
    mapped by ``mapping``. Pixels of an unmatched cluster are added to no predicted class, so they
    lower their true class's IoU and the pixel accuracy."""
    m = torch.as_tensor(np.asarray(confusion), dtype=torch.int64)
    k, c = m.shape
    if len(mapping) != k:
        raise Feds2rError(f"a mapping of {len(mapping)} clusters for {k} clusters")
    out = ConfusionMatrix(c)
    for cluster, cls in enumerate(mapping):
        if cls != UNMATCHED:
            out.matrix[:, int(cls)] += m[cluster]
    return out


def mapped_summary(
    confusion: np.ndarray | Tensor, mapping: np.ndarray, classes: str = DEFAULT_MIOU_CLASSES
) -> dict:
    """mIoU and pixel accuracy (percent) after mapping, as :meth:`ConfusionMatrix.summary`
    (``classes``: which classes the mean counts, :data:`feds2r.metrics.miou.MIOU_CLASSES`).

    Pixel accuracy counts every labelled pixel, unmatched clusters' included; the per-class
    IoU's union uses each class's full ground truth.
    """
    cm = mapped_confusion(confusion, mapping)
    gt = torch.as_tensor(np.asarray(confusion), dtype=torch.int64).sum(dim=0)  # (C,)
    tp = cm.matrix.diag().double()
    iou = iou_from_counts(tp.numpy(), gt.numpy(), cm.matrix.sum(dim=0).numpy(), classes)
    pixel_acc = float(tp.sum() / max(int(gt.sum()), 1) * 100)
    return iou_summary(iou, gt.numpy(), pixel_acc, classes)


__all__ = [
    "MAPPINGS",
    "UNMATCHED",
    "ClusterConfusion",
    "apply_mapping",
    "fit_mapping",
    "mapped_confusion",
    "mapped_summary",
]
