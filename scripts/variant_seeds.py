"""A distillation variant over several seeds, on the test domains, beside the demo's own rows.

    python scripts/variant_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2 runs/demo-s3 \
        runs/demo-s4 --variant variants/nf-gen0 --world runs/demo/world

Each RUN is a `feds2r demo` output folder in which a variant was trained once a choice was made
on dev: RUN/VARIANT, a checkpoint folder (`scripts/distill_variants.py` writes
RUN/variants/NAME; a `feds2r server lite` run into RUN/lite-variants/NAME works as well). This
script scores the variant on the five real-like test domains as the demo scores its rows (per
image, at the profile's height), then prints its test and dev mIoU (mean ± std over seeds) and
its difference to each row of ``--against`` (default: the best client (oracle), the label-free
pick, feds2r, feddf, fedavg-oneshot and the upper bound): the mean over seeds with a 95 %
t-interval over seeds, each seed's paired bootstrap interval over test images (the rows'
per-image confusion matrices from RUN/confusion.npz) and how many seeds have that interval
above 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from feds2r.data.world import REAL_DOMAINS
from feds2r.demo import PROFILES
from feds2r.demo.evaluation import evaluate_methods
from feds2r.demo.results import mean_sd, seed_interval
from feds2r.demo.world import open_dev, open_tests
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.metrics.bootstrap import paired_bootstrap

AGAINST = (
    "best-client (oracle)",
    "client (label-free pick)",
    "feds2r",
    "feddf",
    "fedavg-oneshot",
    "upper-bound",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="demo output folders (one per seed)")
    parser.add_argument("--variant", required=True, help="checkpoint folder under each RUN")
    parser.add_argument("--world", type=Path, required=True, help="the runs' demo world")
    parser.add_argument("--against", nargs="+", default=list(AGAINST), help="rows to compare")
    args = parser.parse_args()
    tests, dev = open_tests(args.world), open_dev(args.world)
    per_seed: list[dict] = []
    for run in args.runs:
        results = json.loads((run / "results.json").read_text())
        # runs made before the ImageNet profile became the default recorded it as imagenet-seg
        profile = {"imagenet-seg": "default"}.get(results["profile"], results["profile"])
        height = PROFILES[profile].clients.height
        model, _ = load_checkpoint(run / args.variant)
        # the demo's own scoring of a row: per image on each test domain, and on dev
        (row,), (mine,) = (
            d.values()
            for d in evaluate_methods(
                {args.variant: model}, tests, dev, height, {args.variant: None}, progress=False
            )
        )
        with np.load(run / "confusion.npz") as z:
            confusion = dict(z)
        rows = {}
        for name in args.against:
            if f"{name}|{REAL_DOMAINS[0]}" in confusion:
                rows[name] = [confusion[f"{name}|{d}"] for d in REAL_DOMAINS]
        per_seed.append(
            {
                "seed": results["seed"],
                "test": row["mean"],
                "dev": row["dev"],
                "diffs": {
                    n: paired_bootstrap(mine, c, seed=results["seed"]) for n, c in rows.items()
                },
            }
        )
        print(f"seed {results['seed']}: test {per_seed[-1]['test']:.2f}, dev "
              f"{per_seed[-1]['dev']:.2f}", flush=True)  # fmt: skip
    print()
    seeds = ", ".join(str(s["seed"]) for s in per_seed)
    print(f"{args.variant}: test mean {mean_sd(s['test'] for s in per_seed)}, dev "
          f"{mean_sd(s['dev'] for s in per_seed)} (seeds {seeds})")  # fmt: skip
    print()
    print("| difference (mean mIoU) | mean over seeds | 95 % t-interval over seeds | per seed "
          "(paired bootstrap over images) | seeds with interval > 0 |")  # fmt: skip
    print("|---|---:|---|---|---:|")
    for name in args.against:
        have = [s["diffs"][name] for s in per_seed if name in s["diffs"]]
        if not have:
            continue
        mean, lo, hi = seed_interval(d["diff"] for d in have)
        cells = "; ".join(f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]" for d in have)
        above = sum(d["lo"] > 0 for d in have)
        print(f"| {args.variant} - {name} | {mean:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {cells} | "
              f"{above} / {len(have)} |")  # fmt: skip


if __name__ == "__main__":
    main()
