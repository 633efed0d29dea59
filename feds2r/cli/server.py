"""``feds2r server inconsistency | augment | distill``: the server's stages, one command each.

Each command is a thin call of its stage function (:mod:`feds2r.server.pipeline`,
:func:`feds2r.server.distill.run_distill`), which writes the stage's outputs and config.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING

from feds2r.cli.flags import (
    add_config_file,
    add_config_flags,
    add_quiet,
    add_skip_bad,
    add_switch,
    command,
    count_type,
    require,
)
from feds2r.cli.inference import load_model
from feds2r.cli.train import add_recipe_flags
from feds2r.errors import Feds2rError

if TYPE_CHECKING:  # imported where the flags are built: `feds2r --help` loads no model code
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import DistillConfig, DistillInputs
    from feds2r.server.inconsistency import UnstableRule
    from feds2r.server.pipeline import GenerationConfig


def server_inconsistency(
    clients: list[str],
    data: str,
    out: str,
    height: int,
    rule: UnstableRule,
    device: str,
    on_error: str,
    progress: bool,
) -> int:
    """Stage 1: the clients' per-class inconsistency on the server's images, into ``out``."""
    from pathlib import Path

    from feds2r.server.pipeline import find_unstable

    if len(clients) < 2:
        raise Feds2rError("server inconsistency: give at least two --clients checkpoints")
    teachers: dict = {}
    dev = None
    for path in clients:
        model, _, dev = load_model(path, device)
        name, k = str(path), 1
        while name in teachers:  # the same checkpoint given twice stays two teachers
            k += 1
            name = f"{path}#{k}"
        teachers[name] = model
    result = find_unstable(
        teachers,
        data,
        rule,
        out=out,
        height=height,
        device=dev,
        on_error=on_error,
        progress=progress,
    )
    for name, score in sorted(result.scores.items(), key=lambda kv: -(kv[1] or -1)):
        mark = "  unstable" if name in result.unstable else ""
        shown = f"{score:.3f}" if score is not None else "  n/a"
        print(f"{name:<14} {shown}{mark}")
    print(f"threshold {result.threshold:.3f}; unstable: {', '.join(result.unstable) or 'none'}")
    out = Path(out)
    print(f"wrote {out / 'inconsistency.json'} and {out / 'inconsistency.png'}")
    return 0


def server_augment(
    inconsistency: str, out: str, generation: GenerationConfig, progress: bool
) -> int:
    """Stage 2: prompts for the unstable classes of the report ``inconsistency`` and one image
    each, into ``out``."""
    from feds2r.server.inconsistency import load_inconsistency
    from feds2r.server.pipeline import generate_images

    report = load_inconsistency(inconsistency)
    images = generate_images(
        report["scores"], report["unstable_classes"], out, generation, progress=progress
    )
    per = ", ".join(f"{c} {n}" for c, n in images.per_class.items())
    print(
        f"generated {images.num_images} images ({per}) with {images.generator}; "
        f"load them as {images.spec}"
    )
    return 0


def server_distill(
    out: str,
    server: DistillInputs,
    distill: DistillConfig,
    train: TrainConfig,
    on_error: str,
    progress: bool,
) -> int:
    """Stage 3: the client models ``server.clients`` distilled into the global model ``out``."""
    from feds2r.server.distill import run_distill

    require(
        server.clients and server.data,
        "server distill: give --clients and --data (or clients and data in [server])",
    )
    summary = run_distill(
        list(server.clients),
        server.data,
        out,
        distill,
        train,
        generated=server.generated or None,
        inconsistency=server.inconsistency or None,
        on_error=on_error,
        progress=progress,
    )
    print(
        f"distilled {len(server.clients)} clients into a {distill.student} in "
        f"{summary['seconds']:.0f} s; global model: {out}"
    )
    return 0


# ----------------------------------------------------------------------------- parsers


def augment_defaults() -> GenerationConfig:
    """What `server augment` generates without flags: 200 images of 256x512 (the command's
    defaults since before the config tree; the pipeline's are 150 at the server images' size)."""
    from feds2r.server.pipeline import GenerationConfig

    return GenerationConfig(images=200, size=(256, 512))


def add_server_commands(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser(
        "server",
        help="server side: inconsistency, augmentation",
        description="Server-side commands of FedS2R.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server_sub = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND")
    command(
        server_sub,
        "inconsistency",
        server_inconsistency,
        flags=_inconsistency_flags,
        help="score per class how much the client models disagree",
        description="Run every client model on the server's unlabelled images and score, per "
        "class, 1 - mean pairwise IoU of their predicted masks (accumulated over the set). "
        "Classes scoring at least mean + STD_FACTOR x std are unstable (between MIN and MAX of "
        "them). Writes OUT/inconsistency.json and OUT/inconsistency.png (a bar chart).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server inconsistency --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --out runs/server
            """),
    )
    command(
        server_sub,
        "augment",
        server_augment,
        flags=_augment_flags,
        bases=lambda: {"generation": augment_defaults()},
        help="generate images of the unstable classes",
        description="Write prompts about the unstable classes (more for more inconsistent "
        "ones) and generate one image per prompt. Writes OUT/images/*.png (an unlabelled "
        "dataset: folder:OUT/images), OUT/prompts.jsonl and OUT/generated.json.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server augment --inconsistency runs/server --num 200 --out runs/generated
              feds2r server augment --inconsistency runs/server --num 200 --out runs/gen-sd \\
                  --generator diffusers --model-dir /models/sd-turbo --steps 2 --guidance 0
              feds2r server augment --inconsistency runs/server --num 50 --out runs/gen-llm \\
                  --prompts llm --llm-url http://127.0.0.1:8000/v1 --llm-model llama-3-8b
            """),
    )
    command(
        server_sub,
        "distill",
        server_distill,
        flags=_distill_flags,
        help="distil the client models into the global model",
        description="Multi-client knowledge distillation (FedS2R). The client models are "
        "frozen teachers; on every server image (real, plus generated with --generated) their "
        "predictions are combined (with --fusion: from their averaged decoder features, each "
        "decoded by the teacher's own head, as FedS2R publishes it; off by default, chosen on "
        "the dev split: docs/method.md), and the global model learns the combined soft "
        "targets (KL on classes, BCE + Dice on masks). Switches for the ablations: --fusion, "
        "--kd pixel --combine mean (FedDF-style per-pixel KD of the plain mean), "
        "--inconsistency-weighted. Settings: a TOML with "
        "[server], [distill] and [train] tables (--config; its own config.toml is one), "
        "overridden by flags. Writes the checkpoint, "
        "config.toml, train_log.jsonl and loss_curve.png to OUT. See docs/method.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train \\
                  --generated runs/generated --out runs/global
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --fusion \\
                  --generated runs/generated --out runs/global-fused
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train --kd pixel \\
                  --combine mean --out runs/feddf
            """),
    )


