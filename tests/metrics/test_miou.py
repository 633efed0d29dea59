"""mIoU against a confusion matrix computed by hand."""

import math

import numpy as np
import pytest
import torch

from feds2r.metrics import ConfusionMatrix


def test_miou_matches_hand_computation_with_absent_classes_and_ignore():
    # 4 classes. Ground truth holds classes 0, 1, 2 (never 3); some pixels are ignored (255).
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = torch.tensor([0, 0, 1, 1, 3, 2, 2, 0, 3, 1])
    cm = ConfusionMatrix(num_classes=4)
    # split over two updates: accumulation must equal one update over all pixels
    cm.update(pred[:5], target[:5])
    cm.update(pred[5:], target[5:])
    # By hand (ignore pixels dropped):
    #   class 0: TP 2 (px 0,1), FN 1 (px 2 -> 1), FP 1 (px 7 is 2 -> 0)  IoU = 2 / 4
    #   class 1: TP 1 (px 3),   FN 1 (px 4 -> 3), FP 1 (px 2)          IoU = 1 / 3
    #   class 2: TP 2 (px 5,6), FN 1 (px 7 -> 0), FP 0                 IoU = 2 / 3
    #   class 3: no ground truth -> undefined, left out of the mean (its FP hurt class 1)
    expected = [2 / 4, 1 / 3, 2 / 3]
    iou = cm.iou()
    assert np.allclose(iou[:3], expected)
    assert math.isnan(iou[3])
    s = cm.summary()
    assert s["miou"] == pytest.approx(100 * sum(expected) / 3)
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 8)
    assert s["per_class"][3] is None and s["classes_present"] == 3 and s["pixels"] == 8
    assert cm.matrix.sum() == 8 and cm.matrix[1, 3] == 1 and cm.matrix[2, 0] == 1


def test_set_level_not_image_average():
    # Image A: one pixel of class 0, right. Image B: 99 pixels of class 0, all wrong (class 1).
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.update(torch.ones(99, dtype=torch.long), torch.zeros(99, dtype=torch.long))
    # over the set: class 0 IoU = 1/100 (class 1 has no ground truth)
    assert cm.summary()["miou"] == pytest.approx(1.0)


def test_shape_and_range_checks():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
