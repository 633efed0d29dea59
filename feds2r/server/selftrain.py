"""Server-side self-training after distillation: a mean teacher on the server's own images.

The distilled global model keeps learning from the server's unlabelled real and generated images
(CLOUDS, ``../shared/seeds/clouds-summary.txt``; the recipe follows DACS and DAFormer):

- a **mean teacher**, the exponential moving average (EMA) of the student's weights, predicts
  pseudo-labels on each training view (no gradient);
- **ClassMix** (DACS): for each view, the pixels of half of its pseudo-labelled classes are pasted
  onto another view of the batch, with their pseudo-labels (and cached ensemble targets);
- a **confidence-based pixel weight**: pseudo-labels whose probability is below ``threshold``
  are ignored (a weight of 0 or 1 per pixel), and each image's term is scaled by its share of
  confident pixels (DAFormer's quality estimate);
- an optional **refinement** of the pseudo-labels with class-agnostic regions (``refiner``);
- the **teachers' combined targets** (the distillation term on cached targets, mixed the same
  way) remain a term, with a weight that falls linearly to 0 over ``teacher_steps``.

Why each choice and its values: ``docs/method.md``. Shapes: images (B, 3, h, w) float in [0, 1],
probabilities (B, K, h, w), labels (B, h, w) with 255 = ignore.
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

from feds2r.config import check_types
from feds2r.data.labels import IGNORE_INDEX
from feds2r.errors import Feds2rError
from feds2r.models import SegModel


@dataclass(frozen=True)
class SelfTrainConfig:
    """How the server self-trains the distilled global model (the stage after distillation)."""

    ema: float = 0.99
    """Mean-teacher momentum: teacher = ema * teacher + (1 - ema) * student after every step
    (DACS's 0.99; DAFormer's 0.999 suits its 40k iterations, not a few hundred)."""
    threshold: float = 0.7
    """Pseudo-labels below this probability are ignored. DAFormer's and DACS's tau = 0.968 keeps
    almost no pixel with Mask2Former's class probabilities (their 99th percentile on generated
    images is 0.96); 0.7 was better on dev (docs/results.md: one seed, an anecdote)."""
    classmix: bool = True
    """Paste half of each view's pseudo-labelled classes onto another view (DACS)."""
    teacher_weight: float = 1.0
    """Weight of the distillation term (the client teachers' combined targets) at step 0."""
    teacher_steps: int = 0
    """Steps over which that weight falls linearly to 0 (0: it stays at ``teacher_weight``)."""
    refine: str = "none"
    """Pseudo-labels refined with class-agnostic regions (CLOUDS): "builtin" (Felzenszwalb
    superpixels, CPU), "watershed" (OpenCV), "sam" (Segment Anything from ``sam_dir``) or
    "none" (per-pixel pseudo-labels); ``feds2r/server/refine.py``."""
    refine_min_share: float = 0.5
    """A region keeps its majority confident label only if those votes cover this share of it
    (otherwise it is dropped)."""
    sam_dir: str = ""
    """With refine "sam": a local Segment Anything model folder (``save_pretrained`` layout)."""

    def __post_init__(self) -> None:
        check_types(self)
        from feds2r.server.refine import PROPOSERS

        if self.refine != "none" and self.refine not in PROPOSERS:
            valid = ", ".join(["none", *PROPOSERS])
            raise ValueError(f"refine must be one of {valid}, not {self.refine!r}")
        if not 0.0 <= self.refine_min_share <= 1.0:
            raise ValueError("refine_min_share must be in [0, 1]")
        if self.sam_dir and self.refine != "sam":
            raise ValueError(
                f"sam_dir (--sam-dir) is used only with refine 'sam' (--refine sam), not with "
                f"refine {self.refine!r}; add --refine sam or leave --sam-dir out"
            )
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.teacher_weight < 0 or self.teacher_steps < 0:
            raise ValueError("teacher_weight and teacher_steps must be >= 0")

    def teacher_factor(self, step: int) -> float:
        """The distillation term's weight at ``step`` (0-based)."""
        if self.teacher_steps == 0:
            return self.teacher_weight
        return self.teacher_weight * max(0.0, 1.0 - step / self.teacher_steps)


