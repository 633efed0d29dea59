"""The FedS2R suite (``feds2r demo``, the default): the one-shot federation on the built-in
world, with its baselines, ablations and upper bounds.

The suite is a list of rows (:data:`ROWS`, more with :data:`EXTRA_ROWS`). Stages (each timed):
build the world if missing; the server creates one initial model; each client trains it on its
synthetic domain; the server runs the pipeline's stages (:mod:`feds2r.server.pipeline`:
inconsistency on its unlabelled real images, generated images of the unstable classes); then
every row builds its model (:data:`~feds2r.demo.rows.ROW_KINDS`) and every row is evaluated on
the five real-like test domains. Writes ``results.json`` (schema in ``docs/demo.md``),
``report.md`` and its figures, every checkpoint and ``config.toml``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feds2r.config import write_run_config
from feds2r.data import open_dataset
from feds2r.data.world import REAL_DOMAINS, SYNTHETIC_DOMAINS
from feds2r.demo.communication import communication, round_curves
from feds2r.demo.curves import DevCurves, previous_curves
from feds2r.demo.evaluation import (
    LABEL_FREE,
    ORACLE,
    add_single_client_rows,
    classes_above,
    evaluate_methods,
)
from feds2r.demo.profiles import Profile, get_profile
from feds2r.demo.report import (
    SINGLE_CLIENT_NOTE,
    Section,
    communication_section,
    curves_section,
    intervals_section,
    per_class_section,
    results_table,
    samples_section,
    start_line,
    table_intro,
    write_report,
)
from feds2r.demo.results import paired_intervals, results_document, save_confusion, write_results
from feds2r.demo.rows import DemoRun, Row, build_rows, check_rows, row_checkpoint, row_steps
from feds2r.demo.stages import (
    StageClock,
    demo_output,
    save_initial_model,
    start_record,
    train_clients,
)
from feds2r.demo.suite import Suite
from feds2r.demo.world import SERVER_DOMAIN, build_world, open_dev, open_tests, world_spec
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.train import TrainConfig
from feds2r.server.diagnostics import premise_diagnostics
from feds2r.server.distill import fedavg
from feds2r.server.pipeline import GenerationConfig, find_unstable, generate_images, load_clients
from feds2r.server.teachers import TeacherEnsemble

NAME = "feds2r"
"""The suite's name (``feds2r demo --suite feds2r``)."""

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


def lite_rows(student: str, recipe: Mapping[str, Any] | None = None) -> tuple[Row, ...]:
    """The rows of ``--lite`` for the small preset ``student``: a lightweight global model
    through FedS2R's model as the large student (DUDA), and distilled straight from the teachers
    as the reference; same steps, same teachers' targets, both from ``student``'s pretrained
    start, both with the recipe fields ``recipe`` (a profile's ``lite_recipe``)."""
    recipe = dict(recipe or {})
    return (
        Row("feds2r-lite", "lite", {"feature_fusion": True}, lite={"student": student},
            after="feds2r", recipe=recipe),
        Row("direct-lite", "distill",
            {"feature_fusion": True, "student": student, "init": "pretrained", "kd": "pixel"},
            recipe=recipe),
    )  # fmt: skip


LITE_ROWS: tuple[Row, ...] = lite_rows(Profile.lite_student)
"""The rows of ``--lite`` with the default profile's small student (segformer-cpu: 0.41x the
parameters of m2f-cpu); a run gives them its profile's (:func:`with_lite_student`)."""

ROUNDS = 5
"""Rounds of the demo's multi-round rows: 300 client steps become 5 rounds of 60 (docs/demo.md)."""

ROUND_ROWS: tuple[Row, ...] = (
    # the federations people run today, at the one-shot clients' total steps, from the same
    # initial model (`feds2r demo --multi-round`; needs Flower: pip install 'feds2r[flower]')
    Row(f"fedavg-{ROUNDS}", "rounds", rounds={"method": "fedavg", "rounds": ROUNDS}),
    Row(f"fedprox-{ROUNDS}", "rounds", rounds={"method": "fedprox", "rounds": ROUNDS}),
    Row(f"fedseg-{ROUNDS}", "rounds", rounds={"method": "fedseg", "rounds": ROUNDS}),
)

