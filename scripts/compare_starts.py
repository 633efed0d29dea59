"""Compare demo runs from two starting points (e.g. the `default` and `imagenet` profiles), seed by
seed: every row's dev mIoU (the choice) and test mean (reported), classes above 10 IoU, the
premise diagnostics and the wall time. Prints Markdown tables; reads only results.json.

    python scripts/compare_starts.py --a runs/demo runs/demo-s1 --b runs/demo-imagenet \
        runs/demo-imagenet-s1 --names public imagenet
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROWS = ("client:gta5-like", "client:synthia-like", "client:synscapes-like", "best-client (oracle)",
        "ensemble", "fedavg-oneshot", "feddf", "feds2r", "feds2r-no-aug", "feds2r-no-fusion",
        "upper-bound-1x", "upper-bound")  # fmt: skip


def load(folder: str) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="runs of the first start")
    parser.add_argument("--b", nargs="+", required=True, help="runs of the second start")
    parser.add_argument("--names", nargs=2, default=("a", "b"))
    args = parser.parse_args()
    runs = {args.names[0]: [load(f) for f in args.a], args.names[1]: [load(f) for f in args.b]}
    header = " | ".join(f"{n} dev | {n} test | {n} classes>10" for n in runs)
    print(f"| row | {header} |")
    print("|---|" + "---:|" * (3 * len(runs)))
    for row in ROWS:
        cells = []
        for results in runs.values():
            got = [r["methods"][row] for r in results if row in r["methods"]]
            dev = [g["dev"] for g in got if g.get("dev") is not None]
            test = [g["mean"] for g in got]
            above = [
                g.get("classes_above_10") for g in got if g.get("classes_above_10") is not None
            ]
            cells += [mean(dev), mean(test), mean(above)]
        print(f"| {row} | " + " | ".join(cells) + " |")
    print()
    for name, results in runs.items():
        for r in results:
            p = r["premise"]
            keep = {k: v for k, v in p.items() if not isinstance(v, (dict, list))}
            print(f"{name} seed {r['seed']}: premise {keep}; total {r['timing_s']['total']:.0f} s; "
                  f"start {r['start'].get('backbone')}")  # fmt: skip


if __name__ == "__main__":
    main()
