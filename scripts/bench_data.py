"""Benchmark: streaming training data (issue 20's data targets), measured side by side.

(a) Memory and start-up do not grow with the data: ``feds2r client train`` for 4 steps on 1,000
    and on 100 GTA5-like images of 526x958 with ``--height 512``, each run in its own process:
    peak memory of the process tree (main process and its DataLoader workers: the sum of their
    RSS, and of their PSS, which counts pages shared by forked workers once) and wall time; the
    ratios 1,000 / 100. Targets: RSS ratio <= 1.25, wall ratio <= 1.5 (streaming). ``--loaders
    stream memory`` shows the in-memory path beside it.
(b) Streaming costs nothing where the cache fits: ``client train`` on the built-in world's
    gta5-like domain at the demo's size (400 images of 128x256, height 96, crop 96x192, batch 8),
    ``--loader stream`` against ``--loader memory``: training images/s of the loop (the last
    ``img_per_s`` of train_log.jsonl; the memory path's loading before the loop is not counted).
    Target: stream >= 0.95x memory.
(c) The loader alone, one worker against two, on the 526x958 images (height 512, crop 512x1024,
    batch 8): batches/s after the first batch. Target: 2 workers >= 1.6x 1 worker.

Every figure is the median over ``--repeats``; the runs of one comparison alternate, so that the
machine's load hits both sides alike. Images are written once into ``--work`` (default: a
temporary folder): ``--distinct`` images drawn by the built-in world, the rest hard links to them
(each file is still opened and decoded on its own).

    python scripts/bench_data.py                  # the full figures (about 15 minutes, 2 cores)
    python scripts/bench_data.py --small          # tiny inputs: checks that the script works
    python scripts/bench_data.py --only a --loaders stream memory --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = "import sys; from feds2r.cli import main; sys.exit(main(sys.argv[1:]))"


# ----------------------------------------------------------------------------- measuring


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(x) for x in (task / "children").read_text().split()]
    except OSError:  # the process ended meanwhile
        pass
    return found


def tree_memory(pid: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over ``pid`` and all its descendants."""
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Rss":
                    rss += int(value.split()[0]) * 1024
                elif key == "Pss":
                    pss += int(value.split()[0]) * 1024
        except (OSError, ValueError):
            continue
        todo += _children(p)
    return rss, pss


