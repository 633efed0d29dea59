"""`feds2r demo`: the whole one-shot federation on the built-in world, with its baselines.

The demo is a list of rows (:data:`ROWS`): each row is one method of the table, "which stages
with which config". Stages (each timed): build the world if missing; the server creates one
initial model; each client trains it on its synthetic domain; the server runs the pipeline's
stages (:mod:`feds2r.server.pipeline`: inconsistency on its unlabelled real images, generated
images of the unstable classes); then every row builds its model (:data:`ROW_KINDS`) and every
row is evaluated on the five real-like test domains. Writes ``results.json`` (schema in
``docs/demo.md``), ``report.md`` and its figures, every checkpoint and ``config.toml``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feds2r.client import supervised_step, train_client
from feds2r.config import check_types, write_run_config
from feds2r.data import open_dataset
from feds2r.data.labels import CLASS_NAMES
from feds2r.data.world import DOMAINS, REAL_DOMAINS, SYNTHETIC_DOMAINS, synth_domain
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.evaluate import evaluate
from feds2r.engine.repro import environment
from feds2r.engine.train import TrainConfig, save_figure, train
from feds2r.errors import Feds2rError
from feds2r.io import write_atomic
from feds2r.metrics.bootstrap import paired_bootstrap
from feds2r.models import PUBLIC, create_model, shipped_weights
from feds2r.server.diagnostics import premise_diagnostics
from feds2r.server.distill import DistillConfig, fedavg, run_distill
from feds2r.server.pipeline import (
    GenerationConfig,
    ServerConfig,
    find_unstable,
    generate_images,
    load_clients,
)
from feds2r.server.teachers import TeacherEnsemble


@dataclass(frozen=True)
class WorldSizes:
    """The built-in world a demo run builds: image size and images per split."""

    size: tuple[int, int] = (128, 256)
    """Image size (H, W)."""
    client_images: int = 400
    """Per synthetic client domain (its train split)."""
    server_images: int = 400
    """The server's unlabelled images (the cityscapes-like train split)."""
    test_images: int = 80
    """Per real-like test domain (ACDC: divided over its four conditions)."""
    dev_images: int = 60
    """Labelled `dev` images of the server's domain: learning curves and every choice made on
    the demo's results are read from them, never from the test domains."""

    def __post_init__(self) -> None:
        check_types(self)
        if min(self.size) < 8:
            raise ValueError(f"size must be at least 8x8, got {self.size}")
        if min(self.client_images, self.server_images, self.test_images, self.dev_images) < 1:
            raise ValueError("every split needs at least one image")


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run: the world, the clients' recipe and the server's
    config (the same config tree as ``feds2r federate``; the seed is the run's)."""

    name: str
    """The profile's name (``--profile``), recorded in results.json."""
    world: WorldSizes = field(default_factory=WorldSizes)
    """The built-in world the run builds (or reuses)."""
    clients: TrainConfig = field(default_factory=TrainConfig)
    """The clients' training recipe; the upper bounds train with it too (at 1x and at one
    client's steps times the number of clients)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """The server's stages; ``server.train`` is every distillation row's recipe."""
    preset: str = "m2f-cpu"
    """The architecture of every model of the run (see ``feds2r models``)."""
    curve_every: int = 150
    """Steps between two points of a learning curve (dev mIoU)."""


def make_profile(
    name: str,
    size: tuple[int, int],
    client_images: int,
    server_images: int,
    test_images: int,
    generated_images: int,
    client_steps: int,
    distill_steps: int,
    *,
    batch_size: int = 8,
    height: int = 128,
    crop: tuple[int, int] = (128, 256),
    warmup_steps: int = 50,
    dev_images: int = 60,
    curve_every: int = 150,
    preset: str = "m2f-cpu",
) -> Profile:
    """A profile from its sizes and budgets: the clients and the upper bounds train
    ``client_steps`` with one recipe, the distillation rows ``distill_steps`` with the same
    recipe; the server generates ``generated_images`` images of the world's ``size``."""
    recipe = TrainConfig(
        steps=client_steps,
        batch_size=batch_size,
        height=height,
        crop=crop,
        warmup_steps=warmup_steps,
        checkpoint_every=100,
    )
    return Profile(
        name,
        WorldSizes(size, client_images, server_images, test_images, dev_images),
        recipe,
        ServerConfig(
            generation=GenerationConfig(images=generated_images, size=size),
            train=dataclasses.replace(recipe, steps=distill_steps),
        ),
        preset=preset,
        curve_every=curve_every,
    )


PROFILES: dict[str, Profile] = {
    "quick": make_profile(
        "quick",
        (64, 128),
        24,
        24,
        8,
        12,
        12,
        12,
        batch_size=4,
        height=64,
        crop=(64, 128),
        warmup_steps=4,
        dev_images=8,
        curve_every=6,
    ),
    # training at height 96 keeps the whole default run within 15 minutes on a 2-core CPU
    # (200 steps at height 128 did too, but left the clients at 4-8 mIoU: docs/results.md)
    "default": make_profile(
        "default", (128, 256), 400, 400, 80, 150, 300, 300, height=96, crop=(96, 192)
    ),
    "full": make_profile(
        "full",
        (256, 512),
        800,
        600,
        200,
        300,
        1000,
        1000,
        warmup_steps=100,
        dev_images=200,
        curve_every=250,
    ),  # fmt: skip
}


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


ROWS: tuple[Row, ...] = (
    Row("fedavg-oneshot", "fedavg"),
    Row("ensemble", "ensemble"),
    # FedDF gets the same student initialisation rule as FedS2R: only the objective, the fusion
    # and the generated images differ
    Row("feddf", "distill", {"kd": "pixel", "feature_fusion": False, "combine": "mean"}, False),
    # FedS2R as published: feature fusion on (not the library's default, which the dev split
    # chose; docs/method.md), with the generated images
    Row("feds2r", "distill", {"feature_fusion": True}),
    Row("feds2r-no-aug", "distill", {"feature_fusion": True}, generated=False),
    Row("feds2r-no-fusion", "distill", {"feature_fusion": False}),
    # one model on all clients' data together: with one client's budget (1x) and with all
    # clients' budgets together (3x), so that a reader sees how much is optimisation length
    Row("upper-bound-1x", "supervised", budget=1),
    Row("upper-bound", "supervised", budget=len(SYNTHETIC_DOMAINS)),
)
METHODS = tuple(row.name for row in ROWS)

SELFTRAIN_ROWS: tuple[Row, ...] = (
    # FedS2R's model, then self-training on the server's images, with and without the refinement
    # of its pseudo-labels (not in the default table: two more trainings would take the default
    # run past 15 minutes; `feds2r demo --self-train`)
    Row("feds2r+st", "selftrain", {"feature_fusion": True}, selftrain={"refine": "builtin"},
        after="feds2r"),
    Row("feds2r+st-no-refine", "selftrain", {"feature_fusion": True}, after="feds2r"),
)  # fmt: skip
LITE_ROWS: tuple[Row, ...] = (
    # a lightweight global model (segformer-cpu: 0.41x the parameters of m2f-cpu), through
    # FedS2R's model as the large student (DUDA), and distilled straight from the teachers as the
    # reference; same steps, same teachers' targets (`feds2r demo --lite`)
    Row("feds2r-lite", "lite", {"feature_fusion": True}, lite={"student": "segformer-cpu"},
        after="feds2r"),
    Row("direct-lite", "distill",
        {"feature_fusion": True, "student": "segformer-cpu", "init": "pretrained", "kd": "pixel"}),
)  # fmt: skip
ROUNDS = 5
"""Rounds of the demo's multi-round rows: 300 client steps become 5 rounds of 60 (docs/demo.md)."""

ROUND_ROWS: tuple[Row, ...] = (
    # the federations people run today, at the one-shot clients' total steps, from the same
    # initial model (`feds2r demo --multi-round`; needs Flower: pip install 'feds2r[flower]')
    Row(f"fedavg-{ROUNDS}", "rounds", rounds={"method": "fedavg", "rounds": ROUNDS}),
    Row(f"fedprox-{ROUNDS}", "rounds", rounds={"method": "fedprox", "rounds": ROUNDS}),
    Row(f"fedseg-{ROUNDS}", "rounds", rounds={"method": "fedseg", "rounds": ROUNDS}),
)
ORACLE, LABEL_FREE = "best-client (oracle)", "client (label-free pick)"

# the differences the report and docs/results.md claim, each with a paired bootstrap interval
COMPARISONS = (
    ("feds2r", ORACLE),
    ("feds2r", LABEL_FREE),
    ("feds2r", "feddf"),
    ("feds2r", "fedavg-oneshot"),
    ("feds2r", "feds2r-no-aug"),
    ("feds2r", "feds2r-no-fusion"),
    ("feds2r", "upper-bound"),
    ("feds2r", "upper-bound-1x"),
    ("ensemble", ORACLE),
    ("feds2r+st", "feds2r"),
    ("feds2r+st", ORACLE),
    ("feds2r+st", "feds2r+st-no-refine"),
    ("feds2r-lite", "feds2r"),
    ("feds2r-lite", "direct-lite"),
    (f"fedseg-{ROUNDS}", f"fedavg-{ROUNDS}"),
    ("feds2r", f"fedavg-{ROUNDS}"),
    ("feds2r", f"fedseg-{ROUNDS}"),
)


def world_spec(world: Path, domain: str, split: str) -> str:
    """The dataset spec of one split of one domain of a demo world."""
    return f"{DOMAINS[domain].format}:{world / domain}?split={split}"


def build_world(world: Path, sizes: WorldSizes, progress: bool) -> dict:
    """Write the world ``sizes`` describe into ``world`` unless a matching one is already there."""
    want = {
        "size": list(sizes.size),
        "client_images": sizes.client_images,
        "server_images": sizes.server_images,
        "test_images": sizes.test_images,
        "dev_images": sizes.dev_images,
    }
    stamp = world / "demo_world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return want
    plan = [(d, "train", sizes.client_images) for d in SYNTHETIC_DOMAINS]
    plan += [("cityscapes-like", "train", sizes.server_images)]
    plan += [("cityscapes-like", "dev", sizes.dev_images)]
    plan += [(d, "val", sizes.test_images) for d in REAL_DOMAINS]
    for domain, split, num in plan:
        synth_domain(
            domain,
            world / domain,
            split=split,
            num=num,
            size=sizes.size,
            seed=0,
            progress=progress,
            force=True,  # the stamp differs: this world is rebuilt, not mixed with the old one
        )
    write_atomic(stamp, json.dumps(want).encode())
    return want


class DevCurves:
    """Learning curves: dev mIoU of each training run every ``every`` steps (and at its end)."""

    def __init__(self, dev, height: int, every: int, total: dict[str, int]) -> None:
        self.dev, self.height, self.every, self.total = dev, height, every, total
        self.curves: dict[str, list[list[float]]] = {}

    def hook(self, name: str):
        """``on_step(model, step)`` for the run ``name``."""
        last = self.total[name]

        def on_step(model, step: int) -> None:
            if step % self.every and step != last:
                return
            was = model.training
            model.eval()
            miou = evaluate(model, self.dev, height=self.height, progress=False)["miou"]
            model.train(was)
            self.curves.setdefault(name, []).append([step, round(float(miou), 3)])

        return on_step


@dataclass
class DemoRun:
    """What the rows of one demo run build on (filled stage by stage by :func:`run_demo`)."""

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
        run.distill_recipe,
        generated=run.generated_spec if row.generated else None,
        inconsistency=run.inconsistency,
        progress=run.progress,
        on_step=run.curves.hook(row.name),
    )


