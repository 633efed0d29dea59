"""The client models as one frozen teacher: their alignment, weights and combination rule.

:class:`TeacherEnsemble` is what distillation learns from, what the demo's ``ensemble`` row
predicts with at test time, and what ``scripts/target_quality.py`` scores. It owns every way of
turning N client predictions into one: feature fusion (the teachers' decoder features averaged,
raw or after a linear alignment, and decoded by each teacher's own head), per-class teacher
weights, and the majority rule with its fallback teacher. The reasons for each choice are in
``docs/method.md``.

Shapes: images (B, 3, H, W) uint8; per-teacher probabilities (N, B, K, h, w); a combined target
(B, K, h, w).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.losses.distillation import combine_teachers, majority_or_fallback
from feds2r.models import SegModel
from feds2r.server.targets import STRIDE, compute_targets, shape_groups


def agreement_weights(agreement: list[list[float | None]], floor: float = 0.05) -> Tensor:
    """Teacher weights (N, K) from per-class agreement; undefined classes weigh uniformly."""
    w = torch.tensor([[1.0 if a is None else max(a, floor) for a in row] for row in agreement])
    return w / w.sum(0, keepdim=True)


def sample_batches(data, num: int, batch_size: int = 16) -> list[Tensor]:
    """Up to ``num`` images of a :class:`~feds2r.engine.data.ResizedCache`, evenly spread over
    it, as stackable batches (the server images every label-free comparison is made on)."""
    n = len(data)
    idx = sorted({int(k * n / min(num, n)) for k in range(min(num, n))})
    batches = []
    for group in shape_groups(data, idx):
        for s in range(0, len(group), batch_size):
            batches.append(torch.stack([data.images[i] for i in group[s : s + batch_size]]))
    return batches


def common_size(feats: list[Tensor]) -> list[Tensor]:
    """Feature maps resized (bilinear) to the first one's spatial size where they differ."""
    size = tuple(feats[0].shape[-2:])
    return [
        f
        if tuple(f.shape[-2:]) == size
        else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in feats
    ]


class FeatureAligner:
    """Linear maps between the teachers' decoder-feature spaces, fitted on server images.

    ``maps[i][j]`` (C_i + 1, C_j) is the ridge least-squares map from teacher ``i``'s features
    (plus a bias) to teacher ``j``'s at the same pixels; no map is kept for ``i == j``.
    """

    def __init__(self, maps: list[list[Tensor | None]]) -> None:
        self.maps = maps

    @classmethod
    @torch.no_grad()
    def fit(
        cls, feats: list[Tensor], ridge: float = 1e-3, max_pixels: int = 50_000, seed: int = 0
    ) -> FeatureAligner:
        """``feats``: per teacher, (P, C_i) features at the same P pixels."""
        if len({f.shape[0] for f in feats}) != 1:
            raise ValueError("every teacher's features must cover the same pixels")
        if feats[0].shape[0] > max_pixels:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(feats[0].shape[0], generator=g)[:max_pixels]
            feats = [f[idx] for f in feats]
        n = len(feats)
        maps: list[list[Tensor | None]] = [[None] * n for _ in range(n)]
        for i in range(n):
            x = torch.cat([feats[i].double(), torch.ones(len(feats[i]), 1, dtype=torch.double)], 1)
            gram = x.T @ x
            gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.double)
            for j in range(n):
                if i != j:
                    maps[i][j] = torch.linalg.solve(gram, x.T @ feats[j].double()).float()
        return cls(maps)

    def to_space(self, feat: Tensor, i: int, j: int) -> Tensor:
        """Teacher ``i``'s features (B, C_i, h, w) mapped into teacher ``j``'s space."""
        m = self.maps[i][j]
        if m is None:
            return feat
        m = m.to(feat)
        return torch.einsum("bchw,cd->bdhw", feat, m[:-1]) + m[-1].view(1, -1, 1, 1)


@torch.no_grad()
def fit_aligner(
    teachers: Sequence[SegModel], batches: list[Tensor], device="cpu"
) -> FeatureAligner:
    """Fit :class:`FeatureAligner` on the teachers' features over ``batches`` of images."""
    per_teacher: list[list[Tensor]] = [[] for _ in teachers]
    for images in batches:
        feats = common_size([t(images.to(device)).features for t in teachers])
        for k, f in enumerate(feats):
            per_teacher[k].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
    return FeatureAligner.fit([torch.cat(p) for p in per_teacher])


