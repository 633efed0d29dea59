"""Evaluation on labelled datasets and prediction writing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from feds2r.data.dataset import SegmentationDataset
from feds2r.data.labels import CLASS_NAMES, colorize
from feds2r.engine import distributed
from feds2r.engine.data import resize_images
from feds2r.errors import Feds2rError
from feds2r.io import prepare_output, write_atomic, write_json
from feds2r.metrics import ConfusionMatrix
from feds2r.models import SegModel


@torch.no_grad()
def predict_probs(
    model: SegModel | Any,
    image: Tensor,
    *,
    height: int,
    out_size: tuple[int, int],
    sliding: tuple[int, int] | None = None,
) -> Tensor:
    """Class probabilities (B, K, *out_size) for uint8 images (B, 3, H, W).

    The images are resized to ``height`` (aspect kept) for inference; with ``sliding=(h, w)``
    overlapping windows of that size (stride 2/3 of it) are averaged. ``model`` may be any
    callable with a ``predict(images, size)`` method (an ensemble, for instance).
    """
    b = image.shape[0]
    image = resize_images(image, height)
    H, W = image.shape[-2:]
    if sliding is None or (sliding[0] >= H and sliding[1] >= W):
        probs = model.predict(image, (H, W))
    else:
        wh, ww = min(sliding[0], H), min(sliding[1], W)
        sh, sw = max(wh * 2 // 3, 1), max(ww * 2 // 3, 1)
        probs, count = None, torch.zeros(1, 1, H, W, device=image.device)
        tops = sorted({*range(0, H - wh + 1, sh), H - wh})
        lefts = sorted({*range(0, W - ww + 1, sw), W - ww})
        for top in tops:
            for left in lefts:
                p = model.predict(image[..., top : top + wh, left : left + ww], (wh, ww))
                if probs is None:
                    probs = torch.zeros(b, p.shape[1], H, W, device=image.device)
                probs[..., top : top + wh, left : left + ww] += p
                count[..., top : top + wh, left : left + ww] += 1
        probs = probs / count
    if tuple(probs.shape[-2:]) != tuple(out_size):
        probs = F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)
    return probs


def _batches(dataset: SegmentationDataset, batch_size: int, indices: Sequence[int]):
    """The items ``indices`` in order, grouped while their image sizes agree."""
    group: list[dict] = []
    for i in indices:
        item = dataset[i]
        if group and (len(group) == batch_size or group[0]["image"].shape != item["image"].shape):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


@torch.no_grad()
def evaluate(
    model: SegModel | Any,
    dataset: SegmentationDataset,
    *,
    height: int = 128,
    sliding: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = True,
    per_image: bool = False,
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU (percent) of ``model`` on a labelled dataset.

    Predictions are made at ``height`` and resized to each label's size; the confusion matrix is
    accumulated over the whole set (see :mod:`feds2r.metrics.miou`). ``per_image``: also return
    ``per_image_confusion``, an int64 array (N, K, K) of each image's confusion matrix (their sum
    is the set's), for paired bootstrap intervals (:mod:`feds2r.metrics.bootstrap`).

    Under torchrun (:mod:`feds2r.engine.distributed`) every process must call it: process ``r`` of
    ``W`` predicts images ``r, r+W, ...``, the confusion matrices are summed over the processes
    and the per-image ones gathered in the set's order, so every process returns what one process
    would (rank 0 alone shows progress).
    """
    if height < 16 or batch_size < 1:
        raise Feds2rError(
            f"evaluate: height must be >= 16 and batch_size >= 1, got {height}, {batch_size}"
        )
    if not dataset.with_labels:
        raise Feds2rError(
            f"{dataset.spec} has no labels to evaluate against; give a labelled dataset "
            "(feds2r predict writes predictions for unlabelled images)"
        )
    cm = ConfusionMatrix()
    images_cm: list[np.ndarray] = []
    mine = distributed.shard(len(dataset))  # all the images without torchrun
    bar = tqdm(
        total=len(mine),
        desc=f"eval {dataset.spec.format}",
        unit="img",
        disable=not progress or not distributed.is_main(),
    )
    for group in _batches(dataset, batch_size, mine):
        images = torch.stack([it["image"] for it in group]).to(device)
        labels = torch.stack([it["label"] for it in group])
        probs = predict_probs(
            model, images, height=height, out_size=tuple(labels.shape[-2:]), sliding=sliding
        )
        preds = probs.argmax(1).cpu()
        cm.update(preds, labels)
        if per_image:
            for pred, label in zip(preds, labels, strict=True):
                one = ConfusionMatrix()
                one.update(pred, label)
                images_cm.append(one.matrix.numpy())
        bar.update(len(group))
    bar.close()
    distributed.sum_over_processes(cm.matrix)
    summary = cm.summary()
    if per_image:
        images_cm = distributed.gather_in_order(images_cm, len(dataset))
        summary["per_image_confusion"] = np.stack(images_cm)
    summary["num_images"] = len(dataset)
    summary["per_class"] = dict(zip(CLASS_NAMES, summary["per_class"], strict=True))
    return summary


