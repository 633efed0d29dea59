"""Mask2Former's set-prediction loss for semantic segmentation.

Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation", CVPR 2022:
predictions (one class distribution over K classes + "no object", one mask per query) are matched
one-to-one to the ground-truth masks (one per class present in the image) by the Hungarian
algorithm on a cost of class probability, mask BCE and mask Dice; matched queries learn their
target's class and mask, unmatched ones learn "no object" (weight 0.1). Mask losses are computed
on K sampled points: 12,544 in the paper for 128x256 mask logits (512x1024 crops), i.e. 38 % of
the mask pixels; the same fraction of the mask size is used here (784 points for 32x64 masks).
Importance sampling with oversampling ratio 3 and importance ratio 0.75 for the loss, uniform
points for matching. Weights:
class 2, BCE 5, Dice 5, as in the paper. Every intermediate decoder layer is supervised the same
way (deep supervision).

Every layer and image of a batch is matched and sampled in one set of batched operations (one
Hungarian solve per layer and image remains, on the CPU); the random points are drawn in the order
of a layer-by-layer, image-by-image computation, so the two give equal losses (a test).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

CLASS_WEIGHT, MASK_WEIGHT, DICE_WEIGHT, NO_OBJECT_WEIGHT = 2.0, 5.0, 5.0, 0.1
OVERSAMPLE, IMPORTANCE = 3, 0.75  # importance sampling of the loss's points
POINT_FRACTION = 12544 / (128 * 256)  # the paper's sampled share of mask-logit pixels


def semantic_targets(labels: Tensor, num_classes: int) -> list[tuple[Tensor, Tensor]]:
    """Label maps (B, H, W) -> per image ``(classes (T,), masks (T, H, W))``, one per class."""
    targets = []
    for lbl in labels:
        # the present classes, ascending; ignore (255) and out-of-range ids are dropped
        kept = torch.where((lbl >= 0) & (lbl < num_classes), lbl, num_classes)
        counts = torch.bincount(kept.flatten(), minlength=num_classes + 1)[:num_classes]
        classes = counts.nonzero()[:, 0]
        masks = (lbl[None] == classes[:, None, None]).float()
        targets.append((classes, masks))
    return targets


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``maps`` (N, H, W) at ``coords`` (N, P, 2) in [0, 1] (x, y) -> (N, P)."""
    grid = 2.0 * coords[:, :, None, :] - 1.0  # (N, P, 1, 2)
    out = F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)
    return out[:, 0, :, 0]


def importance_points(
    logits: Tensor, num_points: int, oversample: int = OVERSAMPLE, importance: float = IMPORTANCE
) -> Tensor:
    """Points (N, P, 2) concentrated where the mask logits (N, h, w) are most uncertain."""
    n = logits.shape[0]
    cand = torch.rand(n, num_points * oversample, 2, device=logits.device)
    rest = torch.rand(n, num_points - int(importance * num_points), 2, device=logits.device)
    return _uncertain_points(logits, cand, rest, num_points)


def _uncertain_points(logits: Tensor, cand: Tensor, rest: Tensor, num_points: int) -> Tensor:
    """Of the candidate points ``cand`` (N, C, 2), the P - R where ``logits`` (N, h, w) are nearest
    0, followed by the R uniform points ``rest`` (N, R, 2): P = ``num_points`` in all."""
    uncertainty = -point_sample(logits, cand).abs()
    # unsorted: the same points in another order (the losses average over them)
    top = uncertainty.topk(num_points - rest.shape[1], dim=1, sorted=False).indices
    chosen = torch.gather(cand, 1, top[..., None].expand(-1, -1, 2))
    return torch.cat([chosen, rest], dim=1)


def dice_loss(pred_logits: Tensor, target: Tensor) -> Tensor:
    """Dice loss per mask: ``(N, P)`` logits and targets in [0, 1] -> (N,)."""
    p = pred_logits.sigmoid()
    return 1 - (2 * (p * target).sum(-1) + 1) / (p.sum(-1) + target.sum(-1) + 1)


