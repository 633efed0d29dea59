"""How to fine-tune the ImageNet start, chosen on `dev`: one client per setting, dev mIoU.

Trains clients of the demo's world (the default profile's world and recipe) from the
`m2f-effl0` ImageNet start under each fine-tuning setting (backbone learning-rate multiplier,
frozen BatchNorm statistics, frozen stem, steps) and prints each one's mIoU on the server
domain's labelled `dev` split, beside the `public` start of the default profile as reference.
The test domains are not read.

    python scripts/imagenet_dev.py --world runs/demo/world --out runs/imagenet-dev \
        --clients synscapes-like gta5-like
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from feds2r.client import train_client
from feds2r.demo.profiles import get_profile
from feds2r.demo.world import build_world, open_dev, world_spec
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.models import presets
from feds2r.models.efficientnet import EfficientNetLiteConfig

# name: (preset, backbone learning-rate multiplier, freeze_bn_stats, freeze_stem, steps)
SETTINGS = {
    "public-lr0.1-300": ("m2f-cpu", 0.1, False, False, 300),
    "imagenet-lr0.1-200": ("m2f-effl0", 0.1, False, False, 200),
    "imagenet-lr0.3-200": ("m2f-effl0", 0.3, False, False, 200),
    "imagenet-lr1-200": ("m2f-effl0", 1.0, False, False, 200),
    "imagenet-lr0.1-bn-200": ("m2f-effl0", 0.1, True, False, 200),
    "imagenet-lr1-bn-200": ("m2f-effl0", 1.0, True, False, 200),
    "imagenet-lr1-bn-stem-200": ("m2f-effl0", 1.0, True, True, 200),
    "seg-imagenet-lr0.1-200": ("seg-effl0", 0.1, False, False, 200),
    "seg-imagenet-lr1-200": ("seg-effl0", 1.0, False, False, 200),
    "seg-imagenet-lr1-bn-200": ("seg-effl0", 1.0, True, False, 200),
    "seg-public-lr0.1-300": ("segformer-cpu", 0.1, False, False, 300),
}


def with_backbone(preset: str, bn: bool, stem: bool) -> None:
    """Make ``preset`` (an EfficientNet one) fine-tune with these options (this process only)."""
    p = presets.PRESETS[preset]
    if p.backbone is not None:
        backbone = EfficientNetLiteConfig(freeze_bn_stats=bn, freeze_stem=stem)
        presets.PRESETS[preset] = dataclasses.replace(p, backbone=backbone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="runs/demo/world")
    parser.add_argument("--out", default="runs/imagenet-dev")
    parser.add_argument("--clients", nargs="+", default=["synscapes-like"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    profile = get_profile("public")  # the recipe of the runs in docs/results.md
    world, out = Path(args.world), Path(args.out)
    build_world(world, profile.world, progress=False)
    dev = open_dev(world)
    results = {}
    for name in args.settings:
        preset, mult, bn, stem, steps = SETTINGS[name]
        with_backbone(preset, bn, stem)
        recipe = dataclasses.replace(
            profile.clients, seed=args.seed, steps=steps, backbone_lr_mult=mult
        )
        for client in args.clients:
            dest = out / f"{name}-s{args.seed}" / client
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            train_client(
                world_spec(world, client, "train"),
                preset,
                dest,
                recipe,
                backbone_weights="pretrained",
                progress=False,
            )
            model, _ = load_checkpoint(dest)
            miou = evaluate(model, dev, height=recipe.height, progress=False)["miou"]
            results[f"{name}/{client}"] = round(float(miou), 2)
            print(
                f"{name:28s} {client:16s} dev {miou:6.2f}  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    (out / f"dev-s{args.seed}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
