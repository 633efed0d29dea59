"""Multi-client knowledge distillation with feature fusion: the FedS2R global model.

Teachers (the client models, frozen) see every server image; their decoder features are averaged
(fused) and each teacher's own last layer reads the fused features; the teachers' semantic
predictions are combined (optionally weighted per class by how much each teacher agrees with the
others); the student learns the combined soft targets through the one training loop. All design
choices and their reasons: ``docs/method.md``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.errors import Feds2rError
from feds2r.losses.distillation import combine_teachers, feature_loss, mask_kd_loss, pixel_kd_loss
from feds2r.models import SegModel, create_model


@dataclass(frozen=True)
class DistillConfig:
    """How the server distils the clients into the global model."""

    student: str = "m2f-cpu"
    """Preset of the global model."""
    init: str = "fedavg"
    """Student initialisation: "fedavg" (parameter mean of the clients, same preset only) or
    "scratch"."""
    kd: str = "mask"
    """"mask": set-level KL + BCE + Dice on matched queries (FedS2R); "pixel": per-pixel KL
    (FedDF-style; the only choice for per-pixel students)."""
    feature_fusion: bool = True
    """Average the teachers' decoder features and decode them with each teacher's own head."""
    feature_weight: float = 1.0
    """Weight of the student-to-fused-features term (cosine distance; only for a student of the
    teachers' own preset, whose feature space is comparable)."""
    inconsistency_weighting: bool = False
    """Weight teachers per class by their agreement with the other teachers."""
    temperature: float = 2.0
    min_fraction: float = 0.002
    teacher_cache: bool = True
    """Run the teachers once per server image (un-augmented) and reuse their targets, which
    follow each view's scale, crop and flip; False: run them on every augmented batch."""
    """A class becomes a soft target where it is the arg-max on this share of the pixels."""

    def __post_init__(self) -> None:
        if self.init not in ("fedavg", "scratch"):
            raise ValueError(f"init must be 'fedavg' or 'scratch', not {self.init!r}")
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
    if config.kd == "mask" and student.is_mask_classification:
        parts = mask_kd_loss(
            out.class_logits,
            out.mask_logits,
            out.aux,
            target,
            config.temperature,
            config.min_fraction,
            valid,
        )
    else:
        parts = pixel_kd_loss(
            out.semantic_probs(tuple(target.shape[-2:])), target, config.temperature, valid
        )
    if fused is not None:
        feat = config.feature_weight * feature_loss(out.features, fused, valid)
        parts = {**parts, "loss": parts["loss"] + feat, "loss_feat": feat}
    return parts


def make_distill_loss(
    teachers: list[SegModel], config: DistillConfig, weights: Tensor | None = None
):
    """``loss_fn(student, batch)`` for the training loop (see the module docstring)."""
    for t in teachers:
        t.eval().requires_grad_(False)
    use_feats = feature_term_applies(teachers, config)

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        with torch.no_grad():
            outs, fused = _teacher_outputs(teachers, images, config.feature_fusion)
        out = student(images)
        logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
        size = tuple(logits.shape[-2:])
        with torch.no_grad():
            probs = torch.stack([o.semantic_probs(size) for o in outs])
            target = combine_teachers(probs, None if weights is None else weights.to(probs))
        return _distill_terms(student, out, target, config, fused=fused if use_feats else None)

    return loss_fn


def feature_term_applies(teachers: list[SegModel], config: DistillConfig) -> bool:
    """Fusion on, a positive weight, and a student of the teachers' own preset: only then are
    the student's features comparable with the fused ones."""
    return (
        config.feature_fusion
        and config.feature_weight > 0
        and all(t.preset.name == config.student for t in teachers)
    )


def _teacher_outputs(teachers: list[SegModel], images: Tensor, fusion: bool):
    outs = [t(images) for t in teachers]
    fused = None
    if fusion:
        fused = torch.stack([o.features for o in outs]).mean(0)
        outs = [t.head_from_features(o, fused) for t, o in zip(teachers, outs, strict=True)]
    return outs, fused


@torch.no_grad()
def cache_teacher_targets(
    teachers: list[SegModel],
    data,
    config: DistillConfig,
    weights: Tensor | None,
    *,
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
        shapes = {tuple(data.images[i].shape) for i in idx}
        groups = [[i for i in idx if tuple(data.images[i].shape) == sh] for sh in shapes]
        for group in groups:
            images = torch.stack([data.images[i] for i in group]).to(device)
            h, w = images.shape[-2] // stride, images.shape[-1] // stride
            outs, fused = _teacher_outputs(teachers, images, config.feature_fusion)
            probs = torch.stack([o.semantic_probs((h, w)) for o in outs])
            target = combine_teachers(probs, None if weights is None else weights.to(probs))
            parts = [target]
            if feats:
                parts.append(
                    F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)
                )
                channels = fused.shape[1]
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


def build_student(teachers: list[SegModel], config: DistillConfig, seed: int) -> SegModel:
    torch.manual_seed(seed)
    if config.init == "fedavg":
        if any(t.preset.name != config.student for t in teachers):
            raise Feds2rError(
                f"student init 'fedavg' needs clients of the student's preset {config.student!r}; "
                "use init 'scratch' for another student"
            )
        return fedavg(teachers).train().requires_grad_(True)
    return create_model(config.student)


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
) -> dict[str, Any]:
    """Train the global model on the server images ``data`` (a :class:`ResizedCache`)."""
    from feds2r.engine.train import train

    student = build_student(teachers, config, train_config.seed)
    device = train_config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    for t in teachers:
        t.to(device)
    if config.teacher_cache:
        channels = cache_teacher_targets(
            teachers, data, config, weights, device=device, progress=progress
        )
        loss_fn = make_cached_distill_loss(config, teachers[0].num_classes, channels)
    else:
        loss_fn = make_distill_loss(teachers, config, weights)
    info = {"role": "server", "distill_config": dataclasses.asdict(config), **(meta or {})}
    return train(student, loss_fn, data, train_config, out, meta=info, progress=progress)


def run_distill(
    client_paths: list[str | Path],
    data: str,
    out: str | Path,
    config: DistillConfig,
    train_config,
    *,
    generated: str | None = None,
    inconsistency: dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the clients and the server images (real, plus ``generated`` if given) and distil.

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
    real = open_dataset(data, labels=False)
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
        gen = open_dataset(generated, labels=False)
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
        teachers, cache, config, train_config, out, weights=weights, meta=meta, progress=progress
    )
