"""``export_model``: a feds2r checkpoint out of feds2r, as a transformers directory or ONNX."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feds2r.errors import Feds2rError
from feds2r.export.card import model_card, read_eval_report
from feds2r.export.to_hf import check_hf, check_hf_exportable, write_hf
from feds2r.export.to_onnx import OPSET, require_onnx, write_onnx
from feds2r.io import prepare_output, write_atomic

FORMATS = ("hf", "onnx")
"""``hf``: a ``transformers`` model directory; ``onnx``: ``model.onnx`` (class probabilities)."""

DEFAULT_HEIGHT = 128
"""Inference height when neither ``height`` nor the checkpoint's training config gives one."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote."""

    out: Path
    files: list[str]
    """The files in ``out`` (the model card ``README.md`` among them)."""
    height: int
    max_diff: float
    """Largest difference of the exported model's probabilities from feds2r's at export."""
    seconds: float
    dynamic_size: bool = True
    """ONNX: whether the graph takes any height and width (else only ``size``)."""


def training_height(meta: dict[str, Any]) -> int | None:
    """The training height recorded in a checkpoint's sidecar, if any."""
    config = meta.get("train_config")
    if isinstance(config, str):  # a sidecar may hold the config's repr
        match = re.search(r"'height': (\d+)", config)
        return int(match.group(1)) if match else None
    if isinstance(config, dict) and isinstance(config.get("height"), int):
        return config["height"]
    return None


def export_model(
    model: str | Path,
    fmt: str,
    out: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    eval_json: str | Path | None = None,
    license: str = "other",
    command: str = "",
) -> ExportResult:
    """Export the feds2r checkpoint ``model`` into the folder ``out`` as ``fmt`` (see FORMATS).

    ``height``: the inference height the exported preprocessing (hf) or graph (onnx) uses;
    default the checkpoint's training height, else 128. ``width``: the ONNX graph's example
    width (default 2 x height), its only width where the architecture needs a fixed size.
    ``eval_json``: a ``feds2r eval --json`` report whose metrics go into the model card.
    ``command``: the command line recorded in the card. Everything is checked before ``out``
    is touched; ``out`` must be new, empty, or an earlier export of the same model and settings
    (replaced); anything else is refused untouched.
    """
    from feds2r.engine.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise Feds2rError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "hf" and width is not None:
        raise Feds2rError(
            "--width applies to --format onnx only (a transformers directory resizes by height)"
        )
    if fmt == "onnx":
        require_onnx()
    start = time.perf_counter()
    net, meta = load_checkpoint(model, "cpu")
    preset = net.preset
    if fmt == "hf":
        check_hf_exportable(net)
    report = read_eval_report(eval_json, preset.name) if eval_json is not None else None
    height = height or training_height(meta) or DEFAULT_HEIGHT
    width = width or 2 * height
    if height < 16 or width < 16:
        raise Feds2rError(f"--height and --width must be at least 16, got {height}x{width}")
    parameters = sum(p.numel() for p in net.parameters())
    inputs = {
        "model": str(Path(model).resolve()),
        "format": fmt,
        "height": height,
        "width": width if fmt == "onnx" else None,
        "eval_json": str(Path(eval_json).resolve()) if eval_json is not None else None,
        "license": license,
    }
    with prepare_output(
        out,
        "export",
        marker="README.md",
        inputs=inputs,
        hint="Give the same --model, --format, --height, --width, --eval-json and --license, "
        "or another --out",
    ) as dest:
        if dest.previous:
            dest.clear()  # never mix two exports in one folder
        folder = Path(out)
        if fmt == "hf":
            write_hf(net, folder, height)
            diff = check_hf(net, folder, height)
            check = f"reloaded with transformers alone: probabilities within {diff:.1g} of feds2r's"
            dynamic, size = True, ""
        else:
            result = write_onnx(net, folder / "model.onnx", (height, width), opset=OPSET)
            diff, dynamic = result.max_diff, result.dynamic_size
            size = f"{height}x{width}"
            check = (
                f"ONNX Runtime's probabilities within {diff:.1g} of PyTorch's (opset "
                f"{result.opset}; batch dynamic; height and width "
                f"{'dynamic' if dynamic else f'fixed at {size}'})"
            )
        card = model_card(
            meta=meta,
            preset=preset.name,
            description=preset.description,
            family=preset.family,
            parameters=parameters,
            fmt=fmt,
            height=height,
            mean=net.mean.flatten().tolist(),
            std=net.std.flatten().tolist(),
            command=command or f"feds2r export --model {model} --format {fmt} --out {out}",
            license=license,
            report=report,
            check=check,
            dynamic_size=dynamic,
            size=size,
        )
        write_atomic(folder / "README.md", card.encode())
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        dest.finish()
    seconds = time.perf_counter() - start
    return ExportResult(folder, files, height, diff, seconds, dynamic)
