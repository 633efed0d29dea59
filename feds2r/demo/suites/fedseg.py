"""The FedSeg suite (``feds2r demo --suite fedseg``): FedSeg in its own setting, class-heterogeneous
clients, on the built-in world (``docs/fedseg.md``).

FedSeg (Miao et al., CVPR 2023; ``fedseg-paper.txt``) splits Cityscapes' training set into 19
clients that each annotate one class (non-IID₁) or two (non-IID₂), everything else in their
images being background, and compares FedAvg with plain CE, FedAvg with its background-aware CE
(BackCE), FedProx with BackCE and FedSeg (BackCE + the local-to-global pixel contrast) in
mIoU on Cityscapes val (its Table 1; IID in Table 2). This suite does the same on the world's
``cityscapes-like`` train split (:mod:`feds2r.data.partition`, ``--partition``), with Flower's
own strategies in one process (:func:`~feds2r.federation.rounds.run_rounds_in_process`), each
round training a seeded sample of the 19 clients, as FedSeg's public code does.

Stages (each timed): build the world if missing; the partition (``OUT/partition.json``); one
initial model; each row's rounds (``OUT/ROW``: its global model, ``results.json`` with the
measured messages and the mIoU on ``cityscapes-like`` val every few rounds); every row's global
model on ``cityscapes-like`` val (in-domain, as the paper) and the four other real-like test
domains. Writes ``results.json`` (the demo's schema), ``report.md`` with the per-round curves
(the paper's Fig. 4), the communication and the paper's numbers beside the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feds2r.config import write_run_config
from feds2r.data import open_dataset
from feds2r.data.labels import NUM_CLASSES
from feds2r.data.partition import PARTITIONS, Partition, make_partition, part_spec
from feds2r.data.world import REAL_DOMAINS
from feds2r.demo.evaluation import classes_above, evaluate_methods
from feds2r.demo.figures import sample_grid
from feds2r.demo.profiles import PROFILES as DEMO_PROFILES
from feds2r.demo.profiles import WorldSizes
from feds2r.demo.report import (
    communication_table,
    intervals_table,
    per_class_section,
    results_table,
    start_line,
    table_intro,
    write_markdown,
)
from feds2r.demo.results import paired_intervals, results_document, save_confusion, write_results
from feds2r.demo.rows import Row
from feds2r.demo.stages import StageClock, demo_output, save_initial_model, start_record
from feds2r.demo.suite import Suite
from feds2r.demo.world import SERVER_DOMAIN, build_world, open_dev, open_tests, world_spec
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.train import TrainConfig, save_figure
from feds2r.errors import Feds2rError
from feds2r.losses.fedseg import PSEUDO_THRESHOLD
from feds2r.metrics.bootstrap import paired_bootstrap

NAME = "fedseg"
"""The suite's name (``feds2r demo --suite fedseg``)."""

NUM_CLIENTS = NUM_CLASSES
"""19 clients, as the paper's Cityscapes split (K = 19, one or two classes each)."""

ROWS: tuple[Row, ...] = (
    Row("fedavg-ce", NAME, rounds={"method": "fedavg", "loss": "ce"}),
    Row("fedavg-backce", NAME, rounds={"method": "fedavg", "loss": "backce"}),
    Row("fedprox-backce", NAME, rounds={"method": "fedprox", "loss": "backce"}),
    Row("fedseg", NAME, rounds={"method": "fedseg", "loss": "backce"}),
)
"""The paper's Table 1 rows: FedAvg with CE, with BackCE, FedProx with BackCE, FedSeg."""

COMPARISONS = (
    ("fedavg-backce", "fedavg-ce"),
    ("fedseg", "fedavg-backce"),
    ("fedprox-backce", "fedavg-backce"),
)
"""The differences the paper claims, each with a paired bootstrap interval (in-domain and over
the five domains)."""

PAPER: dict[str, dict[str, float | None]] = {
    "noniid1": {"fedavg-ce": 10.40, "fedavg-backce": 45.08, "fedprox-backce": 44.85,
                "fedseg": 50.24},
    "noniid2": {"fedavg-ce": 28.60, "fedavg-backce": 47.67, "fedprox-backce": 47.17,
                "fedseg": 52.18},
    "iid": {"fedavg-ce": 54.12, "fedavg-backce": 53.62, "fedprox-backce": None, "fedseg": 59.08},
}  # fmt: skip
"""The paper's mIoU on Cityscapes val with 19 clients: Table 1(a)/(b) (non-IID) and Table 2
(IID, no FedProx row)."""


