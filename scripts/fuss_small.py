"""FUSS's four methods on a small built-in world, one seed, mIoU after matching.

    python scripts/fuss_small.py WORLD [--methods local-only,fedavg,fuss,centralized]
        [--partition domain|iid] [--rounds 5] [--local-steps 40] [--clients 3]
        [--backbone imagenet] [--clusters 19] [--mapping hungarian] [--out results.json]

WORLD is built if absent (``--train N`` images per synthetic domain, ``--eval M`` for the
cityscapes-like dev and val splits, at ``--size 96x192``). Features are computed once per image;
each method trains on the clients' unlabelled images; the cluster-to-class mapping is fitted on
cityscapes-like dev and applied unchanged on cityscapes-like val. Prints one line per method
(mean over its models for local-only and fedavg, which give one model per client) and, with
``--out``, merges the results into that JSON file (one key per partition and method).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from feds2r.data.world import DOMAINS, SYNTHETIC_DOMAINS, synth_domain
from feds2r.fuss import FussConfig, evaluate_model, load_split, run_method, split_clients
from feds2r.models.pixel_features import FrozenFeatures, compute_features


def spec(world: Path, domain: str, split: str) -> str:
    return f"{DOMAINS[domain].format}:{world / domain}?split={split}"


def build(world: Path, train: int, evaluation: int, size: tuple[int, int]) -> None:
    plan = [(d, "train", train) for d in SYNTHETIC_DOMAINS]
    plan += [("cityscapes-like", "dev", evaluation), ("cityscapes-like", "val", evaluation)]
    for domain, split, num in plan:
        if not (world / domain / "feds2r_world.json").is_file() or split not in json.loads(
            (world / domain / "feds2r_world.json").read_text()
        ).get("splits", {}):
            synth_domain(domain, world / domain, split=split, num=num, size=size, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("world", type=Path)
    p.add_argument("--methods", default="local-only,fedavg,fuss,centralized")
    p.add_argument("--partition", default="domain", choices=("domain", "iid"))
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=40)
    p.add_argument("--backbone", default="imagenet")
    p.add_argument("--clusters", type=int, default=19)
    p.add_argument("--mapping", default="hungarian")
    p.add_argument("--train", type=int, default=40)
    p.add_argument("--eval", type=int, default=30)
    p.add_argument("--size", default="96x192")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    build(args.world, args.train, args.eval, size)
    config = FussConfig(
        backbone=args.backbone,
        height=size[0],
        rounds=args.rounds,
        local_steps=args.local_steps,
        num_clusters=args.clusters,
        mapping=args.mapping,
    )
    extractor = FrozenFeatures(config.backbone)

    def features(domain: str, split: str, labels: bool):
        images, target = load_split(spec(args.world, domain, split), config.height, labels=labels)
        feats = compute_features(extractor, images)
        return (feats, target.long()) if labels else feats

    per_domain = {d: features(d, "train", False) for d in SYNTHETIC_DOMAINS}
    dev = features("cityscapes-like", "dev", True)
    val = features("cityscapes-like", "val", True)
    clients = split_clients(per_domain, args.partition, args.clients, config.knn, config.seed)
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        models, record = run_method(method, clients, config)
        evals = {n: evaluate_model(m, dev, {"val": val}, config.mapping) for n, m in models.items()}
        mean = {
            k: sum(e["val"][k] for e in evals.values()) / len(evals) for k in ("miou", "pixel_acc")
        }
        seconds = time.perf_counter() - start
        print(
            f"{args.partition:6s} {method:12s} val mIoU {mean['miou']:5.2f}  pixel acc "
            f"{mean['pixel_acc']:5.1f}  bytes {record['bytes']:>9d}  {seconds:5.1f} s",
            flush=True,
        )
        results[f"{args.partition}/{method}"] = {
            "val": mean,
            "models": {n: {s: e[s]["miou"] for s in e} for n, e in evals.items()},
            "bytes": record["bytes"],
            "seconds": seconds,
            "config": dataclasses.asdict(config),
        }
        if args.out:  # after every method, so a stopped run keeps what it finished
            args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