def fuse_features(
    feats: list[Tensor], weight: float = 1.0, aligner: FeatureAligner | None = None
) -> list[Tensor]:
    """What each teacher decodes under fusion: ``(1 - weight) * own + weight * mean``, where the
    mean is over all teachers' features, each first mapped into this teacher's space when an
    ``aligner`` is given (raw features otherwise)."""
    fused = []
    plain = None if aligner else torch.stack(feats).mean(0)
    for j, own in enumerate(feats):
        if aligner is None:
            mean = plain
        else:
            mean = torch.stack([aligner.to_space(f, i, j) for i, f in enumerate(feats)]).mean(0)
        fused.append(own if weight == 0 else (1 - weight) * own + weight * mean)
    return fused


def most_agreeing(agreement: list[float]) -> int:
    """Index of the teacher with the highest agreement (the first on a tie)."""
    return max(range(len(agreement)), key=lambda k: agreement[k])


@torch.no_grad()
def ensemble_agreement(
    teachers: Sequence[SegModel], batches: list[Tensor], others: Sequence[SegModel] = ()
) -> list[float]:
    """Share of pixels where each teacher, then each of ``others``, predicts the arg-max of the
    teachers' mean prediction (no fusion) over ``batches`` of server images: a label-free
    quality proxy. Each model predicts each batch once."""
    hits = [0.0] * (len(teachers) + len(others))
    total = 0
    for images in batches:
        preds = [t.eval().predict(images) for t in teachers]
        ens = torch.stack(preds).mean(0).argmax(1)
        total += ens.numel()
        labels = [p.argmax(1) for p in preds] + [m.eval().predict(images).argmax(1) for m in others]
        for k, label in enumerate(labels):
            hits[k] += float((label == ens).sum())
    return [h / max(total, 1) for h in hits]