def _inconsistency_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.server.inconsistency import UnstableRule

    p.add_argument("--clients", nargs="+", required=True, help="client checkpoints (2 or more)")
    p.add_argument("--data", required=True, help="the server's images (labels are not used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--height", type=count_type(16), default=128, help="inference height (>= 16; default 128)"
    )
    add_config_flags(p, "rule", UnstableRule, ("std_factor", "min_unstable", "max_unstable"))
    p.add_argument("--device", default="auto")
    add_skip_bad(p, "skip unreadable images")
    add_quiet(p, None)


def _augment_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.server.pipeline import GENERATORS, PROMPTS, GenerationConfig

    p.add_argument(
        "--inconsistency", required=True, help="inconsistency.json, or the folder holding it"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or an earlier augment output (replaced)",
    )
    add_config_flags(
        p,
        "generation",
        GenerationConfig,
        ("images", "prompts", "llm_url", "llm_model", "llm_key_env", "generator", "model_dir"),
        defaults=augment_defaults(),
        rename={"images": "num"},
        types={"images": count_type(1)},
        choices={"prompts": PROMPTS, "generator": GENERATORS},
        help={
            "images": "number of images, exactly",
            "prompts": None,
            "generator": None,
            "llm_url": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
            "llm_model": "model name for the chat endpoint",
            "llm_key_env": "environment variable holding an API key",
            "model_dir": "local diffusers pipeline folder (--generator diffusers)",
        },
    )
    add_config_flags(
        p,
        "generation",
        GenerationConfig,
        ("steps", "guidance", "size", "seed", "device"),
        defaults=augment_defaults(),
        help={
            "steps": "diffusion steps (diffusers)",
            "guidance": "guidance scale (diffusers)",
            "size": "image HxW",
            "seed": None,
            "device": None,
        },
    )
    add_quiet(p, None)


def _distill_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import COMBINES, INITS, DistillConfig, DistillInputs

    words = {
        "clients": "client checkpoints (or clients in [server])",
        "data": "the server's real images (labels unused; or data in [server])",
        "generated": "generated images: a spec or a `server augment` folder",
        "inconsistency": "inconsistency report (for --inconsistency-weighted)",
        "init": "student initialisation (default auto: FedAvg, or the client closest to the "
        "teachers' ensemble when FedAvg agrees less with it)",
        "kd": "distillation objective",
        "class_targets": "class label of each mask target",
        "combine": "teachers' target: majority (default; their mean where most agree, elsewhere "
        "the prediction of the teacher that agrees most with the others) or mean (everywhere)",
        "pixel_weight": "add per-pixel KL to mask KD (weight)",
        "fusion_weight": "share of fused features",
    }
    inputs = ("clients", "data", "generated")
    add_config_flags(
        p, "server", DistillInputs, inputs, help=words, extra={"clients": {"nargs": "+"}}
    )
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    add_config_flags(p, "server", DistillInputs, ("inconsistency",), help=words)
    add_config_flags(
        p,
        "distill",
        DistillConfig,
        ("student", "init", "kd", "class_targets", "combine", "pixel_weight"),
        help=words,
        choices={
            "init": INITS,
            "kd": ("mask", "pixel"),
            "class_targets": ("onehot", "soft"),
            "combine": COMBINES,
        },
    )
    fusion = p.add_mutually_exclusive_group()
    add_switch(
        fusion,
        "--fusion",
        "distill",
        "feature_fusion",
        True,
        "feature fusion, as FedS2R publishes it (off by default: chosen on dev, docs/method.md)",
    )
    add_switch(
        fusion, "--no-fusion", "distill", "feature_fusion", False, "no feature fusion (default)"
    )
    add_switch(
        p,
        "--no-align",
        "distill",
        "fusion_align",
        False,
        "fuse raw features (no least-squares alignment between the teachers' spaces)",
    )
    add_config_flags(p, "distill", DistillConfig, ("fusion_weight",), help=words)
    add_switch(
        p,
        "--inconsistency-weighted",
        "distill",
        "inconsistency_weighting",
        True,
        "weight teachers per class by their agreement",
    )
    add_config_flags(p, "distill", DistillConfig, ("temperature",))
    add_skip_bad(p, "leave unreadable images out")
    add_config_file(
        p,
        {"server": DistillInputs, "distill": DistillConfig, "train": TrainConfig},
        help="TOML with [server], [distill] and [train] tables (e.g. its config.toml)",
    )
    add_recipe_flags(
        p,
        "train",
        ("steps", "batch_size", "lr", "warmup_steps", "seed", "height", "crop", "device"),
    )
    add_quiet(p, None)
