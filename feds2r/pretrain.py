"""Pretraining a preset's backbone on the `public` domain: the offline stand-in for ImageNet.

FedS2R's clients fine-tune one ImageNet-pretrained backbone, so they share a feature space. With
nothing downloadable, feds2r pretrains the CPU presets' backbones on the built-in world's `public`
domain (a randomised style per image, ``docs/world.md``) from **image-level** labels only: which
of the 19 classes an image shows and what share of it each covers, as ImageNet's labels say what
an image shows, never where. One linear layer on the backbone's pooled multi-scale features
predicts the classes present (binary cross-entropy) and the class shares (KL divergence); only
the backbone is kept.

The loop is feds2r's one training loop (:func:`feds2r.engine.train.train`) with this loss, batch
and save function passed in: the same progress bar, log, exact resume and refusal of a changed
config. ``OUT/backbone.safetensors`` holds the backbone's state dict (what ``--backbone-weights``
loads); ``OUT/pretrain.json`` says how it was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from feds2r.config import write_run_config
from feds2r.data import open_dataset
from feds2r.data.labels import CLASS_NAMES, NUM_CLASSES
from feds2r.data.world import synth_domain
from feds2r.engine import distributed
from feds2r.engine.data import ResizedCache, make_batch
from feds2r.engine.runs import claim_run
from feds2r.engine.train import TrainConfig, train
from feds2r.errors import Feds2rError
from feds2r.io import write_atomic
from feds2r.models import PRESETS, SegModel, create_model


def _default_train() -> TrainConfig:
    # whole images at height 96 (the demo's training height); no crop or rescale, since an image's
    # tags describe all of it; flips, colour jitter and blur as in client training
    return TrainConfig(
        steps=2500,
        batch_size=16,
        height=96,
        crop=(96, 192),
        scale=(1.0, 1.0),
        lr=5e-4,
        backbone_lr_mult=1.0,
        weight_decay=0.05,
        warmup_steps=100,
        checkpoint_every=200,
    )


@dataclass(frozen=True)
class PretrainConfig:
    """How a backbone is pretrained on the `public` domain."""

    preset: str = "m2f-cpu"
    """The preset whose backbone is trained."""
    images: int = 4000
    """Number of `public` images written (if the world folder lacks them) and trained on."""
    size: tuple[int, int] = (128, 256)
    """Size (H, W) the `public` images are rendered at."""
    world_seed: int = 0
    """Seed of the `public` images."""
    train: TrainConfig = field(default_factory=_default_train)
    """The recipe (the one training loop's config)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise Feds2rError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if self.images < 1:
            raise Feds2rError(f"images must be >= 1, got {self.images}")
        if self.train.crop[0] != self.train.height:
            raise Feds2rError("pretraining trains on whole images: crop height must equal height")


class BackboneClassifier(nn.Module):
    """A preset's backbone and a linear multi-label head on its pooled multi-scale features.

    ``forward(images (B, 3, H, W) uint8 or float in [0, 1]) -> logits (B, 2K)``: each of the
    backbone's four stages is average-pooled to (B, C_s); the concatenation goes through a linear
    layer to K presence logits and K share logits (see :func:`tag_loss`).
    """

    def __init__(self, seg: SegModel) -> None:
        super().__init__()
        self.family = seg.preset.family
        self.preset_name = seg.preset.name
        self.encoder = seg.backbone()
        self.register_buffer("mean", seg.mean.clone(), persistent=False)
        self.register_buffer("std", seg.std.clone(), persistent=False)
        with torch.no_grad():
            channels = sum(f.shape[1] for f in self.stages(torch.zeros(1, 3, 64, 128)))
        self.head = nn.Linear(channels, 2 * NUM_CLASSES)

    def backbone(self) -> nn.Module:
        return self.encoder

    def stages(self, images: Tensor) -> list[Tensor]:
        """The backbone's four feature maps (B, C_s, H/s, W/s)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean) / self.std
        if self.family == "mask2former":
            return list(self.encoder(x).feature_maps)
        return list(self.encoder(x, output_hidden_states=True).hidden_states)

    def forward(self, images: Tensor) -> Tensor:
        pooled = [f.mean(dim=(-2, -1)) for f in self.stages(images)]
        return self.head(torch.cat(pooled, dim=1))


class TaggedImages(ResizedCache):
    """`public` images resized to one height, with their tags (N, K) as a 0/1 float tensor."""

    def __init__(self, root: Path, height: int, *, progress: bool = True) -> None:
        tags_path = root / "tags.json"
        if not tags_path.is_file():
            raise Feds2rError(
                f"{root} has no tags.json: not a `public` domain folder "
                "(write one with `feds2r data synth --domain public`)"
            )
        tags = json.loads(tags_path.read_text())
        dataset = open_dataset(f"folder:{root}", labels=False)
        super().__init__(dataset, height, with_labels=False, progress=progress, desc="public")
        self.tags = torch.zeros(len(dataset), NUM_CLASSES)
        self.shares = torch.zeros(len(dataset), NUM_CLASSES)
        for i in range(len(dataset)):
            rel = dataset.samples[i].image.relative_to(root).as_posix()
            if rel not in tags:
                raise Feds2rError(f"{root}/tags.json has no entry for {rel}")
            self.tags[i, tags[rel]["classes"]] = 1.0
            self.shares[i] = torch.tensor(tags[rel]["shares"])


def tagged_batch(data: TaggedImages, indices: list[int], g: torch.Generator, **aug) -> dict:
    """Augmented views (flip, colour, blur keep an image's tags true) and their tags (B, K)."""
    batch = make_batch(data, indices, g, **aug)
    return {**batch, "tags": data.tags[indices], "shares": data.shares[indices]}


def tag_loss(model: BackboneClassifier, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Multi-label BCE on tags (B, K) plus KL from the class shares (B, K) to the predicted ones.

    ``model`` returns (B, 2K): K presence logits and K share logits (softmax over classes).
    """
    logits = model(batch["image"])
    k = batch["tags"].shape[1]
    tags = F.binary_cross_entropy_with_logits(logits[:, :k], batch["tags"])
    shares = F.kl_div(logits[:, k:].log_softmax(1), batch["shares"], reduction="batchmean")
    return {"loss": tags + shares, "loss_tags": tags, "loss_shares": shares}


def save_backbone(model: BackboneClassifier, out: Path, meta: dict[str, Any]) -> None:
    """``OUT/backbone.safetensors`` (the backbone's state dict) and ``OUT/pretrain.json``."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.encoder.state_dict().items()}
    tmp = out / ".backbone.safetensors.tmp"
    # one metadata entry: safetensors writes a map's entries in no fixed order, and the same run
    # must give the same bytes
    save_file(state, str(tmp), metadata={"source": f"feds2r pretrain --preset {model.preset_name}"})
    tmp.replace(out / "backbone.safetensors")
    write_atomic(out / "pretrain.json", json.dumps(meta, indent=2).encode())


def _world_needs_images(root: Path, want: dict[str, Any], flag: str) -> bool:
    """Whether the `public` images must be written into ``root``; refuse a folder they may not
    be written into (another dataset, another command's output, or `public` images made with
    other settings), reading only, before anything is written."""
    from feds2r.io import STATE_NAME, read_state

    have = _read_json(root / "feds2r_world.json")
    split = have.get("splits", {}).get("train") if isinstance(have.get("splits"), dict) else None
    if isinstance(split, dict) and split.get("complete", True) is not False:
        if {k: split.get(k) for k in want} == want:
            return False  # written by an earlier run: reused
        shape = "x".join(str(v) for v in split.get("size") or ())
        raise Feds2rError(
            f"{flag} {root} holds {split.get('count')} public images at {shape} (seed "
            f"{split.get('seed')}), not the {want['count']} this pretraining uses; give "
            f"--images {split.get('count')} to train on them, or another --world folder"
        )
    entries = (
        [p.name for p in root.iterdir() if p.name not in (STATE_NAME, ".feds2r.lock")]
        if (root.is_dir())
        else []
    )
    if entries and have.get("domain") != "public":
        state = read_state(root) or {}
        what = (
            f"a `feds2r {state['kind']}` output"
            if "kind" in state
            else (f"the world domain {have['domain']}" if have.get("domain") else "other files")
        )
        raise Feds2rError(
            f"{flag} {root} already holds {what}, not feds2r's `public` images; give a new or "
            "empty --world folder (or none: the images go to OUT/public)"
        )
    return True


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def pretrain(
    config: PretrainConfig,
    out: str | Path,
    *,
    world: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``config.preset``'s backbone on the `public` domain; write it into ``out``.

    ``world``: a folder holding (or to receive) the `public` images (default ``OUT/public``).
    Resumes an interrupted run of the same config. Returns a summary; the weights are
    ``OUT/backbone.safetensors``.
    """
    out = Path(out)
    root = Path(world) if world else out / "public"
    want = {"count": config.images, "size": list(config.size), "seed": config.world_seed}
    top = {k: v for k, v in asdict(config).items() if k != "train"}
    identity = {k: top[k] for k in ("preset", "images", "size", "world_seed")}
    flag = "--world" if world else "the public folder of --out"
    # the one output rule: OUT and the world folder are judged before either is written
    with claim_run(out, "pretrain", config.train, preset=None, identity=identity) as dest:

        def write_world() -> None:
            if _world_needs_images(root, want, flag):
                synth_domain("public", root, split="train", num=config.images, size=config.size,
                             seed=config.world_seed, progress=progress)  # fmt: skip

        distributed.on_main(write_world, others=lambda: None)  # under torchrun: rank 0 writes
        write_run_config(out, {"pretrain": top, "train": config.train})
        data = TaggedImages(root, config.train.height, progress=progress)
        torch.manual_seed(config.train.seed)
        model = BackboneClassifier(create_model(config.preset))
        meta = {
            "preset": config.preset,
            "task": "image-level labels of the public domain: classes present (multi-label BCE) "
            "and class shares (KL)",
            "classes": list(CLASS_NAMES),
            "config": asdict(config),
            "public": {"root": str(root), **want},
        }
        summary = train(
            model, tag_loss, data, config.train, out, meta=meta, identity=identity,
            progress=progress, batch_fn=tagged_batch, save_fn=save_backbone,
        )  # fmt: skip
        dest.finish()
    return {**summary, "weights": str(out / "backbone.safetensors")}
