"""Benchmark: training and inference speed and peak memory of each model preset, against a bare
reference loop, and where the time of a step goes.

Each preset runs in its own process (so peak memory is its own): ``--warmup`` untimed steps,
then ``--repeats`` timed ones; the median is reported. CPU presets run at 128x256 on the CPU;
paper-scale presets at 512x1024 on CUDA when a GPU is present (``--paper`` forces them on CPU).

Our loops run as the training loop runs them, with deterministic algorithms on; "before" is our
step as it was before issue 14's exact changes, on a copy of the same model, in the same run.
The reference ("bare") is the same transformers model built straight from the preset's config
(``Mask2FormerForUniversalSegmentation`` / ``SegformerForSemanticSegmentation``), trained with
its own loss (``labels`` / ``mask_labels`` + ``class_labels``) and plain AdamW on the same
inputs, with no feds2r code in the loop; the table gives our step time as a ratio of it.
Presets with a backbone written in feds2r (``*-effl0``) have no bare transformers model: their
"bare" column is empty.
``--profile`` prints, per preset, the PyTorch profiler's operators by self CPU time for one
training step and one inference step, and the share of multi-scale deformable attention
(``grid_sample``) and of the set-prediction loss.
``--side-by-side`` times the presets in one process, interleaved (so the machine's noise hits
them all): the median of a forward and backward pass (training mode, the supervised loss, no
optimiser step) and of an inference forward, with the parameter counts.

    python scripts/bench_models.py                     # CPU presets, this machine
    python scripts/bench_models.py --presets m2f-cpu --profile
    python scripts/bench_models.py --paper --device cuda
    OMP_NUM_THREADS=1 python scripts/bench_models.py --side-by-side --size 96x192 \
        --presets m2f-cpu m2f-effl0 seg-effl0
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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

    from feds2r.engine.repro import deterministic
    from feds2r.engine.train import TrainConfig, build_optimizer
    from feds2r.losses import supervised_loss
    from feds2r.models import create_model
    from feds2r.models.deformable import use_transformers_attention

    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(preset).to(dev)
    params = sum(p.numel() for p in model.parameters())
    config = TrainConfig()
    opt = build_optimizer(model, config)  # our loop's optimizer (fused AdamW) and clipping
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 19, (batch, *size), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step_of(net, opt, loss_fn):
        """One training step of ``net`` as our loop makes it (clipping included)."""

        def step():
            net.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = loss_fn(net(x), y)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()

        return step

    def infer_step(net=model):
        net.eval()
        with (
            torch.no_grad(),
            torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"),
        ):
            net.predict(x)

    # our step as it was before issue 14's exact changes (commit b67e358): transformers'
    # per-level deformable attention, the loss one layer and one image at a time, the unfused
    # AdamW; on a copy of the same model, with the same clipping
    before = copy.deepcopy(model)
    use_transformers_attention(before)
    before_loss = reference_loss()
    before_opt = torch.optim.AdamW(
        [
            {k: v for k, v in g.items() if k != "fused"}
            for g in build_optimizer(before, config).param_groups
        ],
        foreach=False,
    )
    train_step = step_of(model, opt, supervised_loss)
    before_step = step_of(before, before_opt, before_loss)
    bare_step = make_bare_step(preset, x, y, dev)
    out = {
        "preset": preset,
        "params_M": params / 1e6,
        "size": list(size),
        "batch": batch,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    loops = {"train": train_step, "before_train": before_step}
    if bare_step is not None:
        loops["bare_train"] = bare_step
    loops["infer"] = infer_step
    loops["before_infer"] = lambda: infer_step(before)
    for fn in loops.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repeats):  # the loops interleaved, so that the machine's noise hits them all
        for name, fn in loops.items():
            # ours (and ours before) as the training loop runs them: deterministic algorithms on
            ours = contextlib.nullcontext() if name == "bare_train" else deterministic(0)
            with ours:
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        out[f"{name}_img_s"] = batch / statistics.median(ts)
    if dev.type == "cuda":
        out["peak_mem_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def side_by_side(
    presets: list[str], size: tuple[int, int], batch: int, warmup: int, repeats: int
) -> str:
    """A table of the presets' forward+backward and inference medians (ms), timed interleaved
    in this process on the CPU."""
    import torch

    from feds2r.losses import supervised_loss
    from feds2r.models import create_model

    torch.manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8)
    y = torch.randint(0, 19, (batch, *size))
    models = {name: create_model(name) for name in presets}

    def fwd_bwd(model):
        model.train()
        model.zero_grad(set_to_none=True)
        supervised_loss(model(x), y)["loss"].backward()

    def infer(model):
        model.eval()
        with torch.no_grad():
            model.predict(x)

    def backbone_fwd_bwd(model):  # the backbone alone, its four maps' sum as the loss
        model.train()
        model.zero_grad(set_to_none=True)
        pixels = model.normalize(x)
        if model.is_mask_classification or hasattr(model.backbone(), "channels"):
            maps = model.backbone()(pixels).feature_maps
        else:
            maps = model.backbone()(pixels, output_hidden_states=True).hidden_states
        sum(m.mean() for m in maps).backward()

    kinds = (("train", fwd_bwd), ("backbone", backbone_fwd_bwd), ("infer", infer))
    times = {(n, k): [] for n in presets for k, _ in kinds}
    for i in range(warmup + repeats):
        for name, model in models.items():
            for kind, fn in kinds:
                start = time.perf_counter()
                fn(model)
                if i >= warmup:
                    times[name, kind].append(time.perf_counter() - start)
    lines = [
        f"{batch} images of {size[0]}x{size[1]}, {torch.get_num_threads()} thread(s), "
        f"medians of {repeats} interleaved repeats after {warmup} warm-up",
        "",
        "| preset | params (M) | backbone (M) | forward+backward (ms) | "
        "backbone forward+backward (ms) | inference (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        backbone = sum(p.numel() for p in model.backbone().parameters()) / 1e6
        train_ms = 1e3 * statistics.median(times[name, "train"])
        infer_ms = 1e3 * statistics.median(times[name, "infer"])
        backbone_ms = 1e3 * statistics.median(times[name, "backbone"])
        cells = (
            f"{params:.2f} | {backbone:.2f} | {train_ms:.0f} | {backbone_ms:.0f} | {infer_ms:.0f}"
        )
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def reference_loss():
    """The supervised loss before it was batched (the reference implementation the tests keep,
    tests/losses/reference_set_loss.py), as a function of (model output, labels)."""
    import importlib.util
    from pathlib import Path

    from feds2r.losses import pixel_cross_entropy

    path = Path(__file__).parents[1] / "tests" / "losses" / "reference_set_loss.py"
    spec = importlib.util.spec_from_file_location("reference_set_loss", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)

    def loss(output, labels):
        if output.class_logits is None:
            return pixel_cross_entropy(output.seg_logits, labels)
        return ref.mask2former_loss(output.class_logits, output.mask_logits, output.aux, labels)

    return loss


def make_bare_step(preset: str, x, y, dev):
    """One training step of the bare reference: the transformers model of ``preset``'s config,
    its own loss, plain AdamW; the inputs converted once, outside the timed step."""
    import torch
    from transformers import Mask2FormerForUniversalSegmentation, SegformerForSemanticSegmentation

    from feds2r.models import PRESETS  # only to read the preset's transformers config

    p = PRESETS[preset]
    if p.backbone is not None:  # no transformers model holds feds2r's backbone
        return None
    config = p.build_config(19)
    torch.manual_seed(0)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    pixels = (x.float() / 255 - mean) / std
    if p.family == "mask2former":
        net = Mask2FormerForUniversalSegmentation(config).to(dev)
        classes = [torch.unique(lbl) for lbl in y]
        kwargs = {
            "mask_labels": [
                (lbl[None] == c[:, None, None]).float() for lbl, c in zip(y, classes, strict=True)
            ],
            "class_labels": classes,
        }
    else:
        net = SegformerForSemanticSegmentation(config).to(dev)
        kwargs = {"labels": y}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step():
        net.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = net(pixel_values=pixels, **kwargs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def profile_one(preset: str, size: tuple[int, int], batch: int, device: str) -> str:
    """The profiler's table (top operators by self CPU time) of a training and an inference step,
    and the shares of deformable attention and of the loss in the training step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from feds2r.engine.train import TrainConfig, build_optimizer
    from feds2r.losses import supervised_loss
    from feds2r.models import create_model

    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(preset).to(dev)
    config = TrainConfig()
    opt = build_optimizer(model, config)
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 19, (batch, *size), device=dev)

    def train_step():
        model.train()
        with record_function("forward"):
            out = model(x)
        with record_function("loss"):
            loss = supervised_loss(out, y)["loss"]
        with record_function("backward"):
            opt.zero_grad()
            loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()

    def infer_step():
        model.eval()
        with torch.no_grad():
            model.predict(x)

    lines = []
    for name, fn in (("train", train_step), ("infer", infer_step)):
        for _ in range(2):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        share = {
            "grid_sample (deformable attention)": sum(
                e.self_cpu_time_total for e in events if "grid_sampler" in e.key
            ),
        }
        for region in ("forward", "loss", "backward", "optimizer"):
            ev = [e for e in events if e.key == region]
            if ev:
                share[f"region {region} (incl. children)"] = ev[0].cpu_time_total
        lines.append(f"### {preset}: {name} step, batch {batch}, {size[0]}x{size[1]}")
        lines += [f"- {k}: {100 * v / max(total, 1):.1f} %" for k, v in share.items()]
        lines.append("")
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=15))
    return "\n".join(lines)


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
    parser.add_argument("--profile", action="store_true", help="print the profiler's breakdown")
    parser.add_argument("--size", help="input HxW (default 128x256; 512x1024 with --paper)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="forward+backward medians in one process"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = (512, 1024) if args.paper else (128, 256)
    if args.size:
        size = tuple(int(v) for v in args.size.lower().split("x"))
    batch = args.batch or (2 if args.paper else 8)
    if args.side_by_side:
        presets = args.presets or ["m2f-cpu", "m2f-effl0", "seg-effl0"]
        print(side_by_side(presets, size, batch, args.warmup, args.repeats))
        return
    if args.one:  # child process
        if args.profile:
            print(profile_one(args.one, size, batch, args.device))
            return
        print(json.dumps(bench_one(args.one, size, batch, args.device, args.warmup, args.repeats)))
        return
    from feds2r.models import PRESETS

    scale = "paper" if args.paper else "cpu"
    presets = args.presets or [n for n, p in PRESETS.items() if p.scale == scale]
    if args.profile:
        for preset in presets:
            cmd = [sys.executable, __file__, "--one", preset, "--device", args.device, "--profile"]
            cmd += ["--paper"] if args.paper else []
            cmd += ["--batch", str(args.batch)] if args.batch else []
            cmd += ["--size", args.size] if args.size else []
            res = subprocess.run(cmd, capture_output=True, text=True)
            print(res.stdout if res.returncode == 0 else res.stderr, flush=True)
        return
    print(
        "| preset | params (M) | input | batch | device | threads | train img/s | infer img/s | "
        "before train img/s | speed-up | before infer img/s | speed-up | "
        "bare-loop train img/s | our step / bare step | peak memory (MiB) |"
    )
    print("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
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
        cmd += ["--size", args.size] if args.size else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"| {preset} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        bare = r.get("bare_train_img_s")
        bare_cells = f"{bare:.1f} | {bare / r['train_img_s']:.2f}" if bare else " | "
        print(
            f"| {r['preset']} | {r['params_M']:.2f} | {r['size'][0]}x{r['size'][1]} | "
            f"{r['batch']} | {r['device']} | {r['threads']} | {r['train_img_s']:.1f} | "
            f"{r['infer_img_s']:.1f} | {r['before_train_img_s']:.1f} | "
            f"{r['train_img_s'] / r['before_train_img_s']:.2f}x | {r['before_infer_img_s']:.1f} | "
            f"{r['infer_img_s'] / r['before_infer_img_s']:.2f}x | {bare_cells} | "
            f"{r['peak_mem_MiB']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
