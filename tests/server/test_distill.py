"""Server distillation (feds2r/server/distill.py): FedAvg, teacher weights, the distillation
loss, cached teacher targets, feature alignment and the student's initialisation."""

import copy

import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.models import create_model
from feds2r.server.distill import (
    DistillConfig,
    agreement_weights,
    fedavg,
    make_distill_loss,
)


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
