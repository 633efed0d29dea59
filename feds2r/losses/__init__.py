"""Losses: pure functions of model outputs and targets, each returning a dict of loss parts."""

from __future__ import annotations

from torch import Tensor

from feds2r.losses.fedseg import (
    PixelMemory,
    annotated_classes,
    back_cross_entropy,
    empty_memory,
    fedseg_loss,
    local_to_global_contrastive,
    pseudo_labels,
    region_embeddings,
    update_memory,
)
from feds2r.losses.mask_classification import mask2former_loss
from feds2r.losses.pixel import pixel_cross_entropy
from feds2r.models import SegOutput


def supervised_loss(output: SegOutput, labels: Tensor) -> dict[str, Tensor]:
    """The supervised loss of a model's family: set prediction (Mask2Former) or pixel CE."""
    if output.class_logits is not None:
        return mask2former_loss(output.class_logits, output.mask_logits, output.aux, labels)
    return pixel_cross_entropy(output.seg_logits, labels)


__all__ = [
    "PixelMemory",
    "annotated_classes",
    "back_cross_entropy",
    "empty_memory",
    "fedseg_loss",
    "local_to_global_contrastive",
    "mask2former_loss",
    "pixel_cross_entropy",
    "pseudo_labels",
    "region_embeddings",
    "supervised_loss",
    "update_memory",
]