EXTRA_ROWS: dict[str, tuple[Row, ...]] = {
    "self_train": SELFTRAIN_ROWS,
    "lite": LITE_ROWS,
    "multi_round": ROUND_ROWS,
}
"""The rows each of the suite's flags adds after :data:`ROWS` (``--self-train``, ``--lite``,
``--multi-round``), in this order."""

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

START_ROWS = (
    "every row (clients, upper bounds, FedAvg, FedDF, every FedS2R row) starts from this one "
    "initial model"
)
"""Which rows start from the one initial model (``results.json``'s ``start``)."""

ENSEMBLE_NOTE = (
    "`ensemble` averages the clients' predictions at test time (a reference, not a single model)."
)


def with_lite_student(
    rows: tuple[Row, ...], student: str, recipe: Mapping[str, Any] | None = None
) -> tuple[Row, ...]:
    """``rows`` with the suite's own lite rows (:data:`LITE_ROWS`) distilling into ``student``
    with the recipe fields ``recipe`` (a profile's ``lite_student`` and ``lite_recipe``); every
    other row, and lite rows of one's own, unchanged."""
    profile_rows = lite_rows(student, recipe)
    return tuple(profile_rows[LITE_ROWS.index(r)] if r in LITE_ROWS else r for r in rows)


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
    """Run the whole suite into ``out``; returns the results dict (also ``out/results.json``).

    ``pretrained``: every model starts from the backbone feds2r ships for the preset (pretrained
    on the world's `public` domain, docs/models.md); False: from random weights. ``rows``: the
    methods to build and compare (default :data:`ROWS`; the comparisons need its rows); the lite
    rows distil into the profile's small student (``Profile.lite_student``).
    """
    profile = get_profile(profile)
    rows = with_lite_student(rows, profile.lite_student, profile.lite_recipe)
    check_rows(rows)
    world = Path(world) if world else Path(out) / "world"
    inputs = {
        "profile": profile.name,
        "seed": seed,
        "world": str(world),
        "pretrained": pretrained,
        "preset": profile.preset,
    }
    with demo_output(out, "feds2r", inputs) as out:
        return _run(profile, out, seed, world, progress, pretrained, rows)


def _run(
    profile: Profile,
    out: Path,
    seed: int,
    world: Path,
    progress: bool,
    pretrained: bool,
    rows: tuple[Row, ...],
) -> dict[str, Any]:
    """:func:`run_demo` in its claimed OUT."""
    clients_recipe, distill_recipe, generation = recipes(profile, seed, pretrained)
    _write_config(out, profile, seed, world, rows, pretrained)
    clock = StageClock(progress)
    earlier = previous_curves(out / "results.json")  # before this run writes its own
    with clock("world"):
        build_world(world, profile.world, progress)
    steps = {f"client:{d}": clients_recipe.steps for d in SYNTHETIC_DOMAINS}
    for row in rows:
        if (trains := row_steps(row, clients_recipe, distill_recipe)) is not None:
            steps[row.name] = trains
    curves = DevCurves(open_dev(world), clients_recipe.height, profile.curve_every, steps)
    run = DemoRun(out, world, profile, clients_recipe, distill_recipe, curves, progress, pretrained)
    start = start_record(profile.preset, pretrained, START_ROWS)
    teachers = _clients(run, seed, start, clock)
    server_images, inc, gen = _server_stages(run, teachers, generation, clock)
    build_rows(rows, run, clock)
    with clock("premise"):
        premise = _premise(run, teachers, server_images)
    models, checkpoints, student_init = _models(run, rows, teachers)
    tests = open_tests(world)
    with clock("evaluation"):
        methods, confusion = _evaluate(run, models, checkpoints, tests, premise)
        intervals = paired_intervals(confusion, COMPARISONS, seed)
    save_confusion(out, confusion, list(tests))
    content = {
        "profile": profile.name,
        "seed": seed,
        "domains": list(REAL_DOMAINS),
        "start": start,
        "methods": methods,
        "intervals": intervals,
        "premise": premise,
        "curves": curves.merged(earlier),
        "unstable_classes": inc.unstable,
        "inconsistency": inc.scores,
        "generated": gen.to_dict(),
        "communication": communication(rows, out, teachers, clients_recipe, profile.preset),
        "round_curves": round_curves(rows, out),
        "student_init": student_init,
    }
    results = results_document(content, clock.summary())
    write_results(out, results)
    with clock("report"):
        _report(results, out, models, tests, clients_recipe.height)
    results["timing_s"] = clock.summary()
    write_results(out, results)
    return results


