"""The FUSS suite (``feds2r demo --suite fuss``): unsupervised segmentation by clients without
labels, on the built-in world (``docs/fuss.md``).

Stages (each timed): build the world if missing; compute the frozen ImageNet features of every
image once (the clients' synthetic train splits without labels, the cityscapes-like dev split
and the five real-like test splits); train each row's method (:mod:`feds2r.fuss`) on the clients
split by domain (``--partition domain``, the default, non-i.i.d.: each client one synthetic
domain) or at random (``--partition iid``: the same images pooled, shuffled with the seed and
dealt into as many clients); fit each model's cluster-to-class
mapping on dev and apply it unchanged on every test domain. Writes ``results.json`` (the demo's
schema, ``docs/demo.md``), ``report.md`` with sample cluster maps, and every model
(``METHOD/fuss_model.pt``).

``local-only`` and ``fedavg`` end with one model per client: their row is the mean over the
clients' models, and their paired intervals are taken against each client's model
(``fuss - local-only:gta5-like``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from feds2r.data.labels import CLASS_NAMES, colorize
from feds2r.data.world import REAL_DOMAINS, SYNTHETIC_DOMAINS
from feds2r.demo.evaluation import classes_above
from feds2r.demo.profiles import Profile, get_profile
from feds2r.demo.report import (
    intervals_section,
    per_class_section,
    results_table,
    table_intro,
    write_markdown,
)
from feds2r.demo.results import paired_intervals, results_document, write_results
from feds2r.demo.rows import Row
from feds2r.demo.stages import StageClock, demo_output
from feds2r.demo.suite import Suite
from feds2r.demo.world import SERVER_DOMAIN, build_world, world_spec
from feds2r.errors import Feds2rError
from feds2r.fuss import METHODS, PARTITIONS, FussConfig, load_split, run_method, split_clients
from feds2r.io import write_atomic
from feds2r.metrics.unsupervised import (
    UNMATCHED,
    ClusterConfusion,
    fit_mapping,
    mapped_confusion,
    mapped_summary,
)
from feds2r.models.cluster_head import ClusterHead
from feds2r.models.pixel_features import FrozenFeatures, compute_features

NAME = "fuss"
"""The suite's name (``feds2r demo --suite fuss``)."""

ROWS: tuple[Row, ...] = tuple(Row(method, "fuss") for method in METHODS)
"""local-only, fedavg, fuss, centralized (:data:`feds2r.fuss.METHODS`)."""

ROUNDS = 5
"""Rounds of every row; a profile's client steps are split over them."""

SUITE_STEPS = {"default": 300}
"""Client steps of the suite where they differ from the profile's own: FUSS trains a head on
frozen features whatever the profile's preset, so its budget does not follow the default
profile's re-balancing for seg-effl0 (250 steps); 300, as when m2f-cpu was the default's
preset, keeps docs/results.md's FUSS figures reproducible with the default profile."""