@dataclass(frozen=True)
class FedSegProfile:
    """The sizes and budgets of one run of the suite (``--profile``)."""

    name: str
    world: WorldSizes
    """The built-in world (the default profile's is the feds2r suite's, so ``--world`` can
    share one)."""
    preset: str = "seg-effl0"
    """Every model's architecture: a per-pixel preset (BackCE is a per-pixel loss). seg-effl0
    (ImageNet weights) was chosen over segformer-cpu on dev at equal CPU time (docs/fedseg.md)."""
    rounds: int = 8
    """Communication rounds (the public recipe: 1500)."""
    clients_per_round: int = 5
    """Clients drawn each round (the public recipe: ``FRAC_NUM=5``)."""
    local_steps: int = 4
    """Steps of each drawn client per round: two local epochs (``LOCAL_EP=2``) of a client's
    ~21 images in batches of 8 (drop-last)."""
    batch_size: int = 8
    height: int = 64
    crop: tuple[int, int] = (64, 128)
    lr: float = 3e-3
    """AdamW's rate (the backbone's: 0.1 times it): chosen on dev for fedavg-backce among 6e-4
    (the demo's), 3e-3 and 1e-2; four local steps a round need a larger step than 300."""
    warmup_steps: int = 4
    evaluate_every: int = 2
    """Rounds between two points of the per-round curve (the first and last rounds always)."""

    def recipe(self, seed: int, pretrained: bool) -> TrainConfig:
        """The clients' recipe: ``rounds * local_steps`` steps on one schedule (each round a
        window of it, :func:`~feds2r.federation.round_client.round_steps`)."""
        return TrainConfig(
            steps=self.rounds * self.local_steps,
            batch_size=self.batch_size,
            height=self.height,
            crop=self.crop,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            backbone_lr_mult=0.1 if pretrained else 1.0,
            seed=seed,
            checkpoint_every=100,
        )


PROFILES: dict[str, FedSegProfile] = {
    # a smoke test: a world whose cityscapes-like train split still shows all 19 classes
    "quick": FedSegProfile(
        "quick",
        WorldSizes((64, 128), client_images=1, server_images=48, test_images=4, dev_images=4),
        rounds=3,
        clients_per_round=3,
        local_steps=1,
        batch_size=2,
        height=32,
        crop=(32, 64),
        warmup_steps=1,
        evaluate_every=1,
    ),
    # about 5 minutes on 2 CPU cores (docs/fedseg.md, "Measured")
    "default": FedSegProfile("default", DEMO_PROFILES["default"].world),
    "full": FedSegProfile(
        "full",
        DEMO_PROFILES["full"].world,
        rounds=40,
        local_steps=6,
        height=96,
        crop=(96, 192),
        warmup_steps=20,
        evaluate_every=5,
    ),
}
"""The suite's profiles, by the names of ``feds2r demo --profile`` (``imagenet`` is the
default here: the default already starts from ImageNet weights)."""


def get_fedseg_profile(profile: str | FedSegProfile) -> FedSegProfile:
    """``profile`` itself, or the profile of :data:`PROFILES` it names."""
    if isinstance(profile, FedSegProfile):
        return profile
    if profile == "imagenet":
        raise Feds2rError(
            "the fedseg suite's default profile already starts from ImageNet weights (seg-effl0); "
            "use --profile default"
        )
    if profile not in PROFILES:
        raise Feds2rError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[profile]


def run_fedseg(
    profile: str | FedSegProfile,
    out: str | Path,
    *,
    seed: int = 0,
    world: Path | None = None,
    progress: bool = True,
    pretrained: bool = True,
    rows: tuple[Row, ...] = ROWS,
    partition: str = "noniid1",
) -> dict[str, Any]:
    """Run the suite into ``out`` on the ``partition`` (:data:`~feds2r.data.partition.
    PARTITIONS`); returns the results (also ``out/results.json``). The partition, the initial
    model and each round's sample of clients follow ``seed``."""
    profile = get_fedseg_profile(profile)
    if partition not in PARTITIONS:
        raise Feds2rError(f"unknown partition {partition!r}; valid: {', '.join(PARTITIONS)}")
    valid = {r.name for r in ROWS}
    unknown = [r.name for r in rows if r.name not in valid]
    if unknown:
        raise Feds2rError(f"unknown fedseg rows {unknown}; valid: {', '.join(valid)}")
    world = Path(world) if world else Path(out) / "world"
    inputs = {
        "profile": profile.name,
        "seed": seed,
        "world": str(world),
        "pretrained": pretrained,
        "preset": profile.preset,
        "partition": partition,
    }
    with demo_output(out, NAME, inputs) as out:
        return _run(profile, out, seed, world, progress, pretrained, rows, partition)


