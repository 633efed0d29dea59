"""``feds2r server inconsistency | augment | distill | self-train | lite``: the server's stages,
one command each.

Each command is a thin call of its stage function (:mod:`feds2r.server.pipeline`,
:func:`feds2r.server.distill.run_distill`, :func:`feds2r.server.selftrain.self_train`,
:func:`feds2r.server.lite.distill_lite`), which writes the stage's outputs and config.
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
from feds2r.cli.train import add_loader_flags, add_recipe_flags
from feds2r.errors import Feds2rError

if TYPE_CHECKING:  # imported where the flags are built: `feds2r --help` loads no model code
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import DistillConfig, DistillInputs
    from feds2r.server.inconsistency import UnstableRule
    from feds2r.server.lite import LiteConfig
    from feds2r.server.pipeline import GenerationConfig, StageInputs
    from feds2r.server.selftrain import SelfTrainConfig


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
    import dataclasses
    from pathlib import Path

    from feds2r.io import prepare_output
    from feds2r.server.pipeline import find_unstable

    if len(clients) < 2:
        raise Feds2rError("server inconsistency: give at least two --clients checkpoints")
    inputs = {
        "clients": [str(c) for c in clients],
        "data": data,
        "height": height,
        "rule": dataclasses.asdict(rule),
    }
    # the one output rule, before any model is loaded: OUT is new, empty or an earlier report
    # of the same inputs (redone)
    with prepare_output(
        out,
        "server inconsistency",
        marker="inconsistency.json",
        inputs=inputs,
        hint="Give another --out (or the same --clients, --data, --height and rule to redo it)",
    ) as dest:
        teachers: dict = {}
        dev = None
        for path in clients:
            model, _, dev = load_model(path, device)
            name, k = str(path), 1
            while name in teachers:  # the same checkpoint given twice stays two teachers
                k += 1
                name = f"{path}#{k}"
            teachers[name] = model
        dest.begin()
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
        dest.finish()
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
        f"distilled {len(server.clients)} clients into a "
        f"{distill.student or 'model of their preset'} in "
        f"{summary['seconds']:.0f} s; global model: {out}"
    )
    return 0


def _stage_inputs(server: StageInputs, what: str, command: str) -> None:
    require(
        server.model and server.clients and server.data,
        f"server {command}: give --{what}, --clients and --data (or model, clients and data in "
        "[server])",
    )


def server_self_train(
    out: str,
    server: StageInputs,
    selftrain: SelfTrainConfig,
    distill: DistillConfig,
    train: TrainConfig,
    on_error: str,
    progress: bool,
) -> int:
    """Stage 4: the distilled global model ``server.model`` self-trained into ``out``."""
    from feds2r.server.selftrain import self_train

    _stage_inputs(server, "model", "self-train")
    if distill.feature_fusion:
        raise Feds2rError(
            "server self-train: --fusion does not apply (self-training combines the client "
            "models' predictions without feature fusion); leave it out (or set feature_fusion "
            "= false in the [distill] table of --config)"
        )
    summary = self_train(
        server.model,
        list(server.clients),
        server.data,
        out,
        selftrain,
        distill,
        train,
        generated=server.generated or None,
        on_error=on_error,
        progress=progress,
    )
    print(f"self-trained {server.model} in {summary['seconds']:.0f} s; global model: {out}")
    return 0


def server_lite(
    out: str,
    server: StageInputs,
    lite: LiteConfig,
    distill: DistillConfig,
    train: TrainConfig,
    on_error: str,
    progress: bool,
) -> int:
    """The lightweight route: a ``lite.student`` model distilled through ``server.model``."""
    from feds2r.engine.checkpoint import read_sidecar
    from feds2r.server.lite import distill_lite

    _stage_inputs(server, "bridge", "lite")
    bridge_preset = read_sidecar(server.model)["preset"]
    if bridge_preset == lite.student:
        raise Feds2rError(
            f"server lite: --student-preset {lite.student} is the preset of --bridge "
            f"{server.model} itself, so the result would be no lighter; give a smaller preset "
            "(see `feds2r models`)"
        )
    summary = distill_lite(
        server.model,
        list(server.clients),
        server.data,
        out,
        lite,
        distill,
        train,
        generated=server.generated or None,
        on_error=on_error,
        progress=progress,
    )
    print(
        f"distilled a {lite.student} through {server.model} in {summary['seconds']:.0f} s; "
        f"lightweight global model: {out}"
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
        help="server side: inconsistency, augmentation, distillation, self-training, lite",
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
              feds2r server distill --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train \\
                  --student-preset segformer-cpu --out runs/direct-lite
            """),
    )
    command(
        server_sub,
        "self-train",
        server_self_train,
        flags=_self_train_flags,
        help="self-train the distilled global model on the server's images",
        description="Self-training after distillation (CLOUDS' recipe, with DACS/DAFormer "
        "values): a mean teacher (EMA of the student) pseudo-labels the server's real and "
        "generated images, the student learns them on ClassMix views with a confidence "
        "weight, optionally refined with class-agnostic regions (--refine builtin | "
        "watershed | sam), and the clients' combined targets remain a term. Settings: a TOML "
        "with [server], [selftrain], [distill] and [train] tables (--config; its own "
        "config.toml is one), overridden by flags. See docs/method.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server self-train --model runs/global \\
                  --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train \\
                  --generated runs/generated --refine builtin --out runs/global-st
              feds2r server self-train --model runs/global --clients runs/gta5 runs/synthia \\
                  --data cityscapes:data/cs?split=train --refine sam --sam-dir /models/sam \\
                  --device cuda --out runs/global-st-sam
            """),
    )
    command(
        server_sub,
        "lite",
        server_lite,
        flags=_lite_flags,
        help="distil a lightweight global model through the large one (DUDA)",
        description="The lightweight route (DUDA's ideas): a small preset (--student-preset, "
        "default seg-effl0-tiny) learns first the large global model's predictions alone "
        "(--bridge; pre-adaptation), then a mix of them and the clients' combined targets, "
        "each pixel weighted by how much the two models disagree on its class. Settings: a "
        "TOML with [server], [lite], [distill] and [train] tables (--config), overridden by "
        "flags. The checkpoint's model.json names the route and its bridge. See "
        "docs/method.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r server lite --bridge runs/global \\
                  --clients runs/gta5 runs/synthia runs/synscapes \\
                  --data cityscapes:data/world/cityscapes-like?split=train \\
                  --generated runs/generated --student-preset segformer-cpu --out runs/lite
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
        help="output folder: new, empty, or an earlier augment output of the same settings "
        "(replaced)",
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
        "student": "preset of the global model (another than the clients', e.g. segformer-cpu, "
        "makes a lightweight model straight from the teachers)",
        "init": "student initialisation (default auto: FedAvg, or the client closest to the "
        "teachers' ensemble when FedAvg agrees less with it; for another preset, its shipped "
        "pretrained backbone)",
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
        rename={"student": "student_preset"},
        choices={
            "init": INITS,
            "kd": ("mask", "pixel"),
            "class_targets": ("onehot", "soft"),
            "combine": COMBINES,
        },
    )
    p.add_argument("--student", dest="distill.student", default=None, help=argparse.SUPPRESS)
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
    add_config_flags(p, "distill", DistillConfig, ("temperature", "finetune_lr"))
    _targets_flag(p)
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
    add_loader_flags(p)
    add_quiet(p, None)


def _later_stage_inputs(p: argparse.ArgumentParser, model_flag: str, model_help: str) -> None:
    from feds2r.server.pipeline import StageInputs

    words = {
        "model": model_help,
        "clients": "client checkpoints (or clients in [server])",
        "data": "the server's real images (labels unused; or data in [server])",
        "generated": "generated images: a spec or a `server augment` folder",
    }
    add_config_flags(
        p,
        "server",
        StageInputs,
        ("model", "clients", "data", "generated"),
        help=words,
        rename={"model": model_flag},
        extra={"clients": {"nargs": "+"}},
    )
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    """How the clients' targets are combined: as in `server distill`."""
    from feds2r.server.distill import COMBINES, DistillConfig

    add_config_flags(
        p,
        "distill",
        DistillConfig,
        ("combine",),
        help={"combine": "teachers' target: majority (default) or mean"},
        choices={"combine": COMBINES},
    )
    add_switch(
        p,
        "--fusion",
        "distill",
        "feature_fusion",
        True,
        "combine the teachers from fused features (as the FedS2R distillation may)",
    )
    _targets_flag(p)


def _targets_flag(p: argparse.ArgumentParser) -> None:
    """Where the teachers' targets are kept while the stage trains."""
    from feds2r.server.distill import DistillConfig
    from feds2r.server.targets import TARGETS

    add_config_flags(
        p,
        "distill",
        DistillConfig,
        ("targets",),
        help={
            "targets": "where the teachers' targets of every server image are kept: memory, "
            "disk (a memory-mapped float16 file in OUT/teacher_targets, read batch by batch; "
            "for server sets too large for memory) or auto (disk above 1 GiB); the same "
            "model either way"
        },
        choices={"targets": TARGETS},
    )


def _stage_tail(p: argparse.ArgumentParser, section: str, cls: type) -> None:
    from feds2r.engine.train import TrainConfig
    from feds2r.server.distill import DistillConfig
    from feds2r.server.pipeline import StageInputs

    add_skip_bad(p, "leave unreadable images out")
    add_config_file(
        p,
        {"server": StageInputs, section: cls, "distill": DistillConfig, "train": TrainConfig},
        help=f"TOML with [server], [{section}], [distill] and [train] tables (e.g. its "
        "config.toml)",
    )
    add_recipe_flags(
        p,
        "train",
        ("steps", "batch_size", "lr", "warmup_steps", "seed", "height", "crop", "device"),
    )
    add_loader_flags(p)
    add_quiet(p, None)


def _self_train_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.server.refine import PROPOSERS
    from feds2r.server.selftrain import SelfTrainConfig

    _later_stage_inputs(p, "model", "the distilled global model (or model in [server])")
    add_config_flags(
        p,
        "selftrain",
        SelfTrainConfig,
        ("ema", "threshold", "teacher_weight", "teacher_steps", "refine", "refine_min_share",
         "sam_dir"),
        choices={"refine": ("none", *PROPOSERS)},
    )  # fmt: skip
    add_switch(p, "--no-classmix", "selftrain", "classmix", False, "no ClassMix views")
    _teacher_flags(p)
    _stage_tail(p, "selftrain", SelfTrainConfig)


def _lite_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.server.lite import LiteConfig

    _later_stage_inputs(p, "bridge", "the large global model to learn through (or model in "
                        "[server])")  # fmt: skip
    add_config_flags(
        p,
        "lite",
        LiteConfig,
        ("student", "pre_fraction", "bridge_weight", "temperature"),
        rename={"student": "student_preset"},
    )
    add_switch(
        p,
        "--no-inconsistency-weighting",
        "lite",
        "inconsistency_weighting",
        False,
        "no class weighting after the pre-adaptation",
    )
    add_switch(
        p,
        "--no-pretrained",
        "lite",
        "pretrained",
        False,
        "start the small model from random weights instead of its shipped backbone",
    )
    _teacher_flags(p)
    _stage_tail(p, "lite", LiteConfig)