@torch.no_grad()
def write_predictions(
    model: SegModel | Any,
    dataset: SegmentationDataset,
    out: str | Path,
    *,
    height: int = 128,
    sliding: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = True,
    inputs: dict[str, Any] | None = None,
) -> int:
    """Write ``OUT/NAME.png`` (train ids), ``OUT/color/NAME.png`` (the classes' colours) and
    ``OUT/overlay/NAME.png`` (those colours over the image).

    ``OUT`` must be new, empty or an earlier ``predict`` output made with the same ``inputs``
    (JSON values naming the model, data and settings), which is replaced; anything else is
    refused untouched (see :func:`feds2r.io.prepare_output`). ``OUT/predictions.json`` (the
    count and the names) is written last. Returns the number of images written.
    """
    if limit is not None and limit < 1:
        raise Feds2rError(f"limit must be at least 1, got {limit}")
    if distributed.active():
        distributed.fail_everywhere(
            "predict runs in one process: start it without torchrun (torchrun shares training "
            "and evaluation only)"
        )
    with prepare_output(
        out,
        "predict",
        marker="predictions.json",
        inputs=inputs,
        hint="Give the same --model, --data, --height, --sliding, --crop and --limit, or "
        "another --out",
    ) as dest:
        if dest.previous:
            dest.clear()  # never mix these predictions with an earlier run's
        names = _write_predictions(
            model, dataset, Path(out), height, sliding, device, limit, progress
        )
        summary = {"data": str(dataset.spec), "num_images": len(names), "names": names}
        write_json(Path(out) / "predictions.json", summary)
        dest.finish()
    return len(names)


def _write_predictions(
    model: SegModel | Any,
    dataset: SegmentationDataset,
    out: Path,
    height: int,
    sliding: tuple[int, int] | None,
    device: torch.device | str,
    limit: int | None,
    progress: bool,
) -> list[str]:
    import cv2

    n = min(len(dataset), limit or len(dataset))
    names = []
    for i in tqdm(range(n), desc="predict", unit="img", disable=not progress):
        item = dataset[i]
        image = item["image"][None].to(device)
        probs = predict_probs(
            model, image, height=height, out_size=tuple(image.shape[-2:]), sliding=sliding
        )
        pred = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()
        ok, ids = cv2.imencode(".png", pred)
        write_atomic(out / f"{item['name']}.png", ids.tobytes())
        rgb = item["image"].permute(1, 2, 0).numpy()
        colours = colorize(pred)
        ok, plain = cv2.imencode(".png", colours[..., ::-1])
        write_atomic(out / "color" / f"{item['name']}.png", plain.tobytes())
        blend = (0.45 * rgb + 0.55 * colours).astype(np.uint8)
        ok, over = cv2.imencode(".png", blend[..., ::-1])
        write_atomic(out / "overlay" / f"{item['name']}.png", over.tobytes())
        names.append(item["name"])
    return names


__all__ = ["evaluate", "predict_probs", "write_predictions"]
