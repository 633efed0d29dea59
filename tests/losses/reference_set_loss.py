"""The Mask2Former set-prediction loss as it was computed before it was batched (commit b67e358):
one decoder layer and one image at a time. Kept only as the reference that
``test_loss_batched.py`` compares :mod:`feds2r.losses.mask_classification` with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.data.labels import IGNORE_INDEX
from feds2r.losses.mask_classification import (
    CLASS_WEIGHT,
    DICE_WEIGHT,
    MASK_WEIGHT,
    NO_OBJECT_WEIGHT,
    POINT_FRACTION,
    bce_loss,
    dice_loss,
    hungarian_match,  # unchanged by the batching: the library's own
    point_sample,
)


def semantic_targets(labels: Tensor, num_classes: int) -> list[tuple[Tensor, Tensor]]:
    """Label maps (B, H, W) -> per image ``(classes (T,), masks (T, H, W))``, one per class."""
    targets = []
    for lbl in labels:
        classes = torch.unique(lbl)
        classes = classes[(classes != IGNORE_INDEX) & (classes < num_classes)]
        masks = (lbl[None] == classes[:, None, None]).float()
        targets.append((classes, masks))
    return targets


def importance_points(
    logits: Tensor, num_points: int, oversample: int = 3, importance: float = 0.75
) -> Tensor:
    """Points (N, P, 2) concentrated where the mask logits (N, h, w) are most uncertain."""
    n = logits.shape[0]
    cand = torch.rand(n, num_points * oversample, 2, device=logits.device)
    uncertainty = -point_sample(logits, cand).abs()
    k = int(importance * num_points)
    top = uncertainty.topk(k, dim=1).indices
    chosen = torch.gather(cand, 1, top[..., None].expand(-1, -1, 2))
    rest = torch.rand(n, num_points - k, 2, device=logits.device)
    return torch.cat([chosen, rest], dim=1)


def set_prediction_loss(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: list[tuple[Tensor, Tensor]],
    num_points: int,
    class_dists: list[Tensor] | None = None,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Loss of one decoder layer: ``class_logits`` (B, Q, K+1), ``mask_logits`` (B, Q, h, w).

    ``targets``: per image ``(classes (T,), masks (T, H, W))`` with masks in [0, 1] (hard for
    supervision, soft for distillation). With ``class_dists`` (per image (T, K+1) distributions,
    for distillation) a matched query learns its target's distribution by KL divergence at
    ``temperature`` (scaled by T^2, Hinton et al. 2015) instead of cross-entropy; unmatched
    queries always learn "no object" with weight 0.1. Returns unweighted ``ce`` (the class term),
    ``bce`` and ``dice`` (mask terms averaged over all target masks of the batch).
    """
    b, q, k1 = class_logits.shape
    target_cls = torch.full((b, q), k1 - 1, dtype=torch.long, device=class_logits.device)
    pred_masks, tgt_masks, matched, dists = [], [], [], []
    for i, (classes, masks) in enumerate(targets):
        if classes.numel() == 0:
            continue
        rows, cols = hungarian_match(class_logits[i], mask_logits[i], classes, masks, num_points)
        target_cls[i, rows] = classes[cols]
        pred_masks.append(mask_logits[i, rows])
        tgt_masks.append(masks[cols])
        matched.append(torch.stack([torch.full_like(rows, i), rows], 1))
        if class_dists is not None:
            dists.append(class_dists[i][cols])
    weight = torch.ones(k1, device=class_logits.device)
    weight[-1] = NO_OBJECT_WEIGHT
    if class_dists is None or not matched:
        ce = F.cross_entropy(class_logits.transpose(1, 2), target_cls, weight=weight)
    else:
        # per-query terms, weighted mean as in weighted cross-entropy
        per_query = F.cross_entropy(class_logits.transpose(1, 2), target_cls, reduction="none")
        w = weight[target_cls]
        idx = torch.cat(matched)
        student = F.log_softmax(class_logits[idx[:, 0], idx[:, 1]] / temperature, dim=-1)
        teacher = torch.cat(dists)
        kl = (teacher * (teacher.clamp_min(1e-8).log() - student)).sum(-1) * temperature**2
        per_query = per_query.index_put((idx[:, 0], idx[:, 1]), kl)
        w = w.index_put((idx[:, 0], idx[:, 1]), torch.ones_like(kl))
        ce = (per_query * w).sum() / w.sum()
    if not pred_masks:
        zero = mask_logits.sum() * 0
        return {"ce": ce, "bce": zero, "dice": zero}
    pred = torch.cat(pred_masks)  # (M, h, w)
    tgt = torch.cat(tgt_masks)  # (M, H, W)
    with torch.no_grad():
        coords = importance_points(pred, num_points)
        tgt_pts = point_sample(tgt, coords)
    pred_pts = point_sample(pred, coords)
    return {
        "ce": ce,
        "bce": bce_loss(pred_pts, tgt_pts).mean(),
        "dice": dice_loss(pred_pts, tgt_pts).mean(),
    }


def mask2former_loss(
    class_logits: Tensor,
    mask_logits: Tensor,
    aux: list[tuple[Tensor, Tensor]],
    labels: Tensor | None,
    num_points: int | None = None,
    *,
    targets: list[tuple[Tensor, Tensor]] | None = None,
    class_dists: list[Tensor] | None = None,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Full supervised loss: weighted set-prediction loss of the last and every auxiliary layer.

    ``labels`` (B, H, W) train ids with 255 ignore; or, for distillation, ready ``targets`` with
    soft masks and ``class_dists`` (see :func:`set_prediction_loss`). ``num_points`` defaults to
    the paper's share of the mask-logit pixels. Returns ``loss`` and its parts.
    """
    if num_points is None:
        h, w = mask_logits.shape[-2:]
        num_points = min(max(int(POINT_FRACTION * h * w), 256), 12544)
    if targets is None:
        targets = semantic_targets(labels, class_logits.shape[-1] - 1)
    parts = {"loss_ce": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
    for cls, masks in [(class_logits, mask_logits), *aux]:
        layer = set_prediction_loss(cls, masks, targets, num_points, class_dists, temperature)
        parts["loss_ce"] = parts["loss_ce"] + CLASS_WEIGHT * layer["ce"]
        parts["loss_mask"] = parts["loss_mask"] + MASK_WEIGHT * layer["bce"]
        parts["loss_dice"] = parts["loss_dice"] + DICE_WEIGHT * layer["dice"]
    return {"loss": parts["loss_ce"] + parts["loss_mask"] + parts["loss_dice"], **parts}
