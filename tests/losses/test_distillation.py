"""Distillation losses, teacher combination and FedAvg on hand-made tensors."""

import copy

import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.losses.distillation import (
    combine_teachers,
    feature_loss,
    majority_or_fallback,
    mask_kd_loss,
    pixel_kd_loss,
    soft_targets,
)
from feds2r.models import create_model
from feds2r.server.distill import (
    DistillConfig,
    agreement_weights,
    fedavg,
    make_distill_loss,
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


def test_fedavg_is_the_parameter_mean():
    torch.manual_seed(0)
    a, b = create_model("segformer-cpu"), create_model("segformer-cpu")
    avg = fedavg([a, b])
    for key, value in avg.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (a.state_dict()[key] + b.state_dict()[key]) / 2)


def test_agreement_weights_normalise_per_class():
    w = agreement_weights([[0.9, None, 0.0], [0.3, None, 0.5]])
    assert torch.allclose(w.sum(0), torch.ones(3))
    assert w[0, 0] == pytest.approx(0.75) and w[0, 1] == pytest.approx(0.5)
    assert w[0, 2] == pytest.approx(0.05 / 0.55)  # floor keeps a dissenting teacher in


@pytest.mark.parametrize(
    "student,kd", [("m2f-cpu", "mask"), ("m2f-cpu", "pixel"), ("segformer-cpu", "pixel")]
)
def test_distill_loss_runs_and_backpropagates(student, kd):
    torch.manual_seed(0)
    teachers = [create_model("m2f-cpu"), create_model("m2f-cpu")]
    cfg = DistillConfig(student=student, kd=kd, init="scratch", feature_fusion=True)
    loss_fn = make_distill_loss(teachers, cfg, agreement_weights([[0.5] * 19, [0.7] * 19]))
    model = create_model(student).train()
    parts = loss_fn(model, {"image": torch.randint(0, 255, (2, 3, 64, 128), dtype=torch.uint8)})
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"])
    assert ("loss_feat" in parts) == (student == "m2f-cpu")  # the teachers' architecture only
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_fused_features_of_identical_teachers_change_nothing():
    torch.manual_seed(0)
    t = create_model("m2f-cpu").eval()
    x = torch.randint(0, 255, (1, 3, 64, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = t(x)
        fused = torch.stack([out.features, out.features]).mean(0)
        again = t.head_from_features(out, fused)
    assert torch.allclose(again.semantic_probs((64, 128)), out.semantic_probs((64, 128)), atol=1e-5)


def test_distill_config_validation():
    with pytest.raises(ValueError, match="kd"):
        DistillConfig(kd="logits")
    with pytest.raises(ValueError, match="init"):
        DistillConfig(init="imagenet")
    with pytest.raises(ValueError, match="combine"):
        DistillConfig(combine="vote")


def test_cached_targets_equal_online_teachers_without_augmentation():
    from feds2r.engine.data import ResizedCache, make_batch
    from feds2r.server.distill import (
        _sample_batches,
        build_student,
        cache_teacher_targets,
        fit_aligner,
        make_cached_distill_loss,
    )

    torch.manual_seed(0)
    teachers = [create_model("m2f-cpu"), create_model("m2f-cpu")]
    cache = ResizedCache([], 64, progress=False)
    cache.images = [torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8) for _ in range(3)]
    cache.labels = [None] * 3
    aligner = fit_aligner(teachers, _sample_batches(cache, 3))
    for cfg, al, fb in (
        (DistillConfig(init="fedavg"), aligner, None),
        (DistillConfig(init="fedavg", fusion_align=False, fusion_weight=0.5), None, None),
        (DistillConfig(init="fedavg", kd="pixel", feature_fusion=False), None, None),
        (DistillConfig(init="fedavg", combine="majority"), aligner, 1),
    ):
        channels = cache_teacher_targets(
            teachers, cache, cfg, None, aligner=al, fallback=fb, progress=False
        )
        assert channels == (64 if cfg.feature_fusion else 0)
        assert cache.maps[0].shape == (19 + channels + 1, 16, 32)
        aug = dict(crop=(64, 128), scale=(1.0, 1.0), flip=False, jitter=0.0, blur_prob=0.0)
        batch = make_batch(cache, [0, 2], torch.Generator().manual_seed(0), **aug)
        student = build_student(teachers, cfg, seed=0)[0]
        torch.manual_seed(1)
        cached = make_cached_distill_loss(cfg, 19, channels)(student, batch)
        torch.manual_seed(1)
        online = make_distill_loss(teachers, cfg, aligner=al, fallback=fb)(
            student, {"image": batch["image"]}
        )
        for key in online:
            assert torch.allclose(cached[key], online[key], rtol=1e-2, atol=1e-3), key


def test_maps_follow_the_view_geometry():
    from feds2r.engine.data import augment

    g = torch.Generator().manual_seed(3)
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[:, :, :64] = 255  # left half white
    maps = torch.zeros(2, 16, 32)
    maps[0, :, :16] = 1.0  # the same left half, at 1/4 resolution
    maps[1] = 1.0  # a validity channel
    for _ in range(20):
        img, _, m = augment(
            image,
            None,
            crop=(48, 96),
            scale=(0.5, 1.5),
            flip=True,
            jitter=0.0,
            blur_prob=0.0,
            g=g,
            maps=maps,
        )
        assert m.shape == (2, 12, 24)
        small = torch.nn.functional.avg_pool2d(img[:1][None], 4)[0, 0]  # image at 1/4
        valid = m[1] > 0.5
        # where the map is valid, the map's white region matches the image's (up to edges)
        agree = ((small > 0.5) == (m[0] > 0.5))[valid].float().mean()
        assert agree > 0.85
        # padding (image black beyond the scaled image) is invalid in the maps
        assert m[1].min() >= 0


def test_aligner_recovers_a_linear_map_between_feature_spaces():
    from feds2r.server.distill import FeatureAligner, fuse_features

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g)
    mix = torch.randn(8, 8, generator=g)
    b = a @ mix + 0.5
    aligner = FeatureAligner.fit([a, b], ridge=1e-9)
    fa = a.T.reshape(1, 8, 40, 100)
    fb = b.T.reshape(1, 8, 40, 100)
    assert torch.allclose(aligner.to_space(fa, 0, 1), fb, atol=1e-3)
    assert torch.allclose(aligner.to_space(fb, 1, 0), fa, atol=1e-3)
    # aligned fusion of two views of one representation changes nothing in either space
    fused = fuse_features([fa, fb], 1.0, aligner)
    assert torch.allclose(fused[0], fa, atol=1e-3) and torch.allclose(fused[1], fb, atol=1e-3)
    # raw averaging mixes the two spaces; weight 0 keeps each teacher's own features
    assert not torch.allclose(fuse_features([fa, fb], 1.0)[0], fa, atol=1e-1)
    assert torch.equal(fuse_features([fa, fb], 0.0)[1], fb)


def test_client_init_picks_the_client_closest_to_the_ensemble():
    from feds2r.server.distill import build_student

    torch.manual_seed(0)
    a = create_model("m2f-cpu")
    odd = create_model("m2f-cpu")
    with torch.no_grad():  # every query of a says class 3, every query of odd class 7
        for model, k in ((a, 3), (odd, 7)):
            model.net.class_predictor.weight.zero_()
            model.net.class_predictor.bias.zero_()[k] = 10.0
    teachers = [odd, a, copy.deepcopy(a)]
    images = [torch.randint(0, 255, (2, 3, 64, 128), dtype=torch.uint8)]
    student, ref, record = build_student(teachers, DistillConfig(init="client"), 0, images)
    assert ref in (1, 2) and record["init"] == f"client {ref}"
    assert record["agreement_clients"][ref] > record["agreement_clients"][0]
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), a.parameters(), strict=True))
    with pytest.raises(Feds2rError, match="needs server images"):
        build_student(teachers, DistillConfig(init="auto"), 0, None)
