"""A feds2r model as a standard Hugging Face ``transformers`` directory.

A :class:`~feds2r.models.SegModel` of the Mask2Former and SegFormer presets wraps
``transformers``' own ``Mask2FormerForUniversalSegmentation`` / ``SegformerForSemanticSegmentation``
(its ``net``), whose state dict is the library's own (feds2r's faster deformable attention keeps
the module's parameters). So the directory is what ``save_pretrained`` writes, with the 19 class
names in ``config.json``, plus a ``preprocessor_config.json`` that makes the library's image
processor prepare an image as feds2r does: resize so that the height is the inference height
(aspect kept, bilinear), scale to [0, 1], normalise with the preset's mean and standard
deviation, no padding. ``transformers`` alone then loads it: no feds2r code is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import Feds2rError
from feds2r.io import write_atomic
from feds2r.models import SegModel
from feds2r.models.deformable import CanvasDeformableAttention

HF_FAMILIES = {
    "mask2former": ("Mask2FormerForUniversalSegmentation", "Mask2FormerImageProcessor"),
    "segformer": ("SegformerForSemanticSegmentation", "SegformerImageProcessor"),
}
"""Model families ``transformers`` has: family -> (model class, image processor class)."""

_LONGEST = 1 << 16  # Mask2Former's processor needs a longest edge; feds2r never caps the width


def check_hf_exportable(model: SegModel) -> None:
    """Refuse a model ``transformers`` has no class for, naming ONNX as the alternative: a
    preset of another family, or one with a module written in feds2r (the EfficientNet-Lite
    backbones); feds2r's deformable attention has transformers' parameters and is allowed."""
    family = model.preset.family
    expected = HF_FAMILIES.get(family, (None,))[0]
    own = sorted(
        {
            type(m).__name__
            for m in model.net.modules()
            if not type(m).__module__.startswith(("transformers.", "torch."))
            and not isinstance(m, CanvasDeformableAttention)
        }
    )
    if expected is None or type(model.net).__name__ != expected or own:
        parts = f" ({', '.join(own[:3])})" if own else ""
        raise Feds2rError(
            f"preset {model.preset.name!r} has parts written in feds2r{parts} that transformers "
            "has no class for, so a transformers directory of it could not be loaded without "
            "feds2r; export it with --format onnx instead"
        )


def preprocessor_config(
    family: str, height: int, mean: Sequence[float], std: Sequence[float]
) -> dict:
    """The ``preprocessor_config.json`` of ``family`` that resizes and normalises as feds2r does.

    The processor resizes the shortest edge to ``height``: for images wider than tall (street
    scenes) that is feds2r's resize of the height. Resampling is bilinear (PIL's, or
    torchvision's with antialiasing); the width may differ from feds2r's by one pixel where
    ``W * height / H`` is not whole (transformers truncates, feds2r rounds).
    """
    common = {
        "do_resize": True,
        "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
        "do_reduce_labels": False,
    }
    if family == "mask2former":
        return {
            "image_processor_type": HF_FAMILIES[family][1],
            **common,
            "size": {"shortest_edge": height, "longest_edge": _LONGEST},
            "size_divisor": 0,  # no padding to a multiple of 32: feds2r does not pad
            "ignore_index": 255,
            "num_labels": len(CLASS_NAMES),
        }
    return {
        "image_processor_type": HF_FAMILIES[family][1],
        **common,
        "size": {"shortest_edge": height},
    }


def write_hf(model: SegModel, out: Path, height: int) -> list[str]:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` into ``out``
    (which exists); returns the names written."""
    check_hf_exportable(model)
    net = model.net
    net.config.id2label = dict(enumerate(CLASS_NAMES))
    net.config.label2id = {name: i for i, name in enumerate(CLASS_NAMES)}
    net.config.num_labels = len(CLASS_NAMES)
    if hasattr(net.config, "use_pretrained_backbone"):
        net.config.use_pretrained_backbone = False  # the weights are all in model.safetensors
    with _quiet_transformers():
        net.save_pretrained(str(out))
    weights = out / "model.safetensors"
    if weights.is_file():  # transformers writes it owner-only; give it the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        weights.chmod(0o666 & ~umask)
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    config = preprocessor_config(model.preset.family, height, mean, std)
    write_atomic(out / "preprocessor_config.json", (json.dumps(config, indent=2) + "\n").encode())
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


@torch.no_grad()
def check_hf(model: SegModel, out: Path, height: int, seed: int = 0) -> float:
    """Load ``out`` with ``transformers`` alone and compare its class probabilities with the
    model's on a random image (1, 3, height, 2 height); returns the largest difference.

    Raises if the directory does not reload, or its probabilities differ by more than 1e-4.
    """
    import transformers

    cls = getattr(transformers, HF_FAMILIES[model.preset.family][0])
    try:
        with _quiet_transformers():
            net = cls.from_pretrained(str(out), local_files_only=True).eval()
    except Exception as exc:  # transformers raises many types for a directory it cannot read
        raise Feds2rError(
            f"the exported directory {out} does not load in transformers: {exc}"
        ) from None
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, height, 2 * height, generator=gen)
    device = next(model.parameters()).device
    want = model.predict(images.to(device)).cpu()
    got = hf_semantic_probs(net, model.normalize(images), tuple(images.shape[-2:]))
    diff = float((want - got).abs().max())
    if diff > 1e-4:
        raise Feds2rError(
            f"the exported directory {out} reloads with probabilities {diff:.2g} away from the "
            "feds2r model's (more than 1e-4); the export is not faithful, please report it"
        )
    return diff


def hf_semantic_probs(net: torch.nn.Module, pixel_values: Tensor, size: tuple[int, int]) -> Tensor:
    """Class probabilities (B, K, *size) of a ``transformers`` model on normalised
    ``pixel_values`` (B, 3, H, W), computed as feds2r does (:meth:`SegOutput.semantic_probs`)."""
    out = net(pixel_values=pixel_values)
    if hasattr(out, "class_queries_logits"):
        cls = out.class_queries_logits.softmax(-1)[..., :-1]  # (B, Q, K)
        masks = F.interpolate(
            out.masks_queries_logits, size=size, mode="bilinear", align_corners=False
        )
        sem = torch.einsum("bqk,bqhw->bkhw", cls, masks.sigmoid())
        return sem / sem.sum(dim=1, keepdim=True).clamp_min(1e-6)
    logits = F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars from transformers while saving and reloading (restored after)."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
