"""Paired bootstrap intervals for differences of mean mIoU between two models.

Both models are scored on the same test images. One bootstrap replicate draws, in every test
domain independently, as many images as the domain has, with replacement; the *same* draw is used
for both models (that is what makes the interval paired: the spread of image difficulty cancels
out). Each model's mIoU on a domain is computed from the sum of the drawn images' confusion
matrices — never as a mean of per-image IoUs — and the domains' mIoUs are averaged, exactly as the
reported figure is. The interval is the percentile interval of the replicates' differences
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13).
"""

from __future__ import annotations

import warnings

import numpy as np

from feds2r.metrics.miou import DEFAULT_MIOU_CLASSES, class_iou


def miou_from_confusion(matrix: np.ndarray, classes: str = DEFAULT_MIOU_CLASSES) -> float:
    """mIoU (percent) of a confusion matrix (K, K) or a batch of them (R, K, K) -> (R,).

    The mean is over the classes ``classes`` counts (:data:`feds2r.metrics.miou.MIOU_CLASSES`),
    as :class:`feds2r.metrics.ConfusionMatrix` reports it.
    """
    iou = class_iou(matrix, classes)
    with warnings.catch_warnings():  # a matrix with no class counted is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return 100 * np.nanmean(iou, axis=-1)


def paired_bootstrap(
    a: list[np.ndarray],
    b: list[np.ndarray],
    *,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    classes: str = DEFAULT_MIOU_CLASSES,
) -> dict[str, float]:
    """Interval of ``mean mIoU(a) - mean mIoU(b)`` over test domains, paired over images.

    ``a`` and ``b``: one array (N_d, K, K) of per-image confusion matrices per test domain, the
    images of a domain in the same order for both models; ``classes``: the mIoU convention
    (:data:`feds2r.metrics.miou.MIOU_CLASSES`). Returns ``diff`` (on the full sets), ``lo`` and
    ``hi`` (the ``level`` percentile interval) and ``replicates``.
    """
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise ValueError("a and b must hold the same domains with the same images")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(replicates)
    full = 0.0
    for x, y in zip(a, b, strict=True):
        n = x.shape[0]
        full += miou_from_confusion(x.sum(0), classes) - miou_from_confusion(y.sum(0), classes)
        draws = rng.integers(0, n, size=(replicates, n))
        # (R, N) draws -> (R, K, K) summed matrices through per-image counts
        counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
        xa = np.einsum("rn,nij->rij", counts, x.astype(np.float64))
        yb = np.einsum("rn,nij->rij", counts, y.astype(np.float64))
        diffs += miou_from_confusion(xa, classes) - miou_from_confusion(yb, classes)
    k = len(a)
    diffs /= k
    tail = (1 - level) / 2
    return {
        "diff": float(full / k),
        "lo": float(np.quantile(diffs, tail)),
        "hi": float(np.quantile(diffs, 1 - tail)),
        "replicates": replicates,
    }
