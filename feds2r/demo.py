"""`feds2r demo`: the whole one-shot federation on the built-in world, with its baselines.

Stages (each timed): build the world if missing; the server creates one initial model; each
client trains it on its synthetic domain; the server measures the clients' inconsistency on its
unlabelled real images, generates images of the unstable classes, and distils; every method is
evaluated on the five real-like test domains. Writes ``results.json`` (schema in
``docs/demo.md``), ``report.md`` and its figures, every checkpoint and ``config.toml``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feds2r.client import supervised_step, train_client
from feds2r.config import to_toml
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
from feds2r.server import UnstableRule, measure_inconsistency, plot_inconsistency
from feds2r.server.diagnostics import premise_diagnostics
from feds2r.server.distill import DistillConfig, fedavg, run_distill
from feds2r.server.generators import BuiltinGenerator, generate_dataset
from feds2r.server.prompts import builtin_prompts, prompt_counts


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run."""

    name: str
    size: tuple[int, int]
    """Image size of the built-in world (H, W)."""
    client_images: int
    server_images: int
    test_images: int
    """Per real-like test domain (ACDC: divided over its four conditions)."""
    generated_images: int
    client_steps: int
    distill_steps: int
    batch_size: int = 8
    height: int = 128
    crop: tuple[int, int] = (128, 256)
    preset: str = "m2f-cpu"
    warmup_steps: int = 50
    dev_images: int = 60
    """Labelled `dev` images of the server's domain: learning curves and every choice made on
    the demo's results are read from them, never from the test domains."""
    curve_every: int = 150
    """Steps between two points of a learning curve (dev mIoU)."""


