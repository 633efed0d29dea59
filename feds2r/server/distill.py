"""Multi-client knowledge distillation with feature fusion: the FedS2R global model.

Teachers (the client models, frozen) see every server image; their decoder features are averaged
(fused) and each teacher's own last layer reads the fused features; the teachers' semantic
predictions are combined (their mean where most of them agree, one teacher's prediction elsewhere;
optionally weighted per class by how much each teacher agrees with the others); the student learns
the combined soft targets through the one training loop. The teachers and their combination are
one object, :class:`~feds2r.server.teachers.TeacherEnsemble`. All design choices and their
reasons: ``docs/method.md``.
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
from feds2r.losses.distillation import feature_loss, mask_kd_loss, pixel_kd_loss
from feds2r.models import PRESETS, SegModel, create_model
from feds2r.server.stage import ServerImages, Stage, StageRun, load_teachers, run_stage
from feds2r.server.targets import TARGETS
from feds2r.server.teachers import (
    TeacherEnsemble,
    agreement_weights,
    ensemble_agreement,
    most_agreeing,
)

INITS = ("auto", "fedavg", "client", "pretrained", "scratch")
COMBINES = ("mean", "majority")


@dataclass(frozen=True)
class DistillConfig:
    """How the server distils the clients into the global model."""

    student: str = ""
    """Preset of the global model; "" (the default): the clients' preset."""
    init: str = "auto"
    """Student initialisation: "fedavg" (parameter mean of the clients), "client" (the client
    whose predictions agree most with the combined teachers on the server images), "auto"
    (FedAvg unless it agrees less than that client, then the client; both label-free; for a
    student of another preset than the clients', "pretrained"), "pretrained" (the preset's
    shipped pretrained backbone and a random decoder) or "scratch" (random weights). "fedavg" and
    "client" need clients of the student's preset."""
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
    """Softening ``softmax(log p / T)`` of the teachers' and the student's probabilities in the
    per-pixel KL (scaled by T^2), and of the soft class targets (class_targets "soft")."""
    min_fraction: float = 0.002
    """A class becomes a soft target where it is the arg-max on this share of the pixels."""
    teacher_cache: bool = True
    """Run the teachers once per server image (un-augmented) and reuse their targets, which
    follow each view's scale, crop and flip; False: run them on every augmented batch."""
    finetune_lr: float = 0.1
    """Multiplies the recipe's learning rate when the student starts from the clients' weights
    (``init`` resolved to "fedavg" or "client"): a student that already segments is fine-tuned,
    not trained. 0.1 was chosen on dev for the default ImageNet start (seg-effl0: 21.2 dev mIoU
    against 18.7 at 1.0 and 19.6 at 0.3, docs/results.md); 1.0 keeps the recipe's rate, as the
    demo's ``public``, ``quick`` and ``full`` profiles do."""
    targets: str = "auto"
    """Where the teachers' targets made once per server image are kept while a server stage
    trains (distillation with teacher_cache, self-training, the lightweight route): "memory" (a
    float16 map per image), "disk" (one memory-mapped float16 file in OUT/teacher_targets/,
    written once; each batch reads only its images' maps; kept to resume a stopped run, removed
    when the stage finishes) or "auto" (disk when the maps would take more than 1 GiB). Both
    hold the same values: the trained model does not depend on this choice (docs/api.md)."""

    def __post_init__(self) -> None:
        if self.student and self.student not in PRESETS:
            raise ValueError(
                f"unknown student preset {self.student!r}; valid: {', '.join(PRESETS)}"
            )
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
        if self.finetune_lr <= 0:
            raise ValueError("finetune_lr must be > 0")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, not {self.targets!r}")

    def learning_fields(self) -> dict[str, Any]:
        """The fields that shape the trained model (all but ``targets``, which only says where
        the same targets are kept): the run's identity and its sidecar record."""
        fields = dataclasses.asdict(self)
        del fields["targets"]
        return fields


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


