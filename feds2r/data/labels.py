"""The label space every part of feds2r shares: the 19 Cityscapes train classes.

Names, train ids (0-18), colours and the label-id table follow the Cityscapes benchmark's own
definition (``cityscapesscripts/helpers/labels.py`` in the official cityscapesScripts, Cordts et al.
CVPR 2016). Everything that is not one of the 19 classes is :data:`IGNORE_INDEX` (255).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# Standard Cityscapes colour palette, one RGB triple per train id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

# Rare classes in every real driving dataset (well under 0.3 % of Cityscapes' labelled pixels).
RARE_CLASSES: tuple[str, ...] = ("rider", "truck", "bus", "train", "motorcycle", "bicycle")

# Cityscapes label id (0-33) -> train id, from cityscapesScripts' labels.py. Ids not listed
# (unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground, parking,
# rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer) are ignored.
CITYSCAPES_ID_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_NUM_IDS = 34  # valid label ids are 0..33 (license plate, -1, is never written to PNG)


def class_index(name: str) -> int:
    """Train id of a class name; raises ``KeyError`` listing the valid names."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown class {name!r}; valid classes: {', '.join(CLASS_NAMES)}") from None


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A ``(size,)`` uint8 table from native ids to train ids; 255 where ``mapping`` is silent."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for native, train in mapping.items():
        lut[native] = train
    return lut


def colorize(label: np.ndarray) -> np.ndarray:
    """Colour a ``(H, W)`` train-id map with the Cityscapes palette; ignore pixels are black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = PALETTE
    return palette[label.astype(np.uint8)]
