"""Benchmark: training and inference speed and peak memory of each model preset.

Each preset runs in its own process (so peak memory is its own): ``--warmup`` untimed steps,
then ``--repeats`` timed ones; the median is reported. CPU presets run at 128x256 on the CPU;
paper-scale presets at 512x1024 on CUDA when a GPU is present (``--paper`` forces them on CPU).

    python scripts/bench_models.py                     # CPU presets, this machine
    python scripts/bench_models.py --paper --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def bench_one(
    preset: str, size: tuple[int, int], batch: int, device: str, warmup: int, repeats: int
) -> dict:
    import torch

    from feds2r.losses import supervised_loss
    from feds2r.models import create_model

    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(preset).to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 19, (batch, *size), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = supervised_loss(model(x), y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer_step():
        model.eval()
        with (
            torch.no_grad(),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"),
        ):
            model.predict(x)

    out = {
        "preset": preset,
        "params_M": params / 1e6,
        "size": list(size),
        "batch": batch,
        "device": device,
    }
    for name, fn in (("train", train_step), ("infer", infer_step)):
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        out[f"{name}_img_s"] = batch / statistics.median(times)
    if dev.type == "cuda":
        out["peak_mem_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="*")
    parser.add_argument("--paper", action="store_true", help="paper-scale presets at 512x1024")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process
        size = (512, 1024) if args.paper else (128, 256)
        batch = args.batch or (2 if args.paper else 8)
        print(json.dumps(bench_one(args.one, size, batch, args.device, args.warmup, args.repeats)))
        return
    from feds2r.models import PRESETS

    scale = "paper" if args.paper else "cpu"
    presets = args.presets or [n for n, p in PRESETS.items() if p.scale == scale]
    print(
        "| preset | params (M) | input | batch | device | train img/s | infer img/s | "
        "peak memory (MiB) |"
    )
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for preset in presets:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            preset,
            "--device",
            args.device,
            "--warmup",
            str(args.warmup),
            "--repeats",
            str(args.repeats),
        ]
        cmd += ["--paper"] if args.paper else []
        cmd += ["--batch", str(args.batch)] if args.batch else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"| {preset} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"| {r['preset']} | {r['params_M']:.2f} | {r['size'][0]}x{r['size'][1]} | "
            f"{r['batch']} | {r['device']} | {r['train_img_s']:.1f} | {r['infer_img_s']:.1f} | "
            f"{r['peak_mem_MiB']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
