"""Mean ± std over several `feds2r demo` runs (different seeds), and the claimed differences.

    python scripts/demo_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2 runs/demo-s3 runs/demo-s4

Prints Markdown: the table of rows (mean ± std over seeds of each test domain, the mean, dev and
the number of classes above 10 IoU; a row that only some runs have, e.g. of ``--multi-round``,
is over those runs and says how many), then, for every difference the demo claims
(``feds2r.demo.COMPARISONS``), its mean over seeds with a 95 % t-interval over seeds (the seeds'
spread: clients, students and their training order all change with the seed), each seed's paired
bootstrap interval over test images, and how many seeds have that interval above 0. Then the
premise diagnostics and the time of each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from feds2r.demo import COMPARISONS
from feds2r.demo.results import seed_interval


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="demo output folders")
    args = parser.parse_args()
    results = [json.loads((r / "results.json").read_text()) for r in args.runs]
    domains = results[0]["domains"]
    n = len(results)
    print(f"seeds: {', '.join(str(r['seed']) for r in results)}; profile {results[0]['profile']}")
    print()
    print("| method | " + " | ".join(domains) + " | mean | dev | classes > 10 |")
    print("|---|" + "---:|" * (len(domains) + 3))
    names = list(dict.fromkeys(m for r in results for m in r["methods"]))
    for name in names:
        cells = []
        have = [r for r in results if name in r["methods"]]  # runs without a row's flag lack it
        for d in [*domains, "mean", "dev", "classes_above_10"]:
            row = [r["methods"][name] for r in have]
            if d not in ("mean", "dev", "classes_above_10") or d in row[0]:
                vals = np.array([m[d] if d in m else m["miou"][d] for m in row], dtype=float)
                sd = vals.std(ddof=1) if len(vals) > 1 else 0.0
                cells.append(f"{vals.mean():.1f} ± {sd:.1f}")
            else:
                cells.append("-")
        label = name if len(have) == n else f"{name} ({len(have)} seeds)"
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("| difference (mean mIoU) | mean over seeds | 95 % t-interval over seeds | per seed "
          "(paired bootstrap over images) | seeds with interval > 0 |")  # fmt: skip
    print("|---|---:|---|---|---:|")
    for a, b in COMPARISONS:
        key = f"{a} - {b}"
        per = [r["intervals"][key] for r in results if key in r.get("intervals", {})]
        if not per:
            continue
        mean, lo, hi = seed_interval(p["diff"] for p in per)
        ci = f"[{lo:+.2f}, {hi:+.2f}]" if len(per) > 1 else "-"
        seeds = "; ".join(f"{p['diff']:+.1f} [{p['lo']:+.1f}, {p['hi']:+.1f}]" for p in per)
        above = sum(p["lo"] > 0 for p in per)
        print(f"| {key} | {mean:+.2f} | {ci} | {seeds} | {above} / {len(per)} |")
    print()
    for r in results:
        p = r.get("premise")
        t = r["timing_s"]
        unstable = ", ".join(r["unstable_classes"])
        line = f"seed {r['seed']}: total {t['total']:.0f} s; unstable {unstable}"
        if p:
            moved = ", ".join(f"{v:.3f}" for v in p["change_from_start"].values())
            line += (
                f"; feature cosine {p['feature_cosine']['mean']:.2f}; moved {moved}; "
                f"FedAvg agrees with the ensemble on {100 * p['fedavg_agreement']:.0f} %"
            )
        print(line)


if __name__ == "__main__":
    main()
