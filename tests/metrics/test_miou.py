"""mIoU against a confusion matrix computed by hand, under both conventions of which classes the
mean counts."""

import math

import numpy as np
import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.metrics import ConfusionMatrix
from feds2r.metrics.bootstrap import miou_from_confusion, paired_bootstrap
from feds2r.metrics.miou import DEFAULT_MIOU_CLASSES, MIOU_CLASSES, class_iou
from feds2r.metrics.unsupervised import mapped_summary


def hand_matrix() -> ConfusionMatrix:
    """4 classes. Ground truth holds classes 0, 1, 2 (never 3); the model predicts class 3 on
    one labelled pixel; two pixels are ignored (255)."""
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = torch.tensor([0, 0, 1, 1, 3, 2, 2, 0, 3, 1])
    cm = ConfusionMatrix(num_classes=4)
    # split over two updates: accumulation must equal one update over all pixels
    cm.update(pred[:5], target[:5])
    cm.update(pred[5:], target[5:])
    return cm


# By hand (ignore pixels dropped):
#   class 0: TP 2 (px 0,1), FN 1 (px 2 -> 1), FP 1 (px 7 is 2 -> 0)  IoU = 2 / 4
#   class 1: TP 1 (px 3),   FN 1 (px 4 -> 3), FP 1 (px 2)          IoU = 1 / 3
#   class 2: TP 2 (px 5,6), FN 1 (px 7 -> 0), FP 0                 IoU = 2 / 3
#   class 3: no ground truth, predicted once (px 4): TP 0, FP 1     IoU = 0 / 1
TRUE_CLASSES = [2 / 4, 1 / 3, 2 / 3]


def test_the_official_convention_counts_a_predicted_but_absent_class_as_zero() -> None:
    cm = hand_matrix()
    iou = cm.iou("official")
    assert np.allclose(iou, TRUE_CLASSES + [0.0])
    s = cm.summary("official")
    # cityscapesScripts and mmseg: the mean over every class with a union, here all four
    assert s["miou"] == pytest.approx(100 * sum(TRUE_CLASSES) / 4)
    assert s["per_class"][3] == 0.0
    assert s["classes_present"] == 3 and s["classes_counted"] == 4
    assert s["miou_classes"] == "official"
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 8) and s["pixels"] == 8
    assert cm.matrix.sum() == 8 and cm.matrix[1, 3] == 1 and cm.matrix[2, 0] == 1


def test_the_present_convention_leaves_a_predicted_but_absent_class_out() -> None:
    cm = hand_matrix()
    iou = cm.iou("present")
    assert np.allclose(iou[:3], TRUE_CLASSES) and math.isnan(iou[3])
    s = cm.summary("present")
    # class 3 is left out, though its false positive still lowers class 1's IoU
    assert s["miou"] == pytest.approx(100 * sum(TRUE_CLASSES) / 3)
    assert s["per_class"][3] is None
    assert s["classes_present"] == 3 and s["classes_counted"] == 3
    assert s["miou_classes"] == "present"


def test_official_is_the_default() -> None:
    assert DEFAULT_MIOU_CLASSES == "official" and set(MIOU_CLASSES) == {"official", "present"}
    cm = hand_matrix()
    assert cm.summary() == cm.summary("official")


def test_a_class_neither_present_nor_predicted_is_left_out_by_both() -> None:
    # class 2 never occurs in the ground truth and is never predicted: no union, no IoU
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]))
    for classes in MIOU_CLASSES:
        s = cm.summary(classes)
        assert s["per_class"][2] is None and s["classes_counted"] == 2
        assert s["miou"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_the_conventions_agree_when_every_class_is_in_the_ground_truth() -> None:
    rng = np.random.default_rng(0)
    m = torch.as_tensor(rng.integers(1, 50, size=(19, 19)))
    cm = ConfusionMatrix()
    cm.matrix = m
    assert cm.summary("official")["miou"] == cm.summary("present")["miou"]


def test_set_level_not_image_average() -> None:
    # Image A: one pixel of class 0, right. Image B: 99 pixels of class 0, all wrong (class 1).
    cm = ConfusionMatrix(num_classes=2)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.update(torch.ones(99, dtype=torch.long), torch.zeros(99, dtype=torch.long))
    # over the set: class 0 IoU = 1/100; class 1 is predicted but absent: 0 (official) or out
    assert cm.summary("present")["miou"] == pytest.approx(1.0)
    assert cm.summary("official")["miou"] == pytest.approx(0.5)


def test_an_unknown_convention_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(Feds2rError, match="official, present"):
        hand_matrix().summary("all")


def test_the_bootstrap_and_the_unsupervised_summary_follow_the_convention() -> None:
    cm = hand_matrix()
    m = cm.matrix.numpy()
    for classes in MIOU_CLASSES:
        assert miou_from_confusion(m, classes) == pytest.approx(cm.summary(classes)["miou"])
        batch = miou_from_confusion(np.stack([m, m]), classes)
        assert batch.shape == (2,) and batch[0] == pytest.approx(cm.summary(classes)["miou"])
        # clusters = predicted classes (a (clusters, classes) matrix: m transposed), mapped one
        # to one: the same figures as the class confusion
        mapped = mapped_summary(m.T, np.arange(4), classes)
        assert mapped["miou"] == pytest.approx(cm.summary(classes)["miou"])
        assert mapped["miou_classes"] == classes
    # per-class IoU of a batch of matrices: one row per matrix
    assert class_iou(np.stack([m, m])).shape == (2, 4)
    # a paired bootstrap of a model against itself: a difference of 0 under either convention
    per_image = [np.stack([m, m, m])]
    for classes in MIOU_CLASSES:
        out = paired_bootstrap(per_image, per_image, replicates=20, classes=classes)
        assert out["diff"] == 0 and out["lo"] == 0 and out["hi"] == 0


def test_shape_and_range_checks() -> None:
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
