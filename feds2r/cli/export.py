"""``feds2r export``: a checkpoint as a ``transformers`` directory or an ONNX graph."""

from __future__ import annotations

import argparse
import shlex
import textwrap

from feds2r.cli.flags import command, count_type

FORMATS = ("hf", "onnx")  # feds2r.export.FORMATS, named here so that --help imports no model code


def export(
    model: str,
    fmt: str,
    out: str,
    height: int | None,
    width: int | None,
    eval_json: str | None,
    license: str,
) -> int:
    """Export the checkpoint ``model`` into ``out`` as ``fmt``, with a model card."""
    from feds2r.export import export_model

    line = ["feds2r", "export", "--model", model, "--format", fmt, "--out", out]
    for flag, value in (("--height", height), ("--width", width), ("--eval-json", eval_json)):
        if value is not None:
            line += [flag, str(value)]
    if license != "other":
        line += ["--license", license]
    result = export_model(
        model,
        fmt,
        out,
        height=height,
        width=width,
        eval_json=eval_json,
        license=license,
        command=shlex.join(line),
    )
    size = "" if result.dynamic_size else " (fixed input size)"
    print(
        f"exported {model} as {fmt} to {out} in {result.seconds:.1f} s{size}: "
        f"{', '.join(result.files)}; largest probability difference {result.max_diff:.1g}"
    )
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "export",
        export,
        help="export a checkpoint as a transformers directory or ONNX",
        description="Export a feds2r checkpoint for use outside feds2r, with a model card "
        "(OUT/README.md: architecture, route, clients' names and formats, metrics, command, "
        "licence). --format hf writes config.json, model.safetensors and "
        "preprocessor_config.json that transformers alone loads (Mask2Former and SegFormer "
        "presets); --format onnx writes model.onnx (images in [0, 1] -> class probabilities), "
        "checked with onnxruntime against PyTorch (within 1e-3). See docs/export.md.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r export --model runs/server/global --format hf --out exported/global-hf
              feds2r export --model runs/server/global --format onnx --out exported/global-onnx
              feds2r export --model runs/server/lite --format onnx --out exported/lite \\
                  --eval-json eval.json --license apache-2.0
            """),
    )
    p.add_argument("--model", required=True, help="checkpoint folder or .safetensors file")
    p.add_argument(
        "--format", dest="fmt", required=True, choices=FORMATS, help="hf (transformers) or onnx"
    )
    p.add_argument(
        "--out", required=True, help="output folder: new, empty, or an earlier export (replaced)"
    )
    p.add_argument(
        "--height",
        type=count_type(16),
        help="inference height of the exported preprocessing or graph (default: the "
        "checkpoint's training height, else 128)",
    )
    p.add_argument(
        "--width",
        type=count_type(16),
        help="onnx only: width of the example input, the graph's only width where the "
        "architecture needs a fixed size (default 2 x height)",
    )
    p.add_argument(
        "--eval-json",
        metavar="PATH",
        help="a `feds2r eval --json` report of this checkpoint: its metrics go into the card",
    )
    p.add_argument(
        "--license",
        default="other",
        help="licence identifier for the card's header, e.g. apache-2.0 (default: other, "
        "i.e. not stated)",
    )
