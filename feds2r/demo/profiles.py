"""The demo's profiles: the world a run builds and the budgets of its trainings (``--profile``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feds2r.config import check_types
from feds2r.engine.train import TrainConfig
from feds2r.errors import Feds2rError
from feds2r.models import PRESETS
from feds2r.server.distill import DistillConfig
from feds2r.server.pipeline import GenerationConfig, ServerConfig


@dataclass(frozen=True)
class WorldSizes:
    """The built-in world a demo run builds: image size and images per split."""

    size: tuple[int, int] = (128, 256)
    """Image size (H, W)."""
    client_images: int = 400
    """Per synthetic client domain (its train split)."""
    server_images: int = 400
    """The server's unlabelled images (the cityscapes-like train split)."""
    test_images: int = 80
    """Per real-like test domain (ACDC: divided over its four conditions)."""
    dev_images: int = 60
    """Labelled `dev` images of the server's domain: learning curves and every choice made on
    the demo's results are read from them, never from the test domains."""

    def __post_init__(self) -> None:
        check_types(self)
        if min(self.size) < 8:
            raise ValueError(f"size must be at least 8x8, got {self.size}")
        if min(self.client_images, self.server_images, self.test_images, self.dev_images) < 1:
            raise ValueError("every split needs at least one image")


@dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run: the world, the clients' recipe and the server's
    config (the same config tree as ``feds2r federate``; the seed is the run's)."""

    name: str
    """The profile's name (``--profile``), recorded in results.json."""
    world: WorldSizes = field(default_factory=WorldSizes)
    """The built-in world the run builds (or reuses)."""
    clients: TrainConfig = field(default_factory=TrainConfig)
    """The clients' training recipe; the upper bounds train with it too (at 1x and at one
    client's steps times the number of clients)."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """The server's stages; ``server.train`` is every distillation row's recipe."""
    preset: str = "m2f-cpu"
    """The architecture of every model of the run (see ``feds2r models``)."""
    curve_every: int = 150
    """Steps between two points of a learning curve (dev mIoU)."""
    lite_student: str = "segformer-cpu"
    """The small preset the lite rows distil into (``feds2r demo --lite``: ``feds2r-lite`` and
    ``direct-lite``), from its own pretrained start."""
    lite_recipe: Mapping[str, Any] = field(default_factory=dict)
    """TrainConfig fields of the lite rows' recipe that differ from the distillation's (both
    lite rows alike), e.g. their steps."""

    def __post_init__(self) -> None:
        for name in ("preset", "lite_student"):
            if getattr(self, name) not in PRESETS:
                raise Feds2rError(
                    f"Profile {self.name!r}: unknown {name} {getattr(self, name)!r}; valid "
                    f"presets: {', '.join(PRESETS)}"
                )


def make_profile(
    name: str,
    size: tuple[int, int],
    client_images: int,
    server_images: int,
    test_images: int,
    generated_images: int,
    client_steps: int,
    distill_steps: int,
    *,
    batch_size: int = 8,
    height: int = 128,
    crop: tuple[int, int] = (128, 256),
    warmup_steps: int = 50,
    dev_images: int = 60,
    curve_every: int = 150,
    preset: str = "m2f-cpu",
    lite_student: str = "segformer-cpu",
    finetune_lr: float = 1.0,
    lite_recipe: Mapping[str, Any] | None = None,
) -> Profile:
    """A profile from its sizes and budgets: the clients and the upper bounds train
    ``client_steps`` with one recipe, the distillation rows ``distill_steps`` with the same
    recipe (times ``finetune_lr`` for a student that starts from the clients:
    :attr:`~feds2r.server.distill.DistillConfig.finetune_lr`), the lite rows with
    ``lite_recipe``'s fields in place of that recipe's; the server generates
    ``generated_images`` images of the world's ``size``."""
    recipe = TrainConfig(
        steps=client_steps,
        batch_size=batch_size,
        height=height,
        crop=crop,
        warmup_steps=warmup_steps,
        checkpoint_every=100,
        # the demo's small worlds fit in memory; streamed views are computed with one thread,
        # so at the demo's sizes with two threads they would round differently from the figures
        # docs/results.md reports (docs/training.md, "Data")
        loader="memory",
    )
    return Profile(
        name,
        WorldSizes(size, client_images, server_images, test_images, dev_images),
        recipe,
        ServerConfig(
            generation=GenerationConfig(images=generated_images, size=size),
            distill=DistillConfig(finetune_lr=finetune_lr),
            train=dataclasses.replace(recipe, steps=distill_steps),
        ),
        preset=preset,
        curve_every=curve_every,
        lite_student=lite_student,
        lite_recipe=dict(lite_recipe or {}),
    )


PROFILES: dict[str, Profile] = {
    "quick": make_profile(
        "quick",
        (64, 128),
        24,
        24,
        8,
        12,
        12,
        12,
        batch_size=4,
        height=64,
        crop=(64, 128),
        warmup_steps=4,
        dev_images=8,
        curve_every=6,
    ),
    # the demo's start: real ImageNet weights (EfficientNet-Lite0) under a per-pixel model
    # (seg-effl0: SegFormer's all-MLP head), chosen on dev over the public stand-in (every row
    # higher on dev over five seeds) and over Mask2Former on the same backbone (one client at 200
    # steps: 21.9 dev mIoU against 15.3-17.0). Its step costs about 1.1-1.2x m2f-cpu's, so 250
    # steps stand for the public profile's 300 (equal wall time). A student started from the
    # clients (FedAvg) distils at a tenth of the rate: on seed 0's dev split 21.2 mIoU against
    # 18.7 at the full rate and 19.6 at 0.3 (scripts/distill_variants.py). Its lite rows distil
    # into seg-effl0-tiny, EfficientNet-Lite0's first stages with their ImageNet weights, for
    # 500 steps with the backbone at the full rate (chosen on dev: 12.3-15.4 dev mIoU with the
    # distillation's recipe, 18.1-19.4 with this one; a lite row then takes about 1.3x a
    # distillation row's time). (docs/results.md)
    "default": make_profile(
        "default",
        (128, 256),
        400,
        400,
        80,
        150,
        250,
        250,
        height=96,
        crop=(96, 192),
        preset="seg-effl0",
        lite_student="seg-effl0-tiny",
        finetune_lr=0.1,
        lite_recipe={"steps": 500, "backbone_lr_mult": 1.0},
    ),
    # the offline stand-in start: m2f-cpu with the backbone feds2r ships (pretrained on the
    # world's public domain from image-level tags), the demo's default until the ImageNet start
    # won on dev; training at height 96 keeps the run within 15 minutes on a 2-core CPU
    "public": make_profile(
        "public", (128, 256), 400, 400, 80, 150, 300, 300, height=96, crop=(96, 192)
    ),
    # the public profile's world and recipe from real ImageNet weights under Mask2Former
    # (m2f-effl0), at the public profile's wall time: its training step costs about 1.5x
    # m2f-cpu's (scripts/bench_models.py --side-by-side), so 200 steps stand for 300; its lite
    # rows distil into seg-effl0-tiny (0.22x m2f-effl0's parameters)
    "imagenet": make_profile(
        "imagenet",
        (128, 256),
        400,
        400,
        80,
        150,
        200,
        200,
        height=96,
        crop=(96, 192),
        preset="m2f-effl0",
        lite_student="seg-effl0-tiny",
    ),
    "full": make_profile(
        "full",
        (256, 512),
        800,
        600,
        200,
        300,
        1000,
        1000,
        warmup_steps=100,
        dev_images=200,
        curve_every=250,
    ),  # fmt: skip
}


def get_profile(profile: str | Profile) -> Profile:
    """``profile`` itself, or the profile of :data:`PROFILES` it names."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise Feds2rError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[profile]
