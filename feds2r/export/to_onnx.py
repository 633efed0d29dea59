"""A feds2r model as an ONNX graph producing the class-probability map, checked with ONNX Runtime.

The graph takes ``images`` (B, 3, H, W): RGB, float32 in [0, 1], already resized to the
inference height (normalisation is inside the graph), and returns ``probs`` (B, 19, H, W), the
per-class probabilities feds2r's ``predict`` computes (for Mask2Former: Cheng et al.'s semantic
inference from class and mask logits, normalised over the classes). The batch is always dynamic;
height and width are dynamic where the architecture allows it, which is tested, not assumed: the
graph is run at a second size and, if it fails or differs there, exported again at a fixed size.
Mask2Former's graphs are fixed-size (its pixel decoder's level sizes are traced as constants).

It uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only ``onnx``, and it
exports Mask2Former (whose deformable attention is a ``grid_sample``, an ONNX operator from
opset 16) in seconds.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import Feds2rError
from feds2r.models import SegModel

OPSET = 17
"""ONNX opset of the export (``grid_sample`` needs 16 or later)."""

TOLERANCE = 1e-3
"""Largest difference allowed between ONNX Runtime's and PyTorch's probabilities."""


@dataclass(frozen=True)
class OnnxResult:
    """What :func:`write_onnx` exported and measured."""

    size: tuple[int, int]
    """(H, W) of the export; the only input size when ``dynamic_size`` is False."""
    dynamic_size: bool
    """Whether the graph takes any height and width (checked at a second size)."""
    max_diff: float
    """Largest |ONNX Runtime - PyTorch| over the probabilities of the check images."""
    opset: int


class ProbabilityMap(nn.Module):
    """``images`` (B, 3, H, W) in [0, 1] -> class probabilities (B, K, H, W) of ``model``."""

    def __init__(self, model: SegModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).semantic_probs(tuple(images.shape[-2:]))


def require_onnx() -> None:
    """Refuse early when ``onnx`` or ``onnxruntime`` is not installed, naming the extra."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise Feds2rError(
            f"--format onnx needs {' and '.join(missing)}; install them with "
            "`pip install 'feds2r[export]'` (or `pip install onnx onnxruntime`)"
        )


def check_images(batch: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    """Smooth random RGB images (batch, 3, *size) in [0, 1]: coarse noise upsampled, so that
    they have regions and edges as photographs do rather than per-pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(batch, 3, max(h // 8, 1), max(w // 8, 1), generator=gen)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def _export(wrapper: nn.Module, example: Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["probs"],
            dynamic_axes={"images": axes, "probs": dict(axes)},
        )


def _max_diff(session, wrapper: nn.Module, images: Tensor) -> float:
    """Largest |ONNX Runtime - PyTorch| on ``images``; inf when ONNX Runtime fails there."""
    try:
        (got,) = session.run(["probs"], {"images": images.numpy()})
    except Exception:  # onnxruntime raises its own types for a shape the graph cannot take
        return float("inf")
    with torch.no_grad():
        want = wrapper(images)
    if tuple(got.shape) != tuple(want.shape):
        return float("inf")
    return float((torch.from_numpy(got) - want).abs().max())


def write_onnx(
    model: SegModel, path: Path, size: tuple[int, int], *, opset: int = OPSET
) -> OnnxResult:
    """Export ``model`` to ``path`` at ``size`` (H, W) and check it with ONNX Runtime.

    Checked on two images at ``size`` (batch 2: the batch is dynamic) against PyTorch; the
    probabilities must agree within :data:`TOLERANCE`. A model that cannot be exported raises a
    :class:`Feds2rError` naming what blocks it.
    """
    import onnx
    import onnxruntime as ort

    model = model.cpu().eval()
    wrapper = ProbabilityMap(model).eval()
    h, w = size
    example = check_images(1, size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    options.log_severity_level = 4  # fatal only: a probe size the graph cannot take is expected
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # Mask2Former's pixel decoder keeps its levels' sizes as Python numbers, which the
        # tracer records as constants: its graph can only take the export size
        attempts = (False,) if model.preset.family == "mask2former" else (True, False)
        for dynamic in attempts:
            try:
                _export(wrapper, example, tmp, opset, dynamic)
            except Exception as exc:  # the exporter raises many types; name the cause
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise Feds2rError(
                    f"preset {model.preset.name!r} does not export to ONNX (opset {opset}): "
                    f"{type(exc).__name__}: {reason}"
                ) from None
            session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
            diff = _max_diff(session, wrapper, check_images(2, size, seed=1))
            if diff > TOLERANCE:
                raise Feds2rError(
                    f"the ONNX graph of preset {model.preset.name!r} differs from PyTorch by "
                    f"{diff:.2g} at {h}x{w} (more than {TOLERANCE:g}); the export is not "
                    "faithful, please report it"
                )
            if not dynamic:
                break
            probe = check_images(1, (h + 32, w + 64), seed=2)
            if _max_diff(session, wrapper, probe) <= TOLERANCE:
                break
        graph = onnx.load(str(tmp))
        meta = {
            "feds2r_preset": model.preset.name,
            "input": "images (B, 3, H, W): RGB float32 in [0, 1], resized to the height",
            "output": "probs (B, 19, H, W): class probabilities",
            "height": str(h),
            "size": "any" if dynamic else f"{h}x{w}",
            "classes": json.dumps(list(CLASS_NAMES)),
        }
        for key, value in meta.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return OnnxResult(size=(h, w), dynamic_size=dynamic, max_diff=diff, opset=opset)
