"""The rows of a demo's table: each row is one method, "which stages build its model, with which
config", and a row kind is one builder (:data:`ROW_KINDS`). Every suite lists its own rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feds2r.client import supervised_step
from feds2r.config import flatten, from_dict, load_tables
from feds2r.data import open_dataset
from feds2r.data.world import SYNTHETIC_DOMAINS
from feds2r.demo.curves import DevCurves
from feds2r.demo.flower import FLOWER_MISSING, run_rounds_in_process
from feds2r.demo.profiles import Profile
from feds2r.demo.stages import StageClock
from feds2r.demo.world import open_tests, world_spec
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.train import TrainConfig, train
from feds2r.errors import Feds2rError
from feds2r.federation.config import FederationConfig, RoundsConfig, without_local
from feds2r.server.distill import DistillConfig, fedavg, run_distill
from feds2r.server.lite import LiteConfig, distill_lite
from feds2r.server.pipeline import load_clients
from feds2r.server.selftrain import SelfTrainConfig, self_train


@dataclass(frozen=True)
class Row:
    """One method of the demo's table: which stages build its model, with which config.

    ``kind`` picks the builder in :data:`ROW_KINDS`: "fedavg" (the clients' parameter mean),
    "ensemble" (the clients' averaged predictions at test time, no model), "distill" (the
    distillation stage with ``distill``'s DistillConfig fields, on the real server images plus the
    generated ones when ``generated``), "selftrain" (the self-training stage with ``selftrain``'s
    SelfTrainConfig fields, from the model of the row ``after``, for the distillation recipe's
    steps), "rounds" (a multi-round federation on Flower's strategies, in this process, with
    ``rounds``' fields: ``method`` and ``rounds``; :mod:`feds2r.federation.rounds`), "lite" (the
    lightweight stage with ``lite``'s LiteConfig fields, through the large
    student of the row ``after``: :mod:`feds2r.server.lite`) or "supervised" (one model on all
    clients' labelled data, ``budget`` times a client's steps: an upper bound no federation can
    reach).
    """

    name: str
    kind: str
    distill: Mapping[str, Any] = field(default_factory=dict)
    generated: bool = True
    budget: int = 1
    selftrain: Mapping[str, Any] = field(default_factory=dict)
    after: str = ""
    lite: Mapping[str, Any] = field(default_factory=dict)
    rounds: Mapping[str, Any] = field(default_factory=dict)
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig fields that replace the distillation recipe's for this row ("distill",
    "selftrain" and "lite" rows), e.g. the lite rows' own steps (``Profile.lite_recipe``)."""


@dataclass
class DemoRun:
    """What the rows of one demo run build on (filled stage by stage by the suite's run)."""

    out: Path
    world: Path
    profile: Profile
    clients_recipe: TrainConfig
    distill_recipe: TrainConfig
    curves: DevCurves
    progress: bool
    pretrained: bool = True
    clients: dict[str, Path] = field(default_factory=dict)
    server_spec: str = ""
    inconsistency: dict[str, Any] = field(default_factory=dict)
    generated_spec: str | None = None
    _pooled: ResizedCache | None = None

    def distill_config(self, row: Row) -> DistillConfig:
        """The profile's DistillConfig with the row's fields, for a student of the profile's
        preset unless the row names another."""
        fields = {
            **dataclasses.asdict(self.profile.server.distill),
            "student": self.profile.preset,
            **row.distill,
        }
        if fields["init"] == "pretrained" and not self.pretrained:  # --no-pretrained: all random
            fields["init"] = "scratch"
        return DistillConfig(**fields)

    def recipe(self, row: Row) -> TrainConfig:
        """The distillation recipe with the row's own fields (:attr:`Row.recipe`)."""
        return dataclasses.replace(self.distill_recipe, **row.recipe)

    def pooled(self) -> ResizedCache:
        """All clients' labelled data together (the upper bounds'), loaded once."""
        if self._pooled is None:
            for domain in SYNTHETIC_DOMAINS:
                part = ResizedCache(
                    open_dataset(world_spec(self.world, domain, "train")),
                    self.clients_recipe.height,
                    progress=False,
                )
                self._pooled = part if self._pooled is None else self._pooled.extend(part)
        return self._pooled


def _fedavg_row(row: Row, run: DemoRun) -> None:
    save_checkpoint(
        fedavg(list(load_clients(run.clients).values())),
        run.out / row.name,
        meta={"role": row.name},
    )


def _distill_row(row: Row, run: DemoRun) -> None:
    run_distill(
        list(run.clients.values()),
        run.server_spec,
        run.out / row.name,
        run.distill_config(row),
        run.recipe(row),
        generated=run.generated_spec if row.generated else None,
        inconsistency=run.inconsistency,
        progress=run.progress,
        on_step=run.curves.hook(row.name),
    )


def _after_row(stage: Callable[..., Any], config: Any, row: Row, run: DemoRun) -> None:
    """A stage that starts from the model of the row ``row.after`` (self-training, lite) with
    its own ``config``, the clients as teachers and the distillation's recipe (with the row's
    own fields)."""
    stage(
        run.out / row.after,
        list(run.clients.values()),
        run.server_spec,
        run.out / row.name,
        config,
        run.distill_config(row),
        run.recipe(row),
        generated=run.generated_spec if row.generated else None,
        progress=run.progress,
        on_step=run.curves.hook(row.name),
    )


def _selftrain_row(row: Row, run: DemoRun) -> None:
    _after_row(self_train, SelfTrainConfig(**row.selftrain), row, run)


def _lite_row(row: Row, run: DemoRun) -> None:
    _after_row(distill_lite, LiteConfig(**{"pretrained": run.pretrained, **row.lite}), row, run)


def _rounds_row(row: Row, run: DemoRun) -> None:
    """A multi-round federation of the demo's clients in this process; a finished one in OUT
    with the same config is reused."""
    if run_rounds_in_process is None:
        raise Feds2rError(
            f"the multi-round rows need Flower ({FLOWER_MISSING}); install it with: pip install "
            "'feds2r[flower]'"
        )
    target = (run.out / row.name).resolve()
    fields = dict(row.rounds)
    config = FederationConfig(
        out=str(target),
        server_data=run.server_spec,
        preset=run.profile.preset,
        min_clients=len(run.clients),
        pretrained=run.pretrained,
        method=fields.pop("method"),
        multiround=RoundsConfig(**fields),
        clients=without_local(run.clients_recipe),  # a machine's own choices are not sent
    )
    if (target / "results.json").is_file():
        saved = load_tables(target / "config.toml", {"federation": FederationConfig})
        if flatten(from_dict(FederationConfig, saved["federation"])) == flatten(config):
            return  # finished with this config: reused
        raise Feds2rError(f"{target} holds a run with another config; remove it or use another OUT")
    clients = {d: world_spec(run.world, d, "train") for d in run.clients}
    run_rounds_in_process(
        clients,
        config,
        init=run.out / "init",
        evaluate_on={"dev": run.curves.dev, **open_tests(run.world)},
        log=print if run.progress else (lambda _text: None),
    )


def _supervised_row(row: Row, run: DemoRun) -> None:
    model, _ = load_checkpoint(run.out / "init")
    model = model.train().requires_grad_(True)
    hook = run.curves.hook(row.name)
    train(
        model,
        supervised_step,
        run.pooled(),
        dataclasses.replace(run.clients_recipe, steps=run.clients_recipe.steps * row.budget),
        run.out / row.name,
        meta={"role": row.name},
        progress=run.progress,
        on_step=lambda step: hook(model, step),
    )


ROW_KINDS: dict[str, Callable[[Row, DemoRun], None] | None] = {
    "fedavg": _fedavg_row,
    "ensemble": None,  # evaluated from the clients' models at test time
    "distill": _distill_row,
    "selftrain": _selftrain_row,
    "lite": _lite_row,
    "rounds": _rounds_row,
    "supervised": _supervised_row,
}


STAGE_NAMES = {
    "fedavg": "fedavg",
    "distill": "distill:{name}",
    "selftrain": "selftrain:{name}",
    "lite": "lite:{name}",
    "rounds": "rounds:{name}",
    "supervised": "upper_bound",
}
"""The timing key of each row kind's stage in ``results.json`` (rows of one kind without a
``{name}`` add up, e.g. both upper bounds under ``upper_bound``)."""


def check_rows(rows: tuple[Row, ...]) -> None:
    """Raise a :class:`~feds2r.errors.Feds2rError` naming any row kind without a builder."""
    unknown = sorted({r.kind for r in rows} - set(ROW_KINDS))
    if unknown:
        valid = ", ".join(ROW_KINDS)
        raise Feds2rError(f"unknown row kind(s) {', '.join(unknown)}; valid: {valid}")


def build_rows(rows: tuple[Row, ...], run: DemoRun, clock: StageClock) -> None:
    """Build every row's model in order, each as its kind's stage (:data:`STAGE_NAMES`)."""
    for row in rows:
        builder = ROW_KINDS[row.kind]
        if builder is not None:
            with clock(STAGE_NAMES[row.kind].format(name=row.name)):
                builder(row, run)


def row_steps(row: Row, clients: TrainConfig, distill: TrainConfig) -> int | None:
    """The training steps of a row's learning curve (None: the row trains nothing)."""
    if row.kind in ("distill", "selftrain", "lite"):
        return row.recipe.get("steps", distill.steps)
    if row.kind == "supervised":
        return clients.steps * row.budget
    return None


def row_checkpoint(row: Row, out: Path) -> Path:
    """The checkpoint folder of a row's model."""
    return out / row.name / "global" if row.kind == "rounds" else out / row.name
