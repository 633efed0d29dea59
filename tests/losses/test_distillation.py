"""Distillation losses and teacher combination on hand-made tensors."""

import pytest
import torch

from feds2r.losses.distillation import (
    combine_teachers,
    feature_loss,
    majority_or_fallback,
    mask_kd_loss,
    pixel_kd_loss,
    soft_targets,
)


def two_region_probs(a: int, b: int, k: int = 19, h: int = 8, w: int = 8) -> torch.Tensor:
    """(1, K, h, w): left half mostly class a, right half mostly class b."""
    p = torch.full((1, k, h, w), 0.02 / (k - 1))
    p[0, a, :, : w // 2] = 0.98
    p[0, b, :, w // 2 :] = 0.98
    p[0, a, :, w // 2 :] = p[0, b, :, : w // 2] = 0.02 / (k - 1)
    return p / p.sum(1, keepdim=True)


def test_combine_teachers_uniform_and_weighted():
    t0, t1 = two_region_probs(0, 13), two_region_probs(0, 14)  # disagree: car vs truck
    both = torch.stack([t0, t1])
    mean = combine_teachers(both)
    assert torch.allclose(mean, (t0 + t1) / 2)
    w = torch.ones(2, 19)
    w[1] = 3.0  # trust teacher 1 three times more, for every class
    weighted = combine_teachers(both, w)
    assert torch.allclose(weighted, 0.25 * t0 + 0.75 * t1)
    assert torch.allclose(weighted.sum(1), torch.ones(1, 8, 8))


def test_majority_keeps_the_mean_where_most_agree_and_falls_back_elsewhere():
    # left half: teachers 0 and 1 say road (0), teacher 2 says sidewalk (1); right half: each
    # says another class (car 13, truck 14, bus 15), so no class has a majority there
    t = torch.stack([two_region_probs(0, 13), two_region_probs(0, 14), two_region_probs(1, 15)])
    mean = combine_teachers(t)
    out = majority_or_fallback(t, mean, fallback=2)
    assert torch.equal(out[..., :4], mean[..., :4])
    assert torch.equal(out[..., 4:], t[2][..., 4:])
    assert out[0, :, 0, 0].argmax() == 0 and out[0, :, 0, 7].argmax() == 15
    # two teachers: a pixel keeps the mean only where both agree
    pair = torch.stack([two_region_probs(0, 13), two_region_probs(0, 14)])
    out = majority_or_fallback(pair, combine_teachers(pair), fallback=0)
    assert out[0, :, 0, 7].argmax() == 13 and torch.allclose(out[..., 4:], pair[0][..., 4:])


def test_soft_targets_regions_masks_and_distributions():
    probs = two_region_probs(0, 13)
    (targets,), (dists,) = (lambda t: ([t[0][0]], [t[1][0]]))(soft_targets(probs))
    classes, masks = targets
    assert classes.tolist() == [0, 13]
    assert torch.allclose(masks[0], probs[0, 0]) and masks.shape == (2, 8, 8)
    assert dists.shape == (2, 20) and torch.allclose(dists.sum(1), torch.ones(2))
    assert dists[0, 0] > 0.9 and dists[1, 13] > 0.9 and (dists[:, 19] == 0).all()
    softer = soft_targets(probs, temperature=4.0)[1][0]
    assert softer[0, 0] < dists[0, 0]  # a higher temperature flattens the class distribution
    tiny = torch.zeros(1, 19, 100, 100)
    tiny[0, 0] = 1
    tiny[0, 0, 0, 0], tiny[0, 5, 0, 0] = 0, 1  # class 5 on one pixel: below min_fraction
    assert soft_targets(tiny)[0][0][0].tolist() == [0]


def test_mask_kd_prefers_students_that_agree_with_teachers():
    torch.manual_seed(0)
    teacher = two_region_probs(0, 13)
    cls = torch.full((1, 3, 20), -5.0)
    cls[0, :, 19] = 5.0
    cls[0, 0, 0], cls[0, 1, 13] = 9.0, 9.0
    masks = torch.full((1, 3, 8, 8), -8.0)
    masks[0, 0, :, :4], masks[0, 1, :, 4:] = 8.0, 8.0
    good = mask_kd_loss(cls, masks, [], teacher, temperature=2.0)
    wrong_cls = cls.clone()
    wrong_cls[0, 1, 13], wrong_cls[0, 1, 14] = -5.0, 9.0  # calls the car a truck
    bad = mask_kd_loss(wrong_cls, masks, [], teacher, temperature=2.0)
    assert good["loss_ce"] < 0.5 * bad["loss_ce"]
    assert set(good) == {"loss", "loss_ce", "loss_mask", "loss_dice"}


def test_pixel_kd_zero_iff_equal():
    t = two_region_probs(0, 13)
    assert pixel_kd_loss(t, t)["loss"] < 1e-6
    assert pixel_kd_loss(two_region_probs(0, 14), t)["loss"] > 1.0


def test_feature_loss():
    f = torch.randn(2, 8, 4, 4)
    assert feature_loss(f, f) < 1e-6
    assert feature_loss(-f, f) == pytest.approx(2.0)
    assert feature_loss(f[..., :2, :2], f).shape == ()  # resized to the target's size
