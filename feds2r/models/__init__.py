"""Segmentation models: presets built from configs, one wrapper interface over all of them."""

from feds2r.models.efficientnet import EfficientNetLite, EfficientNetLiteConfig
from feds2r.models.presets import PRESETS, Preset
from feds2r.models.segmodel import (
    IMAGENET,
    PRETRAINED,
    PUBLIC,
    SegModel,
    SegOutput,
    create_model,
    is_hf_dir,
    load_backbone_weights,
    load_hf_model,
    load_imagenet_weights,
    pretrained_start,
    shipped_weights,
    start_source,
)

__all__ = [
    "IMAGENET",
    "PRESETS",
    "PRETRAINED",
    "PUBLIC",
    "EfficientNetLite",
    "EfficientNetLiteConfig",
    "Preset",
    "SegModel",
    "SegOutput",
    "create_model",
    "is_hf_dir",
    "load_backbone_weights",
    "load_hf_model",
    "load_imagenet_weights",
    "pretrained_start",
    "shipped_weights",
    "start_source",
]