def _run(
    profile: FedSegProfile,
    out: Path,
    seed: int,
    world: Path,
    progress: bool,
    pretrained: bool,
    rows: tuple[Row, ...],
    kind: str,
) -> dict[str, Any]:
    """:func:`run_fedseg` in its claimed OUT."""
    clock = StageClock(progress)
    recipe = profile.recipe(seed, pretrained)
    write_run_config(
        out, {"fedseg": _settings(profile, seed, world, rows, kind), "clients": recipe}
    )
    with clock("world"):
        build_world(world, profile.world, progress)
    with clock("partition"):
        train_spec = world_spec(world, SERVER_DOMAIN, "train")
        partition = make_partition(train_spec, kind, num_clients=NUM_CLIENTS, seed=seed)
        partition_file = partition.save(out / "partition.json")
        clients = {p.name: part_spec(partition_file, p.name) for p in partition.parts}
    start = start_record(profile.preset, pretrained, "every row starts from this one model")
    with clock("initial_model"):
        save_initial_model(out, profile.preset, seed, start)
    val = open_dataset(world_spec(world, SERVER_DOMAIN, "val"))
    for row in rows:
        with clock(f"rounds:{row.name}"):
            _row(row, out, profile, recipe, clients, train_spec, val, pretrained, progress)
    models = {r.name: load_checkpoint(out / r.name / "global")[0] for r in rows}
    tests, dev = open_tests(world), open_dev(world)
    with clock("evaluation"):
        checkpoints = {r.name: str(out / r.name / "global") for r in rows}
        methods, confusion = evaluate_methods(
            models, tests, dev, profile.height, checkpoints, progress
        )
        for method in methods.values():
            method["classes_above_10"] = classes_above(method, 10.0)
        intervals = paired_intervals(confusion, COMPARISONS, seed)
        intervals.update(_in_domain_intervals(confusion, list(tests), seed))
        confident = confident_pixels(models, val, profile.height)
    save_confusion(out, confusion, list(tests))
    done = {r.name: json.loads((out / r.name / "results.json").read_text()) for r in rows}
    content = {
        "profile": profile.name,
        "seed": seed,
        "domains": list(REAL_DOMAINS),
        "start": start,
        "methods": methods,
        "intervals": intervals,
        "curves": {name: d["curve"].get(SERVER_DOMAIN, []) for name, d in done.items()},
        "communication": _communication(done),
        "fedseg": {
            **_settings(profile, seed, world, rows, kind),
            "partition_file": str(partition_file),
            "in_domain": {name: m["miou"][SERVER_DOMAIN] for name, m in methods.items()},
            "confident_pixels": confident,
            "paper": PAPER[kind],
            "clients": partition.summary(),
            "sampled": {name: [h["clients"] for h in d["history"]] for name, d in done.items()},
        },
    }
    results = results_document(content, clock.summary())
    write_results(out, results)
    with clock("report"):
        _report(results, out, models, tests, profile.height, partition)
    results["timing_s"] = clock.summary()
    write_results(out, results)
    return results


def _settings(
    profile: FedSegProfile, seed: int, world: Path, rows: tuple[Row, ...], kind: str
) -> dict[str, Any]:
    """The run's settings as ``config.toml`` and ``results.json`` record them."""
    return {
        "profile": profile.name,
        "seed": seed,
        "world": str(world),
        "partition": kind,
        "num_clients": NUM_CLIENTS,
        "methods": [r.name for r in rows],
        "preset": profile.preset,
        "rounds": profile.rounds,
        "clients_per_round": profile.clients_per_round,
        "local_steps": profile.local_steps,
        "evaluate_every": profile.evaluate_every,
    }


