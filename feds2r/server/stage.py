"""The skeleton the server's training stages share: distillation, self-training, the lite route.

Each stage (:func:`~feds2r.server.distill.run_distill`, :func:`~feds2r.server.selftrain.self_train`,
:func:`~feds2r.server.lite.distill_lite`) loads its own models, declares what it learns from in a
:class:`Stage` and passes its own part, a function of a :class:`StageRun`, to :func:`run_stage`.
:func:`run_stage` does the rest the same way for all three, as the one training loop takes its
loss:

1. claims OUT under the one output rule (new, empty, or this very run, resumed or finished:
   :func:`~feds2r.engine.runs.claim_run`, with the stage's identity) and writes ``config.toml``;
2. resolves the device, opens the server's images (real, then generated) as the recipe's
   ``loader`` says: streamed (``"stream"``, the default: file names only, each image read from
   disk when a batch needs it, :class:`~feds2r.engine.loader.StreamedImages`) or loaded into
   memory once (``"memory"``, a :class:`~feds2r.engine.data.ResizedCache`); freezes the client
   teachers on the device and samples the comparison batches every label-free choice is made on;
3. calls the stage's part, which builds its teachers' combination, caches their targets with
   :meth:`StageRun.targets` (in memory or in a memory-mapped file in OUT, ``DistillConfig.targets``;
   :mod:`feds2r.server.targets`; the teachers' pass reads streamed images in batches, in the
   recipe's ``workers`` processes) and trains its student with :meth:`StageRun.train` (streamed
   images and their targets' rows are read by the training loop's workers, per sample);
4. removes the disk targets once the stage is done and marks OUT complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from feds2r.config import write_run_config
from feds2r.data import open_dataset
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.device import resolve_device
from feds2r.engine.loader import StreamedImages
from feds2r.engine.runs import claim_run
from feds2r.engine.train import train as train_loop
from feds2r.models import SegModel
from feds2r.server.generators import generated_spec
from feds2r.server.targets import TargetsPlace, attach_targets, compute_targets, remove_targets
from feds2r.server.teachers import TeacherEnsemble, sample_batches

TARGETS_FOLDER = "teacher_targets"
"""The folder in OUT that holds disk-backed teacher targets while a stage runs."""


@dataclass(frozen=True)
class ServerImages:
    """The server's unlabelled images, opened (not yet read): the real ones, the generated ones
    (None: none) and the generated images' spec (None: none). Labels are never read."""

    real: Any
    generated: Any = None
    generated_spec: str | None = None
    on_error: str = "raise"
    """"skip": unreadable images were left out on opening, and one that fails later is skipped
    (with a warning) where it is met; "raise": the first one stops the stage, naming it."""

    @classmethod
    def open(cls, data: str, generated: str | None, on_error: str = "raise") -> ServerImages:
        """``data`` and ``generated`` (dataset specs; ``generated`` may also be a folder written
        by ``feds2r server augment``) opened unlabelled; ``on_error="skip"`` leaves unreadable
        images out (with a warning)."""
        spec = generated_spec(str(generated)) if generated else None
        real = open_dataset(data, labels=False, on_error=on_error)
        gen = open_dataset(spec, labels=False, on_error=on_error) if spec else None
        return cls(real, gen, spec, on_error)

    def sources(self) -> dict[str, Any]:
        """What a stage learns from (recorded in its sidecar and identity): the real images'
        spec, count and fingerprint, and the generated images' spec and count."""
        sources = {
            "real": {
                "spec": str(self.real.spec),
                "num_images": len(self.real),
                "fingerprint": self.real.fingerprint(),
            }
        }
        if self.generated is not None:
            sources["generated"] = {
                "spec": str(self.generated.spec),
                "num_images": len(self.generated),
            }
        return sources

    def load(self, height: int, *, progress: bool = True):
        """The real images, then the generated ones, resized to ``height`` in one
        :class:`~feds2r.engine.data.ResizedCache`."""
        cache = ResizedCache(
            self.real, height, with_labels=False, progress=progress, desc="loading server images"
        )
        if self.generated is not None:
            cache.extend(
                ResizedCache(
                    self.generated,
                    height,
                    with_labels=False,
                    progress=progress,
                    desc="loading generated images",
                )
            )
        return cache

    def stream(self, height: int) -> StreamedImages:
        """The real images, then the generated ones, as file names: each read from disk and
        resized to ``height`` when it is needed (:class:`~feds2r.engine.loader.StreamedImages`)."""
        parts = [self.real] if self.generated is None else [self.real, self.generated]
        return StreamedImages(parts, height, skip_bad=self.on_error == "skip")

    def open_at(self, height: int, loader: str, *, progress: bool = True):
        """The images as a training recipe's ``loader`` holds them: ``"stream"``
        (:meth:`stream`) or ``"memory"`` (:meth:`load`)."""
        if loader == "memory":
            return self.load(height, progress=progress)
        return self.stream(height)


def load_teachers(paths: Sequence[str | Path]) -> list[SegModel]:
    """The client checkpoints ``paths`` as models, in order."""
    return [load_checkpoint(p)[0] for p in paths]


