"""Mean ± std over seeds of `feds2r demo --suite fedseg` runs, beside the paper, per partition.

    python scripts/fedseg_seeds.py runs/fedseg-noniid1-s* runs/fedseg-noniid2-s* runs/fedseg-iid-s*

Prints Markdown, one block per partition found among the runs: each row's mIoU on
cityscapes-like val (in-domain, the paper's setting) as mean ± std over seeds beside the paper's
number, the mean of the five real-like domains and dev; then every difference the suite claims
(``feds2r.demo.suites.fedseg.COMPARISONS``) in-domain: its mean over seeds with a 95 % t-interval
over seeds, each seed's paired bootstrap interval over test images and how many seeds have that
interval above 0; then issue 23's targets for that partition, met or not; then each run's time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from feds2r.demo.results import mean_sd as _mean_sd
from feds2r.demo.results import runs_by_partition
from feds2r.demo.results import seed_interval as _t_interval
from feds2r.demo.suites.fedseg import COMPARISONS

DOMAIN = "cityscapes-like"


def _diffs(results: list[dict], a: str, b: str) -> list[float]:
    return [r["fedseg"]["in_domain"][a] - r["fedseg"]["in_domain"][b] for r in results]


def _targets(kind: str, results: list[dict]) -> list[str]:
    """Issue 23's targets that concern ``kind``, each with its figure and verdict."""
    lines = []

    def say(text: str, ok: bool) -> None:
        lines.append(f"- {text}: {'met' if ok else 'NOT met'}")

    if kind == "noniid1":
        m, lo, hi = _t_interval(_diffs(results, "fedavg-backce", "fedavg-ce"))
        say(f"fedavg-backce ≥ fedavg-ce + 15 (paper +34.7): {m:+.1f}", m >= 15)
        m, lo, hi = _t_interval(_diffs(results, "fedseg", "fedavg-backce"))
        say(
            f"fedseg ≥ fedavg-backce + 2 with the t-interval above 0 (paper +5.2): {m:+.1f} "
            f"[{lo:+.1f}, {hi:+.1f}]",
            m >= 2 and lo > 0,
        )
        m, lo, hi = _t_interval(_diffs(results, "fedprox-backce", "fedavg-backce"))
        say(f"fedprox-backce within ±2 of fedavg-backce (paper -0.2): {m:+.1f}", abs(m) <= 2)
    if kind == "iid":
        m, lo, hi = _t_interval(_diffs(results, "fedavg-backce", "fedavg-ce"))
        say(f"IID: fedavg-backce within ±2 of fedavg-ce (paper -0.5): {m:+.1f}", abs(m) <= 2)
    return lines


def report(kind: str, results: list[dict]) -> None:
    seeds = ", ".join(str(r["seed"]) for r in results)
    print(f"### {kind} (seeds {seeds}; profile {results[0]['profile']})\n")
    print(
        f"| method | {DOMAIN} val (in-domain) | paper, Cityscapes val | mean of 5 domains | dev |"
    )
    print("|---|---:|---:|---:|---:|")
    paper = results[0]["fedseg"]["paper"]
    for name in results[0]["methods"]:
        have = [r for r in results if name in r["methods"]]
        cited = "-" if paper.get(name) is None else f"{paper[name]:.2f}"
        print(
            f"| {name} | {_mean_sd([r['fedseg']['in_domain'][name] for r in have])} | {cited} "
            f"| {_mean_sd([r['methods'][name]['mean'] for r in have])} "
            f"| {_mean_sd([r['methods'][name]['dev'] for r in have])} |"
        )
    print()
    print(
        f"| difference ({DOMAIN} val) | mean over seeds | 95 % t-interval over seeds | per seed "
        "(paired bootstrap over images) | seeds with interval > 0 |"
    )
    print("|---|---:|---|---|---:|")
    for a, b in COMPARISONS:
        key = f"{a} - {b} ({DOMAIN})"
        have = [r for r in results if key in r["intervals"]]
        if not have:
            continue
        m, lo, hi = _t_interval(_diffs(have, a, b))
        per = [r["intervals"][key] for r in have]
        seeds_text = ", ".join(f"{p['diff']:+.1f} [{p['lo']:+.1f}, {p['hi']:+.1f}]" for p in per)
        above = sum(p["lo"] > 0 for p in per)
        print(
            f"| {a} − {b} | {m:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {seeds_text} | {above}/{len(per)} |"
        )
    print()
    for line in _targets(kind, results):
        print(line)
    times = ", ".join(f"seed {r['seed']}: {r['timing_s']['total']:.0f} s" for r in results)
    print(f"\nTime of each run: {times}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="fedseg suite output folders")
    args = parser.parse_args()
    by_kind = runs_by_partition(args.runs, "fedseg")
    for kind in ("noniid1", "noniid2", "iid"):
        if kind in by_kind:
            report(kind, by_kind[kind])


if __name__ == "__main__":
    main()