def recipes(
    profile: Profile, seed: int, pretrained: bool
) -> tuple[TrainConfig, TrainConfig, GenerationConfig]:
    """The clients' recipe, the distillation rows' recipe and the generation config of a run:
    the profile's, with the run's seed; a pretrained backbone learns at a tenth of the rate."""
    clients = dataclasses.replace(
        profile.clients, seed=seed, backbone_lr_mult=0.1 if pretrained else 1.0
    )
    distill = dataclasses.replace(
        profile.server.train, seed=seed, backbone_lr_mult=clients.backbone_lr_mult
    )
    return clients, distill, dataclasses.replace(profile.server.generation, seed=seed)


def _write_config(
    out: Path,
    profile: Profile,
    seed: int,
    world: Path,
    rows: tuple[Row, ...],
    pretrained: bool,
) -> None:
    """``out/config.toml``: the run's settings, its profile and every recipe (:func:`recipes`)."""
    clients_recipe, distill_recipe, generation = recipes(profile, seed, pretrained)
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
            "client_train": clients_recipe,
            "rule": profile.server.rule,
            "generation": generation,
            "distill_train": distill_recipe,
            "distill": dataclasses.replace(profile.server.distill, student=profile.preset),
            **(
                {"lite_train": dataclasses.replace(distill_recipe, **profile.lite_recipe)}
                if profile.lite_recipe
                else {}
            ),
        },
    )


def _clients(run: DemoRun, seed: int, start: Mapping[str, Any], clock: StageClock) -> dict:
    """The initial model, then one client per synthetic domain trained from it; the clients'
    models by domain (also ``run.clients``: their folders, and ``run.server_spec``)."""
    with clock("initial_model"):
        save_initial_model(run.out, run.profile.preset, seed, start)
    with clock("clients"):
        specs = {d: world_spec(run.world, d, "train") for d in SYNTHETIC_DOMAINS}
        run.clients = train_clients(
            specs, run.out, run.profile.preset, run.clients_recipe, run.curves, run.progress
        )
    run.server_spec = world_spec(run.world, SERVER_DOMAIN, "train")
    return load_clients(run.clients)


def _server_stages(
    run: DemoRun, teachers: dict, generation: GenerationConfig, clock: StageClock
) -> tuple[Any, Any, Any]:
    """The server's stages before the rows: the clients' inconsistency on its unlabelled images
    and the generated images of the unstable classes (also into ``run``). Returns the server's
    images, the inconsistency and the generation's results."""
    with clock("inconsistency"):
        server_images = open_dataset(run.server_spec, labels=False)
        inc = find_unstable(
            teachers,
            server_images,
            run.profile.server.rule,
            out=run.out,
            height=run.distill_recipe.height,
            progress=run.progress,
        )
        run.inconsistency = inc.to_dict()
    with clock("augmentation"):
        gen = generate_images(inc.scores, inc.unstable, run.out / "generated", generation)
        run.generated_spec = gen.spec
    return server_images, inc, gen


def _premise(run: DemoRun, teachers: dict, server_images: Any) -> dict[str, Any]:
    """The label-free diagnostics of FedS2R's premise on 32 of the server's images."""
    sample = ResizedCache(
        torch.utils.data.Subset(server_images, range(min(32, len(server_images)))),
        run.clients_recipe.height,
        with_labels=False,
        progress=False,
    )
    return premise_diagnostics(
        teachers,
        load_checkpoint(run.out / "init")[0],
        fedavg(list(teachers.values())),
        torch.stack(sample.images),
    )


