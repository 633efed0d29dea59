"""The model card (``README.md``) of an exported model.

It names the architecture and preset, the route that produced the model and the clients' names
and dataset formats (read from the checkpoint sidecars; never their paths, fingerprints or any
of their data), the metrics of an evaluation report when one is given, the exact export command,
how to load the model, and the licence (in the card's YAML header, as model hubs read it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import Feds2rError

ROUTES = {
    "distill": "one-shot FedS2R: the clients' models distilled into the global model on the "
    "server's generated data",
    "distill+selftrain": "one-shot FedS2R, then self-training on the server's data (a mean "
    "teacher from the distilled global model)",
    "lite": "a lightweight student distilled from the global model and the clients' models",
    "fedavg": "multi-round FedAvg",
    "fedprox": "multi-round FedProx",
    "fedseg": "multi-round FedSeg",
}
"""What each route recorded in a checkpoint's sidecar means, in the card's words."""


def _format_of(spec: object) -> str | None:
    """The dataset format of a ``FORMAT:PATH?...`` spec (never its path)."""
    if not isinstance(spec, str) or ":" not in spec:
        return None
    return spec.partition(":")[0] or None


def _split_of(spec: str) -> str | None:
    match = re.search(r"[?&]split=([^&]+)", spec)
    return match.group(1) if match else None


def client_entries(clients: Sequence[object]) -> list[tuple[str, str | None]]:
    """(name, dataset format) of each client: the name is its checkpoint folder's name, the
    format is read from that checkpoint's sidecar where it is still there (else None)."""
    from feds2r.engine.checkpoint import read_sidecar

    rows = []
    for client in clients:
        name = Path(str(client)).name or str(client)
        fmt = None
        try:
            fmt = _format_of(read_sidecar(str(client)).get("data", {}).get("spec"))
        except (Feds2rError, OSError, AttributeError):
            fmt = None
        rows.append((name, fmt))
    return rows


def route_lines(meta: dict[str, Any]) -> list[str]:
    """Markdown lines saying how the model was trained (from its sidecar)."""
    role = meta.get("role")
    route = meta.get("route")
    lines = []
    if role == "client":
        fmt = _format_of((meta.get("data") or {}).get("spec")) or "not recorded"
        lines.append(f"- Route: supervised training of one client model (data format `{fmt}`)")
        if meta.get("init"):
            lines.append("- Started from another feds2r model (`--init`)")
    elif route:
        what = ROUTES.get(str(route), str(route))
        lines.append(f"- Route: `{route}` ({what})")
        if meta.get("rounds"):
            lines.append(f"- Rounds: {meta['rounds']}")
        if route == "lite" and meta.get("bridge_route"):
            lines.append(f"- Bridge model's route: `{meta['bridge_route']}`")
    else:
        lines.append(f"- Route: `{role or 'not recorded'}`")
    clients = meta.get("clients")
    if isinstance(clients, list) and clients:
        shown = ", ".join(
            f"{name} (`{fmt}`)" if fmt else f"{name} (format not recorded)"
            for name, fmt in client_entries(clients)
        )
        lines.append(f"- Clients ({len(clients)}): {shown}")
    if meta.get("steps"):
        lines.append(f"- Training steps: {meta['steps']}")
    return lines