class TeacherEnsemble:
    """Frozen client models that predict as one.

    ``fusion``: decode fused features (see :func:`fuse_features`, with ``fusion_weight`` and an
    optional ``aligner``). ``weights`` (N, K): per-teacher, per-class weights of the mean (None:
    uniform). ``fallback``: the teacher of the majority rule (:func:`majority_or_fallback`;
    None: the mean everywhere). ``feature_ref``: the teacher whose fused features are the feature
    target (None: their mean). ``tta``: average each image's and its mirror's probabilities.
    """

    def __init__(
        self,
        teachers: Sequence[SegModel],
        *,
        fusion: bool = False,
        fusion_weight: float = 1.0,
        aligner: FeatureAligner | None = None,
        weights: Tensor | None = None,
        fallback: int | None = None,
        feature_ref: int | None = None,
        tta: bool = False,
    ) -> None:
        if not teachers:
            raise ValueError("a teacher ensemble needs at least one model")
        self.teachers = list(teachers)
        for t in self.teachers:
            t.eval().requires_grad_(False)
        self.fusion, self.fusion_weight, self.aligner = fusion, fusion_weight, aligner
        self.weights, self.fallback, self.feature_ref = weights, fallback, feature_ref
        self.tta = tta

    @classmethod
    def for_distillation(
        cls,
        teachers: Sequence[SegModel],
        config,
        batches: list[Tensor],
        *,
        weights: Tensor | None = None,
        agreement: list[float] | None = None,
        feature_ref: int | None = None,
        device="cpu",
    ) -> TeacherEnsemble:
        """The ensemble a :class:`~feds2r.server.distill.DistillConfig` asks for: the majority
        rule's fallback is the teacher agreeing most with the others on ``batches`` (``agreement``
        if already measured), the aligner is fitted on ``batches``."""
        fallback = None
        if config.combine == "majority" and len(teachers) > 1:
            fallback = most_agreeing(agreement or ensemble_agreement(teachers, batches))
        aligner = None
        if config.feature_fusion and config.fusion_align and len(teachers) > 1:
            aligner = fit_aligner(teachers, batches, device)
        return cls(
            teachers,
            fusion=config.feature_fusion,
            fusion_weight=config.fusion_weight,
            aligner=aligner,
            weights=weights,
            fallback=fallback,
            feature_ref=feature_ref,
        )

    @property
    def num_classes(self) -> int:
        return self.teachers[0].num_classes

    @torch.no_grad()
    def outputs(self, images: Tensor) -> tuple[list[Any], list[Tensor] | None]:
        """Each teacher's output on ``images`` (decoded from fused features under fusion) and the
        fused features (None without fusion)."""
        outs = [t(images) for t in self.teachers]
        if not self.fusion:
            return outs, None
        fused = fuse_features(
            common_size([o.features for o in outs]), self.fusion_weight, self.aligner
        )
        outs = [
            t.head_from_features(o, f) for t, o, f in zip(self.teachers, outs, fused, strict=True)
        ]
        return outs, fused

    @torch.no_grad()
    def probs(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """Every teacher's semantic probabilities (N, B, K, h, w) at ``size``."""
        outs, _ = self.outputs(images)
        probs = torch.stack([o.semantic_probs(size) for o in outs])
        if self.tta:
            outs, _ = self.outputs(images.flip(-1))
            mirror = torch.stack([o.semantic_probs(size) for o in outs]).flip(-1)
            probs = (probs + mirror) / 2
        return probs

    def combine(self, probs: Tensor) -> Tensor:
        """The combined target (B, K, h, w) from the teachers' probabilities (N, B, K, h, w):
        the (weighted) mean, or under the majority rule the fallback teacher's where most
        teachers disagree with it."""
        weights = None if self.weights is None else self.weights.to(probs)
        target = combine_teachers(probs, weights)
        if self.fallback is None:
            return target
        return majority_or_fallback(probs, target, self.fallback)

    def feature_target(self, fused: list[Tensor] | None) -> Tensor | None:
        """The features a student of the teachers' preset learns (the reference teacher's fused
        features, or their mean)."""
        if fused is None:
            return None
        if self.feature_ref is not None:
            return fused[self.feature_ref]
        return torch.stack(fused).mean(0)

    @torch.no_grad()
    def predict(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The combined prediction (B, K, H, W) at ``size`` (default: the input size), so that
        the ensemble evaluates like one model (:func:`feds2r.engine.evaluate.evaluate`)."""
        return self.combine(self.probs(images, size or tuple(images.shape[-2:])))

    @torch.no_grad()
    def batch_targets(
        self, images: Tensor, *, with_features: bool = False, stride: int = STRIDE
    ) -> Tensor:
        """The targets of a batch of images (B, 3, H, W): half-precision maps (B, C, H/stride,
        W/stride) on the CPU holding the combined probabilities (K channels), the feature target
        (when ``with_features``) and a validity channel (ones)."""
        h, w = images.shape[-2] // stride, images.shape[-1] // stride
        outs, fused = self.outputs(images)
        target = self.combine(torch.stack([o.semantic_probs((h, w)) for o in outs]))
        parts = [target]
        if with_features:
            f = self.feature_target(fused)
            parts.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
        parts.append(torch.ones_like(target[:, :1]))
        return torch.cat(parts, dim=1).half().cpu()

    @torch.no_grad()
    def cache_targets(
        self,
        data,
        *,
        with_features: bool = False,
        stride: int = STRIDE,
        batch_size: int = 16,
        device="cpu",
        progress: bool = True,
    ) -> tuple[list[Tensor], int]:
        """Run the teachers once on every image of ``data`` (a ResizedCache) and return, per
        image, one half-precision map (C, H/stride, W/stride) (:meth:`batch_targets`), in
        memory, and the number of feature channels (0 if none). The maps follow each training
        view's scale, crop and flip (:meth:`~feds2r.engine.data.ResizedCache.with_maps`). The
        server stages keep them in memory or on disk
        (:func:`~feds2r.server.targets.compute_targets`)."""
        maps = compute_targets(
            data,
            lambda images: self.batch_targets(images, with_features=with_features, stride=stride),
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        channels = maps[0].shape[0] - self.num_classes - 1 if with_features and len(maps) else 0
        return list(maps), channels
