"""``feds2r client train`` and ``feds2r pretrain``: one training run each."""

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

if TYPE_CHECKING:  # imported where the flags are built: `feds2r --help` loads no model code
    from feds2r.client import ClientSettings
    from feds2r.engine.train import TrainConfig
    from feds2r.pretrain import PretrainConfig


def client_train(
    out: str,
    client: ClientSettings,
    train: TrainConfig,
    on_error: str,
    progress: bool,
    dry_run: int | None = None,
) -> int:
    """Train one client model on ``client.data`` with the recipe ``train`` into ``out``; with
    ``dry_run`` steps, measure that many in a temporary folder instead (:mod:`feds2r.plan`)."""
    from feds2r.client import train_client

    require(client.data, "client train: give --data FORMAT:PATH (or data in the [client] table)")
    if dry_run is not None:
        from feds2r.plan import dry_run_client

        plan = dry_run_client(out, client, train, steps=dry_run, on_error=on_error, progress=False)
        print(plan.to_text())
        return 0
    summary = train_client(
        client.data,
        client.preset,
        out,
        train,
        backbone_weights=client.backbone_weights or None,
        init=client.init or None,
        on_error=on_error,
        progress=progress,
    )
    print(
        f"trained {summary['preset']} on {summary['data']} for {summary['steps']} steps "
        f"in {summary['seconds']:.0f} s; checkpoint: {out}"
    )
    return 0


def pretrain(out: str, world: str | None, pretraining: PretrainConfig, progress: bool) -> int:
    """Pretrain a preset's backbone on the built-in world's `public` domain into ``out``."""
    from feds2r.pretrain import pretrain as run_pretrain

    summary = run_pretrain(pretraining, out, world=world, progress=progress)
    print(
        f"pretrained the {pretraining.preset} backbone for {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s; weights: {summary['weights']}"
    )
    return 0


# ----------------------------------------------------------------------------- parsers

DRY_RUN_STEPS = 3
"""Steps of a bare ``--dry-run`` (:data:`feds2r.plan.DRY_RUN_STEPS`; repeated here so that
building the parser imports no model code)."""

RECIPE_HELP = {
    "lr": "learning rate",
    "warmup_steps": "warm-up steps",
    "height": "resize images to this height (aspect kept)",
    "crop": "training crop HxW",
    "device": "auto, cpu or cuda[:N]",
}
"""How the training flags read where a field's docstring is not the right help."""


def add_recipe_flags(
    parser: argparse.ArgumentParser,
    section: str,
    only: tuple[str, ...],
    *,
    defaults: TrainConfig | None = None,
    help: dict[str, str | None] | None = None,
) -> None:
    """The flags of a training recipe (:class:`~feds2r.engine.train.TrainConfig`)."""
    from feds2r.engine.train import TrainConfig

    words = {**RECIPE_HELP, **(help or {})}
    add_config_flags(parser, section, TrainConfig, only, defaults=defaults, help=words)


def add_loader_flags(p: argparse.ArgumentParser, also: tuple[str, ...] = ()) -> None:
    """``--loader`` and ``--workers`` of the ``[train]`` table (and the fields ``also``, of
    ``threads`` only), shared by ``client train`` and the server's training stages."""
    from feds2r.engine.train import TrainConfig

    add_config_flags(
        p,
        "train",
        TrainConfig,
        (*also, "loader", "workers"),
        types={"threads": count_type(0), "workers": count_type(-1)},
        choices={"loader": ("stream", "memory")},
        help={
            "threads": "CPU threads (0: PyTorch's default; model.json records the count used, "
            "give it to rerun bit for bit)",
            "loader": "stream: read, resize and augment each sample from disk in --workers "
            "processes; memory: read every sample into memory first (small sets); the same "
            "batches (bit for bit with --threads 1)",
            "workers": "data-loading processes of --loader stream (-1: min(4, CPU cores); 0: "
            "none); any count gives the same batches",
        },
    )