def _selftrain_row(row: Row, run: DemoRun) -> None:
    from feds2r.server.selftrain import SelfTrainConfig, self_train

    self_train(
        run.out / row.after,
        list(run.clients.values()),
        run.server_spec,
        run.out / row.name,
        SelfTrainConfig(**row.selftrain),
        run.distill_config(row),
        run.distill_recipe,
        generated=run.generated_spec if row.generated else None,
        progress=run.progress,
        on_step=run.curves.hook(row.name),
    )


def _lite_row(row: Row, run: DemoRun) -> None:
    from feds2r.server.lite import LiteConfig, distill_lite

    distill_lite(
        run.out / row.after,
        list(run.clients.values()),
        run.server_spec,
        run.out / row.name,
        LiteConfig(**{"pretrained": run.pretrained, **row.lite}),
        run.distill_config(row),
        run.distill_recipe,
        generated=run.generated_spec if row.generated else None,
        progress=run.progress,
        on_step=run.curves.hook(row.name),
    )


def _rounds_row(row: Row, run: DemoRun) -> None:
    """A multi-round federation of the demo's clients in this process; a finished one in OUT
    with the same config is reused."""
    try:
        from feds2r.federation.rounds import run_rounds_in_process
    except ImportError as exc:
        raise Feds2rError(
            f"the multi-round rows need Flower ({exc}); install it with: pip install "
            "'feds2r[flower]'"
        ) from None
    from feds2r.config import flatten, from_dict, load_tables
    from feds2r.federation.protocol import FederationConfig
    from feds2r.federation.round_client import RoundsConfig

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
        clients=run.clients_recipe,
    )
    if (target / "results.json").is_file():
        saved = load_tables(target / "config.toml", {"federation": FederationConfig})
        if flatten(from_dict(FederationConfig, saved["federation"])) == flatten(config):
            return  # finished with this config: reused
        raise Feds2rError(f"{target} holds a run with another config; remove it or use another OUT")
    clients = {d: world_spec(run.world, d, "train") for d in run.clients}
    dev = {"dev": run.curves.dev}
    tests = {d: open_dataset(world_spec(run.world, d, "val")) for d in REAL_DOMAINS}
    run_rounds_in_process(
        clients,
        config,
        init=run.out / "init",
        evaluate_on={**dev, **tests},
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


def _row_steps(row: Row, clients: TrainConfig, distill: TrainConfig) -> int | None:
    """The training steps of a row's learning curve (None: the row trains nothing)."""
    if row.kind in ("distill", "selftrain", "lite"):
        return distill.steps
    if row.kind == "supervised":
        return clients.steps * row.budget
    return None


def run_demo(
    profile: str | Profile,
    out: str | Path,
    *,
    seed: int = 0,
    world: Path | None = None,
    progress: bool = True,
    pretrained: bool = True,
    rows: tuple[Row, ...] = ROWS,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the results dict (also ``out/results.json``).

    ``pretrained``: every model starts from the backbone feds2r ships for the preset (pretrained
    on the world's `public` domain, docs/models.md); False: from random weights. ``rows``: the
    methods to build and compare (default :data:`ROWS`; the comparisons need its rows).
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise Feds2rError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    unknown = sorted({r.kind for r in rows} - set(ROW_KINDS))
    if unknown:
        valid = ", ".join(ROW_KINDS)
        raise Feds2rError(f"unknown row kind(s) {', '.join(unknown)}; valid: {valid}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(world) if world else out / "world"
    timing: dict[str, float] = {}
    tcfg = dataclasses.replace(
        profile.clients, seed=seed, backbone_lr_mult=0.1 if pretrained else 1.0
    )
    dcfg_train = dataclasses.replace(
        profile.server.train, seed=seed, backbone_lr_mult=tcfg.backbone_lr_mult
    )
    generation = dataclasses.replace(profile.server.generation, seed=seed)
    start = {
        "pretrained": pretrained,
        "backbone": str(shipped_weights(profile.preset)) if pretrained else "random",
        "rows": "every row (clients, upper bounds, FedAvg, FedDF, every FedS2R row) starts from "
        "this one initial model",
    }
    write_run_config(
        out,
        {
            "demo": {
                "profile": profile.name,
                "seed": seed,
                "world": str(world),
                "methods": [r.name for r in rows],
                "pretrained": pretrained,
                "preset": profile.preset,
                "curve_every": profile.curve_every,
            },
            "world": profile.world,
            "client_train": tcfg,
            "rule": profile.server.rule,
            "generation": generation,
            "distill_train": dcfg_train,
            "distill": dataclasses.replace(profile.server.distill, student=profile.preset),
        },
    )

    @contextmanager
    def stage(name: str):
        if progress:
            print(f"== {name}", flush=True)
        begin = time.perf_counter()
        yield
        timing[name] = round(timing.get(name, 0.0) + time.perf_counter() - begin, 2)

    # a finished training found in OUT is reused (the training loop resumes it), so its curve
    # is not drawn again: it is carried over from the previous results.json of OUT
    previous_curves = _previous_curves(out / "results.json")
    with stage("world"):
        build_world(world, profile.world, progress)
    dev = open_dataset(world_spec(world, "cityscapes-like", "dev"))
    steps = {f"client:{d}": tcfg.steps for d in SYNTHETIC_DOMAINS}
    steps |= {r.name: s for r in rows if (s := _row_steps(r, tcfg, dcfg_train)) is not None}
    curves = DevCurves(dev, tcfg.height, profile.curve_every, steps)
    run = DemoRun(out, world, profile, tcfg, dcfg_train, curves, progress, pretrained)
    with stage("initial_model"):
        torch.manual_seed(seed)
        init = create_model(profile.preset, backbone_weights=PUBLIC if pretrained else None)
        save_checkpoint(init, out / "init", meta={"role": "initial", "start": start})
    with stage("clients"):
        for domain in SYNTHETIC_DOMAINS:
            path = out / "clients" / domain
            train_client(
                world_spec(world, domain, "train"),
                profile.preset,
                path,
                tcfg,
                init=out / "init",
                progress=progress,
                on_step=curves.hook(f"client:{domain}"),
            )
            run.clients[domain] = path
    run.server_spec = world_spec(world, "cityscapes-like", "train")
    teachers = load_clients(run.clients)
    with stage("inconsistency"):
        server_images = open_dataset(run.server_spec, labels=False)
        inc = find_unstable(
            teachers,
            server_images,
            profile.server.rule,
            out=out,
            height=dcfg_train.height,
            progress=progress,
        )
        run.inconsistency = inc.to_dict()
    with stage("augmentation"):
        gen = generate_images(inc.scores, inc.unstable, out / "generated", generation)
        run.generated_spec = gen.spec
    for row in rows:
        builder = ROW_KINDS[row.kind]
        if builder is not None:
            with stage(STAGE_NAMES[row.kind].format(name=row.name)):
                builder(row, run)
    with stage("premise"):
        sample = ResizedCache(
            torch.utils.data.Subset(server_images, range(min(32, len(server_images)))),
            tcfg.height,
            with_labels=False,
            progress=False,
        )
        premise = premise_diagnostics(
            teachers,
            load_checkpoint(out / "init")[0],
            fedavg(list(teachers.values())),
            torch.stack(sample.images),
        )

    models: dict[str, Any] = {f"client:{d}": m for d, m in teachers.items()}
    student_init = {}
    for row in rows:
        if row.kind == "ensemble":
            models[row.name] = TeacherEnsemble(list(teachers.values()))
        else:
            models[row.name], meta = load_checkpoint(row_checkpoint(row, out))
            if meta.get("student_init"):
                student_init[row.name] = meta["student_init"]
    tests = {d: open_dataset(world_spec(world, d, "val")) for d in REAL_DOMAINS}
    methods: dict[str, Any] = {}
    confusion: dict[str, list[np.ndarray]] = {}
    by_name = {r.name: r for r in rows}
    speeds: dict[str, float] = {}
    with stage("evaluation"):
        for name, model in models.items():
            row_out: dict[str, Any] = {"miou": {}, "per_class": {}}
            confusion[name] = []
            for domain, ds in tests.items():
                r = evaluate(model, ds, height=tcfg.height, progress=False, per_image=True)
                row_out["miou"][domain] = r["miou"]
                row_out["per_class"][domain] = list(r["per_class"].values())
                confusion[name].append(r["per_image_confusion"])
            row_out["mean"] = float(np.mean(list(row_out["miou"].values())))
            row_out["dev"] = evaluate(model, dev, height=tcfg.height, progress=False)["miou"]
            row_out["parameters"] = parameter_count(model)
            if isinstance(model, torch.nn.Module):
                preset = model.preset.name
                if preset not in speeds:
                    speeds[preset] = inference_speed(model, tests, tcfg.height)
                row_out["preset"] = preset
                row_out["inference_img_s"] = speeds[preset]
            if name.startswith("client:"):
                row_out["checkpoint"] = str(run.clients[name.split(":")[1]])
            else:
                row = by_name[name]
                row_out["checkpoint"] = (
                    None if row.kind == "ensemble" else str(row_checkpoint(row, out))
                )
            methods[name] = row_out
            if progress:
                print(f"{name:<20} mean mIoU {row_out['mean']:.2f}", flush=True)
        # the single-client rows: one chosen with the test labels (an oracle no server has), one
        # chosen as a real server can, without labels (the client agreeing most with the ensemble
        # on the server's images)
        names = [f"client:{d}" for d in run.clients]
        oracle = max(names, key=lambda n: methods[n]["mean"])
        agreement = premise["client_agreement"]
        free = "client:" + max(agreement, key=lambda d: agreement[d])
        for row_name, pick, how in (
            (ORACLE, oracle, "the client with the best mean test mIoU (uses test labels)"),
            (LABEL_FREE, free, "the client agreeing most with the ensemble on server images"),
        ):
            methods[row_name] = {**methods[pick], "picked": pick, "how": how}
            confusion[row_name] = confusion[pick]
        for row_out in methods.values():
            row_out["classes_above_10"] = classes_above(row_out, 10.0)
        intervals = {
            f"{a} - {b}": paired_bootstrap(confusion[a], confusion[b], seed=seed)
            for a, b in COMPARISONS
            if a in confusion and b in confusion
        }
    np.savez_compressed(
        out / "confusion.npz",
        **{f"{m}|{d}": c for m, cs in confusion.items() for d, c in zip(tests, cs, strict=True)},
    )
    results = {
        "profile": profile.name,
        "seed": seed,
        "domains": list(REAL_DOMAINS),
        "start": start,
        "methods": methods,
        "intervals": intervals,
        "premise": premise,
        "curves": {
            k: v for k, v in merge_curves(previous_curves, curves.curves).items() if k in steps
        },
        "unstable_classes": inc.unstable,
        "inconsistency": inc.scores,
        "generated": gen.to_dict(),
        "communication": communication(rows, out, teachers, tcfg),
        "round_curves": round_curves(rows, out),
        "student_init": student_init,
        "timing_s": {**timing, "total": round(sum(timing.values()), 2)},
        "environment": environment(),
    }
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    with stage("report"):
        write_report(results, out, models, tests, tcfg.height)
    results["timing_s"]["report"] = timing["report"]
    results["timing_s"]["total"] = round(sum(v for k, v in timing.items()), 2)
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    return results


def _previous_curves(path: Path) -> dict[str, list[list[float]]]:
    """The learning curves of an earlier run into the same OUT ({} if none can be read)."""
    try:
        curves = json.loads(path.read_text()).get("curves", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return curves if isinstance(curves, dict) else {}


def merge_curves(
    before: Mapping[str, list[list[float]]], now: Mapping[str, list[list[float]]]
) -> dict[str, list[list[float]]]:
    """Each run's curve: the points drawn now, after the earlier run's points before them.

    A finished run that was reused draws no point (its earlier curve is kept whole); a run resumed
    from a stopped state draws from its resume step on (earlier points before it are kept); a run
    trained anew draws all of its points again (every earlier point is replaced)."""
    merged = {name: list(points) for name, points in before.items()}
    for name, points in now.items():
        first = min((p[0] for p in points), default=float("inf"))
        merged[name] = [p for p in merged.get(name, []) if p[0] < first] + list(points)
    return merged


def communication(rows: tuple[Row, ...], out: Path, teachers: dict, recipe: TrainConfig) -> dict:
    """What each federated row moved, measured as the serialized Flower messages: the one
    exchange of the one-shot rows (the initial model and settings to each client, each client's
    model and metadata back; the server's own stages move nothing), the rounds of the multi-round
    rows (their results.json); the upper bounds pool the data and are not federations."""
    try:
        from flwr.app import ArrayRecord, ConfigRecord, RecordDict

        from feds2r.federation.rounds import content_bytes
    except ImportError:
        return {"measured": False, "why": "Flower is not installed (pip install 'feds2r[flower]')"}
    from feds2r import __version__
    from feds2r.federation.protocol import FederationConfig, train_settings

    settings = train_settings(
        FederationConfig(out=str(out.resolve()), server_data="-", clients=recipe)
    )
    init, _ = load_checkpoint(out / "init")
    down = content_bytes(
        RecordDict(
            {"arrays": ArrayRecord(torch_state_dict=init.state_dict()),
             "config": ConfigRecord(settings)}
        )
    )  # fmt: skip
    up = 0
    for name, model in teachers.items():
        meta = {
            "client": name,
            "preset": model.preset.name,
            "class-names": list(CLASS_NAMES),
            "steps": recipe.steps,
            "train-seconds": 0.0,
            "feds2r-version": __version__,
        }
        content = {"arrays": ArrayRecord(torch_state_dict=model.state_dict()),
                   "meta": ConfigRecord(meta)}  # fmt: skip
        up += content_bytes(RecordDict(content))
    n = len(teachers)
    one_shot = {
        "rounds": 1,
        "download_bytes": down * n,
        "upload_bytes": up,
        "train_steps": recipe.steps * n,
        "megabytes": round((down * n + up) / 1e6, 3),
    }
    table: dict[str, Any] = {"measured": True}
    for row in rows:
        if row.kind == "supervised":
            table[row.name] = {"rounds": 0, "note": "centralised: the clients' data pooled"}
        elif row.kind == "rounds":
            done = json.loads((out / row.name / "results.json").read_text())["communication"]
            table[row.name] = {"rounds": done["rounds"], **done["total"]}
        else:
            table[row.name] = dict(one_shot)
    return table


def round_curves(rows: tuple[Row, ...], out: Path) -> dict[str, list[list[float]]]:
    """Per multi-round row: [round, megabytes moved so far, mean test mIoU, dev mIoU] from round
    0 (the initial model) to the last, from its results.json."""
    curves = {}
    for row in rows:
        if row.kind != "rounds":
            continue
        done = json.loads((out / row.name / "results.json").read_text())
        moved, points = [0.0], []
        for past in done["history"]:
            moved.append(moved[-1] + (past["download_bytes"] + past["upload_bytes"]) / 1e6)
        for k, (r, dev_miou) in enumerate(done["curve"]["dev"]):
            test = float(np.mean([done["curve"][d][k][1] for d in REAL_DOMAINS]))
            points.append([r, round(moved[k], 3), round(test, 3), dev_miou])
        curves[row.name] = points
    return curves


def plot_communication(results: dict, dest: Path) -> None:
    """Mean test mIoU against the megabytes each federated method moved: one point per one-shot
    method, one curve over the rounds per multi-round method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comm = results.get("communication", {})
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in results.get("round_curves", {}).items():
        xs = [max(p[1], 1e-3) for p in points[1:]]
        ax.plot(xs, [p[2] for p in points[1:]], marker="o", ms=3, label=f"{name} (rounds)")
    for name, entry in comm.items():
        if not isinstance(entry, dict) or entry.get("rounds") != 1:
            continue
        mean = results["methods"][name]["mean"]
        ax.scatter([entry["megabytes"]], [mean], s=18)
        ax.annotate(name, (entry["megabytes"], mean), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("megabytes communicated (all clients, both directions)")
    ax.set_ylabel("mean test mIoU (%)")
    ax.grid(alpha=0.3)
    if results.get("round_curves"):
        ax.legend(fontsize=7)
    save_figure(fig, dest)


def communication_table(results: dict) -> str:
    """Markdown: rounds, megabytes and mean mIoU of every federated row."""
    comm = results.get("communication", {})
    if not comm.get("measured"):
        return comm.get("why", "not measured")
    lines = [
        "| method | rounds | MB moved | client steps | mean mIoU |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in comm.items():
        if isinstance(entry, dict) and entry.get("rounds"):
            mean = results["methods"][name]["mean"]
            lines.append(
                f"| {name} | {entry['rounds']} | {entry['megabytes']:.1f} | "
                f"{entry['train_steps']} | {mean:.1f} |"
            )
    return "\n".join(lines)


def row_checkpoint(row: Row, out: Path) -> Path:
    """The checkpoint folder of a row's model."""
    return out / row.name / "global" if row.kind == "rounds" else out / row.name


def parameter_count(model) -> int:
    """Parameters of a model, or of all teachers of an ensemble."""
    if isinstance(model, TeacherEnsemble):
        return sum(parameter_count(t) for t in model.teachers)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inference_speed(model, tests: Mapping[str, Any], height: int, repeats: int = 5) -> float:
    """Median images per second of ``model`` on one batch of 8 test images at ``height`` (after
    a warm-up), over ``repeats`` timings: a figure beside the mIoU; ``scripts/bench_models.py``
    is the benchmark."""
    from feds2r.engine.evaluate import resize_images

    ds = next(iter(tests.values()))
    images = resize_images(torch.stack([ds[i]["image"] for i in range(min(8, len(ds)))]), height)
    was = model.training
    model.eval()
    model(images)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - begin)
    model.train(was)
    return round(len(images) / float(np.median(times)), 1)


def classes_above(row: dict, threshold: float) -> int:
    """How many classes score above ``threshold`` IoU (mean over the domains where present)."""
    vals = np.array(
        [[np.nan if v is None else v for v in per] for per in row["per_class"].values()],
        dtype=float,
    )
    with warnings.catch_warnings():  # a class absent from every domain stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, axis=0)
    return int(np.sum(mean > threshold))


def results_table(results: dict) -> str:
    """Markdown table: mIoU per test domain, their mean, dev mIoU and classes above 10 IoU."""
    doms = results["domains"]
    lines = [
        "| method | " + " | ".join(doms) + " | mean | dev | classes > 10 |",
        "|---|" + "---:|" * (len(doms) + 3),
    ]
    for name, row in results["methods"].items():
        cells = " | ".join(f"{row['miou'][d]:.1f}" for d in doms)
        label = f"{name} (= {row['picked']})" if "picked" in row else name
        dev = f"{row['dev']:.1f}" if "dev" in row else "-"
        above = row.get("classes_above_10", "-")
        lines.append(f"| {label} | {cells} | **{row['mean']:.1f}** | {dev} | {above} |")
    return "\n".join(lines)


def intervals_table(results: dict) -> str:
    """Markdown table of the claimed differences with their paired bootstrap 95 % intervals."""
    lines = ["| difference (mean mIoU) | value | 95 % interval |", "|---|---:|---|"]
    for name, r in results.get("intervals", {}).items():
        lines.append(f"| {name} | {r['diff']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] |")
    return "\n".join(lines)


def plot_curves(curves: dict[str, list[list[float]]], dest: Path) -> None:
    """Dev mIoU against training step, one line per training run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, dest)


def write_report(results: dict, out: Path, models: dict, tests: dict, height: int) -> None:
    """``report.md``: the table, per-class IoU, the inconsistency chart, sample predictions."""
    per_class_mean = {}
    for name, row in results["methods"].items():
        vals = np.array(
            [[np.nan if v is None else v for v in row["per_class"][d]] for d in results["domains"]],
            dtype=float,
        )
        with warnings.catch_warnings():  # a class absent from every domain stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class_mean[name] = np.nanmean(vals, axis=0)
    head = "| method | " + " | ".join(c[:6] for c in CLASS_NAMES) + " |"
    pc = [head, "|---|" + "---:|" * len(CLASS_NAMES)]
    for name, vals in per_class_mean.items():
        pc.append(
            f"| {name} | " + " | ".join("-" if np.isnan(v) else f"{v:.0f}" for v in vals) + " |"
        )
    sample_grid(models, tests, out / "samples.png", height)
    plot_curves(results.get("curves", {}), out / "curves.png")
    if results.get("communication", {}).get("measured"):
        plot_communication(results, out / "communication.png")
    premise = results["premise"]
    pairs = ", ".join(f"{k} {v:.2f}" for k, v in premise["feature_cosine"]["pairs"].items())
    moved = ", ".join(f"{k} {v:.3f}" for k, v in premise["change_from_start"].items())
    agree = ", ".join(f"{k} {100 * v:.0f} %" for k, v in premise["client_agreement"].items())
    st = results["start"]
    start_line = (
        (
            f"the pretrained `public` backbone shipped with feds2r ({Path(st['backbone']).name}); "
            if st["pretrained"]
            else "random weights (--no-pretrained); "
        )
        + st["rows"]
        + "."
    )
    inc = results["inconsistency"]
    inc_line = ", ".join(
        f"{k} {v:.2f}"
        for k, v in sorted(
            ((k, v) for k, v in inc.items() if v is not None), key=lambda kv: -kv[1]
        )[:8]
    )
    methods = results["methods"]
    ensemble_line = (
        f" Ensemble {methods['ensemble']['mean']:.1f} vs best client {methods[ORACLE]['mean']:.1f}."
        if "ensemble" in methods
        else ""
    )
    measured = results.get("communication", {}).get("measured")
    comm_figure = "\n![communication](communication.png)\n" if measured else ""
    text = f"""# feds2r demo report

Profile `{results["profile"]}`, seed {results["seed"]}. mIoU (%) on the five real-like test domains
of the built-in world; `mean` is their mean, `dev` the mIoU on the server domain's labelled dev
split (where choices are made), `classes > 10` how many of the 19 classes score above 10 IoU.
`ensemble` averages the clients' predictions at test time (a reference, not a single model).
`{ORACLE}` is chosen with the test labels, which no server has; `{LABEL_FREE}` is the
client a server picks without labels (the one agreeing most with the ensemble on its images).

Starting point: {start_line}

{results_table(results)}

## Paired differences

Paired bootstrap over test images (1,000 replicates, images resampled within each domain, the same
draw for both rows); one seed — claims need the spread over seeds too (docs/results.md).

{intervals_table(results)}

## Does the premise hold?

FedS2R assumes clients that share a feature space (one pretrained backbone). On
{premise["images"]} server images: mean pixel-wise cosine of the clients' decoder features
{premise["feature_cosine"]["mean"]:.2f} ({pairs}); how far each client moved from the common start
(relative L2): {moved}; FedAvg's arg-max agrees with the ensemble's on
{100 * premise["fedavg_agreement"]:.0f} % of pixels; each client's agreement with the ensemble:
{agree}.{ensemble_line}

## Communication

What each federated row moved (serialized Flower messages, all clients, both directions).

{communication_table(results)}
{comm_figure}

## Learning curves (dev mIoU)

![curves](curves.png)

## Per-class IoU (%), mean over the five domains

{chr(10).join(pc)}

## Client inconsistency on the server's images

Unstable classes: {", ".join(results["unstable_classes"])}. Highest scores: {inc_line}.

![inconsistency](inconsistency.png)

Generated images: {results["generated"]["num_images"]} ({
        ", ".join(f"{c} {n}" for c, n in results["generated"]["per_class"].items())
    }).

## Sample predictions

Rows: one test image per domain; columns: image, ground truth, then each method.

![samples](samples.png)

## Timing (s)

{chr(10).join(f"- {k}: {v}" for k, v in results["timing_s"].items())}
"""
    write_atomic(out / "report.md", text.encode())


def sample_grid(models: dict, tests: dict, dest: Path, height: int) -> None:
    """One row per test domain: image, ground truth, each method's prediction (labelled)."""
    import cv2

    from feds2r.data.labels import colorize
    from feds2r.engine.evaluate import predict_probs

    names = list(models)
    tiles_rows = []
    for ds in tests.values():
        item = ds[0]
        img = item["image"].permute(1, 2, 0).numpy()
        h, w = img.shape[:2]
        row = [img, colorize(item["label"].numpy().astype(np.uint8))]
        for name in names:
            probs = predict_probs(models[name], item["image"][None], height=height, out_size=(h, w))
            row.append(colorize(probs.argmax(1)[0].numpy().astype(np.uint8)))
        tiles_rows.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles_rows, axis=0)
    header = np.full((22, grid.shape[1], 3), 255, np.uint8)
    w = tests[next(iter(tests))][0]["image"].shape[-1]
    for k, label in enumerate(["image", "ground truth", *names]):
        cv2.putText(
            header,
            label[:18],
            (k * w + 3, 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    grid = np.concatenate([header, grid], axis=0)
    ok, buf = cv2.imencode(".png", grid[..., ::-1])
    write_atomic(dest, buf.tobytes())
