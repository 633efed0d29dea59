"""Client side of the federation: supervised training on a private (synthetic) dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from feds2r.config import to_toml
from feds2r.data import open_dataset
from feds2r.data.world.writers import write_atomic
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.train import TrainConfig, train
from feds2r.errors import Feds2rError
from feds2r.losses import supervised_loss
from feds2r.models import SegModel, create_model


def supervised_step(model: SegModel, batch: dict) -> dict:
    """Loss of one batch: the model family's supervised loss against the batch's labels."""
    return supervised_loss(model(batch["image"]), batch["label"])


def train_client(
    data: str,
    preset: str,
    out: str | Path,
    config: TrainConfig,
    *,
    backbone_weights: str | Path | None = None,
    init: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one client model on labelled data ``data`` (a dataset spec); write it to ``out``.

    ``init``: a checkpoint to start from (the common initial model the server sends), whose
    preset must be ``preset``. Resumes if ``out`` holds an unfinished run of the same config.
    """
    out = Path(out)
    dataset = open_dataset(data, labels=True)
    torch.manual_seed(config.seed)  # the initial weights follow from the seed too
    if init is not None:
        model, meta = load_checkpoint(init)
        if meta["preset"] != preset:
            raise Feds2rError(f"initial model {init} is a {meta['preset']!r}, not a {preset!r}")
    else:
        model = create_model(preset, backbone_weights=backbone_weights)
    settings = {
        "data": str(dataset.spec),
        "preset": preset,
        "backbone_weights": str(backbone_weights or ""),
        "init": str(init or ""),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.toml", to_toml({"client": settings, "train": config}).encode())
    cache = ResizedCache(dataset, config.height, progress=progress, desc="loading data")
    meta = {
        "role": "client",
        "data": {
            "spec": str(dataset.spec),
            "fingerprint": dataset.fingerprint(),
            "num_images": len(dataset),
        },
        "init": str(init) if init else None,
    }
    summary = train(model, supervised_step, cache, config, out, meta=meta, progress=progress)
    return {**summary, "data": str(dataset.spec), "preset": preset}
