"""A lightweight global model through a large student (DUDA, ``../shared/seeds/duda-summary.txt``).

Deployed driving models must be small, and the clients' architecture is not. This stage distils
the federation into a small preset (e.g. ``segformer-cpu``) with DUDA's three ideas, adapted to a
one-shot server that has no labels:

- **a large student bridges the gap**: the distilled global model of the clients' preset (the
  ``feds2r`` model, optionally self-trained) is the small student's first teacher; it has already
  turned the clients' disagreeing predictions into one model's predictions;
- **gradual distillation**: for the first ``pre_fraction`` of the steps (DUDA's pre-adaptation)
  the small student learns the large student's probabilities alone; after it, a mix of the large
  student and the client teachers' combined target (**several teachers**, ``bridge_weight``);
- **inconsistency-based class weighting**: at the end of the pre-adaptation the class-wise
  disagreement between the large and the small student is measured on the server's images,
  ``I_c = 1 - IoU_c(arg-max large, arg-max small)``, normalised by its maximum (``I'_c``, DUDA's
  normalised inconsistency), and each pixel's loss is weighted by ``1 + I'_c`` of its target class:
  the classes the small student has adapted worst weigh most.

The loss is the per-pixel KL of :func:`~feds2r.losses.distillation.pixel_kd_loss` (a small preset
is a per-pixel model). Targets of both teachers are computed once per server image and follow each
training view (:meth:`~feds2r.engine.data.ResizedCache.with_maps`). Shapes: probabilities
(B, K, h, w), arg-max maps (B, h, w).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.config import check_types
from feds2r.errors import Feds2rError
from feds2r.models import PRESETS, SegModel


@dataclass(frozen=True)
class LiteConfig:
    """How the server distils the federation into a lightweight global model (DUDA route)."""

    student: str = "seg-effl0-tiny"
    """Preset of the lightweight model (``feds2r models``); it starts from the preset's shipped
    pretrained backbone and a random decoder."""
    pre_fraction: float = 0.5
    """Share of the steps of the pre-adaptation, in which the small student learns the large
    student's probabilities alone (DUDA's gradual distillation)."""
    bridge_weight: float = 0.5
    """After the pre-adaptation: the large student's share of the target; the rest is the client
    teachers' combined target (DUDA's multi-teacher learning; 1: the large student only)."""
    inconsistency_weighting: bool = True
    """After the pre-adaptation, weight each pixel by ``1 + I'_c`` of its target class (the
    normalised class-wise disagreement between the large and the small student)."""
    temperature: float = 2.0
    """Softening of both distributions in the per-pixel KL (scaled by T^2)."""
    pretrained: bool = True
    """Start from the preset's shipped pretrained backbone (``feds2r models``), as every model of
    a federation does; False: random weights."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.student not in PRESETS:
            raise ValueError(
                f"unknown student preset {self.student!r}; valid: {', '.join(PRESETS)}"
            )
        if not 0.0 <= self.pre_fraction < 1.0:
            raise ValueError(f"pre_fraction must be in [0, 1), got {self.pre_fraction}")
        if not 0.0 <= self.bridge_weight <= 1.0:
            raise ValueError(f"bridge_weight must be in [0, 1], got {self.bridge_weight}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")

    def pre_steps(self, steps: int) -> int:
        """The steps of the pre-adaptation in a run of ``steps``."""
        return int(round(steps * self.pre_fraction))


def class_inconsistency(large: Tensor, small: Tensor, num_classes: int) -> Tensor:
    """``I_c = 1 - |L_c & S_c| / |L_c | S_c|`` per class (K,) for two arg-max maps (B, h, w)
    (DUDA's class-wise inconsistency); 0 for a class neither map predicts."""
    k = torch.arange(num_classes, device=large.device)[:, None]
    lf, sf = large.reshape(1, -1) == k, small.reshape(1, -1) == k
    inter = (lf & sf).sum(1).float()
    union = (lf | sf).sum(1).float()
    return torch.where(union > 0, 1.0 - inter / union.clamp_min(1), torch.zeros_like(union))