def make_distill_loss(ensemble: TeacherEnsemble, config: DistillConfig, *, with_features: bool):
    """``loss_fn(student, batch)`` for the training loop that runs the teachers on every batch
    (see the module docstring); ``with_features``: add the feature term (see
    :func:`feature_term_applies`)."""

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        with torch.no_grad():
            outs, fused = ensemble.outputs(images)
        out = student(images)
        logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
        size = tuple(logits.shape[-2:])
        with torch.no_grad():
            target = ensemble.combine(torch.stack([o.semantic_probs(size) for o in outs]))
        feat_target = ensemble.feature_target(fused) if with_features else None
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


def cached_distill_terms(
    student: SegModel,
    out,
    maps: Tensor,
    config: DistillConfig,
    num_classes: int,
    feature_channels: int,
) -> dict[str, Tensor]:
    """The distillation terms of the student's output ``out`` towards cached targets ``maps``
    (B, C, h', w'): K combined-probability channels, the feature target, a validity channel (made
    by :meth:`~feds2r.server.teachers.TeacherEnsemble.cache_targets`, resized to the output)."""
    logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
    size = tuple(logits.shape[-2:])
    maps = maps.float()
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    k = num_classes
    valid = maps[:, -1] > 0.5
    target = maps[:, :k] * valid[:, None]
    fused = maps[:, k : k + feature_channels] if feature_channels else None
    return _distill_terms(student, out, target, config, valid=valid, fused=fused)


def make_cached_distill_loss(config: DistillConfig, num_classes: int, feature_channels: int):
    """``loss_fn(student, batch)`` reading targets from ``batch["maps"]`` (see
    :func:`cached_distill_terms`)."""

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = student(batch["image"])
        return cached_distill_terms(
            student, out, batch["maps"], config, num_classes, feature_channels
        )

    return loss_fn


def with_student(config: DistillConfig, teachers: list[SegModel]) -> DistillConfig:
    """``config`` with its student named: the teachers' preset when it names none."""
    if config.student:
        return config
    presets = sorted({t.preset.name for t in teachers})
    if len(presets) != 1:
        raise Feds2rError(
            f"the clients have different presets ({', '.join(presets)}): name the global "
            "model's preset (--student-preset)"
        )
    return dataclasses.replace(config, student=presets[0])