def _models(
    run: DemoRun, rows: tuple[Row, ...], teachers: dict
) -> tuple[dict[str, Any], dict[str, str | None], dict[str, Any]]:
    """Every method's model (the clients', then each row's), its checkpoint folder (None for the
    ensemble) and how each student was initialised, by method name."""
    models: dict[str, Any] = {f"client:{d}": m for d, m in teachers.items()}
    checkpoints: dict[str, str | None] = {f"client:{d}": str(run.clients[d]) for d in teachers}
    student_init = {}
    for row in rows:
        if row.kind == "ensemble":
            models[row.name] = TeacherEnsemble(list(teachers.values()))
            checkpoints[row.name] = None
        else:
            models[row.name], meta = load_checkpoint(row_checkpoint(row, run.out))
            checkpoints[row.name] = str(row_checkpoint(row, run.out))
            if meta.get("student_init"):
                student_init[row.name] = meta["student_init"]
    return models, checkpoints, student_init


def _evaluate(
    run: DemoRun,
    models: dict[str, Any],
    checkpoints: dict[str, str | None],
    tests: dict[str, Any],
    premise: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """Every method's row of ``results.json`` and its per-image confusions, with the two
    single-client rows (the oracle, and the label-free pick by agreement with the ensemble)."""
    methods, confusion = evaluate_methods(
        models, tests, run.curves.dev, run.clients_recipe.height, checkpoints, run.progress
    )
    clients = [f"client:{d}" for d in run.clients]
    add_single_client_rows(methods, confusion, clients, premise["client_agreement"])
    for row in methods.values():
        row["classes_above_10"] = classes_above(row, 10.0)
    return methods, confusion


def _premise_section(results: Mapping[str, Any]) -> Section:
    """Whether the clients share a feature space, as FedS2R assumes (``results["premise"]``)."""
    premise, methods = results["premise"], results["methods"]
    pairs = ", ".join(f"{k} {v:.2f}" for k, v in premise["feature_cosine"]["pairs"].items())
    moved = ", ".join(f"{k} {v:.3f}" for k, v in premise["change_from_start"].items())
    agree = ", ".join(f"{k} {100 * v:.0f} %" for k, v in premise["client_agreement"].items())
    ensemble = (
        f" Ensemble {methods['ensemble']['mean']:.1f} vs best client {methods[ORACLE]['mean']:.1f}."
        if "ensemble" in methods
        else ""
    )
    return (
        "Does the premise hold?",
        "FedS2R assumes clients that share a feature space (one pretrained backbone). On\n"
        f"{premise['images']} server images: mean pixel-wise cosine of the clients' decoder "
        f"features\n{premise['feature_cosine']['mean']:.2f} ({pairs}); how far each client moved "
        f"from the common start\n(relative L2): {moved}; FedAvg's arg-max agrees with the "
        f"ensemble's on\n{100 * premise['fedavg_agreement']:.0f} % of pixels; each client's "
        f"agreement with the ensemble:\n{agree}.{ensemble}",
    )


def _inconsistency_section(results: Mapping[str, Any]) -> Section:
    """The unstable classes, the highest inconsistency scores and the generated images."""
    scored = [(k, v) for k, v in results["inconsistency"].items() if v is not None]
    top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(scored, key=lambda kv: -kv[1])[:8])
    generated = results["generated"]
    per_class = ", ".join(f"{c} {n}" for c, n in generated["per_class"].items())
    return (
        "Client inconsistency on the server's images",
        f"Unstable classes: {', '.join(results['unstable_classes'])}. Highest scores: {top}.\n\n"
        f"![inconsistency](inconsistency.png)\n\nGenerated images: {generated['num_images']} "
        f"({per_class}).",
    )


def _report(results: Mapping[str, Any], out: Path, models: dict, tests: dict, height: int) -> None:
    """``report.md`` of the suite: the table, then the shared sections and the suite's own."""
    head = (
        f"{table_intro(results)}\n{ENSEMBLE_NOTE}\n{SINGLE_CLIENT_NOTE}\n\n"
        f"Starting point: {start_line(results['start'])}\n\n{results_table(results)}"
    )
    sections = [
        intervals_section(results),
        _premise_section(results),
        communication_section(results),
        curves_section(),
        per_class_section(results),
        _inconsistency_section(results),
        samples_section(),
    ]
    write_report(results, out, models, tests, height, head=head, sections=sections)


SUITE = Suite(
    NAME,
    "FedS2R's one-shot federation of synthetic clients, its baselines and upper bounds",
    run_demo,
    ROWS,
    EXTRA_ROWS,
)
"""The suite's entry of :data:`feds2r.demo.suites.SUITES`."""
