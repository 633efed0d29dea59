import numpy as np
import pytest

from feds2r.data.labels import (
    CITYSCAPES_ID_TO_TRAIN,
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    class_index,
    colorize,
    lookup_table,
)


def test_nineteen_classes_in_cityscapes_order():
    assert NUM_CLASSES == 19 == len(CLASS_NAMES) == len(PALETTE)
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[10] == "sky" and CLASS_NAMES[18] == "bicycle"
    assert IGNORE_INDEX == 255
    assert PALETTE[0] == (128, 64, 128) and PALETTE[13] == (0, 0, 142)


def test_cityscapes_label_ids_map_class_by_class():
    # cityscapesScripts labels.py: label id -> name of its train class
    expected = {7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole",
                19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain",
                23: "sky", 24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus",
                31: "train", 32: "motorcycle", 33: "bicycle"}  # fmt: skip
    lut = lookup_table(CITYSCAPES_ID_TO_TRAIN)
    for native in range(34):
        want = class_index(expected[native]) if native in expected else IGNORE_INDEX
        assert lut[native] == want, native


def test_class_index_names_valid_classes_on_error():
    with pytest.raises(KeyError, match="valid classes: road"):
        class_index("lamppost")


def test_colorize_uses_palette_and_blacks_out_ignore():
    out = colorize(np.array([[0, 255]], dtype=np.int64))
    assert out[0, 0].tolist() == [128, 64, 128] and out[0, 1].tolist() == [0, 0, 0]
