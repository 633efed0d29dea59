"""Distillation variants on one fixed set of clients (measurements for docs/results.md).

RUN is a `feds2r demo` output folder (its world, clients, inconsistency report and generated
images are reused), or a new folder where this script builds (once) a demo world, the common
initial model (the shipped public backbone) and one client per synthetic domain, then the
inconsistency report and generated images. Then it distils one variant, given as DistillConfig
overrides in JSON, and prints its mIoU on the server domain's labelled dev split (``--on dev``,
the default: where choices are made) or on the five real-like test domains (``--on test``: only
to report a choice already made).

    python scripts/distill_variants.py runs/exp nofus '{"feature_fusion": false}'
    python scripts/distill_variants.py runs/exp feddf \
        '{"kd": "pixel", "feature_fusion": false}' --no-gen
    python scripts/distill_variants.py runs/exp soft '{"class_targets": "soft"}' --client-steps 300
    python scripts/distill_variants.py runs/exp best '{}' --teachers synscapes-like --lr 1.5e-4
    python scripts/distill_variants.py runs/demo-imagenet-seg-s0 lr-low '{"feature_fusion": true}' \
        --profile default --lr-scale 0.1
    python scripts/distill_variants.py runs/demo-imagenet-seg-s0 gen300 --profile default \
        --gen-images 300

With ``--profile`` the student's preset, the distillation recipe (steps, batch, height, learning
rate) and the DistillConfig defaults are that demo profile's, as its ``feds2r`` row uses them
(``--distill-steps``, ``--lr`` and ``--lr-scale`` change the recipe; the overrides the config).
Without it the script keeps its first setting: the `public` profile's preset (m2f-cpu, the
default profile before the ImageNet start) and a DistillConfig of that time (rate × 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from feds2r.client import train_client
from feds2r.data import open_dataset
from feds2r.data.world import REAL_DOMAINS, SYNTHETIC_DOMAINS
from feds2r.demo import PROFILES, build_world, world_spec
from feds2r.engine.checkpoint import load_checkpoint, save_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.engine.train import TrainConfig
from feds2r.models import PUBLIC, create_model
from feds2r.server.distill import DistillConfig, run_distill
from feds2r.server.pipeline import find_unstable, generate_images, load_clients


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="?", default="{}", help="DistillConfig fields, JSON")
    parser.add_argument("--no-gen", action="store_true", help="real server images only")
    parser.add_argument("--gen-images", type=int, help="generate this many images (the profile's "
                        "generation settings and the run's inconsistency report) into "
                        "RUN/generated-N once and distil with them")  # fmt: skip
    parser.add_argument("--profile", help="take the student, recipe and DistillConfig of this "
                        "demo profile (e.g. default)")  # fmt: skip
    parser.add_argument("--world", type=Path, help="the demo world (default RUN/world)")
    parser.add_argument("--client-steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, help="default: 300, or the profile's")
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--teachers", help="comma-separated client domains to distil from (default: all)"
    )
    parser.add_argument("--lr", type=float, help="distillation learning rate (default: recipe's)")
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiplies the rate")
    parser.add_argument("--on", choices=("dev", "test"), default="dev", help="where to score")
    args = parser.parse_args()
    profile = PROFILES[args.profile or "public"]
    sizes = dataclasses.replace(profile.world, test_images=args.test_images)
    run, world = args.run, args.world or args.run / "world"
    recipe = {
        k: getattr(profile.clients, k) for k in ("batch_size", "height", "crop", "warmup_steps")
    }
    recipe["seed"] = args.seed
    clients = [run / "clients" / d for d in SYNTHETIC_DOMAINS]
    if not all((c / "model.safetensors").is_file() for c in clients):
        build_world(world, sizes, progress=True)
        torch.manual_seed(args.seed)
        init = create_model(profile.preset, backbone_weights=PUBLIC)
        save_checkpoint(init, run / "init", meta={"role": "initial"})
        tcfg = TrainConfig(steps=args.client_steps, checkpoint_every=100, **recipe)
        for domain, path in zip(SYNTHETIC_DOMAINS, clients, strict=True):
            train_client(
                world_spec(world, domain, "train"), profile.preset, path, tcfg, init=run / "init"
            )
    server = world_spec(world, "cityscapes-like", "train")
    demo_gen = run / "generated" / "generated.json"
    if not (run / "gen.json").is_file() and demo_gen.is_file():  # a demo output folder
        (run / "gen.json").write_text(demo_gen.read_text())
    if not (run / "gen.json").is_file():
        inc = find_unstable(
            load_clients(dict(zip(SYNTHETIC_DOMAINS, clients, strict=True))),
            server,
            profile.server.rule,
            out=run,
            height=profile.clients.height,
        )
        generation = dataclasses.replace(profile.server.generation, seed=args.seed)
        gen = generate_images(inc.scores, inc.unstable, run / "generated", generation)
        (run / "gen.json").write_text(json.dumps(gen.to_dict()))
    gen = json.loads((run / "gen.json").read_text())
    report = json.loads((run / "inconsistency.json").read_text())
    if args.gen_images is not None:
        folder = run / f"generated-{args.gen_images}"
        if not (folder / "generated.json").is_file():
            generation = dataclasses.replace(
                profile.server.generation, images=args.gen_images, seed=args.seed
            )
            generate_images(report["scores"], report["unstable_classes"], folder, generation)
        gen = json.loads((folder / "generated.json").read_text())
    overrides = json.loads(args.overrides)
    if args.profile:
        fields = {**dataclasses.asdict(profile.server.distill), "student": profile.preset}
        dcfg = DistillConfig(**{**fields, **overrides})
        from feds2r.demo.suites.feds2r import recipes

        tcfg = dataclasses.replace(recipes(profile, args.seed, True)[1], checkpoint_every=1000)
    else:
        dcfg = DistillConfig(**{"student": profile.preset, "finetune_lr": 1.0, **overrides})
        tcfg = TrainConfig(steps=300, checkpoint_every=1000, **recipe)
    if args.distill_steps is not None:
        tcfg = dataclasses.replace(tcfg, steps=args.distill_steps)
    if args.lr is not None:
        tcfg = dataclasses.replace(tcfg, lr=args.lr)
    tcfg = dataclasses.replace(tcfg, lr=tcfg.lr * args.lr_scale)
    teachers = clients
    if args.teachers:
        names = args.teachers.split(",")
        unknown = sorted(set(names) - set(SYNTHETIC_DOMAINS))
        if unknown:
            parser.error(f"unknown client domains: {', '.join(unknown)}")
        teachers = [run / "clients" / d for d in names]
    start = time.perf_counter()
    run_distill(
        teachers,
        server,
        run / "variants" / args.name,
        dcfg,
        tcfg,
        generated=None if args.no_gen else gen["spec"],
        inconsistency=report,
        progress=False,
    )
    seconds = time.perf_counter() - start
    model, meta = load_checkpoint(run / "variants" / args.name)
    where = [("cityscapes-like", "dev")] if args.on == "dev" else [(d, "val") for d in REAL_DOMAINS]
    scores = {
        f"{d}?{split}": evaluate(
            model,
            open_dataset(world_spec(world, d, split)),
            height=profile.clients.height,
            progress=False,
        )["miou"]
        for d, split in where
    }
    print(f"student init: {meta.get('student_init')}")
    print(
        f"{args.name:28s} mean {np.mean(list(scores.values())):5.1f}  "
        + " ".join(f"{d} {v:5.1f}" for d, v in scores.items())
        + f"  ({seconds:.0f} s; generated images: "
        + ("none" if args.no_gen else str(gen["num_images"]))
        + ")"
    )


if __name__ == "__main__":
    main()
