"""Datasets: the label space, readers for the real driving datasets, and the built-in world."""

from feds2r.data.check import CheckReport, check_dataset
from feds2r.data.dataset import DatasetSpec, SegmentationDataset, open_dataset, parse_spec
from feds2r.data.formats import FORMATS, get_format
from feds2r.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE

__all__ = [
    "CLASS_NAMES",
    "FORMATS",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "PALETTE",
    "CheckReport",
    "DatasetSpec",
    "SegmentationDataset",
    "check_dataset",
    "get_format",
    "open_dataset",
    "parse_spec",
]