def bce_loss(pred_logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy per mask, mean over points: (N, P) -> (N,)."""
    return F.binary_cross_entropy_with_logits(pred_logits, target, reduction="none").mean(-1)


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor,
    mask_logits: Tensor,
    target_classes: Tensor,
    target_masks: Tensor,
    num_points: int,
) -> tuple[Tensor, Tensor]:
    """Match Q predictions of one image to its T targets; returns (query idx, target idx).

    ``class_logits`` (Q, K+1), ``mask_logits`` (Q, h, w), ``target_masks`` (T, H, W) in [0, 1].
    Cost = -2 p(class) + 5 BCE + 5 Dice, masks compared on the same uniform random points.
    Raises FloatingPointError if the cost is not finite (NaN or infinite predictions).
    """
    prob = class_logits.softmax(-1)[:, target_classes]  # (Q, T)
    coords = torch.rand(1, num_points, 2, device=mask_logits.device)
    pred = point_sample(mask_logits, coords.expand(mask_logits.shape[0], -1, -1))  # (Q, P)
    tgt = point_sample(target_masks, coords.expand(target_masks.shape[0], -1, -1))  # (T, P)
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    bce = (pos @ tgt.T + neg @ (1 - tgt).T) / num_points  # (Q, T)
    p = pred.sigmoid()
    dice = 1 - (2 * p @ tgt.T + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
    cost = -CLASS_WEIGHT * prob + MASK_WEIGHT * bce + DICE_WEIGHT * dice
    if not torch.isfinite(cost).all():  # the matcher cannot rank NaNs; the training loop reports it
        raise FloatingPointError("the matching cost is not finite: NaN or infinite predictions")
    rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


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
    terms = layer_losses(
        class_logits[None], mask_logits[None], targets, num_points, class_dists, temperature
    )
    return {k: v[0] for k, v in terms.items()}


def layer_losses(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: list[tuple[Tensor, Tensor]],
    num_points: int,
    class_dists: list[Tensor] | None = None,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """:func:`set_prediction_loss` of L decoder layers at once: ``class_logits`` (L, B, Q, K+1),
    ``mask_logits`` (L, B, Q, h, w) -> ``ce``, ``bce``, ``dice`` of shape (L,)."""
    n_layers, b, q, k1 = class_logits.shape
    dev = class_logits.device
    present = [i for i, (classes, _) in enumerate(targets) if classes.numel()]
    sizes = [targets[i][0].numel() for i in present]
    n_matched = sum(min(q, t) for t in sizes)  # per layer: every target, or every query
    weight = torch.ones(k1, device=dev)
    weight[-1] = NO_OBJECT_WEIGHT
    target_cls = torch.full((n_layers, b, q), k1 - 1, dtype=torch.long, device=dev)
    if not present:
        zero = mask_logits.sum((1, 2, 3, 4)) * 0
        return {"ce": _class_term(class_logits, target_cls, weight), "bce": zero, "dice": zero}

    # The random points, in the order a layer-by-layer, image-by-image loss draws them: per layer,
    # the matching's points of each image, then the loss's candidates and uniform points.
    n_rest = num_points - int(IMPORTANCE * num_points)
    match_pts = torch.empty(n_layers, len(present), num_points, 2, device=dev)
    cand = torch.empty(n_layers, n_matched, OVERSAMPLE * num_points, 2, device=dev)
    rest = torch.empty(n_layers, n_matched, n_rest, 2, device=dev)
    for buffers in zip(match_pts, cand, rest, strict=True):
        for buffer in buffers:
            buffer.uniform_()  # as torch.rand of its shape
    classes = torch.cat([targets[i][0] for i in present])  # (N,) all targets of the batch
    masks = torch.cat([targets[i][1] for i in present])  # (N, H, W)
    owner = torch.cat([torch.full((t,), j, device=dev) for j, t in enumerate(sizes)])
    layer, image, query, target = _match(
        class_logits[:, present], mask_logits[:, present], classes, masks, owner, sizes,
        match_pts,
    )  # fmt: skip
    image = torch.as_tensor(present, device=dev)[image]
    target_cls[layer, image, query] = classes[target]
    # the matched queries as rows of the flattened (L*B*Q) outputs: index_select, whose
    # backward stays fast with deterministic algorithms on (advanced indexing's does not)
    flat = (layer * b + image) * q + query

    kl = None
    if class_dists is not None:
        teacher = torch.cat([class_dists[i] for i in present])[target]
        student = class_logits.flatten(0, 2).index_select(0, flat)
        student = F.log_softmax(student / temperature, dim=-1)
        kl = (teacher * (teacher.clamp_min(1e-8).log() - student)).sum(-1) * temperature**2
    ce = _class_term(class_logits, target_cls, weight, (layer, image, query), kl)

    pred = mask_logits.flatten(0, 2).index_select(0, flat)  # (L*M, h, w), layer by layer
    with torch.no_grad():
        coords = _uncertain_points(pred, cand.flatten(0, 1), rest.flatten(0, 1), num_points)
        # each target mask sampled once, at the points of its match in every layer
        grid = coords.new_zeros(len(classes), n_layers, num_points, 2)
        grid[target, layer] = coords
        tgt_pts = point_sample(masks, grid.flatten(1, 2)).view(len(classes), n_layers, -1)
        tgt_pts = tgt_pts[target, layer]
    pred_pts = point_sample(pred, coords)
    return {
        "ce": ce,
        "bce": bce_loss(pred_pts, tgt_pts).view(n_layers, n_matched).mean(1),
        "dice": dice_loss(pred_pts, tgt_pts).view(n_layers, n_matched).mean(1),
    }


def _class_term(
    class_logits: Tensor,
    target_cls: Tensor,
    weight: Tensor,
    matched: tuple[Tensor, Tensor, Tensor] | None = None,
    kl: Tensor | None = None,
) -> Tensor:
    """Each layer's class term (L,): the class-weighted mean cross-entropy of ``class_logits``
    (L, B, Q, K+1) against ``target_cls`` (L, B, Q); with ``kl``, the ``matched`` queries'
    (layer, image, query) terms are those KL divergences instead, at weight 1."""
    per_query = F.cross_entropy(class_logits.permute(0, 3, 1, 2), target_cls, reduction="none")
    w = weight[target_cls]
    if kl is not None:
        per_query = per_query.index_put(matched, kl)
        w = w.index_put(matched, torch.ones_like(kl))
    return (per_query * w).sum((1, 2)) / w.sum((1, 2))


@torch.no_grad()
def _match(
    class_logits: Tensor,
    mask_logits: Tensor,
    classes: Tensor,
    masks: Tensor,
    owner: Tensor,
    sizes: list[int],
    points: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`hungarian_match` of every layer and image: ``class_logits`` (L, n, Q, K+1) and
    ``mask_logits`` (L, n, Q, h, w) of the n images with targets; their N targets concatenated
    (``classes`` (N,), ``masks`` (N, H, W), ``owner`` (N,) the image of each, ``sizes`` the
    count per image); ``points`` (L, n, P, 2) each layer's and image's matching points.

    Returns the matches (layer, image among the n, query, target among the N), ordered by layer,
    image, then query, as the one-image function returns them.
    """
    n_layers, n, q, _ = class_logits.shape
    p = points.shape[2]
    t_max = max(sizes)
    start = [0]
    for t in sizes[:-1]:
        start.append(start[-1] + t)
    slot = torch.cat([torch.arange(t, device=owner.device) for t in sizes])  # place in its image
    # each layer's and image's Q masks at its points: one grid, the masks as channels
    grid = 2.0 * points.flatten(0, 1)[:, :, None, :] - 1.0  # (L*n, P, 1, 2)
    pred = F.grid_sample(mask_logits.flatten(0, 1), grid, mode="bilinear", align_corners=False)
    pred = pred.view(n_layers, n, q, p)
    # every target mask at its image's points of every layer; zero rows pad images to t_max
    grid = points[:, owner].transpose(0, 1).flatten(1, 2)  # (N, L*P, 2)
    tgt = torch.zeros(n_layers, n, t_max, p, device=masks.device, dtype=pred.dtype)
    tgt[:, owner, slot] = point_sample(masks, grid).view(-1, n_layers, p).transpose(0, 1)
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    t_tr = tgt.transpose(-1, -2)
    bce = (pos @ t_tr + neg @ (1 - t_tr)) / p  # (L, n, Q, t_max)
    sig = pred.sigmoid()
    dice = 1 - (2 * sig @ t_tr + 1) / (sig.sum(-1)[..., None] + tgt.sum(-1)[..., None, :] + 1)
    cls_idx = torch.zeros(n, t_max, dtype=torch.long, device=classes.device)
    cls_idx[owner, slot] = classes
    prob = class_logits.softmax(-1).gather(
        -1, cls_idx[None, :, None, :].expand(n_layers, -1, q, -1)
    )
    cost = (-CLASS_WEIGHT * prob + MASK_WEIGHT * bce + DICE_WEIGHT * dice).float().cpu().numpy()
    out: list[list[int]] = [[], [], [], []]
    for layer in range(n_layers):
        for j, t in enumerate(sizes):
            c = cost[layer, j, :, :t]
            if not np.isfinite(c).all():  # the matcher cannot rank NaNs; the loop reports it
                raise FloatingPointError(
                    "the matching cost is not finite: NaN or infinite predictions"
                )
            rows, cols = linear_sum_assignment(c)
            out[0] += [layer] * len(rows)
            out[1] += [j] * len(rows)
            out[2] += rows.tolist()
            out[3] += (cols + start[j]).tolist()
    return tuple(torch.tensor(v, dtype=torch.long, device=class_logits.device) for v in out)


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
    layers = [(class_logits, mask_logits), *aux]
    if all(m.shape == mask_logits.shape and c.shape == class_logits.shape for c, m in layers):
        terms = layer_losses(
            torch.stack([c for c, _ in layers]),
            torch.stack([m for _, m in layers]),
            targets, num_points, class_dists, temperature,
        )  # fmt: skip
    else:  # layers of different shapes: one at a time (the same random points)
        each = [
            set_prediction_loss(c, m, targets, num_points, class_dists, temperature)
            for c, m in layers
        ]
        terms = {k: torch.stack([e[k] for e in each]) for k in ("ce", "bce", "dice")}
    parts = {
        "loss_ce": CLASS_WEIGHT * terms["ce"].sum(),
        "loss_mask": MASK_WEIGHT * terms["bce"].sum(),
        "loss_dice": DICE_WEIGHT * terms["dice"].sum(),
    }
    return {"loss": parts["loss_ce"] + parts["loss_mask"] + parts["loss_dice"], **parts}


__all__ = [
    "bce_loss",
    "dice_loss",
    "hungarian_match",
    "importance_points",
    "layer_losses",
    "mask2former_loss",
    "point_sample",
    "semantic_targets",
    "set_prediction_loss",
]
