"""Distillation losses: multi-teacher soft targets for a mask-classification or per-pixel student.

The teachers' predictions are combined in semantic-probability space, (N, B, K, h, w) ->
(B, K, h, w), because queries of different models do not correspond. From the combined map, each
class that is the arg-max on enough pixels becomes one soft target: its probability map is the
soft mask and the mean class distribution over its arg-max region is the soft class label. The
student's queries are matched to these targets by the Hungarian algorithm and learn them with KL
divergence on classes and BCE + Dice on masks (:func:`mask_kd_loss`, FedS2R's objective). The
per-pixel alternative (:func:`pixel_kd_loss`, FedDF-style ensemble distillation, Lin et al. 2020)
matches the student's semantic distribution to the teachers' at every pixel with KL divergence.
Temperatures follow Hinton et al. 2015 (targets and student softened by T, loss scaled by T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.losses.mask_classification import mask2former_loss


def combine_teachers(probs: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of teacher probability maps (N, B, K, h, w) -> (B, K, h, w).

    ``weights`` (N, K): per teacher and class, normalised over teachers; None = uniform.
    """
    if weights is None:
        return probs.mean(0)
    w = weights / weights.sum(0, keepdim=True).clamp_min(1e-8)  # (N, K)
    return (probs * w[:, None, :, None, None]).sum(0)


def majority_or_fallback(probs: Tensor, combined: Tensor, fallback: int) -> Tensor:
    """``combined`` (B, K, h, w) where a strict majority of the teachers (``probs``, N, B, K, h, w)
    predict its arg-max; teacher ``fallback``'s own probabilities at every other pixel.

    Where the teachers disagree, their mean is a blend of conflicting beliefs; one teacher's
    prediction (the one that agrees most with the others overall) is a cleaner target there.
    """
    share = (probs.argmax(2) == combined.argmax(1)[None]).to(probs.dtype).mean(0)  # (B, h, w)
    return torch.where((share > 0.5)[:, None], combined, probs[fallback])


def soften(probs: Tensor, temperature: float, dim: int = 1) -> Tensor:
    """``p^(1/T)`` renormalised: a distribution softened like ``softmax(log p / T)``."""
    if temperature == 1.0:
        return probs
    return F.softmax(probs.clamp_min(1e-8).log() / temperature, dim=dim)


def soft_targets(
    probs: Tensor,
    min_fraction: float = 0.002,
    temperature: float = 1.0,
    valid: Tensor | None = None,
    onehot: bool = False,
) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """Soft mask-classification targets from combined probabilities (B, K, h, w).

    Per image: the classes that are the arg-max on at least ``min_fraction`` of the pixels; for
    each, the soft mask ``probs[k]`` and the class distribution (K+1, no-object 0) averaged over
    its arg-max region, softened by ``temperature``. ``valid`` (B, h, w) bool marks the pixels
    that hold a target (padding does not); others belong to no region. ``onehot``: the class
    label is the target's class itself; the soft mask alone then carries the teachers'
    uncertainty, and a student that learns both exactly has the teachers' semantic map
    (``Σ_q class_q[k] · mask_q = probs[k]``), which soft labels on soft masks would blur.
    """
    b, k, h, w = probs.shape
    targets, dists = [], []
    arg = probs.argmax(1)  # (B, h, w)
    if valid is not None:
        arg = torch.where(valid, arg, torch.full_like(arg, k))  # k: no region
    for i in range(b):
        counts = torch.bincount(arg[i].flatten(), minlength=k + 1)[:k]
        classes = torch.nonzero(counts >= max(min_fraction * h * w, 1)).flatten()
        masks = probs[i, classes]  # (T, h, w)
        region = arg[i][None] == classes[:, None, None]  # (T, h, w)
        mean = (probs[i][None] * region[:, None]).sum((-1, -2)) / region.sum((-1, -2))[:, None]
        mean = soften(mean, temperature, dim=1)
        if onehot:
            mean = F.one_hot(classes, k).to(mean)
        dist = torch.cat([mean, torch.zeros(len(classes), 1, device=probs.device)], dim=1)
        targets.append((classes, masks))
        dists.append(dist)
    return targets, dists


def mask_kd_loss(
    class_logits: Tensor,
    mask_logits: Tensor,
    aux: list[tuple[Tensor, Tensor]],
    teacher_probs: Tensor,
    temperature: float = 2.0,
    min_fraction: float = 0.002,
    valid: Tensor | None = None,
    onehot: bool = False,
) -> dict[str, Tensor]:
    """Set-level distillation of a Mask2Former student from combined teacher probabilities.

    ``teacher_probs`` (B, K, h, w) at the student's mask resolution. Weights as in the
    supervised loss (class 2, BCE 5, Dice 5); every decoder layer is distilled.
    """
    targets, dists = soft_targets(teacher_probs, min_fraction, temperature, valid, onehot)
    return mask2former_loss(
        class_logits,
        mask_logits,
        aux,
        None,
        targets=targets,
        class_dists=dists,
        temperature=temperature,
    )


def pixel_kd_loss(
    student_probs: Tensor,
    teacher_probs: Tensor,
    temperature: float = 2.0,
    valid: Tensor | None = None,
    *,
    weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-pixel KL(teacher || student) of (B, K, h, w) distributions, softened by T, x T^2.

    ``valid`` (B, h, w) bool: the pixels to average over (default all). ``weight`` (B, h, w):
    each pixel's KL is multiplied by it before the mean over the (valid) pixels.
    """
    t = soften(teacher_probs, temperature)
    s = soften(student_probs, temperature)
    per_pixel = (t * (t.clamp_min(1e-8).log() - s.clamp_min(1e-8).log())).sum(1)
    if weight is not None:
        per_pixel = per_pixel * weight
    kl = _masked_mean(per_pixel, valid)
    loss = kl * temperature**2
    return {"loss": loss, "loss_kd": loss}


def _masked_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return values.mean()
    v = valid.to(values.dtype)
    return (values * v).sum() / v.sum().clamp_min(1)


def feature_loss(student: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean (1 - cosine similarity) between feature vectors (B, C, h, w) at every (valid) pixel."""
    if student.shape[-2:] != target.shape[-2:]:
        student = F.interpolate(
            student, size=target.shape[-2:], mode="bilinear", align_corners=False
        )
    return _masked_mean(1 - F.cosine_similarity(student, target, dim=1), valid)
