"""Benchmark: how fast the built-in world writes image/label pairs (single process).

Writes ``--num`` pairs per repeat, cycling through every domain, at ``--size``; prints pairs/s
per repeat and the median. The target (issue 2) is 1,000 pairs at 256x512 in at most 30 s.

    python scripts/bench_synth.py --num 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from feds2r.data.world import DOMAINS, synth_domain


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num", type=int, default=1000, help="pairs per repeat")
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    per = max(args.num // len(DOMAINS), 1)
    times = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            total = 0
            for name in DOMAINS:
                synth_domain(
                    name, f"{tmp}/{name}", split="val", num=per, size=size, seed=r, progress=False
                )
                total += per
            seconds = time.perf_counter() - start
        times.append(seconds * args.num / total)
        print(f"repeat {r}: {total} pairs in {seconds:.2f} s = {total / seconds:.1f} pairs/s")
    med = statistics.median(times)
    print(
        f"median time for {args.num} pairs at {args.size}: {med:.1f} s "
        f"({args.num / med:.1f} pairs/s, target <= 30 s)"
    )


if __name__ == "__main__":
    main()
