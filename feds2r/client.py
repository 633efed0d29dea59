"""Client side of the federation: supervised training on a private (synthetic) dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feds2r.config import check_types, write_run_config
from feds2r.data import open_dataset
from feds2r.data.dataset import list_dataset
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.data import ResizedCache
from feds2r.engine.loader import StreamingData
from feds2r.engine.runs import claim_run
from feds2r.engine.train import TrainConfig, train
from feds2r.errors import Feds2rError
from feds2r.losses import supervised_loss
from feds2r.models import SegModel, create_model, is_hf_dir, load_hf_model


@dataclass(frozen=True)
class ClientSettings:
    """What a client trains from: the ``[client]`` table of a config file and of ``config.toml``."""

    data: str = ""
    """Labelled dataset spec ``FORMAT:PATH`` (``--data``)."""
    preset: str = "seg-effl0"
    """Model preset (``--preset``; see ``feds2r models``). The default, ``seg-effl0``, starts from
    real ImageNet weights (chosen on dev over ``m2f-cpu``'s public stand-in: docs/results.md)."""
    backbone_weights: str = "pretrained"
    """Where the backbone starts: "pretrained" (the preset's own pretrained start: "public" for
    m2f-cpu and segformer-cpu, "imagenet" for the ``*-effl0`` presets), "public" (the backbone
    feds2r ships, docs/models.md), "imagenet" (ImageNet weights from an installed package), a
    local ``.safetensors`` file or a Hugging Face model directory ("" = random weights,
    ``--no-pretrained``). Ignored when ``init`` is given."""
    init: str = ""
    """Checkpoint to start from, e.g. the server's initial model ("" = none)."""

    def __post_init__(self) -> None:
        check_types(self)


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
    on_error: str = "raise",
    progress: bool = True,
    on_step: Callable[[SegModel, int], None] | None = None,
) -> dict[str, Any]:
    """Train one client model on labelled data ``data`` (a dataset spec); write it to ``out``.

    ``backbone_weights``: where the backbone starts (``"pretrained"``: the preset's own start;
    ``"public"``: the backbone feds2r ships; ``"imagenet"``; a ``.safetensors`` file or a Hugging
    Face model directory; None: random).
    ``init``: the model to start from instead: a feds2r checkpoint (the common initial model the
    server sends), whose preset must be ``preset``, or a Hugging Face model directory of the
    preset's architecture and classes. ``on_step(model, step)`` is called after every step.
    ``on_error="skip"`` leaves unreadable samples out (with a warning naming each). The samples
    are streamed from disk (``config.loader`` "stream": a bad one is met, and skipped or
    reported, when a step first draws it) or read into memory first ("memory": every sample is
    read before the first step, the bad ones left out or reported then). Resumes if ``out`` holds
    an unfinished run of the same config, preset and inputs; an ``out`` holding another run
    (other data, fingerprint, preset or init) is refused before anything in it is written.
    """
    out = Path(out)
    streaming = config.loader == "stream"
    # streaming lists the files only: reading every one first is what it avoids
    opener = list_dataset if streaming else open_dataset
    dataset = opener(data, labels=True, on_error=on_error)
    if not dataset.with_labels:
        raise Feds2rError(
            f"{dataset.spec} has no labels (format {dataset.spec.format!r} holds images only); "
            "client training needs a labelled dataset such as gta5:PATH (see `feds2r data formats`)"
        )
    settings = ClientSettings(
        data=str(dataset.spec),
        preset=preset,
        backbone_weights=str(backbone_weights or ""),
        init=str(init or ""),
    )
    identity = {
        "data": settings.data,
        "fingerprint": dataset.fingerprint(),
        "preset": preset,
        "init": settings.init,
        "backbone_weights": settings.backbone_weights,
    }
    # the one output rule: OUT is new, empty or this run's own (resumed); nothing is written
    # into it before that is known
    with claim_run(out, "client train", config, preset=preset, identity=identity) as dest:
        torch.manual_seed(config.seed)  # the initial weights follow from the seed too
        if init is not None and is_hf_dir(init):
            model = create_model(preset)
            load_hf_model(model, init)
        elif init is not None:
            model, meta = load_checkpoint(init)
            if meta["preset"] != preset:
                raise Feds2rError(f"initial model {init} is a {meta['preset']!r}, not a {preset!r}")
        else:
            model = create_model(preset, backbone_weights=backbone_weights)
        write_run_config(out, {"client": settings, "train": config})
        if streaming:
            samples = StreamingData(dataset, skip_bad=on_error == "skip")
        else:
            samples = ResizedCache(dataset, config.height, progress=progress, desc="loading data")
        meta = {
            "role": "client",
            "data": {
                "spec": str(dataset.spec),
                "fingerprint": identity["fingerprint"],
                "num_images": len(dataset),
            },
            "init": str(init) if init else None,
        }
        summary = train(
            model,
            supervised_step,
            samples,
            config,
            out,
            meta=meta,
            identity=identity,
            progress=progress,
            on_step=None if on_step is None else (lambda step: on_step(model, step)),
        )
        dest.finish()
    return {**summary, "data": str(dataset.spec), "preset": preset}