def run_measured(args: list[str], env: dict[str, str]) -> dict:
    """Run ``feds2r ARGS`` in a new process; its wall time and the peak memory of its tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"feds2r {' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "rss_mib": peak_rss / 2**20, "pss_mib": peak_pss / 2**20}


def gta5_like(root: Path, num: int, size: tuple[int, int], distinct: int) -> str:
    """A GTA5-layout folder of ``num`` samples of ``size`` (``distinct`` drawn by the world, the
    rest hard links to them); returns its spec."""
    from feds2r.data.world import synth_domain

    if (root / "images" / f"{num:05d}.png").is_file():
        return f"gta5:{root}"
    base = root.parent / f"base-{size[0]}x{size[1]}-{distinct}"
    if not (base / "images" / f"{distinct:05d}.png").is_file():
        shutil.rmtree(base, ignore_errors=True)
        synth_domain("gta5-like", base, split="train", num=distinct, size=size, progress=False)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(num):
            src = base / sub / f"{i % distinct + 1:05d}.png"
            dst = root / sub / f"{i + 1:05d}.png"
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:  # another file system
                    shutil.copyfile(src, dst)
    return f"gta5:{root}"


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def verdict(value: float, target: float, above: bool) -> str:
    ok = value >= target if above else value <= target
    return f"{'meets' if ok else 'MISSES'} {'>=' if above else '<='} {target:g}"


# ----------------------------------------------------------------------------- the three figures


def bench_growth(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    small, large = args.images
    specs = {n: gta5_like(work / f"gta5-{n}", n, args.size, args.distinct) for n in (small, large)}
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.repeats):
        for loader in args.loaders:
            for n in (small, large):
                out = work / f"run-a-{loader}-{n}-{r}"
                flags = [
                    "client", "train", "--data", specs[n], "--out", str(out),
                    "--steps", str(args.steps), "--warmup-steps", "1",
                    "--height", str(args.height), "--device", "cpu", "--quiet",
                    "--loader", loader,
                ]  # fmt: skip
                runs.setdefault((loader, n), []).append(run_measured(flags, env))
                shutil.rmtree(out, ignore_errors=True)
    h, w = args.size
    print(
        f"\n(a) client train, {args.steps} steps, {small} vs {large} images of {h}x{w}, "
        f"--height {args.height} (median of {args.repeats})"
    )
    print(f"{'loader':<8} {'images':>6} {'wall s':>8} {'RSS MiB':>9} {'PSS MiB':>9}")
    for loader in args.loaders:
        for n in (small, large):
            rows = runs[(loader, n)]
            print(
                f"{loader:<8} {n:>6} {median(rows, 'wall_s'):>8.1f} "
                f"{median(rows, 'rss_mib'):>9.0f} {median(rows, 'pss_mib'):>9.0f}"
            )
        rss = median(runs[(loader, large)], "rss_mib") / median(runs[(loader, small)], "rss_mib")
        pss = median(runs[(loader, large)], "pss_mib") / median(runs[(loader, small)], "pss_mib")
        wall = median(runs[(loader, large)], "wall_s") / median(runs[(loader, small)], "wall_s")
        print(
            f"{loader:<8} ratio {large}/{small}: RSS {rss:.2f} ({verdict(rss, 1.25, False)}), "
            f"PSS {pss:.2f}, wall {wall:.2f} ({verdict(wall, 1.5, False)})"
        )


def bench_training(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    from feds2r.data.world import synth_domain

    root = work / f"world-{args.world_images}"
    if not (root / "feds2r_world.json").is_file():
        synth_domain(
            "gta5-like", root, split="train", num=args.world_images, size=args.world_size,
            progress=False,
        )  # fmt: skip
    runs: dict[str, list[dict]] = {"memory": [], "stream": []}
    for r in range(args.repeats):
        for loader in ("memory", "stream"):
            out = work / f"run-b-{loader}-{r}"
            flags = [
                "client", "train", "--data", f"gta5:{root}?split=train", "--out", str(out),
                "--steps", str(args.train_steps), "--warmup-steps", "1",
                "--height", str(args.train_height), "--crop", "x".join(map(str, args.train_crop)),
                "--batch-size", "8", "--device", "cpu", "--quiet", "--loader", loader,
            ]  # fmt: skip
            measured = run_measured(flags, env)
            last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
            runs[loader].append({**measured, "img_s": last["img_per_s"], "data_s": last["data_s"]})
            shutil.rmtree(out, ignore_errors=True)
    h, w = args.world_size
    print(
        f"\n(b) client train on the world's gta5-like domain ({args.world_images} images of "
        f"{h}x{w}, height {args.train_height}, crop {args.train_crop[0]}x{args.train_crop[1]}, "
        f"batch 8, {args.train_steps} steps; median of {args.repeats})"
    )
    print(f"{'loader':<8} {'img/s':>7} {'data s/step':>12} {'wall s':>8} {'RSS MiB':>9}")
    for loader, rows in runs.items():
        print(
            f"{loader:<8} {median(rows, 'img_s'):>7.2f} {median(rows, 'data_s'):>12.3f} "
            f"{median(rows, 'wall_s'):>8.1f} {median(rows, 'rss_mib'):>9.0f}"
        )
    ratio = median(runs["stream"], "img_s") / median(runs["memory"], "img_s")
    print(f"stream / memory img/s: {ratio:.3f} ({verdict(ratio, 0.95, True)})")


def bench_loader(args: argparse.Namespace, work: Path) -> None:
    import torch

    from feds2r.data.dataset import list_dataset
    from feds2r.engine.loader import StreamBatches, StreamingData

    spec = gta5_like(work / f"gta5-{args.images[0]}", args.images[0], args.size, args.distinct)
    data = StreamingData(list_dataset(spec))
    aug = {"crop": args.crop, "scale": (0.75, 1.5), "flip": True, "jitter": 0.25, "blur_prob": 0.2}
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in (1, 2):
            batches = StreamBatches(
                data, torch.Generator().manual_seed(0), start=0, stop=args.batches + 1,
                batch_size=8, height=args.height, aug=aug, workers=workers,
            )  # fmt: skip
            batches.next()  # the workers have started
            start = time.perf_counter()
            for _ in range(args.batches):
                batches.next()
            rates[workers].append(args.batches / (time.perf_counter() - start))
            batches.close()
    h, w = args.size
    print(
        f"\n(c) the loader alone: {h}x{w} images, height {args.height}, crop "
        f"{args.crop[0]}x{args.crop[1]}, batch 8, {args.batches} batches after the first "
        f"(median of {args.repeats})"
    )
    for workers, values in rates.items():
        print(
            f"{workers} worker{'s' if workers > 1 else ''}: {statistics.median(values):.3f} batch/s"
        )
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"2 workers / 1 worker: {ratio:.2f} ({verdict(ratio, 1.6, True)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=("a", "b", "c"), default=["a", "b", "c"])
    p.add_argument("--small", action="store_true", help="tiny inputs: check the script works")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loaders", nargs="+", choices=("stream", "memory"), default=["stream"])
    p.add_argument("--work", type=Path, default=None, help="folder for the images (kept)")
    args = p.parse_args()
    # (a) and (c)
    args.images, args.size, args.distinct = (100, 1000), (526, 958), 50
    args.height, args.steps, args.crop, args.batches = 512, 4, (512, 1024), 8
    # (b): the demo's default world and recipe
    args.world_images, args.world_size = 400, (128, 256)
    args.train_height, args.train_crop, args.train_steps = 96, (96, 192), 60
    if args.small:
        args.images, args.size, args.distinct = (10, 20), (64, 128), 4
        args.height, args.steps, args.crop, args.batches = 32, 2, (32, 64), 3
        args.world_images, args.world_size = 16, (64, 128)
        args.train_height, args.train_crop, args.train_steps = 32, (32, 64), 4
        args.repeats = min(args.repeats, 2)
    env = dict(os.environ)
    work = args.work or Path(tempfile.mkdtemp(prefix="feds2r-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"images in {work}; OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}")
    try:
        if "a" in args.only:
            bench_growth(args, work, env)
        if "b" in args.only:
            bench_training(args, work, env)
        if "c" in args.only:
            bench_loader(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
