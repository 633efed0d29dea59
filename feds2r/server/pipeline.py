"""The whole server side of FedS2R as one plain function: inconsistency, augmentation,
distillation and (optionally) evaluation, from client checkpoints already on disk.

The Flower ServerApp (``feds2r.federation``) and the in-process federation both call
:func:`run_server_pipeline`; nothing here knows about the transport.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feds2r.engine.train import TrainConfig
from feds2r.io import write_atomic
from feds2r.server.distill import DistillConfig


@dataclass(frozen=True)
class ServerPipelineConfig:
    """What the server does with the client models it received."""

    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    """The distillation's training recipe (steps, batch, image height, seed …)."""
    generated_images: int = 150
    """Images generated for the unstable classes; 0 skips augmentation."""
    generator: str = "builtin"
    generator_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the generator (e.g. ``{"model": DIR}`` for ``diffusers``)."""


def run_server_pipeline(
    clients: dict[str, str | Path],
    server_data: str,
    out: str | Path,
    config: ServerPipelineConfig,
    *,
    evaluate_on: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Distil the client checkpoints ``clients`` (name -> folder) into ``out/global``.

    ``server_data``: the server's unlabelled images (a dataset spec; labels are never read).
    ``evaluate_on``: optional name -> labelled dataset spec on which the global model is scored.
    Writes ``out/inconsistency.json`` (+ chart), ``out/generated/`` and ``out/global/``; returns
    a summary (also the caller's to write). With a single client there is no disagreement to
    measure: inconsistency and augmentation are skipped and the one teacher is distilled.
    """
    from feds2r.data import open_dataset
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.engine.evaluate import evaluate
    from feds2r.server import UnstableRule, measure_inconsistency, plot_inconsistency
    from feds2r.server.distill import run_distill
    from feds2r.server.generators import generate_dataset, make_generator
    from feds2r.server.prompts import builtin_prompts, prompt_counts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(clients)
    server = open_dataset(server_data, labels=False)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    report: dict[str, Any] | None = None
    unstable: list[str] = []
    scores_inc: dict[str, float | None] = {}
    if len(names) >= 2:
        teachers = [load_checkpoint(clients[n])[0] for n in names]
        inc = measure_inconsistency(
            teachers,
            server,
            rule=UnstableRule(),
            height=config.train.height,
            progress=progress,
            names=names,
        )
        report = inc.to_dict()
        unstable, scores_inc = inc.unstable, inc.scores
        write_atomic(out / "inconsistency.json", json.dumps(report, indent=2).encode())
        plot_inconsistency(inc, out / "inconsistency.png")
        del teachers
    timing["inconsistency"] = round(time.perf_counter() - start, 2)

    generated = None
    if config.generated_images > 0 and unstable:
        start = time.perf_counter()
        counts = prompt_counts(scores_inc, unstable, config.generated_images)
        first = server[0]["image"]
        generated = generate_dataset(
            builtin_prompts(counts, seed=config.train.seed),
            make_generator(config.generator, **config.generator_options),
            out / "generated",
            size=tuple(first.shape[-2:]),
            seed=config.train.seed,
            progress=progress,
        )
        timing["augmentation"] = round(time.perf_counter() - start, 2)

    start = time.perf_counter()
    run_distill(
        [clients[n] for n in names],
        server_data,
        out / "global",
        config.distill,
        config.train,
        generated=generated["spec"] if generated else None,
        inconsistency=report,
        progress=progress,
    )
    timing["distill"] = round(time.perf_counter() - start, 2)

    scores: dict[str, float] = {}
    if evaluate_on:
        start = time.perf_counter()
        model, _ = load_checkpoint(out / "global")
        for name, spec in evaluate_on.items():
            r = evaluate(model, open_dataset(spec), height=config.train.height, progress=False)
            scores[name] = r["miou"]
        timing["evaluation"] = round(time.perf_counter() - start, 2)
    return {
        "clients": names,
        "global_model": str(out / "global"),
        "unstable_classes": unstable,
        "inconsistency": scores_inc,
        "generated": generated,
        "miou": scores,
        "mean_miou": float(np.mean(list(scores.values()))) if scores else None,
        "timing_s": timing,
    }
