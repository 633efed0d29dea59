"""What each federated row of a demo moved, measured as the serialized Flower messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from feds2r.data.world import REAL_DOMAINS
from feds2r.demo.flower import one_shot_bytes
from feds2r.demo.rows import Row
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.train import TrainConfig
from feds2r.federation.config import FederationConfig, without_local


def communication(
    rows: tuple[Row, ...], out: Path, teachers: Mapping[str, Any], recipe: TrainConfig, preset: str
) -> dict[str, Any]:
    """What each federated row moved: the one exchange of the one-shot rows (the initial model
    ``out/init`` and the settings to each client, each client's model of ``teachers`` and its
    metadata back; the server's own stages move nothing), the rounds of the multi-round rows
    (their results.json); the upper bounds pool the data and are not federations."""
    if one_shot_bytes is None:
        return {"measured": False, "why": "Flower is not installed (pip install 'feds2r[flower]')"}
    # a client machine's own choices (device, threads, loader, workers) are never sent
    config = FederationConfig(
        out=str(out.resolve()), server_data="-", preset=preset, clients=without_local(recipe)
    )
    down, up = one_shot_bytes(load_checkpoint(out / "init")[0], teachers, config)
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
