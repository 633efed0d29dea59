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
from feds2r.data.world.writers import write_atomic
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.evaluate import evaluate
from feds2r.engine.train import TrainConfig, train
from feds2r.errors import Feds2rError
from feds2r.models import create_model
from feds2r.server import UnstableRule, measure_inconsistency, plot_inconsistency
from feds2r.server.distill import DistillConfig, fedavg, run_distill
from feds2r.server.generators import BuiltinGenerator, augment
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
    ),
    # training at height 96 keeps the whole default run within 15 minutes on a 2-core CPU
    # (200 steps at height 128 did too, but left the clients at 4-8 mIoU: docs/results.md)
    "default": Profile(
        "default", (128, 256), 400, 400, 80, 150, 300, 300, height=96, crop=(96, 192)
    ),
    "full": Profile("full", (256, 512), 800, 600, 200, 300, 1000, 1000, warmup_steps=100),
}

METHODS = (
    "fedavg-oneshot",
    "ensemble",
    "feddf",
    "feds2r",
    "feds2r-no-aug",
    "feds2r-no-fusion",
    "upper-bound",
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
    }
    stamp = world / "demo_world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return want
    plan = [(d, "train", profile.client_images) for d in SYNTHETIC_DOMAINS]
    plan += [("cityscapes-like", "train", profile.server_images)]
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
        )
    write_atomic(stamp, json.dumps(want).encode())
    return want


def run_demo(
    profile: str | Profile,
    out: str | Path,
    *,
    seed: int = 0,
    world: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the results dict (also ``out/results.json``)."""
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
    )
    dcfg_train = dataclasses.replace(tcfg, steps=profile.distill_steps)
    write_atomic(
        out / "config.toml",
        to_toml(
            {
                "demo": {
                    "profile": profile.name,
                    "seed": seed,
                    "world": str(world),
                    "methods": list(METHODS),
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
        start = time.perf_counter()
        yield
        timing[name] = round(time.perf_counter() - start, 2)

    with stage("world"):
        build_world(world, profile, progress)
    with stage("initial_model"):
        torch.manual_seed(seed)
        save_checkpoint(create_model(profile.preset), out / "init", meta={"role": "initial"})
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
            )
            clients[domain] = path
    with stage("upper_bound"):
        # one model on all clients' data together, with the clients' total budget: the same
        # recipe and as many steps as all clients together
        ub_cfg = dataclasses.replace(tcfg, steps=tcfg.steps * len(SYNTHETIC_DOMAINS))
        data = None
        for domain in SYNTHETIC_DOMAINS:
            part = ResizedCache(
                open_dataset(_spec(world, domain, "train")), tcfg.height, progress=False
            )
            data = part if data is None else data.extend(part)
        model, _ = load_checkpoint(out / "init")
        train(
            model.train().requires_grad_(True),
            supervised_step,
            data,
            ub_cfg,
            out / "upper-bound",
            meta={"role": "upper-bound"},
            progress=progress,
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
        inc = measure_inconsistency(
            teachers,
            open_dataset(server_spec, labels=False),
            rule=UnstableRule(),
            height=profile.height,
            progress=progress,
            names=list(clients),
        )
        report = inc.to_dict()
        write_atomic(out / "inconsistency.json", json.dumps(report, indent=2).encode())
        plot_inconsistency(inc, out / "inconsistency.png")
    with stage("augmentation"):
        counts = prompt_counts(inc.scores, inc.unstable, profile.generated_images)
        gen = augment(
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
        "feds2r": (DistillConfig(student=profile.preset), True),
        "feds2r-no-aug": (DistillConfig(student=profile.preset), False),
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
    with stage("evaluation"):
        for name, model in models.items():
            row = {"miou": {}, "per_class": {}}
            for domain, ds in tests.items():
                r = evaluate(model, ds, height=profile.height, progress=False)
                row["miou"][domain] = r["miou"]
                row["per_class"][domain] = list(r["per_class"].values())
            row["mean"] = float(np.mean(list(row["miou"].values())))
            ckpt = (
                None
                if name == "ensemble"
                else str(clients[name.split(":")[1]] if name.startswith("client:") else out / name)
            )
            row["checkpoint"] = ckpt
            methods[name] = row
            if progress:
                print(f"{name:<20} mean mIoU {row['mean']:.2f}", flush=True)
    results = {
        "profile": profile.name,
        "seed": seed,
        "domains": list(REAL_DOMAINS),
        "methods": methods,
        "unstable_classes": inc.unstable,
        "inconsistency": inc.scores,
        "generated": gen,
        "student_init": student_init,
        "timing_s": {**timing, "total": round(sum(timing.values()), 2)},
    }
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    with stage("report"):
        write_report(results, out, models, tests, profile)
    results["timing_s"]["report"] = timing["report"]
    results["timing_s"]["total"] = round(sum(v for k, v in timing.items()), 2)
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    return results


def results_table(results: dict) -> str:
    doms = results["domains"]
    lines = ["| method | " + " | ".join(doms) + " | mean |", "|---|" + "---:|" * (len(doms) + 1)]
    for name, row in results["methods"].items():
        cells = " | ".join(f"{row['miou'][d]:.1f}" for d in doms)
        lines.append(f"| {name} | {cells} | **{row['mean']:.1f}** |")
    return "\n".join(lines)


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
    inc = results["inconsistency"]
    inc_line = ", ".join(
        f"{k} {v:.2f}"
        for k, v in sorted(
            ((k, v) for k, v in inc.items() if v is not None), key=lambda kv: -kv[1]
        )[:8]
    )
    text = f"""# feds2r demo report

Profile `{results["profile"]}`, seed {results["seed"]}. mIoU (%) on the five real-like test domains
of the built-in world; `mean` is their mean. `ensemble` averages the clients' predictions at test
time (a reference, not a single model).

{results_table(results)}

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
