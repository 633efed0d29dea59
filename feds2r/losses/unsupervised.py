"""Unsupervised segmentation losses on frozen pixel features (no labels anywhere).

Feature-correspondence distillation follows STEGO (Hamilton et al., "Unsupervised Semantic
Segmentation by Distilling Feature Correspondences", ICLR 2022, Eq. 3-5). For two images with
frozen features ``f`` (B, C, h, w) and ``g`` (B, C, h', w') and the head's codes ``s``, ``t``:

- the feature correlation ``F[hw, ij] = <f_hw, g_ij> / (|f_hw| |g_ij|)``, pointwise centred
  (STEGO's ``pointwise`` option: each row's mean over ``ij`` is subtracted, then the overall mean
  is restored), so that the loss does not depend on how correlated a backbone's features are
  overall;
- the code correlation ``S[hw, ij]`` likewise (cosine, not centred);
- the loss ``L = - mean_{hw, ij} (F - b) * max(S, 0)`` (Eq. 4 with STEGO's zero clamp): code
  pairs whose features correlate more than the shift ``b`` are pulled together, the others
  pushed apart until their codes are orthogonal.

Three pairs per image, each with its own weight and shift (Eq. 5): the image with itself
(``self``), with one of its K nearest neighbours in pooled feature space (``knn``), and with a
random other image (``random``).

The clustering loss is STEGO's cluster probe (its ``ClusterLookup``; the same as spherical
k-means by gradient descent): codes and centroids are L2-normalised, each pixel is assigned to
its most similar centroid, and the loss is minus the mean cosine similarity of each pixel to its
assigned centroid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.models.cluster_head import cluster_scores

PAIRS = ("self", "knn", "random")
"""The image pairs of the correspondence loss, in the order of their weights and shifts."""


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every pixel of ``a`` (B, C, h, w) with every pixel of ``b``
    (B, C, h', w'): (B, h, w, h', w')."""
    return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1), F.normalize(b, dim=1))


def correspondence_loss(
    feats_a: Tensor,
    feats_b: Tensor,
    codes_a: Tensor,
    codes_b: Tensor,
    shift: float,
    *,
    pointwise: bool = True,
) -> Tensor:
    """STEGO's correspondence distillation for one image pair (Eq. 4), a scalar.

    ``feats_a`` (B, C, h, w) and ``feats_b`` (B, C, h', w'): frozen features; ``codes_a``
    (B, D, h, w) and ``codes_b`` (B, D, h', w'): the head's codes of the same pixels. ``shift``
    is ``b``: the feature correlation above which codes are pulled together.
    """
    with torch.no_grad():
        fd = correlation(feats_a, feats_b)  # (B, h, w, h', w')
        if pointwise:
            overall = fd.mean()
            fd = fd - fd.mean(dim=(3, 4), keepdim=True)
            fd = fd - fd.mean() + overall
    cd = correlation(codes_a, codes_b)
    return -(cd.clamp(min=0.0) * (fd - shift)).mean()


def stego_loss(
    feats: Tensor,
    codes: Tensor,
    knn_feats: Tensor,
    knn_codes: Tensor,
    rand_feats: Tensor,
    rand_codes: Tensor,
    *,
    weights: tuple[float, float, float],
    shifts: tuple[float, float, float],
    pointwise: bool = True,
) -> dict[str, Tensor]:
    """The weighted sum of the self, KNN and random pair losses (STEGO Eq. 5).

    ``feats`` (B, C, h, w) and ``codes`` (B, D, h, w) of a batch; ``knn_*`` of a nearest
    neighbour of each image, ``rand_*`` of a random other image (same shapes). ``weights`` and
    ``shifts`` are per pair, in :data:`PAIRS` order. Returns ``loss`` (the weighted sum) and one
    part per pair (``self``, ``knn``, ``random``), unweighted.
    """
    parts = {
        "self": correspondence_loss(feats, feats, codes, codes, shifts[0], pointwise=pointwise),
        "knn": correspondence_loss(
            feats, knn_feats, codes, knn_codes, shifts[1], pointwise=pointwise
        ),
        "random": correspondence_loss(
            feats, rand_feats, codes, rand_codes, shifts[2], pointwise=pointwise
        ),
    }
    loss = sum(w * parts[name] for w, name in zip(weights, PAIRS, strict=True))
    return {"loss": loss, **parts}


def cluster_loss(codes: Tensor, centroids: Tensor) -> dict[str, Tensor]:
    """STEGO's cluster-probe loss: minus the mean cosine of each pixel to its nearest centroid.

    ``codes`` (B, D, h, w), ``centroids`` (K, D). Returns ``loss`` (scalar) and ``assignment``
    (B, h, w), each pixel's centroid (no gradient).
    """
    scores = cluster_scores(codes, centroids)  # (B, K, h, w)
    assignment = scores.argmax(dim=1)
    best = scores.gather(1, assignment[:, None]).squeeze(1)  # (B, h, w)
    return {"loss": -best.mean(), "assignment": assignment.detach()}


__all__ = [
    "PAIRS",
    "cluster_loss",
    "cluster_scores",
    "correlation",
    "correspondence_loss",
    "stego_loss",
]