def _row(
    row: Row,
    out: Path,
    profile: FedSegProfile,
    recipe: TrainConfig,
    clients: Mapping[str, str],
    train_spec: str,
    val: Any,
    pretrained: bool,
    progress: bool,
) -> None:
    """One row's rounds into ``out/ROW``; a finished one with the same settings is reused."""
    from feds2r.federation.config import FederationConfig, RoundsConfig
    from feds2r.federation.rounds import run_rounds_in_process

    target = (out / row.name).resolve()
    fields = dict(row.rounds)
    loss = fields.pop("loss")
    config = FederationConfig(
        out=str(target),
        server_data=train_spec,
        preset=profile.preset,
        min_clients=profile.clients_per_round,
        num_clients=len(clients),
        pretrained=pretrained,
        method=fields.pop("method"),
        multiround=RoundsConfig(rounds=profile.rounds, **fields),
        clients=recipe,
    )
    options = {
        "clients_per_round": profile.clients_per_round,
        "loss": loss,
        "evaluate_every": profile.evaluate_every,
    }
    stamp = {"config": asdict(config), **options, "clients": dict(clients)}
    stamp_file = out / f".{row.name}.json"
    if (target / "results.json").is_file():
        if stamp_file.is_file() and json.loads(stamp_file.read_text()) == _jsonable(stamp):
            return  # finished with these settings: reused
        raise Feds2rError(f"{target} holds a run with other settings; remove it or use another OUT")
    # the global generator (the head's dropout) from the same state for every row: a row's
    # result does not depend on which rows ran before it in this process
    torch.manual_seed(recipe.seed)
    run_rounds_in_process(
        dict(clients),
        config,
        init=out / "init",
        evaluate_on={SERVER_DOMAIN: val},
        log=print if progress else (lambda _text: None),
        **options,
    )
    stamp_file.write_text(json.dumps(_jsonable(stamp), indent=1))


