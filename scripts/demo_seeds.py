"""Mean ± std over several `feds2r demo` runs (different seeds), as a Markdown table.

python scripts/demo_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="demo output folders")
    args = parser.parse_args()
    results = [json.loads((r / "results.json").read_text()) for r in args.runs]
    domains = results[0]["domains"]
    print(f"seeds: {', '.join(str(r['seed']) for r in results)}; profile {results[0]['profile']}")
    print()
    print("| method | " + " | ".join(domains) + " | mean |")
    print("|---|" + "---:|" * (len(domains) + 1))
    for name in results[0]["methods"]:
        cells = []
        for d in [*domains, "mean"]:
            row = [r["methods"][name] for r in results]
            vals = np.array([m["mean"] if d == "mean" else m["miou"][d] for m in row])
            cells.append(f"{vals.mean():.1f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for r in results:
        t = r["timing_s"]
        print(
            f"seed {r['seed']}: total {t['total']:.0f} s; "
            f"unstable {', '.join(r['unstable_classes'])}"
        )


if __name__ == "__main__":
    main()
