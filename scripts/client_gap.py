"""Measure the domain gap of single-client models on the built-in world (issue 3).

Trains one client per synthetic domain with the default CPU recipe (``TrainConfig()``), then
evaluates each on its own domain's held-out split and on every real-like test domain. Prints a
markdown table (mIoU, %) and writes ``OUT/client_gap.json``.

    python scripts/client_gap.py --world data/world --out runs/client-gap --preset m2f-cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from feds2r.client import train_client
from feds2r.data import open_dataset
from feds2r.data.world import DOMAINS, REAL_DOMAINS, SYNTHETIC_DOMAINS
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.engine.train import TrainConfig


def spec(world: Path, domain: str, split: str) -> str:
    return f"{DOMAINS[domain].format}:{world / domain}?split={split}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--out", type=Path, default=Path("runs/client-gap"))
    parser.add_argument("--preset", default="m2f-cpu")
    parser.add_argument("--steps", type=int, help="override the recipe's steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--domains", nargs="*", default=list(SYNTHETIC_DOMAINS))
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    config = TrainConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    tests = {d: spec(args.world, d, "val") for d in REAL_DOMAINS}
    results = {}
    for domain in args.domains:
        out = args.out / f"{args.preset}-{domain}-s{args.seed}"
        start = time.perf_counter()
        summary = train_client(
            spec(args.world, domain, "train"), args.preset, out, config, progress=False
        )
        model, _ = load_checkpoint(out)
        row = {"train_seconds": summary["seconds"]}
        row["own"] = evaluate(model, open_dataset(spec(args.world, domain, "val")), progress=False)[
            "miou"
        ]
        row["real"] = {
            name: evaluate(model, open_dataset(s), progress=False)["miou"]
            for name, s in tests.items()
        }
        row["real_mean"] = sum(row["real"].values()) / len(row["real"])
        row["gap"] = row["own"] - row["real_mean"]
        row["wall_seconds"] = time.perf_counter() - start
        results[domain] = row
        print(
            f"{domain}: own {row['own']:.1f}, real mean {row['real_mean']:.1f}, "
            f"gap {row['gap']:.1f} ({row['train_seconds']:.0f} s training)",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"client_gap-{args.preset}-s{args.seed}.json").write_text(
        json.dumps({"preset": args.preset, "config": config.__dict__, "results": results}, indent=2)
    )
    cols = list(tests)
    print(
        f"\n| client ({args.preset}, {config.steps} steps) | own val | "
        + " | ".join(cols)
        + " | real mean | gap |"
    )
    print("|---|---:|" + "---:|" * len(cols) + "---:|---:|")
    for domain, row in results.items():
        print(
            f"| {domain} | {row['own']:.1f} | "
            + " | ".join(f"{row['real'][c]:.1f}" for c in cols)
            + f" | {row['real_mean']:.1f} | {row['gap']:.1f} |"
        )


if __name__ == "__main__":
    main()
