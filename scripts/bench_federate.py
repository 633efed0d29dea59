"""`feds2r federate local` against the in-process federation, on the same data and recipe.

    python scripts/bench_federate.py WORLD [--steps 100] [--height 96] [--repeats 1]

WORLD: a demo world folder (``feds2r demo`` writes one under OUT/world). Runs the one-shot
federation of its three synthetic clients twice per repeat, timing each from the call to the
written global model: in this process (``run_federation`` over ``in_process_send``: the clients
train one after another) and over loopback (``federate_local``: a SuperLink and three SuperNodes,
whose clients train at once, each with its share of the cores). Prints both times, the ratio and
the per-stage times of each. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from feds2r.demo import world_spec
from feds2r.federation.local import federate_local
from feds2r.federation.protocol import FederationConfig, in_process_send, run_federation

CLIENTS = ("gta5-like", "synthia-like", "synscapes-like")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("world", type=Path)
    parser.add_argument("--steps", type=int, default=100, help="client and distillation steps")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    world = args.world.resolve()
    clients = [(d.split("-")[0], world_spec(world, d, "train")) for d in CLIENTS]
    crop = f"{args.height}x{2 * args.height}"
    times: dict[str, list[float]] = {"in-process": [], "federate local": []}
    for _ in range(args.repeats):
        for how in times:
            out = Path(tempfile.mkdtemp(prefix="bench-fed-")) / "run"
            config = FederationConfig.from_run_config(
                {
                    "out": str(out),
                    "server-data": world_spec(world, "cityscapes-like", "train"),
                    "num-clients": len(clients),
                    "client-steps": args.steps,
                    "distill-steps": args.steps,
                    "height": args.height,
                    "crop": crop,
                    "warmup-steps": min(50, args.steps),
                }
            )
            start = time.perf_counter()
            if how == "in-process":
                results = run_federation(
                    in_process_send(dict(clients)), config, progress=False, log=lambda _t: None
                )
            else:
                results = federate_local(clients, config, log=lambda _t: None)
            seconds = time.perf_counter() - start
            times[how].append(seconds)
            stages = ", ".join(f"{k} {v:.0f}" for k, v in results["timing_s"].items())
            print(f"{how}: {seconds:.0f} s ({stages})", flush=True)
    a = statistics.median(times["in-process"])
    b = statistics.median(times["federate local"])
    print(f"median in-process {a:.0f} s, federate local {b:.0f} s: ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
