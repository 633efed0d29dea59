"""Multi-client knowledge distillation with feature fusion: the FedS2R global model.

Teachers (the client models, frozen) see every server image; their decoder features are averaged
(fused) and each teacher's own last layer reads the fused features; the teachers' semantic
predictions are combined (their mean where most of them agree, one teacher's prediction elsewhere;
optionally weighted per class by how much each teacher agrees with the others); the student learns
the combined soft targets through the one training loop. All design choices and their reasons:
``docs/method.md``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.errors import Feds2rError
from feds2r.losses.distillation import (
    combine_teachers,
    feature_loss,
    majority_or_fallback,
    mask_kd_loss,
    pixel_kd_loss,
)
from feds2r.models import SegModel, create_model

INITS = ("auto", "fedavg", "client", "scratch")
COMBINES = ("mean", "majority")


@dataclass(frozen=True)
class DistillConfig:
    """How the server distils the clients into the global model."""

    student: str = "m2f-cpu"
    """Preset of the global model."""
    init: str = "auto"
    """Student initialisation: "fedavg" (parameter mean of the clients), "client" (the client
    whose predictions agree most with the combined teachers on the server images), "auto"
    (FedAvg unless it agrees less than that client, then the client; both label-free) or
    "scratch". All but "scratch" need clients of the student's preset."""
    kd: str = "mask"
    """"mask": set-level KL + BCE + Dice on matched queries (FedS2R); "pixel": per-pixel KL
    (FedDF-style; the only choice for per-pixel students)."""
    class_targets: str = "onehot"
    """With kd "mask": each target query's class label: "onehot" (its class; the soft mask
    carries the uncertainty) or "soft" (the teachers' mean class distribution over its region,
    softened by the temperature)."""
    pixel_weight: float = 0.0
    """With kd "mask": weight of an added per-pixel KL term on the student's semantic map."""
    feature_fusion: bool = False
    """Average the teachers' decoder features and decode them with each teacher's own head
    (FedS2R's feature fusion; the demo's ``feds2r`` row turns it on). Off by default: chosen on
    the dev split, where fusing cost 0.4-1.2 dev mIoU in every seed of the five-seed default demo
    (docs/results.md), its targets being no better than the unfused ones (target_quality)."""
    fusion_align: bool = True
    """Before averaging, map every teacher's features into each teacher's own feature space with a
    linear least-squares map fitted on the server images (clients trained apart do not share a
    feature space); False: average the raw features."""
    fusion_weight: float = 1.0
    """Share of the fused features in what each teacher decodes: (1 - w) own + w fused."""
    feature_weight: float = 1.0
    """Weight of the student-to-fused-features term (cosine distance; only for a student of the
    teachers' own preset, whose feature space is comparable)."""
    inconsistency_weighting: bool = False
    """Weight teachers per class by their agreement with the other teachers."""
    combine: str = "majority"
    """How the teachers' predictions become one target: "majority" (their mean where most teachers
    predict its arg-max, elsewhere the probabilities of the teacher that agrees most with the
    others on the server images) or "mean" (the plain, or agreement-weighted, mean everywhere)."""
    temperature: float = 2.0
    min_fraction: float = 0.002
    """A class becomes a soft target where it is the arg-max on this share of the pixels."""
    teacher_cache: bool = True
    """Run the teachers once per server image (un-augmented) and reuse their targets, which
    follow each view's scale, crop and flip; False: run them on every augmented batch."""

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ValueError("fusion_weight must be in [0, 1]")
        if self.pixel_weight < 0 or self.feature_weight < 0:
            raise ValueError("pixel_weight and feature_weight must be >= 0")
        if self.class_targets not in ("onehot", "soft"):
            raise ValueError(
                f"class_targets must be 'onehot' or 'soft', not {self.class_targets!r}"
            )
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, not {self.combine!r}")
        if self.kd not in ("mask", "pixel"):
            raise ValueError(f"kd must be 'mask' or 'pixel', not {self.kd!r}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


def fedavg(models: list[SegModel]) -> SegModel:
    """One model whose parameters are the mean of ``models``' (one-shot FedAvg, equal weights).

    All models must share a preset; integer buffers (BatchNorm counters) are taken from the first.
    """
    presets = {m.preset.name for m in models}
    if len(presets) != 1:
        raise Feds2rError(f"FedAvg needs clients of one preset, got {sorted(presets)}")
    avg = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    merged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            merged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            merged[key] = value.clone()
    avg.load_state_dict(merged)
    return avg.eval()


def agreement_weights(agreement: list[list[float | None]], floor: float = 0.05) -> Tensor:
    """Teacher weights (N, K) from per-class agreement; undefined classes weigh uniformly."""
    w = torch.tensor([[1.0 if a is None else max(a, floor) for a in row] for row in agreement])
    return w / w.sum(0, keepdim=True)


def _target(probs: Tensor, weights: Tensor | None, fallback: int | None) -> Tensor:
    """The combined teacher target from their probabilities (N, B, K, h, w): the (weighted)
    mean, or with a ``fallback`` teacher the majority rule of :func:`majority_or_fallback`."""
    target = combine_teachers(probs, None if weights is None else weights.to(probs))
    return target if fallback is None else majority_or_fallback(probs, target, fallback)


def _distill_terms(
    student: SegModel,
    out,
    target: Tensor,
    config: DistillConfig,
    *,
    valid: Tensor | None = None,
    fused: Tensor | None = None,
) -> dict[str, Tensor]:
    """KD of ``out`` towards combined teacher probabilities ``target`` (B, K, h, w), plus the
    feature term towards ``fused`` features when given; ``valid`` masks padding."""

    def pixel_kd() -> dict[str, Tensor]:
        probs = out.semantic_probs(tuple(target.shape[-2:]))
        return pixel_kd_loss(probs, target, config.temperature, valid)

    if config.kd == "pixel" or not student.is_mask_classification:
        parts = pixel_kd()
    else:
        parts = mask_kd_loss(
            out.class_logits,
            out.mask_logits,
            out.aux,
            target,
            config.temperature,
            config.min_fraction,
            valid,
            onehot=config.class_targets == "onehot",
        )
        if config.pixel_weight > 0:
            px = config.pixel_weight * pixel_kd()["loss"]
            parts = {**parts, "loss": parts["loss"] + px, "loss_pixel": px}
    if fused is not None:
        feat = config.feature_weight * feature_loss(out.features, fused, valid)
        parts = {**parts, "loss": parts["loss"] + feat, "loss_feat": feat}
    return parts


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


def make_distill_loss(
    teachers: list[SegModel],
    config: DistillConfig,
    weights: Tensor | None = None,
    *,
    aligner: FeatureAligner | None = None,
    ref: int | None = None,
    fallback: int | None = None,
):
    """``loss_fn(student, batch)`` for the training loop (see the module docstring); ``ref``:
    the teacher whose feature space the student shares (see :func:`build_student`);
    ``fallback``: the teacher of the "majority" rule (None: the plain mean)."""
    for t in teachers:
        t.eval().requires_grad_(False)
    use_feats = feature_term_applies(teachers, config)

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        with torch.no_grad():
            outs, fused = _teacher_outputs(teachers, images, config, aligner)
        out = student(images)
        logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
        size = tuple(logits.shape[-2:])
        with torch.no_grad():
            probs = torch.stack([o.semantic_probs(size) for o in outs])
            target = _target(probs, weights, fallback)
        feat_target = _feature_target(fused, ref) if use_feats else None
        return _distill_terms(student, out, target, config, fused=feat_target)

    return loss_fn


def feature_term_applies(teachers: list[SegModel], config: DistillConfig) -> bool:
    """Fusion on, a positive weight, and a student of the teachers' own preset: only then are
    the student's features comparable with the fused ones."""
    return (
        config.feature_fusion
        and config.feature_weight > 0
        and all(t.preset.name == config.student for t in teachers)
    )


def _feature_target(fused: list[Tensor] | None, ref: int | None) -> Tensor | None:
    if fused is None:
        return None
    return fused[ref] if ref is not None else torch.stack(fused).mean(0)


def _common_size(feats: list[Tensor]) -> list[Tensor]:
    """Feature maps resized (bilinear) to the first one's spatial size where they differ."""
    size = tuple(feats[0].shape[-2:])
    return [
        f
        if tuple(f.shape[-2:]) == size
        else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in feats
    ]


def _teacher_outputs(
    teachers: list[SegModel],
    images: Tensor,
    config: DistillConfig,
    aligner: FeatureAligner | None = None,
):
    outs = [t(images) for t in teachers]
    fused = None
    if config.feature_fusion:
        feats = _common_size([o.features for o in outs])
        fused = fuse_features(feats, config.fusion_weight, aligner)
        outs = [t.head_from_features(o, f) for t, o, f in zip(teachers, outs, fused, strict=True)]
    return outs, fused


def _groups(data, indices: list[int]) -> list[list[int]]:
    """``indices`` split into runs of images of one shape (so they stack into a batch)."""
    shapes: dict[tuple, list[int]] = {}
    for i in indices:
        shapes.setdefault(tuple(data.images[i].shape), []).append(i)
    return list(shapes.values())


def _sample_batches(data, num: int, batch_size: int = 16) -> list[Tensor]:
    """Up to ``num`` server images, evenly spread over ``data``, as stackable batches."""
    n = len(data)
    idx = sorted({int(k * n / min(num, n)) for k in range(min(num, n))})
    batches = []
    for group in _groups(data, idx):
        for s in range(0, len(group), batch_size):
            batches.append(torch.stack([data.images[i] for i in group[s : s + batch_size]]))
    return batches


@torch.no_grad()
def fit_aligner(teachers: list[SegModel], batches: list[Tensor], device="cpu") -> FeatureAligner:
    """Fit :class:`FeatureAligner` on the teachers' features over ``batches`` of images."""
    per_teacher: list[list[Tensor]] = [[] for _ in teachers]
    for images in batches:
        feats = _common_size([t(images.to(device)).features for t in teachers])
        for k, f in enumerate(feats):
            per_teacher[k].append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu())
    return FeatureAligner.fit([torch.cat(p) for p in per_teacher])