Refiner = Callable[[Tensor, Tensor], Tensor]
"""``refine(images (B, 3, h, w) float, probs (B, K, h, w)) -> labels (B, h, w)`` (255 = drop):
pseudo-labels made from the teacher's probabilities with class-agnostic regions."""


@torch.no_grad()
def ema_update(teacher: SegModel, student: SegModel, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter;
    buffers are copied from the student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def pseudo_labels(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels (B, h, w) with 255 where the probability is below ``threshold``, and
    each image's share of confident pixels (B,)."""
    conf, labels = probs.max(1)
    confident = conf >= threshold
    return torch.where(confident, labels, IGNORE_INDEX), confident.flatten(1).float().mean(1)


def classmix_masks(labels: Tensor, g: torch.Generator | None = None) -> Tensor:
    """Per image, a mask (B, h, w) of the pixels of a random half of its labelled classes
    (ClassMix, as DACS uses it; 255 never chosen)."""
    masks = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for i, lbl in enumerate(labels):
        classes = lbl.unique()
        classes = classes[classes != IGNORE_INDEX]
        if len(classes) == 0:
            continue
        order = torch.randperm(len(classes), generator=g)
        chosen = classes[order[: (len(classes) + 1) // 2].to(classes.device)]
        masks[i] = torch.isin(lbl, chosen)
    return masks


def mix(masks: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``masks`` (B, h, w), ``b`` elsewhere, for images (B, C, h, w) or maps
    (B, h, w); masks are resized (nearest) to a map of another size."""
    m = masks
    if tuple(m.shape[-2:]) != tuple(a.shape[-2:]):
        m = F.interpolate(m[:, None].float(), size=a.shape[-2:], mode="nearest")[:, 0] > 0.5
    if a.dim() == 4:
        m = m[:, None]
    return torch.where(m, a, b)


def make_selftrain_loss(
    teacher: SegModel,
    config: SelfTrainConfig,
    distill_config,
    num_classes: int,
    *,
    refiner: Refiner | None = None,
    step: Callable[[], int] = lambda: 0,
):
    """``loss_fn(student, batch)`` of one self-training step (see the module docstring); the
    batch carries cached ensemble targets in ``batch["maps"]``. ``step()`` gives the current
    step (for the distillation term's weight)."""
    from feds2r.losses import supervised_loss
    from feds2r.server.distill import cached_distill_terms

    teacher.eval().requires_grad_(False)

    def loss_fn(student: SegModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images, maps = batch["image"], batch["maps"]
        with torch.no_grad():
            probs = teacher.predict(images)
            if refiner is not None:
                _, quality = pseudo_labels(probs, config.threshold)
                labels = refiner(images, probs)
            else:
                labels, quality = pseudo_labels(probs, config.threshold)
            weight = quality[:, None, None].expand_as(labels)
            if config.classmix and len(images) > 1:
                masks = classmix_masks(labels)
                other = torch.roll(torch.arange(len(images), device=images.device), 1)
                images = mix(masks, images, images[other])
                labels = mix(masks, labels, labels[other])
                weight = mix(masks, weight, weight[other])
                maps = mix(masks, maps, maps[other])
        out = student(images)
        parts: dict[str, Tensor] = {}
        factor = config.teacher_factor(step())
        loss = torch.zeros((), device=images.device)
        if factor > 0:
            kd = cached_distill_terms(student, out, maps, distill_config, num_classes, 0)
            parts["loss_kd"] = kd["loss"].detach()
            loss = loss + factor * kd["loss"]
        if (labels != IGNORE_INDEX).any():
            st = supervised_loss(out, labels)["loss"]
            q = weight[labels != IGNORE_INDEX].mean()  # the images' confident shares
            parts["loss_st"] = st.detach()
            loss = loss + q * st
        parts["quality"] = quality.mean()
        return {"loss": loss, **parts}

    return loss_fn


def self_train(
    global_model: str | Path,
    client_paths: list[str | Path],
    data: str,
    out: str | Path,
    config: SelfTrainConfig,
    distill_config,
    train_config,
    *,
    generated: str | None = None,
    refiner: Refiner | None = None,
    on_error: str = "raise",
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """The self-training stage: the distilled ``global_model`` keeps learning on the server's
    images (``data`` and ``generated``, unlabelled dataset specs) from its mean teacher, with the
    ``client_paths`` teachers' combined targets (``distill_config``'s combination rule, no feature
    term) as a fading term. Writes a checkpoint (its sidecar names the route
    ``distill+selftrain``) and ``OUT/config.toml`` into ``out``. ``refiner``: a custom pseudo-label
    refinement (default: the one ``config.refine`` names). A resumed run restarts its mean
    teacher from the resumed student (the teacher is not part of the saved state). The skeleton
    it shares with the other stages: :func:`~feds2r.server.stage.run_stage`."""
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.server.inputs import StageInputs
    from feds2r.server.stage import ServerImages, Stage, load_teachers, run_stage

    if not client_paths:
        raise Feds2rError("self-training needs the client models (their targets are a term)")
    if refiner is None and config.refine != "none":
        from feds2r.server.refine import RegionRefiner, make_proposer

        options = {"model_dir": config.sam_dir} if config.refine == "sam" else {}
        if config.refine == "sam":
            options["device"] = train_config.device
        refiner = RegionRefiner(
            make_proposer(config.refine, **options),
            threshold=config.threshold,
            min_share=config.refine_min_share,
        )
    student, meta0 = load_checkpoint(global_model)
    teachers = load_teachers(client_paths)
    images = ServerImages.open(data, generated, on_error)
    identity = {
        "global_model": str(global_model),
        "clients": [str(p) for p in client_paths],
        "server_data": images.sources(),
        "selftrain": dataclasses.asdict(config),
    }
    inputs = StageInputs(
        str(global_model), tuple(identity["clients"]), str(data), images.generated_spec or ""
    )
    stage = Stage(
        "server self-train",
        teachers,
        images,
        identity,
        {"selftrain": config, "server": inputs, "distill": distill_config, "train": train_config},
        preset=student.preset.name,
        preset_flag=None,
        source="the --model it was started from",
        targets=distill_config.targets,
    )

    def body(run) -> dict[str, Any]:
        return _self_train(
            run, student, config, distill_config, refiner=refiner, meta0=meta0,
            global_model=global_model, on_step=on_step,
        )  # fmt: skip

    return run_stage(stage, out, train_config, body, progress=progress)


def _self_train(
    run,
    student: SegModel,
    config: SelfTrainConfig,
    distill_config,
    *,
    refiner,
    meta0: dict[str, Any],
    global_model: str | Path,
    on_step: Callable[[SegModel, int], None] | None,
) -> dict[str, Any]:
    """Self-training's own part of the stage (a :class:`~feds2r.server.stage.StageRun`): the
    teachers' combined targets without fusion, the mean teacher and its loss."""
    plain = dataclasses.replace(distill_config, feature_fusion=False)
    ensemble = run.ensemble(plain)
    maps = run.targets(ensemble.batch_targets, {"ensemble": plain.learning_fields()})
    cache = run.with_targets(maps)
    student = student.to(run.device).train().requires_grad_(True)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    done = [0]
    loss_fn = make_selftrain_loss(
        teacher,
        config,
        plain,
        student.num_classes,
        refiner=refiner,
        step=lambda: done[0],
    )

    def hook(step: int) -> None:
        done[0] = step
        ema_update(teacher, student, config.ema)
        if on_step is not None:
            on_step(student, step)

    info = {
        "role": "server",
        "route": "distill+selftrain",
        "selftrain_config": dataclasses.asdict(config),
        "distilled_from": str(global_model),
        "student_init": meta0.get("student_init"),
        "clients": run.identity["clients"],
        "server_data": run.identity["server_data"],
    }
    return run.train(student, loss_fn, cache, meta=info, on_step=hook)