@dataclass(frozen=True)
class Stage:
    """What a server training stage declares before it claims its output folder."""

    command: str
    """The command it is (``"server distill"``, ``"server self-train"``, ``"server lite"``):
    names the run kind of OUT (:data:`~feds2r.engine.runs.RUN_TABLES`)."""
    teachers: list[SegModel]
    """The client models (loaded, not yet on the device)."""
    images: ServerImages
    identity: dict[str, Any]
    """What the run learns from: a resume into OUT with another identity is refused, and the
    disk targets are reused only under the same identity."""
    tables: dict[str, Any]
    """The tables of ``OUT/config.toml`` (the stage's inputs and configs)."""
    preset: str | None
    """The student's preset (a resume of another preset is refused)."""
    preset_flag: str | None = "--student-preset"
    """The flag that sets the preset (None: it comes from an input, named by ``source``)."""
    source: str = "the same inputs"
    targets: str = "memory"
    """Where the teachers' targets live (``DistillConfig.targets``)."""
    lr_scales: tuple[float, ...] = ()
    """Other factors the stage may apply to its recipe's learning rate once its inputs are
    resolved (:attr:`~feds2r.server.distill.DistillConfig.finetune_lr` for a student started
    from the clients): a finished or stopped run in OUT trained at one of them is this run's."""


@dataclass
class StageRun:
    """A stage once OUT is claimed: what its own part (the ``body`` of :func:`run_stage`)
    builds on."""

    stage: Stage
    out: Path
    train_config: Any
    device: torch.device
    cache: ResizedCache | StreamedImages
    """The server images at the recipe's height: held in memory (a
    :class:`~feds2r.engine.data.ResizedCache`, loader "memory") or streamed from disk (a
    :class:`~feds2r.engine.loader.StreamedImages`, loader "stream")."""
    batches: list[Tensor]
    """Up to 32 server images, spread over the set, in batches on the device: the images the
    label-free choices (student init, fallback teacher, feature alignment, class weights) are
    made on."""
    progress: bool = True
    _disk: list[Any] = field(default_factory=list)

    @property
    def teachers(self) -> list[SegModel]:
        return self.stage.teachers

    @property
    def identity(self) -> dict[str, Any]:
        return self.stage.identity

    def ensemble(self, config, **options: Any):
        """The :class:`~feds2r.server.teachers.TeacherEnsemble` that ``config`` (a
        DistillConfig) asks for, over the teachers, chosen on :attr:`batches`."""
        return TeacherEnsemble.for_distillation(
            self.teachers, config, self.batches, device=self.device, **options
        )

    def targets(self, fn: Callable[[Tensor], Tensor], what: dict[str, Any]) -> Sequence[Tensor]:
        """``fn``'s maps of every server image (see :func:`~feds2r.server.targets.compute_targets`),
        where the stage's ``targets`` setting says; ``what`` names how they are made beyond the
        stage's identity (combination rule, weights ...), for reusing a disk file."""
        key = {
            "command": self.stage.command,
            "identity": self.identity,
            "height": self.train_config.height,
            "num_images": len(self.cache),
            **what,
        }
        place = TargetsPlace(self.stage.targets, self.out / TARGETS_FOLDER, key)
        maps = compute_targets(
            self.cache,
            fn,
            place=place,
            device=self.device,
            progress=self.progress,
            workers=self.train_config.workers,
        )
        if not isinstance(maps, list):
            self._disk.append(maps)
        return maps

    def with_targets(self, maps: Sequence[Tensor]):
        """The server images whose batches carry ``maps`` (``batch["maps"]``)."""
        return attach_targets(self.cache, maps)

    def train(
        self,
        student: SegModel,
        loss_fn: Callable[[SegModel, dict[str, Tensor]], dict[str, Tensor]],
        data,
        *,
        meta: dict[str, Any],
        on_step: Callable[[int], None] | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, Any]:
        """The one training loop (:func:`~feds2r.engine.train.train`) into OUT, with the
        stage's recipe (its learning rate times ``lr_scale``) and identity."""
        recipe = self.train_config
        if lr_scale != 1.0:
            recipe = dataclasses.replace(recipe, lr=recipe.lr * lr_scale)
        return train_loop(
            student,
            loss_fn,
            data,
            recipe,
            self.out,
            meta=meta,
            identity=self.identity,
            progress=self.progress,
            on_step=on_step,
        )

    def release(self) -> None:
        """Remove the disk targets (the stage is done with them)."""
        for maps in self._disk:
            maps.close()
        self._disk.clear()
        remove_targets(self.out / TARGETS_FOLDER)


def run_stage(
    stage: Stage,
    out: str | Path,
    train_config,
    body: Callable[[StageRun], dict[str, Any]],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a server training stage into ``out`` (see the module docstring); ``body(run)`` is the
    stage's own part and returns its summary, which this returns."""
    out = Path(out)
    # the one output rule: OUT is new, empty or this run's own (resumed) before it is written;
    # a run that fails before its first checkpoint leaves a new or empty OUT as it was
    with claim_run(
        out,
        stage.command,
        train_config,
        preset=stage.preset,
        identity=stage.identity,
        preset_flag=stage.preset_flag,
        source=stage.source,
        alternatives=tuple(
            dataclasses.replace(train_config, lr=train_config.lr * k) for k in stage.lr_scales
        ),
    ) as dest:
        write_run_config(out, stage.tables)
        device = resolve_device(train_config.device)
        cache = stage.images.open_at(train_config.height, train_config.loader, progress=progress)
        for t in stage.teachers:
            t.to(device).eval().requires_grad_(False)
        batches = [b.to(device) for b in sample_batches(cache, 32)]
        run = StageRun(stage, out, train_config, device, cache, batches, progress)
        summary = body(run)
        run.release()
        dest.finish()
    return summary


__all__ = ["ServerImages", "Stage", "StageRun", "load_teachers", "run_stage"]
