"""The report's figures: learning curves, mIoU against megabytes moved, sample predictions."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from feds2r.data.labels import colorize
from feds2r.engine.evaluate import predict_probs
from feds2r.engine.train import save_figure
from feds2r.io import write_atomic


def _axes(size: tuple[float, float]) -> tuple[Any, Any]:
    """A new figure and its axes on matplotlib's file backend."""
    # imported and switched to Agg here, when a figure is drawn: importing the demo leaves
    # matplotlib's global backend alone
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def plot_curves(curves: Mapping[str, list[list[float]]], dest: Path) -> None:
    """Dev mIoU against training step, one line per training run."""
    fig, ax = _axes((7, 4))
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, dest)


def plot_communication(results: Mapping[str, Any], dest: Path) -> None:
    """Mean test mIoU against the megabytes each federated method moved: one point per one-shot
    method, one curve over the rounds per multi-round method."""
    comm = results.get("communication", {})
    fig, ax = _axes((7, 4))
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


def sample_grid(
    models: Mapping[str, Any], tests: Mapping[str, Any], dest: Path, height: int
) -> None:
    """One row per test domain: image, ground truth, each method's prediction (labelled)."""
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
