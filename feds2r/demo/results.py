"""What every suite writes into OUT: ``results.json`` (one schema, ``docs/demo.md``), the
per-image confusion matrices and the paired bootstrap intervals of the claimed differences."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from feds2r.engine.repro import environment
from feds2r.io import write_atomic
from feds2r.metrics.bootstrap import paired_bootstrap

SHARED_KEYS = ("profile", "seed", "domains", "methods", "intervals", "curves", "communication")
"""The keys of ``results.json`` every suite writes, besides ``timing_s`` and ``environment``
(always last); a suite adds its own sections."""


def paired_intervals(
    confusion: Mapping[str, list[np.ndarray]],
    comparisons: Iterable[tuple[str, str]],
    seed: int,
) -> dict[str, dict[str, float]]:
    """``"A - B"``: the paired bootstrap 95 % interval of each comparison whose two methods ran
    (:func:`~feds2r.metrics.bootstrap.paired_bootstrap` over their per-image confusions)."""
    return {
        f"{a} - {b}": paired_bootstrap(confusion[a], confusion[b], seed=seed)
        for a, b in comparisons
        if a in confusion and b in confusion
    }


def seed_interval(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-seed values with its 95 % t-interval over the seeds
    (NaN bounds for one seed)."""
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def runs_by_partition(runs: Iterable[Path], suite: str) -> dict[str, list[dict[str, Any]]]:
    """The ``results.json`` of each of ``runs`` (output folders of the suite ``suite``, whose
    section ``results[suite]["partition"]`` names the partition), grouped by partition, each
    group in seed order; a folder of another suite is an error naming it."""
    from feds2r.errors import Feds2rError

    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        results = json.loads((Path(run) / "results.json").read_text())
        if suite not in results:
            raise Feds2rError(f"{run} is not a run of the {suite} suite")
        groups.setdefault(results[suite]["partition"], []).append(results)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def mean_sd(values: Iterable[float]) -> str:
    """``"mean ± sd"`` over seeds, one decimal (sd 0 for one seed)."""
    v = np.asarray(list(values), dtype=float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.1f} ± {sd:.1f}"


def save_confusion(
    out: Path, confusion: Mapping[str, list[np.ndarray]], domains: list[str]
) -> None:
    """``out/confusion.npz``: every method's per-image confusion matrices, key ``METHOD|DOMAIN``,
    each of shape (N, C, C)."""
    np.savez_compressed(
        out / "confusion.npz",
        **{f"{m}|{d}": c for m, cs in confusion.items() for d, c in zip(domains, cs, strict=True)},
    )


def results_document(content: Mapping[str, Any], timing: Mapping[str, float]) -> dict[str, Any]:
    """One ``results.json``: ``content`` (the :data:`SHARED_KEYS` and the suite's own sections,
    in the suite's order), then ``timing_s`` and ``environment``."""
    missing = [k for k in SHARED_KEYS if k not in content]
    if missing:
        raise ValueError(f"results.json lacks the shared keys {missing}")
    return {**content, "timing_s": dict(timing), "environment": environment()}


def write_results(out: Path, results: Mapping[str, Any]) -> None:
    """``out/results.json``, written atomically."""
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