def suite_config(
    profile: Profile, seed: int, overrides: Mapping[str, Any] | None = None
) -> FussConfig:
    """The run's :class:`~feds2r.fuss.FussConfig`: the profile's training height, its client
    steps over :data:`ROUNDS` rounds (fewer rounds when there are fewer steps) and batch size,
    then ``overrides`` (FussConfig fields, e.g. ``num_clusters=38, mapping="majority"`` for the
    over-clustering variant)."""
    steps = SUITE_STEPS.get(profile.name, profile.clients.steps)
    rounds = max(1, min(ROUNDS, steps))
    config = FussConfig(
        height=profile.clients.height,
        rounds=rounds,
        local_steps=max(1, steps // rounds),
        batch_size=profile.clients.batch_size,
        seed=seed,
    )
    return dataclasses.replace(config, **(overrides or {}))


def run_fuss(
    profile: str | Profile,
    out: str | Path,
    *,
    seed: int = 0,
    world: Path | None = None,
    progress: bool = True,
    pretrained: bool = True,
    rows: tuple[Row, ...] = ROWS,
    partition: str = "domain",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the suite into ``out`` with the clients split by ``partition``
    (:data:`~feds2r.fuss.PARTITIONS`) and the FussConfig ``overrides`` (:func:`suite_config`;
    Python only, the command line runs the defaults); returns the results (also
    ``out/results.json``)."""
    profile = get_profile(profile)
    if partition not in PARTITIONS:
        raise Feds2rError(f"unknown partition {partition!r}; valid: {', '.join(PARTITIONS)}")
    if not pretrained:
        raise Feds2rError(
            "the fuss suite segments on frozen ImageNet features; --no-pretrained does not apply"
        )
    unknown = [r.name for r in rows if r.name not in METHODS]
    if unknown:
        raise Feds2rError(f"unknown fuss rows {unknown}; valid: {', '.join(METHODS)}")
    world = Path(world) if world else Path(out) / "world"
    config = suite_config(profile, seed, overrides)
    inputs = {
        "profile": profile.name,
        "seed": seed,
        "world": str(world),
        "backbone": config.backbone,
        "partition": partition,
        **({"overrides": dict(overrides)} if overrides else {}),
    }
    with demo_output(out, NAME, inputs) as out:
        return _run(profile, out, seed, world, progress, config, rows, partition)


def _run(
    profile: Profile,
    out: Path,
    seed: int,
    world: Path,
    progress: bool,
    config: FussConfig,
    rows: tuple[Row, ...],
    partition: str,
) -> dict[str, Any]:
    clock = StageClock(progress)
    with clock("world"):
        build_world(world, profile.world, progress)
    with clock("features"):
        extractor = FrozenFeatures(config.backbone)

        def features(domain: str, split: str, labels: bool) -> Any:
            images, target = load_split(world_spec(world, domain, split), config.height,
                                        labels=labels)  # fmt: skip
            feats = compute_features(extractor, images)
            return (feats, target.long(), images) if labels else feats

        per_domain = {d: features(d, "train", False) for d in SYNTHETIC_DOMAINS}
        dev = features(SERVER_DOMAIN, "dev", True)
        tests = {d: features(d, "val", True) for d in REAL_DOMAINS}
    clients = split_clients(per_domain, partition, len(per_domain), config.knn, seed)
    models: dict[str, dict[str, ClusterHead]] = {}
    records: dict[str, dict] = {}
    for row in rows:
        with clock(row.name):
            models[row.name], records[row.name] = run_method(row.name, clients, config)
        _save(out / row.name, models[row.name], config)
    with clock("evaluation"):
        methods, confusion, maps = _evaluate(models, dev, tests, config, records)
        comparisons = [("fuss", "centralized")] + [
            ("fuss", f"{m}:{c.name}") for m in ("local-only", "fedavg") for c in clients
        ]
        intervals = paired_intervals(confusion, comparisons, seed)
    content = {
        "profile": profile.name,
        "seed": seed,
        "domains": list(REAL_DOMAINS),
        "methods": methods,
        "intervals": intervals,
        "curves": {},
        "communication": _communication(records, config, len(clients)),
        "fuss": {
            "config": dataclasses.asdict(config),
            "partition": partition,
            "clients": {c.name: len(c) for c in clients},
            "backbone": config.backbone,
        },
    }
    results = results_document(content, clock.summary())
    write_results(out, results)
    with clock("report"):
        _cluster_maps(maps, tests, out / "samples.png")
        _report(results, out)
    results["timing_s"] = clock.summary()
    write_results(out, results)
    return results


def _save(folder: Path, models: Mapping[str, ClusterHead], config: FussConfig) -> None:
    """``folder/fuss_model.pt``: each model's head and centroids, by model name."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": dataclasses.asdict(config),
            "models": {n: m.state_dict() for n, m in models.items()},
        },
        folder / "fuss_model.pt",
    )


def _per_image(model: ClusterHead, feats: torch.Tensor, labels: torch.Tensor) -> list[Any]:
    """Each image's cluster-by-class confusion (K, C) as a list."""
    out = []
    for i in range(len(feats)):
        cc = ClusterConfusion(model.config.num_clusters)
        cc.update(model.assign(feats[i : i + 1], tuple(labels.shape[-2:])), labels[i : i + 1])
        out.append(cc.matrix)
    return out


def _evaluate(
    models: Mapping[str, Mapping[str, ClusterHead]],
    dev: tuple,
    tests: Mapping[str, tuple],
    config: FussConfig,
    records: Mapping[str, dict],
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]], dict[str, Any]]:
    """Every row of ``results.json``, the per-image class confusions of every model (one
    (N, C, C) array per test domain) and each row's first model's class maps of the first test
    image of each domain (for the figure)."""
    methods, confusion, maps = {}, {}, {}
    for method, group in models.items():
        per_model = {}
        for name, model in group.items():
            fitted = ClusterConfusion(config.num_clusters)
            fitted.update(model.assign(dev[0], tuple(dev[1].shape[-2:])), dev[1])
            table = fit_mapping(fitted.matrix, config.mapping)
            result = {"dev": mapped_summary(fitted.matrix, table)}
            key = method if len(group) == 1 else f"{method}:{name}"
            confusion[key] = []
            for domain, (feats, labels, _) in tests.items():
                images = _per_image(model, feats, labels)
                result[domain] = mapped_summary(sum(images), table)
                confusion[key].append(
                    np.stack([mapped_confusion(m, table).matrix.numpy() for m in images])
                )
            per_model[name] = result
            if method not in maps:
                maps[method] = {
                    d: _class_map(model, feats[:1], labels.shape[-2:], table)
                    for d, (feats, labels, _) in tests.items()
                }
        methods[method] = _row(per_model, list(tests), records[method])
    return methods, confusion, maps


def _class_map(model: ClusterHead, feats: torch.Tensor, size: Any, table: np.ndarray) -> Any:
    mapped = torch.as_tensor(table)[model.assign(feats, tuple(size))[0]]
    return torch.where(mapped == UNMATCHED, 255, mapped).numpy().astype(np.uint8)


