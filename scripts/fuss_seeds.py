"""Mean ± std over seeds of `feds2r demo --suite fuss` runs, per partition, and issue 24's targets.

    python scripts/fuss_seeds.py runs/fuss-domain-s* runs/fuss-iid-s*

Prints Markdown, one block per partition found among the runs: each row's mIoU and pixel accuracy
on cityscapes-like val after the dev-fitted matching (the target's measure), the mean mIoU of the
five real-like test domains and dev, as mean ± std over seeds; then the differences the targets
name on cityscapes-like val (``fuss`` against ``local-only``, ``fedavg`` and ``centralized``; the
rows of ``local-only`` and ``fedavg`` are the mean over the clients' models, and ``fuss`` is also
set against the best client model of each seed, chosen on dev), each with its mean over seeds and
95 % t-interval over seeds; then the targets, met or not, and each run's time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from feds2r.demo.results import mean_sd, runs_by_partition, seed_interval

DOMAIN = "cityscapes-like"


def _val(result: dict, row: str) -> float:
    return result["methods"][row]["miou"][DOMAIN]


def _best_on_dev(result: dict, row: str) -> float:
    """``row``'s client model with the best dev mIoU, its cityscapes-like val mIoU."""
    models = result["methods"][row]["models"]
    best = max(models, key=lambda name: models[name]["dev"])
    return models[best][DOMAIN]


def report(kind: str, results: list[dict]) -> None:
    seeds = ", ".join(str(r["seed"]) for r in results)
    print(f"### {kind} (seeds {seeds}; profile {results[0]['profile']})\n")
    print(f"| method | {DOMAIN} val mIoU | {DOMAIN} val pixel acc. | mean of 5 domains | dev |")
    print("|---|---:|---:|---:|---:|")
    for name in results[0]["methods"]:
        rows = [r["methods"][name] for r in results]
        print(
            f"| {name} | {mean_sd(_val(r, name) for r in results)} "
            f"| {mean_sd(m['pixel_acc'][DOMAIN] for m in rows)} "
            f"| {mean_sd(m['mean'] for m in rows)} | {mean_sd(m['dev'] for m in rows)} |"
        )
    print()
    print(f"| difference ({DOMAIN} val mIoU) | mean over seeds | 95 % t-interval | per seed |")
    print("|---|---:|---|---|")
    found: dict[str, tuple[float, float, float]] = {}
    pairs = [
        ("fuss − local-only", lambda r: _val(r, "fuss") - _val(r, "local-only")),
        ("fuss − fedavg", lambda r: _val(r, "fuss") - _val(r, "fedavg")),
        ("fuss − centralized", lambda r: _val(r, "fuss") - _val(r, "centralized")),
        ("fuss − best local-only model (dev)",
         lambda r: _val(r, "fuss") - _best_on_dev(r, "local-only")),
        ("fuss − best fedavg model (dev)", lambda r: _val(r, "fuss") - _best_on_dev(r, "fedavg")),
    ]  # fmt: skip
    for label, diff in pairs:
        values = [diff(r) for r in results]
        m, lo, hi = found[label] = seed_interval(values)
        per = ", ".join(f"{v:+.1f}" for v in values)
        print(f"| {label} | {m:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {per} |")
    print()

    def say(text: str, ok: bool) -> None:
        print(f"- {text}: {'met' if ok else 'NOT met'}")

    for other in ("local-only", "fedavg"):
        m, lo, hi = found[f"fuss − {other}"]
        say(f"fuss above {other} with the t-interval above 0: {m:+.2f} [{lo:+.2f}, {hi:+.2f}]",
            lo > 0)  # fmt: skip
    m, _, _ = found["fuss − centralized"]
    say(f"fuss within 3 mIoU of centralized: {m:+.2f}", m >= -3)
    times = [r["timing_s"]["total"] for r in results]
    print(f"\nTime of each run: {', '.join(f'{t:.0f} s' for t in times)} "
          f"(median {np.median(times):.0f} s).\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="fuss suite output folders")
    args = parser.parse_args()
    by_kind = runs_by_partition(args.runs, "fuss")
    for kind in ("domain", "iid"):
        if kind in by_kind:
            report(kind, by_kind[kind])


if __name__ == "__main__":
    main()