def inconsistency_class_weights(inconsistency: Tensor) -> Tensor:
    """``1 + I'_c`` with ``I'_c = I_c / max_c I_c`` (all ones when the students agree
    everywhere)."""
    top = inconsistency.max()
    if top <= 0:
        return torch.ones_like(inconsistency)
    return 1.0 + inconsistency / top


@torch.no_grad()
def measure_class_weights(
    large: SegModel, small: SegModel, batches: list[Tensor], num_classes: int
) -> Tensor:
    """The class weights (K,) from the two students' arg-max maps on ``batches`` (server images);
    the small student is put back in training mode afterwards."""
    was = small.training
    small.eval()
    lm, sm = [], []
    for images in batches:
        lm.append(large.predict(images).argmax(1).flatten())
        sm.append(small.predict(images).argmax(1).flatten())
    small.train(was)
    inconsistency = class_inconsistency(torch.cat(lm), torch.cat(sm), num_classes)
    return inconsistency_class_weights(inconsistency)


def lite_target(
    maps: Tensor, num_classes: int, bridge_weight: float, pre: bool
) -> tuple[Tensor, Tensor]:
    """From cached maps (B, 2K + 1, h, w) — the large student's K probabilities, the teachers'
    combined K, a validity channel — the target (B, K, h, w) and the valid pixels (B, h, w)."""
    k = num_classes
    valid = maps[:, -1] > 0.5
    bridge, ensemble = maps[:, :k], maps[:, k : 2 * k]
    target = bridge if pre else bridge_weight * bridge + (1.0 - bridge_weight) * ensemble
    return target * valid[:, None], valid


def make_lite_loss(
    config: LiteConfig,
    num_classes: int,
    *,
    pre: Callable[[], bool],
    class_weights: Callable[[], Tensor | None],
):
    """``loss_fn(student, batch)`` of one step: per-pixel KL towards :func:`lite_target`, each
    pixel weighted by its target class's weight once ``class_weights()`` gives one."""
    from feds2r.losses.distillation import pixel_kd_loss

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = student(batch["image"])
        logits = out.mask_logits if out.mask_logits is not None else out.seg_logits
        size = tuple(logits.shape[-2:])
        maps = batch["maps"].float()
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        in_pre = pre()
        target, valid = lite_target(maps, num_classes, config.bridge_weight, in_pre)
        weights = None if in_pre else class_weights()
        pixel = None if weights is None else weights.to(target.device)[target.argmax(1)]
        parts = pixel_kd_loss(
            out.semantic_probs(size), target, config.temperature, valid, weight=pixel
        )
        return {**parts, "pre": torch.tensor(float(in_pre))}

    return loss_fn