def read_eval_report(path: str | Path, preset: str) -> dict[str, Any]:
    """A ``feds2r eval --json`` report, checked to be one and to be of ``preset``."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise Feds2rError(
            f"--eval-json {path} not found (write one with `feds2r eval --json`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise Feds2rError(f"--eval-json {path} is not a readable JSON file: {exc}") from None
    rows = report.get("datasets") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("miou"), int | float) for r in rows
    ):
        raise Feds2rError(
            f"--eval-json {path} is not a `feds2r eval --json` report (no datasets with mIoU)"
        )
    if report.get("preset") not in (None, preset):
        raise Feds2rError(
            f"--eval-json {path} evaluates a {report['preset']!r} model, not this {preset!r} "
            "model; give the report of `feds2r eval --model` on the exported checkpoint"
        )
    return report


def metric_lines(report: dict[str, Any]) -> list[str]:
    """A Markdown table of an evaluation report: dataset format and split, mIoU, accuracy."""
    lines = [
        f"Evaluated by `feds2r eval` at height {report.get('height', '?')}"
        + (" with sliding windows" if report.get("sliding") else "")
        + " (mIoU and pixel accuracy in percent):",
        "",
        "| dataset (format, split) | mIoU | pixel accuracy |",
        "|---|---:|---:|",
    ]
    for row in report["datasets"]:
        spec = str(row.get("spec", ""))
        name = f"{_format_of(spec) or '?'}, {_split_of(spec) or 'all'}"
        acc = row.get("pixel_acc")
        acc_text = f"{acc:.2f}" if isinstance(acc, int | float) else "-"
        lines.append(f"| {name} | {row['miou']:.2f} | {acc_text} |")
    if len(report["datasets"]) > 1 and isinstance(report.get("mean_miou"), int | float):
        lines.append(f"| mean | {report['mean_miou']:.2f} | |")
    return lines


def _triple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _load_lines(fmt: str, family: str, height: int, dynamic_size: bool, size: str) -> list[str]:
    if fmt == "hf":
        auto = (
            "AutoModelForUniversalSegmentation"
            if family == "mask2former"
            else "AutoModelForSemanticSegmentation"
        )
        return [
            "```python",
            "from transformers import pipeline",
            'segment = pipeline("image-segmentation", model="PATH/TO/THIS/FOLDER")',
            'masks = segment("street.jpg", subtask="semantic")  # one mask per class found',
            "```",
            "",
            f"or `AutoImageProcessor` and `{auto}.from_pretrained(...)` with the "
            "processor's `post_process_semantic_segmentation`. The image processor resizes "
            f"the shortest edge to {height} pixels and normalises as feds2r does.",
        ]
    shape = "any height and width" if dynamic_size else f"exactly {size}"
    return [
        "```python",
        "import numpy as np, onnxruntime as ort",
        'session = ort.InferenceSession("model.onnx")',
        'probs = session.run(["probs"], {"images": images})[0]  # (B, 19, H, W)',
        "```",
        "",
        "`images` is float32 RGB in [0, 1], shape (B, 3, H, W), resized so that H = "
        f"{height} (aspect kept; this graph takes {shape}); the normalisation is inside the "
        "graph. `probs.argmax(1)` is the label map, in the class ids listed above.",
    ]


def model_card(
    *,
    meta: dict[str, Any],
    preset: str,
    description: str,
    family: str,
    parameters: int,
    fmt: str,
    height: int,
    mean: Sequence[float],
    std: Sequence[float],
    command: str,
    license: str,
    report: dict[str, Any] | None = None,
    check: str = "",
    dynamic_size: bool = True,
    size: str = "",
) -> str:
    """The text of ``README.md`` for an exported model (Markdown with a YAML header)."""
    library = "transformers" if fmt == "hf" else "onnx"
    header = [
        "---",
        f"license: {license}",
        f"library_name: {library}",
        "pipeline_tag: image-segmentation",
        "tags:",
        "- feds2r",
        "- semantic-segmentation",
        f"- {family}",
        "---",
    ]
    arch = "Mask2Former (mask classification)" if family == "mask2former" else family
    if family == "segformer":
        arch = "SegFormer (per-pixel)"
    body = [
        "",
        f"# {preset}: a feds2r semantic segmentation model",
        "",
        f"Exported by feds2r as {'a transformers directory' if fmt == 'hf' else 'an ONNX graph'}.",
        "",
        "## Model",
        "",
        f"- Architecture: {arch}; preset `{preset}`: {description}",
        f"- Parameters: {parameters / 1e6:.2f} M",
        f"- Classes: the {len(CLASS_NAMES)} Cityscapes train classes, ids 0-"
        f"{len(CLASS_NAMES) - 1}: {', '.join(CLASS_NAMES)}",
        f"- Input: RGB images resized so that the height is {height} pixels (aspect kept), "
        f"scaled to [0, 1] and normalised with mean {_triple(mean)} and standard deviation "
        f"{_triple(std)}",
    ]
    if check:
        body.append(f"- Checked at export: {check}")
    body += ["", "## Training", "", *route_lines(meta), ""]
    body += ["## Evaluation", ""]
    if report is not None:
        body += metric_lines(report)
    else:
        body.append("No evaluation report was given (`feds2r export --eval-json`).")
    body += ["", "## How to load", "", *_load_lines(fmt, family, height, dynamic_size, size)]
    body += ["", "## How it was exported", "", "```", command, "```", ""]
    body += ["## Licence", ""]
    if license == "other":
        body.append(
            "Not stated. The weights' terms depend on the data the clients trained on; set "
            "them with `feds2r export --license`."
        )
    else:
        body.append(f"`{license}`.")
    return "\n".join(header + body) + "\n"