PROFILES: dict[str, Profile] = {
    "quick": Profile(
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
    "default": Profile(
        "default", (128, 256), 400, 400, 80, 150, 300, 300, height=96, crop=(96, 192)
    ),
    "full": Profile(
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

METHODS = (
    "fedavg-oneshot",
    "ensemble",
    "feddf",
    "feds2r",
    "feds2r-no-aug",
    "feds2r-no-fusion",
    "upper-bound-1x",
    "upper-bound",
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
)


class Ensemble:
    """Averaged client predictions at test time (a reference, not a single model)."""

    def __init__(self, models: list) -> None:
        self.models = models

    @torch.no_grad()
    def predict(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return torch.stack([m.predict(images, size) for m in self.models]).mean(0)


def _spec(world: Path, domain: str, split: str) -> str:
    return f"{DOMAINS[domain].format}:{world / domain}?split={split}"


def build_world(world: Path, profile: Profile, progress: bool) -> dict:
    """Write the profile's world into ``world`` unless a matching one is already there."""
    want = {
        "size": list(profile.size),
        "client_images": profile.client_images,
        "server_images": profile.server_images,
        "test_images": profile.test_images,
        "dev_images": profile.dev_images,
    }
    stamp = world / "demo_world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return want
    plan = [(d, "train", profile.client_images) for d in SYNTHETIC_DOMAINS]
    plan += [("cityscapes-like", "train", profile.server_images)]
    plan += [("cityscapes-like", "dev", profile.dev_images)]
    plan += [(d, "val", profile.test_images) for d in REAL_DOMAINS]
    for domain, split, num in plan:
        synth_domain(
            domain,
            world / domain,
            split=split,
            num=num,
            size=profile.size,
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


def run_demo(
    profile: str | Profile,
    out: str | Path,
    *,
    seed: int = 0,
    world: Path | None = None,
    progress: bool = True,
    pretrained: bool = True,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the results dict (also ``out/results.json``).

    ``pretrained``: every model starts from the backbone feds2r ships for the preset (pretrained
    on the world's `public` domain, docs/models.md); False: from random weights.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise Feds2rError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = Path(world) if world else out / "world"
    timing: dict[str, float] = {}
    tcfg = TrainConfig(
        steps=profile.client_steps,
        batch_size=profile.batch_size,
        height=profile.height,
        crop=profile.crop,
        seed=seed,
        warmup_steps=profile.warmup_steps,
        checkpoint_every=100,
        backbone_lr_mult=0.1 if pretrained else 1.0,
    )
    dcfg_train = dataclasses.replace(tcfg, steps=profile.distill_steps)
    start = {
        "pretrained": pretrained,
        "backbone": str(shipped_weights(profile.preset)) if pretrained else "random",
        "rows": "every row (clients, upper bounds, FedAvg, FedDF, every FedS2R row) starts from "
        "this one initial model",
    }
    write_atomic(
        out / "config.toml",
        to_toml(
            {
                "demo": {
                    "profile": profile.name,
                    "seed": seed,
                    "world": str(world),
                    "methods": list(METHODS),
                    "pretrained": pretrained,
                },
                "profile": profile,
                "client_train": tcfg,
                "distill_train": dcfg_train,
                "distill": DistillConfig(student=profile.preset),
            }
        ).encode(),
    )

    @contextmanager
    def stage(name: str):
        if progress:
            print(f"== {name}", flush=True)
        begin = time.perf_counter()
        yield
        timing[name] = round(time.perf_counter() - begin, 2)

    with stage("world"):
        build_world(world, profile, progress)
    dev = open_dataset(_spec(world, "cityscapes-like", "dev"))
    runs = {f"client:{d}": tcfg.steps for d in SYNTHETIC_DOMAINS}
    runs |= {"upper-bound-1x": tcfg.steps, "upper-bound": tcfg.steps * len(SYNTHETIC_DOMAINS)}
    runs |= {m: dcfg_train.steps for m in METHODS if m.startswith(("feds2r", "feddf"))}
    curves = DevCurves(dev, profile.height, profile.curve_every, runs)
    with stage("initial_model"):
        torch.manual_seed(seed)
        init = create_model(profile.preset, backbone_weights=PUBLIC if pretrained else None)
        save_checkpoint(init, out / "init", meta={"role": "initial", "start": start})
    clients = {}
    with stage("clients"):
        for domain in SYNTHETIC_DOMAINS:
            path = out / "clients" / domain
            train_client(
                _spec(world, domain, "train"),
                profile.preset,
                path,
                tcfg,
                init=out / "init",
                progress=progress,
                on_step=curves.hook(f"client:{domain}"),
            )
            clients[domain] = path
    with stage("upper_bound"):
        # one model on all clients' data together: with one client's budget (1x) and with all
        # clients' budgets together (3x), so that a reader sees how much is optimisation length
        data = None
        for domain in SYNTHETIC_DOMAINS:
            part = ResizedCache(
                open_dataset(_spec(world, domain, "train")), tcfg.height, progress=False
            )
            data = part if data is None else data.extend(part)
        for name, factor in (("upper-bound-1x", 1), ("upper-bound", len(SYNTHETIC_DOMAINS))):
            model, _ = load_checkpoint(out / "init")
            model = model.train().requires_grad_(True)
            hook = curves.hook(name)
            train(
                model,
                supervised_step,
                data,
                dataclasses.replace(tcfg, steps=tcfg.steps * factor),
                out / name,
                meta={"role": name},
                progress=progress,
                on_step=lambda step, m=model, h=hook: h(m, step),
            )
    with stage("fedavg"):
        save_checkpoint(
            fedavg([load_checkpoint(p)[0] for p in clients.values()]),
            out / "fedavg-oneshot",
            meta={"role": "fedavg-oneshot"},
        )
    server_spec = _spec(world, "cityscapes-like", "train")
    with stage("inconsistency"):
        teachers = [load_checkpoint(p)[0] for p in clients.values()]
        server_images = open_dataset(server_spec, labels=False)
        inc = measure_inconsistency(
            teachers,
            server_images,
            rule=UnstableRule(),
            height=profile.height,
            progress=progress,
            names=list(clients),
        )
        report = inc.to_dict()
        write_atomic(out / "inconsistency.json", json.dumps(report, indent=2).encode())
        plot_inconsistency(inc, out / "inconsistency.png")
    with stage("premise"):
        sample = ResizedCache(
            torch.utils.data.Subset(server_images, range(min(32, len(server_images)))),
            profile.height,
            with_labels=False,
            progress=False,
        )
        premise = premise_diagnostics(
            dict(zip(clients, teachers, strict=True)),
            load_checkpoint(out / "init")[0],
            load_checkpoint(out / "fedavg-oneshot")[0],
            torch.stack(sample.images),
        )
    with stage("augmentation"):
        counts = prompt_counts(inc.scores, inc.unstable, profile.generated_images)
        gen = generate_dataset(
            builtin_prompts(counts, seed=seed),
            BuiltinGenerator(),
            out / "generated",
            size=profile.size,
            seed=seed,
            progress=progress,
        )
    variants = {
        # FedDF gets the same student initialisation rule as FedS2R: only the objective, the
        # fusion and the generated images differ
        "feddf": (
            DistillConfig(student=profile.preset, kd="pixel", feature_fusion=False, combine="mean"),
            False,
        ),
        # FedS2R as published: feature fusion on (not the library's default, which the dev split
        # chose; docs/method.md), with the generated images
        "feds2r": (DistillConfig(student=profile.preset, feature_fusion=True), True),
        "feds2r-no-aug": (DistillConfig(student=profile.preset, feature_fusion=True), False),
        "feds2r-no-fusion": (DistillConfig(student=profile.preset, feature_fusion=False), True),
    }
    for name, (dcfg, with_gen) in variants.items():
        with stage(f"distill:{name}"):
            run_distill(
                list(clients.values()),
                server_spec,
                out / name,
                dcfg,
                dcfg_train,
                generated=gen["spec"] if with_gen else None,
                inconsistency=report,
                progress=progress,
                on_step=curves.hook(name),
            )

    models = {f"client:{d}": load_checkpoint(p)[0] for d, p in clients.items()}
    models["ensemble"] = Ensemble(list(models.values()))
    student_init = {}
    for name in METHODS:
        if name != "ensemble":
            models[name], meta = load_checkpoint(out / name)
            if meta.get("student_init"):
                student_init[name] = meta["student_init"]
    tests = {d: open_dataset(_spec(world, d, "val")) for d in REAL_DOMAINS}
    methods: dict[str, Any] = {}
    confusion: dict[str, list[np.ndarray]] = {}
    with stage("evaluation"):
        for name, model in models.items():
            row: dict[str, Any] = {"miou": {}, "per_class": {}}
            confusion[name] = []
            for domain, ds in tests.items():
                r = evaluate(model, ds, height=profile.height, progress=False, per_image=True)
                row["miou"][domain] = r["miou"]
                row["per_class"][domain] = list(r["per_class"].values())
                confusion[name].append(r["per_image_confusion"])
            row["mean"] = float(np.mean(list(row["miou"].values())))
            row["dev"] = evaluate(model, dev, height=profile.height, progress=False)["miou"]
            ckpt = (
                None
                if name == "ensemble"
                else str(clients[name.split(":")[1]] if name.startswith("client:") else out / name)
            )
            row["checkpoint"] = ckpt
            methods[name] = row
            if progress:
                print(f"{name:<20} mean mIoU {row['mean']:.2f}", flush=True)
        # the single-client rows: one chosen with the test labels (an oracle no server has), one
        # chosen as a real server can, without labels (the client agreeing most with the ensemble
        # on the server's images)
        names = [f"client:{d}" for d in clients]
        oracle = max(names, key=lambda n: methods[n]["mean"])
        agreement = premise["client_agreement"]
        free = "client:" + max(agreement, key=lambda d: agreement[d])
        for row_name, pick, how in (
            (ORACLE, oracle, "the client with the best mean test mIoU (uses test labels)"),
            (LABEL_FREE, free, "the client agreeing most with the ensemble on server images"),
        ):
            methods[row_name] = {**methods[pick], "picked": pick, "how": how}
            confusion[row_name] = confusion[pick]
        for row in methods.values():
            row["classes_above_10"] = classes_above(row, 10.0)
        intervals = {
            f"{a} - {b}": paired_bootstrap(confusion[a], confusion[b], seed=seed)
            for a, b in COMPARISONS
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
        "curves": curves.curves,
        "unstable_classes": inc.unstable,
        "inconsistency": inc.scores,
        "generated": gen,
        "student_init": student_init,
        "timing_s": {**timing, "total": round(sum(timing.values()), 2)},
        "environment": environment(),
    }
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    with stage("report"):
        write_report(results, out, models, tests, profile)
    results["timing_s"]["report"] = timing["report"]
    results["timing_s"]["total"] = round(sum(v for k, v in timing.items()), 2)
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    return results


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


def write_report(results: dict, out: Path, models: dict, tests: dict, profile: Profile) -> None:
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
    sample_grid(models, tests, out / "samples.png", profile)
    plot_curves(results.get("curves", {}), out / "curves.png")
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
{agree}. Ensemble {results["methods"]["ensemble"]["mean"]:.1f} vs best client
{results["methods"][ORACLE]["mean"]:.1f}.

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


def sample_grid(models: dict, tests: dict, dest: Path, profile: Profile) -> None:
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
            probs = predict_probs(
                models[name], item["image"][None], height=profile.height, out_size=(h, w)
            )
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