def add_client_commands(sub: argparse._SubParsersAction) -> None:
    client = sub.add_parser(
        "client",
        help="client side: train on a private dataset",
        description="Client-side commands.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client_sub = client.add_subparsers(dest="client_command", metavar="SUBCOMMAND")
    command(
        client_sub,
        "train",
        client_train,
        flags=_client_train_flags,
        help="train a segmentation model on a labelled dataset",
        description="Supervised training of one client model. Writes OUT/model.safetensors + "
        "OUT/model.json (the checkpoint), OUT/config.toml (the resolved config), "
        "OUT/train_log.jsonl and OUT/loss_curve.png. Run the same command again to resume a "
        "stopped run; an OUT holding another run (other data, preset or config) is refused "
        "and left as it is. Settings come from --config (a TOML file with [client] and [train] "
        "tables, such as a run's own config.toml; the preset may also be given at the top "
        "level) and are overridden by the flags. --dry-run checks the data and --out, runs a "
        "few steps in a temporary folder and prints their time, data time, peak memory and "
        "the projected wall time of the whole run, writing nothing to OUT.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r client train --data gta5:data/world/gta5-like?split=train --out runs/gta5
              feds2r client train --data synthia:/data/synthia --preset segformer-cpu --steps 300 \\
                  --out runs/synthia
              feds2r client train --data gta5:/data/gta5 --preset m2f-swin-t --height 512 \\
                  --crop 512x1024 --backbone-weights swin_tiny.safetensors --out runs/gta5-swin
              feds2r client train --data gta5:/data/gta5 --preset m2f-swin-t --height 512 \\
                  --crop 512x1024 --init hf/mask2former-swin-tiny-cityscapes --out runs/gta5-hf
              feds2r client train --data gta5:/data/gta5 --no-pretrained --backbone-lr-mult 1 \\
                  --out runs/gta5-random
              feds2r client train --data gta5:/data/gta5 --config recipe.toml --out runs/gta5
              feds2r client train --config configs/paper/swin-t-client.toml \\
                  --data gta5:/data/gta5 --out runs/gta5-swin --dry-run
            """),
    )


def add_pretrain_command(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "pretrain",
        pretrain,
        flags=_pretrain_flags,
        help="pretrain a preset's backbone on the built-in world's public domain",
        description="Pretrain the backbone of a preset on the `public` domain of the built-in "
        "world (a randomised style per image; docs/world.md) from image-level labels only "
        "(which classes an image shows: multi-label classification), the offline stand-in for "
        "ImageNet weights. Writes OUT/backbone.safetensors (what --backbone-weights loads), "
        "OUT/pretrain.json, OUT/config.toml, OUT/train_log.jsonl and OUT/loss_curve.png; the "
        "public images go to OUT/public unless --world names a folder. Run the same command "
        "again to resume. The weights feds2r ships were made with the defaults (docs/models.md).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r pretrain --preset m2f-cpu --out runs/pretrain-m2f-cpu
              feds2r pretrain --preset segformer-cpu --steps 500 --warmup-steps 50 --out /tmp/pt \\
                  --world /tmp/public
            """),
    )


def _client_train_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.client import ClientSettings
    from feds2r.engine.train import TrainConfig

    words = {
        "data": "labelled dataset spec FORMAT:PATH (or data in [client])",
        "preset": "model preset (see `feds2r models`)",
        "backbone_weights": "where the backbone starts: 'pretrained' (default: the preset's "
        "own start, 'public' for m2f-cpu/segformer-cpu, 'imagenet' for the *-effl0 presets), "
        "'public' (the backbone feds2r ships), 'imagenet' (EfficientNet-Lite0's ImageNet "
        "weights), a .safetensors file or a Hugging Face model directory",
        "init": "model to start from instead: a feds2r checkpoint (the server's initial model) "
        "or a Hugging Face model directory of the preset's architecture with 19 classes",
    }
    add_config_flags(p, "client", ClientSettings, ("data",), help=words)
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    add_config_flags(p, "client", ClientSettings, ("preset",), help=words)
    add_config_file(
        p,
        {"client": ClientSettings, "train": TrainConfig},
        top_level={"preset": "client"},
        help="TOML file with [client] and [train] tables (e.g. a run's config.toml)",
    )
    add_recipe_flags(
        p,
        "train",
        ("steps", "batch_size", "lr", "warmup_steps", "seed", "height", "crop", "device"),
    )
    add_config_flags(p, "client", ClientSettings, ("backbone_weights",), help=words)
    add_switch(
        p, "--no-pretrained", "client", "backbone_weights", "", "start from random weights instead"
    )
    add_recipe_flags(
        p,
        "train",
        ("backbone_lr_mult",),
        help={"backbone_lr_mult": "backbone learning rate = lr x this (for a pretrained backbone)"},
    )
    add_config_flags(p, "client", ClientSettings, ("init",), help=words)
    add_skip_bad(p, "leave unreadable samples out")
    add_loader_flags(p, ("threads",))
    p.add_argument(
        "--dry-run",
        nargs="?",
        const=DRY_RUN_STEPS,
        type=count_type(1),
        metavar="STEPS",
        help="check the data and --out, run STEPS steps (default 3) in a temporary folder and "
        "print time per step, data time, peak memory and the projected wall time; writes "
        "nothing to --out",
    )
    add_quiet(p)


def _pretrain_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.pretrain import PretrainConfig

    base = PretrainConfig()
    add_config_flags(p, "pretraining", PretrainConfig, ("preset",), help={"preset": "model preset"})
    p.add_argument("--out", required=True, help="output folder (resumed if it holds a run)")
    p.add_argument(
        "--world",
        help="folder of the public images (default OUT/public): new, empty, or public images "
        "written with the same settings (reused)",
    )
    add_config_flags(
        p,
        "pretraining",
        PretrainConfig,
        ("images",),
        help={"images": "public images to write and train on"},
    )
    add_recipe_flags(
        p,
        "pretraining.train",
        ("steps", "warmup_steps", "batch_size", "lr", "seed"),
        defaults=base.train,
        help={"seed": "seed of the training run"},
    )
    add_recipe_flags(p, "pretraining.train", ("device",), defaults=base.train)
    add_quiet(p)
