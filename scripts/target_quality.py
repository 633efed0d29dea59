"""How good are the distillation targets? Each way of combining the teachers, used as a test-time
predictor, scored on the server domain's labelled dev split (``--on dev``, the default: where
choices are made) or on the five real-like test domains (``--on test``: only to report).

RUN is a folder prepared by scripts/distill_variants.py (``world``, ``clients`` and
``inconsistency.json``). The server images (for the feature aligner and the agreement) are the
world's CITYSCAPES-like train split, as in the demo; the labels of the test splits are read only
to score. A student distilled from a target rarely ends far above that target's own score, so this
bounds what a combination rule can give before any distillation is run.

    python scripts/target_quality.py runs/exp96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from feds2r.data import open_dataset
from feds2r.data.world import REAL_DOMAINS, SYNTHETIC_DOMAINS
from feds2r.demo import PROFILES, world_spec
from feds2r.engine.data import ResizedCache
from feds2r.engine.evaluate import evaluate
from feds2r.server.pipeline import load_clients
from feds2r.server.teachers import (
    TeacherEnsemble,
    agreement_weights,
    ensemble_agreement,
    fit_aligner,
    most_agreeing,
    sample_batches,
)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a demo or distill_variants output folder")
    parser.add_argument(
        "--on",
        choices=("dev", "test"),
        default="dev",
        help="score on the server domain's labelled dev split (default: where choices are made) "
        "or on the five test domains (only to report a choice already made)",
    )
    args = parser.parse_args()
    height = PROFILES["default"].clients.height
    run, world = args.run, args.run / "world"
    clients = load_clients({d: run / "clients" / d for d in SYNTHETIC_DOMAINS})
    teachers = list(clients.values())
    server = ResizedCache(
        open_dataset(world_spec(world, "cityscapes-like", "train"), labels=False),
        height,
        with_labels=False,
        progress=False,
    )
    batches = sample_batches(server, 32)
    aligner = fit_aligner(teachers, batches)
    agree = ensemble_agreement(teachers, batches)
    most = most_agreeing(agree)
    report = json.loads((run / "inconsistency.json").read_text())
    rules = {f"{d} alone": TeacherEnsemble([t]) for d, t in clients.items()}
    weights = agreement_weights(report["agreement"])
    fused = {"fusion": True}
    rules |= {
        "mean": TeacherEnsemble(teachers),
        "agreement-weighted mean": TeacherEnsemble(teachers, weights=weights),
        "mean, raw fused features": TeacherEnsemble(teachers, **fused),
        "mean, aligned fused feat.": TeacherEnsemble(teachers, aligner=aligner, **fused),
        "majority": TeacherEnsemble(teachers, fallback=most),
        "majority, raw fused feat.": TeacherEnsemble(teachers, fallback=most, **fused),
        "majority, aligned fused": TeacherEnsemble(
            teachers, aligner=aligner, fallback=most, **fused
        ),
        "agreement-weighted majority": TeacherEnsemble(teachers, weights=weights, fallback=most),
        "majority, flip TTA": TeacherEnsemble(teachers, fallback=most, tta=True),
    }
    domains = ["cityscapes-like"] if args.on == "dev" else list(REAL_DOMAINS)
    split = "dev" if args.on == "dev" else "val"
    print(f"agreement with the ensemble: {[round(a, 3) for a in agree]}; fallback: client {most}")
    print(f"scored on: {args.on} ({', '.join(f'{d}?split={split}' for d in domains)})")
    print(f"{'target':28s} {'mean':>5s} " + " ".join(f"{d[:10]:>10s}" for d in domains))
    tests = {d: open_dataset(world_spec(world, d, split)) for d in domains}
    for name, target in rules.items():
        scores = [
            evaluate(target, tests[d], height=height, progress=False)["miou"] for d in domains
        ]
        print(
            f"{name:28s} {np.mean(scores):5.1f} " + " ".join(f"{v:10.1f}" for v in scores),
            flush=True,
        )


if __name__ == "__main__":
    main()
