"""Segmentation models: presets built from configs, one wrapper interface over all of them."""

from feds2r.models.presets import PRESETS, Preset
from feds2r.models.segmodel import (
    PUBLIC,
    SegModel,
    SegOutput,
    create_model,
    is_hf_dir,
    load_backbone_weights,
    load_hf_model,
    shipped_weights,
)

__all__ = [
    "PRESETS",
    "PUBLIC",
    "Preset",
    "SegModel",
    "SegOutput",
    "create_model",
    "is_hf_dir",
    "load_backbone_weights",
    "load_hf_model",
    "shipped_weights",
]