@torch.no_grad()
def cache_teacher_targets(
    teachers: list[SegModel],
    data,
    config: DistillConfig,
    weights: Tensor | None,
    *,
    aligner: FeatureAligner | None = None,
    ref: int | None = None,
    fallback: int | None = None,
    stride: int = 4,
    batch_size: int = 16,
    device="cpu",
    progress: bool = True,
) -> int:
    """Fill ``data.maps`` with the combined teacher probabilities, the fused features (when the
    feature term applies) and a validity channel, at 1/``stride`` of each cached image.

    Returns the number of feature channels stored (0 if none).
    """
    from tqdm import tqdm

    for t in teachers:
        t.eval().requires_grad_(False)
    feats = feature_term_applies(teachers, config)
    maps: list[Tensor] = [None] * len(data)  # type: ignore[list-item]
    order = sorted(range(len(data)), key=lambda i: tuple(data.images[i].shape))
    channels = 0
    bar = tqdm(total=len(data), desc="teacher targets", unit="img", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for group in _groups(data, idx):
            images = torch.stack([data.images[i] for i in group]).to(device)
            h, w = images.shape[-2] // stride, images.shape[-1] // stride
            outs, fused = _teacher_outputs(teachers, images, config, aligner)
            probs = torch.stack([o.semantic_probs((h, w)) for o in outs])
            target = _target(probs, weights, fallback)
            parts = [target]
            if feats:
                f = _feature_target(fused, ref)
                parts.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
                channels = f.shape[1]
            parts.append(torch.ones_like(target[:, :1]))
            stacked = torch.cat(parts, dim=1).half().cpu()
            for j, i in enumerate(group):
                maps[i] = stacked[j]
        bar.update(len(idx))
    bar.close()
    data.maps = maps
    return channels


def make_cached_distill_loss(config: DistillConfig, num_classes: int, feature_channels: int):
    """``loss_fn(student, batch)`` reading targets from ``batch["maps"]`` (see
    :func:`cache_teacher_targets`)."""

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = student(batch["image"])
        logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
        size = tuple(logits.shape[-2:])
        maps = batch["maps"].float()
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        k = num_classes
        valid = maps[:, -1] > 0.5
        target = maps[:, :k] * valid[:, None]
        fused = maps[:, k : k + feature_channels] if feature_channels else None
        return _distill_terms(student, out, target, config, valid=valid, fused=fused)

    return loss_fn


@torch.no_grad()
def ensemble_agreement(
    teachers: list[SegModel], batches: list[Tensor], others: list[SegModel] = ()
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


def most_agreeing(agreement: list[float]) -> int:
    """Index of the teacher with the highest :func:`ensemble_agreement` (the first on a tie)."""
    return max(range(len(agreement)), key=lambda k: agreement[k])


def build_student(
    teachers: list[SegModel],
    config: DistillConfig,
    seed: int,
    batches: list[Tensor] | None = None,
) -> tuple[SegModel, int | None, dict[str, Any]]:
    """The student before distillation, the index of the teacher it starts from (None unless
    init chose a client) and a record of the choice (agreements measured on ``batches``)."""
    torch.manual_seed(seed)
    if config.init == "scratch":
        return create_model(config.student), None, {"init": "scratch"}
    if any(t.preset.name != config.student for t in teachers):
        raise Feds2rError(
            f"student init {config.init!r} needs clients of the student's preset "
            f"{config.student!r}; use init 'scratch' for another student"
        )
    avg = fedavg(teachers)
    if config.init == "fedavg":
        return avg.train().requires_grad_(True), None, {"init": "fedavg"}
    if not batches:
        raise Feds2rError(f"student init {config.init!r} needs server images to compare models")
    agree = ensemble_agreement(teachers, batches, [avg])
    best = most_agreeing(agree[:-1])
    record = {"agreement_clients": agree[:-1], "agreement_fedavg": agree[-1]}
    if config.init == "auto" and agree[-1] >= agree[best]:
        return avg.train().requires_grad_(True), None, {"init": "fedavg", **record}
    student = copy.deepcopy(teachers[best]).train().requires_grad_(True)
    return student, best, {"init": f"client {best}", **record}


def distill(
    teachers: list[SegModel],
    data,
    config: DistillConfig,
    train_config,
    out: str | Path,
    *,
    weights: Tensor | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """Train the global model on the server images ``data`` (a :class:`ResizedCache`).

    ``on_step(student, step)`` is called after every step (the demo records learning curves).
    """
    from feds2r.engine.device import resolve_device
    from feds2r.engine.train import train

    device = resolve_device(train_config.device)
    for t in teachers:
        t.to(device).eval().requires_grad_(False)
    batches = [b.to(device) for b in _sample_batches(data, 32)]
    student, ref, init_record = build_student(teachers, config, train_config.seed, batches)
    fallback = None
    if config.combine == "majority" and len(teachers) > 1:
        agree = init_record.get("agreement_clients") or ensemble_agreement(teachers, batches)
        fallback = most_agreeing(agree)
        init_record = {**init_record, "majority_fallback": f"client {fallback}"}
    aligner = None
    if config.feature_fusion and config.fusion_align and len(teachers) > 1:
        aligner = fit_aligner(teachers, batches, device)
    if config.teacher_cache:
        channels = cache_teacher_targets(
            teachers,
            data,
            config,
            weights,
            aligner=aligner,
            ref=ref,
            fallback=fallback,
            device=device,
            progress=progress,
        )
        loss_fn = make_cached_distill_loss(config, teachers[0].num_classes, channels)
    else:
        loss_fn = make_distill_loss(
            teachers, config, weights, aligner=aligner, ref=ref, fallback=fallback
        )
    info = {
        "role": "server",
        "distill_config": dataclasses.asdict(config),
        "student_init": init_record,
        **(meta or {}),
    }
    hook = None if on_step is None else (lambda step: on_step(student, step))
    # what this run learns from: a resume into OUT with other clients or server data is refused
    identity = {
        "clients": (meta or {}).get("clients"),
        "server_data": (meta or {}).get("server_data"),
        "distill": dataclasses.asdict(config),
    }
    return train(
        student,
        loss_fn,
        data,
        train_config,
        out,
        meta=info,
        identity=identity,
        progress=progress,
        on_step=hook,
    )


def run_distill(
    client_paths: list[str | Path],
    data: str,
    out: str | Path,
    config: DistillConfig,
    train_config,
    *,
    generated: str | None = None,
    inconsistency: dict | None = None,
    on_error: str = "raise",
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """Load the clients and the server images (real, plus ``generated`` if given) and distil.

    ``on_error="skip"`` leaves unreadable server images out (with a warning).

    ``data`` and ``generated`` are dataset specs (labels are never read). ``inconsistency`` is an
    inconsistency report (its per-client ``agreement`` weights the teachers when
    ``config.inconsistency_weighting``).
    """
    from feds2r.data import open_dataset
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.engine.data import ResizedCache

    teachers = [load_checkpoint(p)[0] for p in client_paths]
    if len(teachers) < 1:
        raise Feds2rError("distillation needs at least one client model")
    real = open_dataset(data, labels=False, on_error=on_error)
    cache = ResizedCache(
        real,
        train_config.height,
        with_labels=False,
        progress=progress,
        desc="loading server images",
    )
    sources = {
        "real": {"spec": str(real.spec), "num_images": len(real), "fingerprint": real.fingerprint()}
    }
    if generated:
        gen = open_dataset(generated, labels=False, on_error=on_error)
        cache.extend(
            ResizedCache(
                gen,
                train_config.height,
                with_labels=False,
                progress=progress,
                desc="loading generated images",
            )
        )
        sources["generated"] = {"spec": str(gen.spec), "num_images": len(gen)}
    weights = None
    if config.inconsistency_weighting:
        if not inconsistency or not inconsistency.get("agreement"):
            raise Feds2rError(
                "inconsistency weighting needs an inconsistency report "
                "(feds2r server inconsistency) for these clients"
            )
        weights = agreement_weights(inconsistency["agreement"])
    meta = {"clients": [str(p) for p in client_paths], "server_data": sources}
    return distill(
        teachers,
        cache,
        config,
        train_config,
        out,
        weights=weights,
        meta=meta,
        progress=progress,
        on_step=on_step,
    )
