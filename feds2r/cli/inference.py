"""``feds2r eval`` and ``feds2r predict``: a checkpoint on datasets."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from feds2r.cli.flags import add_quiet, command, count_type, size_type
from feds2r.cli.output import write_json
from feds2r.errors import Feds2rError

DEFAULT_CROP = (128, 256)
"""The sliding window (H, W) when ``--sliding`` is given without ``--crop``."""


def load_model(path: str, device: str):
    """(model, its metadata, the device it is on) of the checkpoint ``path``."""
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.engine.device import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(path, dev)
    return model, meta, dev


def sliding_window(sliding: bool, crop: tuple[int, int] | None) -> tuple[int, int] | None:
    """The sliding window of ``--sliding``/``--crop``; ``--crop`` alone is refused (it would be
    ignored: without ``--sliding`` the whole image is predicted at once)."""
    if crop is not None and not sliding:
        raise Feds2rError(
            f"--crop {crop[0]}x{crop[1]} applies only with --sliding (sliding-window inference); "
            "add --sliding, or drop --crop to predict whole images"
        )
    return (crop or DEFAULT_CROP) if sliding else None


def evaluate(
    model: str,
    data: list[str],
    height: int,
    sliding: bool,
    crop: tuple[int, int] | None,
    device: str,
    batch_size: int,
    per_class: bool,
    miou_classes: str,
    json_path: str | None,
    on_error: str,
    progress: bool,
) -> int:
    """mIoU, pixel accuracy and per-class IoU of the checkpoint ``model`` on each of ``data``;
    ``miou_classes``: which classes the mean counts (docs/evaluation.md)."""
    import torch

    from feds2r.data import open_dataset
    from feds2r.data.labels import CLASS_NAMES
    from feds2r.engine.evaluate import evaluate as evaluate_model
    from feds2r.metrics.miou import DEFAULT_MIOU_CLASSES, ConfusionMatrix, check_miou_classes

    check_miou_classes(miou_classes)
    window = sliding_window(sliding, crop)
    net, meta, dev = load_model(model, device)
    rows = []
    for spec in data:
        ds = open_dataset(spec, labels=True, on_error=on_error)
        other = miou_classes != DEFAULT_MIOU_CLASSES
        result = evaluate_model(
            net,
            ds,
            height=height,
            sliding=window,
            batch_size=batch_size,
            device=dev,
            progress=progress,
            per_image=other,
        )
        if other:  # the set's confusion matrix is the sum of its images': reduce it again
            cm = ConfusionMatrix()
            cm.matrix = torch.as_tensor(result.pop("per_image_confusion").sum(0))
            result.update(cm.summary(miou_classes))
            result["per_class"] = dict(zip(CLASS_NAMES, result["per_class"], strict=True))
        rows.append({"spec": str(ds.spec), **result})
    mean = sum(r["miou"] for r in rows) / len(rows)
    report = {
        "model": str(model),
        "preset": meta["preset"],
        "height": height,
        "sliding": list(window) if window else None,
        "miou_classes": miou_classes,
        "datasets": rows,
        "mean_miou": mean,
    }
    if json_path:
        write_json(report, json_path)
    if json_path == "-":
        return 0
    width = max(len(r["spec"]) for r in rows)
    short = [n[:5] for n in CLASS_NAMES]
    head = f"{'dataset':<{width}}  {'mIoU':>6}  {'acc':>6}"
    if per_class:
        head += "  " + " ".join(f"{n:>5}" for n in short)
    print(head)
    for r in rows:
        line = f"{r['spec']:<{width}}  {r['miou']:6.2f}  {r['pixel_acc']:6.2f}"
        if per_class:
            line += "  " + " ".join(
                f"{v:5.1f}" if v is not None else "    -" for v in r["per_class"].values()
            )
        print(line)
    if len(rows) > 1:
        print(f"{'mean':<{width}}  {mean:6.2f}")
    return 0


def predict(
    model: str,
    data: str,
    out: str,
    height: int,
    sliding: bool,
    crop: tuple[int, int] | None,
    device: str,
    limit: int | None,
    on_error: str,
    progress: bool,
) -> int:
    """Predicted label maps, colour maps and overlays of every image of ``data``, into ``out``."""
    from feds2r.data import open_dataset
    from feds2r.engine.evaluate import write_predictions

    window = sliding_window(sliding, crop)
    net, _, dev = load_model(model, device)
    ds = open_dataset(data, labels=False, on_error=on_error)
    n = write_predictions(
        net,
        ds,
        out,
        height=height,
        sliding=window,
        device=dev,
        limit=limit,
        progress=progress,
        inputs={
            "model": str(Path(model).resolve()),
            "data": str(ds.spec),
            "height": height,
            "sliding": list(window) if window else None,
            "limit": limit,
        },
    )
    print(f"wrote {n} predictions (train-id PNGs), colour maps and overlays to {out}")
    return 0


# ----------------------------------------------------------------------------- parsers


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder or .safetensors file")
    p.add_argument(
        "--height", type=count_type(16), default=128, help="inference height (>= 16; default 128)"
    )
    p.add_argument("--sliding", action="store_true", help="sliding-window inference")
    p.add_argument(
        "--crop", type=size_type, help="sliding window HxW, with --sliding (default 128x256)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--skip-bad",
        dest="on_error",
        action="store_const",
        const="skip",
        default="raise",
        help="skip unreadable samples",
    )
    add_quiet(p)


def _miou_classes_flag(p: argparse.ArgumentParser) -> None:
    from feds2r.metrics.miou import DEFAULT_MIOU_CLASSES, MIOU_CLASSES

    p.add_argument(
        "--miou-classes",
        choices=MIOU_CLASSES,
        default=DEFAULT_MIOU_CLASSES,
        help="which classes the mean counts: official (every class in the ground truth or "
        "predicted, as cityscapesScripts and mmseg) or present (only those in the ground "
        f"truth; feds2r's earlier convention) (default {DEFAULT_MIOU_CLASSES})",
    )


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "eval",
        evaluate,
        flags=_miou_classes_flag,
        help="mIoU of a checkpoint on labelled datasets",
        description="Evaluate a checkpoint: mIoU (confusion matrix over the whole set; the mean "
        "over classes counts, as cityscapesScripts and mmseg do, every class in the ground truth "
        "or predicted, a predicted but absent class as 0; --miou-classes present counts only the "
        "classes in the ground truth), pixel accuracy and per-class IoU, in percent. Prints a "
        "table, one row per dataset; --json writes the schema in docs/evaluation.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r eval --model runs/gta5 --data cityscapes:data/world/cityscapes-like?split=val
              feds2r eval --model runs/gta5 --data bdd:/data/bdd?split=val \\
                  --data acdc:/data/acdc?split=val --per-class --json eval.json
              feds2r eval --model runs/gta5-swin --data cityscapes:/data/cs?split=val \\
                  --height 512 --sliding --crop 512x1024
            """),
    )
    _add_inference_args(p)
    p.add_argument("--data", required=True, action="append", help="labelled spec (repeatable)")
    p.add_argument(
        "--batch-size", type=count_type(1), default=8, help="images per batch (default 8)"
    )
    p.add_argument("--per-class", action="store_true", help="print per-class IoU columns")
    p.add_argument(
        "--json", dest="json_path", metavar="PATH", help="write results as JSON ('-': stdout)"
    )

    p = command(
        sub,
        "predict",
        predict,
        help="write predicted label maps and colour overlays",
        description="Predict every image of a dataset: OUT/NAME.png holds train ids (0-18), "
        "OUT/overlay/NAME.png the prediction in Cityscapes colours over the image, and "
        "OUT/predictions.json (written last) the count and the names.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r predict --model runs/gta5 \\
                  --data cityscapes:data/world/cityscapes-like?split=val \\
                  --out preds/cs
              feds2r predict --model runs/gta5 --data folder:my_images --out preds/mine --limit 20
            """),
    )
    _add_inference_args(p)
    p.add_argument("--data", required=True, help="dataset spec (labels not needed)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or an earlier predict output (replaced)",
    )
    p.add_argument("--limit", type=count_type(1), help="predict at most this many images")
