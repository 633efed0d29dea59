"""How good are the distillation targets? Each way of combining the teachers, used as a test-time
predictor, scored on the five real-like test domains (measurements for docs/results.md).

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
from feds2r.demo import PROFILES, _spec
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.evaluate import evaluate
from feds2r.server.distill import (
    DistillConfig,
    _sample_batches,
    _target,
    _teacher_outputs,
    agreement_weights,
    ensemble_agreement,
    fit_aligner,
    most_agreeing,
)


class Target:
    """A ``predict(images, size)`` object for :func:`evaluate`: one teacher (``only``), or the
    teachers combined as distillation combines them (``weights``, majority ``fallback``)."""

    def __init__(self, teachers, *, only=None, weights=None, aligner=None, fallback=None):
        self.teachers, self.only, self.weights = teachers, only, weights
        self.aligner, self.fallback = aligner, fallback

    def predict(self, images, size):
        if self.aligner is not None:
            outs, _ = _teacher_outputs(self.teachers, images, DistillConfig(), self.aligner)
        else:
            outs = [t(images) for t in self.teachers]
        probs = torch.stack([o.semantic_probs(size) for o in outs])
        if self.only is not None:
            return probs[self.only]
        return _target(probs, self.weights, self.fallback)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    height = PROFILES["default"].height
    run, world = args.run, args.run / "world"
    teachers = [load_checkpoint(run / "clients" / d)[0].eval() for d in SYNTHETIC_DOMAINS]
    server = ResizedCache(
        open_dataset(_spec(world, "cityscapes-like", "train"), labels=False),
        height,
        with_labels=False,
        progress=False,
    )
    batches = _sample_batches(server, 32)
    aligner = fit_aligner(teachers, batches)
    agree = ensemble_agreement(teachers, batches)
    most = most_agreeing(agree)
    report = json.loads((run / "inconsistency.json").read_text())
    rules = {f"{d} alone": Target(teachers, only=k) for k, d in enumerate(SYNTHETIC_DOMAINS)}
    rules |= {
        "mean": Target(teachers),
        "agreement-weighted mean": Target(teachers, weights=agreement_weights(report["agreement"])),
        "mean, fused features": Target(teachers, aligner=aligner),
        "majority": Target(teachers, fallback=most),
        "majority, fused features": Target(teachers, aligner=aligner, fallback=most),
    }
    print(f"agreement with the ensemble: {[round(a, 3) for a in agree]}; fallback: client {most}")
    print(f"{'target':26s} {'mean':>5s} " + " ".join(f"{d[:10]:>10s}" for d in REAL_DOMAINS))
    for name, target in rules.items():
        scores = [
            evaluate(target, open_dataset(_spec(world, d, "val")), height=height, progress=False)[
                "miou"
            ]
            for d in REAL_DOMAINS
        ]
        print(
            f"{name:26s} {np.mean(scores):5.1f} " + " ".join(f"{v:10.1f}" for v in scores),
            flush=True,
        )


if __name__ == "__main__":
    main()