def build_student(
    teachers: list[SegModel],
    config: DistillConfig,
    seed: int,
    batches: list[Tensor] | None = None,
) -> tuple[SegModel, int | None, dict[str, Any]]:
    """The student before distillation, the index of the teacher it starts from (None unless
    init chose a client) and a record of the choice (agreements measured on ``batches``)."""
    config = with_student(config, teachers)
    torch.manual_seed(seed)
    if config.init == "scratch":
        return create_model(config.student), None, {"init": "scratch"}
    other = any(t.preset.name != config.student for t in teachers)
    if config.init == "pretrained" or (config.init == "auto" and other):
        from feds2r.models import PRETRAINED, start_source

        record = {"init": "pretrained", "backbone": start_source(config.student)}
        return create_model(config.student, backbone_weights=PRETRAINED), None, record
    if other:
        raise Feds2rError(
            f"student init {config.init!r} needs clients of the student's preset "
            f"{config.student!r}; use init 'pretrained' or 'scratch' for another student"
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


@dataclass(frozen=True)
class DistillInputs:
    """What a distillation learns from: the ``[server]`` table of its ``config.toml`` (and of a
    config file given to ``feds2r server distill --config``)."""

    clients: tuple[str, ...] = ()
    """The client checkpoints (folders), the teachers."""
    data: str = ""
    """The server's unlabelled images (a dataset spec)."""
    generated: str = ""
    """Generated images (a dataset spec, or a folder written by ``feds2r server augment``)."""
    inconsistency: str = ""
    """An inconsistency report (its JSON file or folder), for inconsistency weighting."""

    def __post_init__(self) -> None:
        from feds2r.config import check_types

        check_types(self)


def run_distill(
    client_paths: list[str | Path],
    data: str,
    out: str | Path,
    config: DistillConfig,
    train_config,
    *,
    generated: str | None = None,
    inconsistency: dict | str | Path | None = None,
    on_error: str = "raise",
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """The distillation stage: load the clients and the server images (real, plus
    ``generated`` if given) and distil them into ``out``.

    ``data`` and ``generated`` are dataset specs (labels are never read; ``generated`` may also
    be a folder written by ``feds2r server augment``). ``inconsistency`` is an inconsistency
    report, or its file or folder (its per-client ``agreement`` weights the teachers when
    ``config.inconsistency_weighting``). ``on_error="skip"`` leaves unreadable server images out
    (with a warning). Writes ``OUT/config.toml`` (the inputs, the distillation config and the
    recipe) once a resume of ``out``, if any, is known to be this run's. ``on_step(student,
    step)`` is called after every step (the demo records learning curves). The skeleton it shares
    with the later stages: :func:`~feds2r.server.stage.run_stage`.
    """
    from feds2r.server.inconsistency import load_inconsistency

    if not client_paths:
        raise Feds2rError("distillation needs at least one client model")
    teachers = load_teachers(client_paths)
    config = with_student(config, teachers)
    images = ServerImages.open(data, generated, on_error)
    report, report_path = inconsistency, ""
    if isinstance(inconsistency, str | Path):
        report, report_path = load_inconsistency(inconsistency), str(inconsistency)
    weights = None
    if config.inconsistency_weighting:
        if not report or not report.get("agreement"):
            raise Feds2rError(
                "inconsistency weighting needs an inconsistency report "
                "(feds2r server inconsistency) for these clients"
            )
        weights = agreement_weights(report["agreement"])
    meta = {"clients": [str(p) for p in client_paths], "server_data": images.sources()}
    inputs = DistillInputs(
        clients=tuple(str(c) for c in client_paths),
        data=str(data),
        generated=images.generated_spec or "",
        inconsistency=report_path,
    )
    stage = Stage(
        "server distill",
        teachers,
        images,
        _identity(meta, config),
        {"server": inputs, "distill": config, "train": train_config},
        preset=config.student,
        targets=config.targets,
        lr_scales=(config.finetune_lr,) if config.finetune_lr != 1.0 else (),
    )

    def body(run: StageRun) -> dict[str, Any]:
        return _distill(run, config, weights=weights, meta=meta, on_step=on_step)

    return run_stage(stage, out, train_config, body, progress=progress)


def _distill(
    run: StageRun,
    config: DistillConfig,
    *,
    weights: Tensor | None,
    meta: dict[str, Any],
    on_step: Callable[[SegModel, int], None] | None,
) -> dict[str, Any]:
    """Distillation's own part of the stage: the student's start, the teachers' combination
    and its targets (cached once per image, or run on every batch), the distillation loss."""
    student, ref, init_record = build_student(
        run.teachers, config, run.train_config.seed, run.batches
    )
    ensemble = run.ensemble(
        config, weights=weights, agreement=init_record.get("agreement_clients"), feature_ref=ref
    )
    if ensemble.fallback is not None:
        init_record = {**init_record, "majority_fallback": f"client {ensemble.fallback}"}
    with_features = feature_term_applies(run.teachers, config)
    data = run.cache
    if config.teacher_cache:
        how = {
            "with_features": with_features,
            "weights": None if weights is None else weights.tolist(),
        }
        maps = run.targets(
            lambda images: ensemble.batch_targets(images, with_features=with_features), how
        )
        k = ensemble.num_classes
        channels = maps[0].shape[0] - k - 1 if with_features and len(maps) else 0
        data = run.with_targets(maps)
        loss_fn = make_cached_distill_loss(config, k, channels)
    else:
        loss_fn = make_distill_loss(ensemble, config, with_features=with_features)
    info = {
        "role": "server",
        "route": "distill",
        "distill_config": config.learning_fields(),
        "student_init": init_record,
        **meta,
    }
    lr_scale = config.finetune_lr if init_record.get("init") in ("fedavg", "client") else 1.0
    if lr_scale != 1.0:
        info["lr"] = run.train_config.lr * lr_scale
    hook = None if on_step is None else (lambda step: on_step(student, step))
    return run.train(student, loss_fn, data, meta=info, on_step=hook, lr_scale=lr_scale)


def _identity(meta: dict[str, Any], config: DistillConfig) -> dict[str, Any]:
    """What a distillation run learns from: a resume into OUT with other clients, server data or
    distillation config is refused (:func:`~feds2r.engine.train.check_resume`)."""
    return {
        "clients": meta.get("clients"),
        "server_data": meta.get("server_data"),
        "distill": config.learning_fields(),
    }
