"""Losses on hand-made tensors."""

import torch

from feds2r.losses.mask_classification import (
    dice_loss,
    hungarian_match,
    mask2former_loss,
    semantic_targets,
)
from feds2r.losses.pixel import pixel_cross_entropy


def test_semantic_targets_one_mask_per_present_class():
    lbl = torch.tensor([[[0, 0, 3], [255, 3, 3]]])
    ((classes, masks),) = semantic_targets(lbl, num_classes=19)
    assert classes.tolist() == [0, 3]
    assert masks[0].tolist() == [[1, 1, 0], [0, 0, 0]]
    assert masks[1].tolist() == [[0, 0, 1], [0, 1, 1]]


def test_hungarian_match_finds_the_obvious_assignment():
    torch.manual_seed(0)
    # two targets: left half class 2, right half class 5; queries 1 and 3 predict them
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1
    masks[1, :, 4:] = 1
    cls = torch.full((4, 20), -5.0)
    cls[:, 19] = 5.0  # everyone says "no object"...
    cls[1, 2] = 8.0  # ...except query 1 (class 2)
    cls[3, 5] = 8.0  # and query 3 (class 5)
    mask_logits = torch.full((4, 8, 8), -6.0)
    mask_logits[1, :, :4] = 6.0
    mask_logits[3, :, 4:] = 6.0
    rows, cols = hungarian_match(cls, mask_logits, torch.tensor([2, 5]), masks, num_points=256)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 1, 1: 3}


def test_set_prediction_loss_prefers_correct_predictions():
    torch.manual_seed(0)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 5
    good_cls = torch.full((1, 3, 20), -5.0)
    good_cls[0, :, 19] = 5.0
    good_cls[0, 0, 0] = 9.0
    good_cls[0, 1, 5] = 9.0
    good_masks = torch.full((1, 3, 8, 8), -8.0)
    good_masks[0, 0, :, :4] = 8.0
    good_masks[0, 1, :, 4:] = 8.0
    good = mask2former_loss(good_cls, good_masks, [], labels, num_points=256)
    bad = mask2former_loss(good_cls, good_masks.flip(-1), [], labels, num_points=256)
    # mask terms never reach 0: importance sampling puts most points on the boundary, where the
    # bilinearly sampled target is 0.5 and BCE is at its entropy floor
    assert good["loss"] < 0.5 * bad["loss"]
    # flipped masks are matched to the target they cover, so the class term pays
    assert good["loss_ce"] < 0.1 < 10 < bad["loss_ce"]
    assert set(good) == {"loss", "loss_ce", "loss_mask", "loss_dice"}
    # deep supervision: an auxiliary layer adds its own terms
    with_aux = mask2former_loss(
        good_cls, good_masks, [(good_cls, good_masks.flip(-1))], labels, num_points=256
    )
    assert abs(with_aux["loss"] - (good["loss"] + bad["loss"])) < 0.1 * bad["loss"]


def test_dice_is_zero_for_perfect_and_near_one_for_disjoint():
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(torch.tensor([[20.0, 20.0, -20.0, -20.0]]), t) < 0.01
    assert dice_loss(torch.tensor([[-20.0, -20.0, 20.0, 20.0]]), t) > 0.6


def test_pixel_cross_entropy_ignores_255_and_upsamples():
    logits = torch.zeros(1, 19, 2, 2)
    logits[:, 3] = 10.0
    labels = torch.full((1, 4, 4), 3)
    low = pixel_cross_entropy(logits, labels)["loss"]
    labels_ignored = labels.clone()
    labels_ignored[0, :2] = 255
    assert torch.isclose(pixel_cross_entropy(logits, labels_ignored)["loss"], low)
    assert low < 0.01 and pixel_cross_entropy(logits, torch.full((1, 4, 4), 7))["loss"] > 5
