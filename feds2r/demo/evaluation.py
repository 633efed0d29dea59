"""Every method of a demo on the test domains: mIoU per domain, per class and per image (for the
paired intervals), dev mIoU, size and inference speed; the two single-client rows."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from feds2r.engine.evaluate import evaluate, resize_images
from feds2r.server.teachers import TeacherEnsemble

ORACLE, LABEL_FREE = "best-client (oracle)", "client (label-free pick)"
"""The single-client rows: the client with the best mean test mIoU (picked with the test labels,
which no server has) and the client a server picks without labels."""


def parameter_count(model: Any) -> int:
    """Parameters of a model, or of all teachers of an ensemble."""
    if isinstance(model, TeacherEnsemble):
        return sum(parameter_count(t) for t in model.teachers)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inference_speed(model: Any, tests: Mapping[str, Any], height: int, repeats: int = 5) -> float:
    """Median images per second of ``model`` on one batch of 8 test images at ``height`` (after
    a warm-up), over ``repeats`` timings: a figure beside the mIoU; ``scripts/bench_models.py``
    is the benchmark."""
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


def class_means(row: Mapping[str, Any], domains: list[str] | None = None) -> np.ndarray:
    """Per-class IoU of a method's row, mean over ``domains`` (default all) where the class is
    present; NaN for a class absent from all of them. Shape (num_classes,)."""
    per = row["per_class"]
    vals = np.array(
        [[np.nan if v is None else v for v in per[d]] for d in (domains or per)], dtype=float
    )
    with warnings.catch_warnings():  # a class absent from every domain stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(vals, axis=0)


def classes_above(row: Mapping[str, Any], threshold: float) -> int:
    """How many classes score above ``threshold`` IoU (mean over the domains where present)."""
    return int(np.sum(class_means(row) > threshold))


def evaluate_methods(
    models: Mapping[str, Any],
    tests: Mapping[str, Any],
    dev: Any,
    height: int,
    checkpoints: Mapping[str, str | None],
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[np.ndarray]]]:
    """Each model's row of ``results.json`` (``methods``; its checkpoint from ``checkpoints``)
    and its per-image confusion matrices, one (N, C, C) array per test domain."""
    methods: dict[str, dict[str, Any]] = {}
    confusion: dict[str, list[np.ndarray]] = {}
    speeds: dict[str, float] = {}  # one timing per preset
    for name, model in models.items():
        row: dict[str, Any] = {"miou": {}, "per_class": {}}
        confusion[name] = []
        for domain, ds in tests.items():
            r = evaluate(model, ds, height=height, progress=False, per_image=True)
            row["miou"][domain] = r["miou"]
            row["per_class"][domain] = list(r["per_class"].values())
            confusion[name].append(r["per_image_confusion"])
        row["mean"] = float(np.mean(list(row["miou"].values())))
        row["dev"] = evaluate(model, dev, height=height, progress=False)["miou"]
        row["parameters"] = parameter_count(model)
        if isinstance(model, torch.nn.Module):
            preset = model.preset.name
            if preset not in speeds:
                speeds[preset] = inference_speed(model, tests, height)
            row["preset"] = preset
            row["inference_img_s"] = speeds[preset]
        row["checkpoint"] = checkpoints[name]
        methods[name] = row
        if progress:
            print(f"{name:<20} mean mIoU {row['mean']:.2f}", flush=True)
    return methods, confusion


def add_single_client_rows(
    methods: dict[str, dict[str, Any]],
    confusion: dict[str, list[np.ndarray]],
    clients: list[str],
    agreement: Mapping[str, float],
) -> None:
    """Add the rows :data:`ORACLE` (the client with the best mean test mIoU: an oracle no server
    has) and :data:`LABEL_FREE` (the client agreeing most with the ensemble on the server's
    images, ``agreement`` by client: what a real server can pick) to ``methods`` and
    ``confusion``; ``clients`` are the clients' method names (``client:<name>``)."""
    oracle = max(clients, key=lambda n: methods[n]["mean"])
    free = "client:" + max(agreement, key=lambda d: agreement[d])
    for row_name, pick, how in (
        (ORACLE, oracle, "the client with the best mean test mIoU (uses test labels)"),
        (LABEL_FREE, free, "the client agreeing most with the ensemble on server images"),
    ):
        methods[row_name] = {**methods[pick], "picked": pick, "how": how}
        confusion[row_name] = confusion[pick]
