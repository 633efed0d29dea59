"""Segmentation models: presets built from configs, one wrapper interface over all of them."""

from feds2r.models.presets import PRESETS, Preset
from feds2r.models.segmodel import SegModel, SegOutput, create_model, load_backbone_weights

__all__ = ["PRESETS", "Preset", "SegModel", "SegOutput", "create_model", "load_backbone_weights"]
