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
    teachers combined as distillation combines them (``weights``, majority ``fallback``), with
    features fused (``fusion``: "none", "raw" mean or "aligned" with ``aligner``) and optionally
    test-time flip augmentation (``tta``: mean of the image's and its mirror's probabilities)."""

    def __init__(self, teachers, *, only=None, weights=None, aligner=None, fallback=None,
                 fusion="none", tta=False):  # fmt: skip
        self.teachers, self.only, self.weights = teachers, only, weights
        self.aligner, self.fallback, self.fusion, self.tta = aligner, fallback, fusion, tta

    def _probs(self, images, size):
        if self.fusion != "none":
            aligner = self.aligner if self.fusion == "aligned" else None
            outs, _ = _teacher_outputs(self.teachers, images, DistillConfig(), aligner)
        else:
            outs = [t(images) for t in self.teachers]
        return torch.stack([o.semantic_probs(size) for o in outs])

    def predict(self, images, size):
        probs = self._probs(images, size)
        if self.tta:
            probs = (probs + self._probs(images.flip(-1), size).flip(-1)) / 2
        if self.only is not None:
            return probs[self.only]
        return _target(probs, self.weights, self.fallback)


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
    weights = agreement_weights(report["agreement"])
    rules |= {
        "mean": Target(teachers),
        "agreement-weighted mean": Target(teachers, weights=weights),
        "mean, raw fused features": Target(teachers, fusion="raw"),
        "mean, aligned fused feat.": Target(teachers, aligner=aligner, fusion="aligned"),
        "majority": Target(teachers, fallback=most),
        "majority, raw fused feat.": Target(teachers, fallback=most, fusion="raw"),
        "majority, aligned fused": Target(teachers, aligner=aligner, fallback=most,
                                          fusion="aligned"),  # fmt: skip
        "agreement-weighted majority": Target(teachers, weights=weights, fallback=most),
        "majority, flip TTA": Target(teachers, fallback=most, tta=True),
    }
    domains = ["cityscapes-like"] if args.on == "dev" else list(REAL_DOMAINS)
    split = "dev" if args.on == "dev" else "val"
    print(f"agreement with the ensemble: {[round(a, 3) for a in agree]}; fallback: client {most}")
    print(f"scored on: {args.on} ({', '.join(f'{d}?split={split}' for d in domains)})")
    print(f"{'target':28s} {'mean':>5s} " + " ".join(f"{d[:10]:>10s}" for d in domains))
    for name, target in rules.items():
        scores = [
            evaluate(target, open_dataset(_spec(world, d, split)), height=height, progress=False)[
                "miou"
            ]
            for d in domains
        ]
        print(
            f"{name:28s} {np.mean(scores):5.1f} " + " ".join(f"{v:10.1f}" for v in scores),
            flush=True,
        )


if __name__ == "__main__":
    main()
