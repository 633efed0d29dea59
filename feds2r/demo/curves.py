"""Learning curves: the dev mIoU of every training run of a demo, kept across reruns into OUT.

A finished training found in OUT is reused (the training loop resumes it), so its curve is not
drawn again: it is carried over from the previous ``results.json`` (:func:`merge_curves`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from feds2r.engine.evaluate import evaluate

Curve = list[list[float]]
"""``[[step, dev mIoU], ...]`` of one training run."""


class DevCurves:
    """Learning curves: dev mIoU of each training run every ``every`` steps (and at its end).

    ``total``: the steps of every run that draws a curve, by name.
    """

    def __init__(self, dev: Any, height: int, every: int, total: dict[str, int]) -> None:
        self.dev, self.height, self.every, self.total = dev, height, every, total
        self.curves: dict[str, Curve] = {}

    def hook(self, name: str) -> Callable[[Any, int], None]:
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

    def merged(self, before: Mapping[str, Curve]) -> dict[str, Curve]:
        """The curves of this run's trainings: those drawn now after ``before``'s
        (:func:`merge_curves`), for the runs of :attr:`total` only."""
        return {k: v for k, v in merge_curves(before, self.curves).items() if k in self.total}


def previous_curves(path: Path) -> dict[str, Curve]:
    """The learning curves of an earlier run into the same OUT ({} if none can be read)."""
    try:
        curves = json.loads(path.read_text()).get("curves", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return curves if isinstance(curves, dict) else {}


def merge_curves(before: Mapping[str, Curve], now: Mapping[str, Curve]) -> dict[str, Curve]:
    """Each run's curve: the points drawn now, after the earlier run's points before them.

    A finished run that was reused draws no point (its earlier curve is kept whole); a run resumed
    from a stopped state draws from its resume step on (earlier points before it are kept); a run
    trained anew draws all of its points again (every earlier point is replaced)."""
    merged = {name: list(points) for name, points in before.items()}
    for name, points in now.items():
        first = min((p[0] for p in points), default=float("inf"))
        merged[name] = [p for p in merged.get(name, []) if p[0] < first] + list(points)
    return merged