def _row(per_model: Mapping[str, dict], domains: list[str], record: dict) -> dict[str, Any]:
    """A row: the mean over its models of mIoU, pixel accuracy and per-class IoU, per domain."""
    n = len(per_model)

    def mean_class(domain: str) -> list[float | None]:
        values = [
            [r[domain]["per_class"][c] for r in per_model.values()] for c in range(len(CLASS_NAMES))
        ]
        return [None if None in v else float(np.mean(v)) for v in values]

    row: dict[str, Any] = {
        "miou": {d: sum(r[d]["miou"] for r in per_model.values()) / n for d in domains},
        "pixel_acc": {d: sum(r[d]["pixel_acc"] for r in per_model.values()) / n for d in domains},
        "per_class": {d: mean_class(d) for d in domains},
    }
    row["mean"] = float(np.mean(list(row["miou"].values())))
    row["dev"] = sum(r["dev"]["miou"] for r in per_model.values()) / n
    row["models"] = {
        name: {d: r[d]["miou"] for d in ["dev", *domains]} for name, r in per_model.items()
    }
    row["classes_above_10"] = classes_above(row, 10.0)
    row["bytes"] = record["bytes"]
    return row


def _communication(records: Mapping[str, dict], config: FussConfig, clients: int) -> dict:
    """Bytes of the tensors each federated row's messages carried, both directions."""
    comm: dict[str, Any] = {"measured": any(r["bytes"] for r in records.values())}
    for name, record in records.items():
        if record["bytes"]:
            comm[name] = {
                "rounds": config.rounds,
                "megabytes": record["bytes"] / 1e6,
                "train_steps": config.rounds * config.local_steps * clients,
            }
    return comm


def _cluster_maps(maps: Mapping[str, Mapping[str, Any]], tests: Mapping[str, tuple], dest: Path):
    """One row per test domain: image, ground truth, each row's class map after the matching."""
    tiles = []
    for domain, (_, labels, images) in tests.items():
        row = [images[0].permute(1, 2, 0).numpy(), colorize(labels[0].numpy().astype(np.uint8))]
        row += [colorize(maps[m][domain]) for m in maps]
        tiles.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles, axis=0)
    w = next(iter(tests.values()))[2].shape[-1]
    header = np.full((22, grid.shape[1], 3), 255, np.uint8)
    for k, label in enumerate(["image", "ground truth", *maps]):
        cv2.putText(header, label[:18], (k * w + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    ok, buf = cv2.imencode(".png", np.concatenate([header, grid], axis=0)[..., ::-1])
    write_atomic(dest, buf.tobytes())


def _report(results: Mapping[str, Any], out: Path) -> None:
    """``report.md``: the table, the paired intervals, the communication, per-class IoU, maps."""
    fuss = results["fuss"]
    clients = ", ".join(f"{k} ({v} images)" for k, v in fuss["clients"].items())
    split = (
        "one synthetic domain each"
        if fuss["partition"] == "domain"
        else "the synthetic domains' images dealt at random (i.i.d.)"
    )
    comm = results["communication"]
    traffic = "\n".join(
        f"- {k}: {v['megabytes']:.2f} MB over {v['rounds']} rounds"
        for k, v in comm.items()
        if isinstance(v, dict)
    )
    matching = {
        "hungarian": "Hungarian matching (one cluster per class)",
        "majority": "majority mapping (each cluster to its most frequent class)",
    }[fuss["config"]["mapping"]]
    head = (
        f"{table_intro(results)}\n\nFUSS suite: clients without labels ({clients}), {split}; "
        f"frozen `{fuss['backbone']}` features; K = {fuss['config']['num_clusters']} "
        f"clusters matched to the 19 classes\nby {matching} fitted on the cityscapes-like "
        "dev split and applied unchanged on every test domain.\n`local-only` and `fedavg` "
        "give one model per client: their rows are the mean over the clients.\n\n"
        f"{results_table(results)}"
    )
    sections = [
        intervals_section(results),
        (
            "Communication",
            "Bytes of the head and centroid tensors moved, all clients, both "
            f"directions.\n\n{traffic or 'no federated row'}",
        ),  # fmt: skip
        per_class_section(results),
        (
            "Sample cluster maps",
            "Rows: the first test image of each domain; columns: image, "
            "ground truth, then each row's clusters mapped to classes (black: a cluster without a "
            "class).\n\n![samples](samples.png)",
        ),  # fmt: skip
    ]
    write_markdown(
        results, out, head=head, sections=sections, title="feds2r demo report (fuss suite)"
    )


SUITE = Suite(
    NAME,
    "FUSS: unsupervised segmentation by clients without labels (local-only, fedavg, fuss, "
    "centralized; --partition domain|iid)",
    run_fuss,
    ROWS,
    partitions=PARTITIONS,
)
"""The suite's entry of :data:`feds2r.demo.suites.SUITES`."""

__all__ = ["NAME", "ROWS", "SUITE", "run_fuss", "suite_config"]