def _jsonable(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _in_domain_intervals(
    confusion: Mapping[str, list[np.ndarray]], domains: list[str], seed: int
) -> dict[str, dict[str, float]]:
    """The paired bootstrap interval of each comparison on ``cityscapes-like`` val alone."""
    k = domains.index(SERVER_DOMAIN)
    return {
        f"{a} - {b} ({SERVER_DOMAIN})": paired_bootstrap(
            [confusion[a][k]], [confusion[b][k]], seed=seed
        )
        for a, b in COMPARISONS
        if a in confusion and b in confusion
    }


@torch.no_grad()
def confident_pixels(
    models: Mapping[str, Any], dataset: Any, height: int, threshold: float = PSEUDO_THRESHOLD
) -> dict[str, float]:
    """Per model, the share (%) of ``dataset``'s pixels (at ``height``, the decoder's
    resolution) whose highest class probability is at least ``threshold``: how much of a
    client's background FedSeg's pseudo-labels (θ = 0.8) could fill, hence how many negatives
    its contrast gets from such a global model."""
    cache = ResizedCache(dataset, height, with_labels=False, progress=False)
    shares = {}
    for name, model in models.items():
        model.eval()
        confident = total = 0
        for start in range(0, len(cache), 16):
            out = model(torch.stack(cache.images[start : start + 16]))
            top = out.semantic_probs(tuple(out.features.shape[-2:])).amax(1)  # (B, h, w)
            confident += int((top >= threshold).sum())
            total += top.numel()
        shares[name] = round(100.0 * confident / total, 2)
    return shares


def _communication(done: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Each row's measured messages (its results.json), in the demo's communication schema."""
    table: dict[str, Any] = {"measured": True}
    for name, result in done.items():
        comm = result["communication"]
        table[name] = {"rounds": comm["rounds"], **comm["total"]}
    return table


# ----------------------------------------------------------------------------- the report


def plot_round_curves(curves: Mapping[str, list[list[float]]], dest: Path) -> None:
    """mIoU on cityscapes-like val against the round, one line per row (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name)
    ax.set_xlabel("communication round")
    ax.set_ylabel(f"mIoU on {SERVER_DOMAIN} val (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, dest)


def in_domain_table(results: Mapping[str, Any]) -> str:
    """Markdown: each row's in-domain mIoU beside the paper's, and the mean over five domains."""
    fedseg = results["fedseg"]
    kind = fedseg["partition"]
    lines = [
        f"| method | {SERVER_DOMAIN} val (in-domain) | paper, Cityscapes val ({kind}) | "
        "mean of 5 domains |",
        "|---|---:|---:|---:|",
    ]
    for name, row in results["methods"].items():
        paper = fedseg["paper"].get(name)
        cited = "-" if paper is None else f"{paper:.2f}"
        lines.append(
            f"| {name} | **{fedseg['in_domain'][name]:.1f}** | {cited} | {row['mean']:.1f} |"
        )
    return "\n".join(lines)


def _partition_section(results: Mapping[str, Any], partition: Partition) -> tuple[str, str]:
    fedseg = results["fedseg"]
    lines = ["| client | images | classes |", "|---|---:|---|"]
    for name, info in partition.summary().items():
        classes = ", ".join(info["classes"]) if len(info["classes"]) < NUM_CLASSES else "all 19"
        lines.append(f"| {name} | {info['images']} | {classes} |")
    return (
        "Partition",
        f"`{fedseg['partition']}` of {SERVER_DOMAIN} train into {NUM_CLIENTS} clients (seed "
        f"{fedseg['seed']}; `partition.json`): each client's images and the classes it "
        "annotates;\nevery other class is background in its labels (docs/fedseg.md).\n\n"
        + "\n".join(lines),
    )


def _report(
    results: Mapping[str, Any],
    out: Path,
    models: Mapping[str, Any],
    tests: Mapping[str, Any],
    height: int,
    partition: Partition,
) -> None:
    """``report.md`` with its figures: the per-round curves and sample predictions."""
    plot_round_curves(results["curves"], out / "curves.png")
    sample_grid(models, tests, out / "samples.png", height)
    fedseg = results["fedseg"]
    head = (
        f"{table_intro(results)}\n\nFedSeg suite: {NUM_CLIENTS} clients on the `{SERVER_DOMAIN}` "
        f"train split, partition `{fedseg['partition']}`; {fedseg['rounds']} rounds of "
        f"{fedseg['clients_per_round']} clients drawn per round, {fedseg['local_steps']} local "
        f"steps each; preset `{fedseg['preset']}`.\nStarting point: {start_line(results['start'])}"
        f"\n\nIn-domain, as the paper (its numbers on real Cityscapes beside ours, not comparable "
        f"in scale):\n\n{in_domain_table(results)}\n\nEvery test domain:\n\n"
        f"{results_table(results)}"
    )
    sections = [
        (
            "Paired differences",
            "Paired bootstrap over test images (1,000 replicates, the same draw for both rows), "
            f"on {SERVER_DOMAIN} val alone and over the five domains; one seed — claims need the "
            f"spread over seeds too (docs/results.md).\n\n{intervals_table(results)}",
        ),
        (
            "mIoU per round (the paper's Fig. 4)",
            f"The global model on {SERVER_DOMAIN} val after each evaluated round.\n\n"
            "![curves](curves.png)",
        ),
        (
            "How confident the global models are",
            "FedSeg's contrast takes its negatives from the global model's pseudo-labels on a "
            f"client's background (probability ≥ {PSEUDO_THRESHOLD}); a global model that is "
            "seldom that sure leaves `L_con` with few or no negatives. Share of "
            f"{SERVER_DOMAIN} val pixels each final global model predicts at ≥ "
            f"{PSEUDO_THRESHOLD}: "
            + ", ".join(f"{k} {v:.1f} %" for k, v in fedseg["confident_pixels"].items())
            + ".",
        ),
        (
            "Communication",
            "What each row moved (serialized Flower messages, drawn clients, both directions)."
            f"\n\n{communication_table(results)}",
        ),
        per_class_section(results),
        _partition_section(results, partition),
        (
            "Sample predictions",
            "Rows: one test image per domain; columns: image, ground truth, then each row."
            "\n\n![samples](samples.png)",
        ),
    ]
    write_markdown(
        results, out, head=head, sections=sections, title="feds2r demo report (fedseg suite)"
    )


SUITE = Suite(
    NAME,
    "FedSeg in its own setting: 19 class-heterogeneous clients (fedavg-ce, fedavg-backce, "
    "fedprox-backce, fedseg; --partition noniid1|noniid2|iid)",
    run_fedseg,
    ROWS,
    partitions=PARTITIONS,
)
"""The suite's entry of :data:`feds2r.demo.suites.SUITES`."""

__all__ = [
    "COMPARISONS",
    "NAME",
    "PAPER",
    "PROFILES",
    "ROWS",
    "SUITE",
    "FedSegProfile",
    "get_fedseg_profile",
    "in_domain_table",
    "plot_round_curves",
    "run_fedseg",
]