def distill_lite(
    bridge: str | Path,
    client_paths: list[str | Path],
    data: str,
    out: str | Path,
    config: LiteConfig,
    distill_config,
    train_config,
    *,
    generated: str | None = None,
    on_error: str = "raise",
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """The lightweight stage: a ``config.student`` model distilled through the large student
    ``bridge`` (a global model checkpoint of the clients' preset) and the ``client_paths``
    teachers (combined by ``distill_config``'s rule) on the server's images (``data`` and
    ``generated``, unlabelled dataset specs). Writes a checkpoint whose sidecar names the route
    ``lite`` and its bridge, and ``OUT/config.toml``. A resumed run past the pre-adaptation
    measures its class weights again from the resumed student. The skeleton it shares with the
    other stages: :func:`~feds2r.server.stage.run_stage`."""
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.server.inputs import StageInputs
    from feds2r.server.stage import ServerImages, Stage, load_teachers, run_stage

    if not client_paths:
        raise Feds2rError("the lightweight route needs the client models (its second teacher)")
    if config.pretrained:  # checked before any model is built or image read
        from feds2r.models import start_source

        try:
            start_source(config.student)
        except Feds2rError:
            raise Feds2rError(
                f"--student-preset {config.student}: feds2r has no pretrained start for this "
                "preset, which the lightweight model starts from; choose a preset that has one "
                "(segformer-cpu, seg-effl0), or add --no-pretrained to start it from random weights"
            ) from None
    large, large_meta = load_checkpoint(bridge)
    teachers = load_teachers(client_paths)
    if large.num_classes != teachers[0].num_classes:
        raise Feds2rError(
            f"the large student {bridge} predicts {large.num_classes} classes, the clients "
            f"{teachers[0].num_classes}"
        )
    images = ServerImages.open(data, generated, on_error)
    identity = {
        "bridge": str(bridge),
        "clients": [str(p) for p in client_paths],
        "server_data": images.sources(),
        "lite": dataclasses.asdict(config),
        "combine": distill_config.combine,
        "feature_fusion": distill_config.feature_fusion,
    }
    inputs = StageInputs(
        str(bridge), tuple(identity["clients"]), str(data), images.generated_spec or ""
    )
    stage = Stage(
        "server lite",
        teachers,
        images,
        identity,
        {"lite": config, "server": inputs, "distill": distill_config, "train": train_config},
        preset=config.student,
        targets=distill_config.targets,
    )

    def body(run) -> dict[str, Any]:
        return _distill_lite(
            run, large, large_meta, config, distill_config, bridge=bridge, on_step=on_step
        )

    return run_stage(stage, out, train_config, body, progress=progress)


def _distill_lite(
    run,
    large: SegModel,
    large_meta: dict[str, Any],
    config: LiteConfig,
    distill_config,
    *,
    bridge: str | Path,
    on_step: Callable[[SegModel, int], None] | None,
) -> dict[str, Any]:
    """The lightweight route's own part of the stage (a :class:`~feds2r.server.stage.StageRun`):
    both teachers' targets, the small student, its phases and class weights."""
    from feds2r.models import PRETRAINED, create_model, start_source
    from feds2r.server.teachers import TeacherEnsemble

    large.to(run.device).eval().requires_grad_(False)
    ensemble = run.ensemble(distill_config)
    through = TeacherEnsemble([large])
    k = large.num_classes

    def both(images: Tensor) -> Tensor:
        # (B, 2K + 1, h, w): the large student's K probabilities, the teachers' combined K and
        # the pixels valid in both
        b, e = through.batch_targets(images), ensemble.batch_targets(images)
        return torch.cat([b[:, :k], e[:, :k], b[:, -1:] * e[:, -1:]], dim=1)

    how = {"distill": distill_config.learning_fields(), "bridge_route": large_meta.get("route")}
    cache = run.with_targets(run.targets(both, how))
    batches = run.batches

    torch.manual_seed(run.train_config.seed)
    weights_file = start_source(config.student) if config.pretrained else None
    small = create_model(config.student, backbone_weights=PRETRAINED if config.pretrained else None)
    if small.num_classes != k:
        raise Feds2rError(f"preset {config.student} predicts {small.num_classes} classes, not {k}")
    small = small.to(run.device).train().requires_grad_(True)
    pre_steps = config.pre_steps(run.train_config.steps)
    state: dict[str, Any] = {"step": 0, "weights": None}

    def class_weights() -> Tensor | None:
        if not config.inconsistency_weighting:
            return None
        if state["weights"] is None:  # at the end of the pre-adaptation, or after a resume
            state["weights"] = measure_class_weights(large, small, batches, k)
        return state["weights"]

    loss_fn = make_lite_loss(
        config, k, pre=lambda: state["step"] < pre_steps, class_weights=class_weights
    )

    def hook(step: int) -> None:
        state["step"] = step
        if on_step is not None:
            on_step(small, step)

    info = {
        "role": "server",
        "route": "lite",
        "lite_config": dataclasses.asdict(config),
        "bridge": str(bridge),
        "bridge_route": large_meta.get("route", "distill"),
        "start": {"backbone": str(weights_file) if weights_file else "random"},
        "clients": run.identity["clients"],
        "server_data": run.identity["server_data"],
    }
    summary = run.train(small, loss_fn, cache, meta=info, on_step=hook)
    if state["weights"] is not None:
        summary["class_weights"] = [round(float(w), 4) for w in state["weights"]]
    return summary


__all__ = [
    "LiteConfig",
    "class_inconsistency",
    "distill_lite",
    "inconsistency_class_weights",
    "lite_target",
    "make_lite_loss",
    "measure_class_weights",
]
