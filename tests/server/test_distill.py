"""Server distillation (feds2r/server/distill.py): FedAvg, the distillation loss, cached teacher
targets against the online ones, and the student's initialisation. The teacher ensemble itself
(weights, alignment, fusion): tests/server/test_teachers.py."""

import copy

import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.models import create_model
from feds2r.server.distill import DistillConfig, feature_term_applies, fedavg, make_distill_loss
from feds2r.server.teachers import TeacherEnsemble, agreement_weights, fit_aligner, sample_batches


def test_fedavg_is_the_parameter_mean():
    torch.manual_seed(0)
    a, b = create_model("segformer-cpu"), create_model("segformer-cpu")
    avg = fedavg([a, b])
    for key, value in avg.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (a.state_dict()[key] + b.state_dict()[key]) / 2)


@pytest.mark.parametrize(
    "student,kd", [("m2f-cpu", "mask"), ("m2f-cpu", "pixel"), ("segformer-cpu", "pixel")]
)
def test_distill_loss_runs_and_backpropagates(student, kd):
    torch.manual_seed(0)
    teachers = [create_model("m2f-cpu"), create_model("m2f-cpu")]
    cfg = DistillConfig(student=student, kd=kd, init="scratch", feature_fusion=True)
    weights = agreement_weights([[0.5] * 19, [0.7] * 19])
    ensemble = TeacherEnsemble(teachers, fusion=cfg.feature_fusion, weights=weights)
    with_features = feature_term_applies(teachers, cfg)
    loss_fn = make_distill_loss(ensemble, cfg, with_features=with_features)
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
    from feds2r.server.distill import build_student, make_cached_distill_loss

    torch.manual_seed(0)
    teachers = [create_model("m2f-cpu"), create_model("m2f-cpu")]
    cache = ResizedCache([], 64, progress=False)
    cache.images = [torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8) for _ in range(3)]
    cache.labels = [None] * 3
    aligner = fit_aligner(teachers, sample_batches(cache, 3))
    for cfg, al, fb in (
        (DistillConfig(init="fedavg"), aligner, None),
        (DistillConfig(init="fedavg", fusion_align=False, fusion_weight=0.5), None, None),
        (DistillConfig(init="fedavg", kd="pixel", feature_fusion=False), None, None),
        (DistillConfig(init="fedavg", combine="majority"), aligner, 1),
    ):
        ensemble = TeacherEnsemble(
            teachers,
            fusion=cfg.feature_fusion,
            fusion_weight=cfg.fusion_weight,
            aligner=al,
            fallback=fb,
        )
        with_features = feature_term_applies(teachers, cfg)
        maps, channels = ensemble.cache_targets(cache, with_features=with_features, progress=False)
        assert channels == (64 if cfg.feature_fusion else 0)
        targeted = cache.with_maps(maps)
        assert cache.maps is None  # the cache given is left as it is
        assert targeted.maps[0].shape == (19 + channels + 1, 16, 32)
        aug = dict(crop=(64, 128), scale=(1.0, 1.0), flip=False, jitter=0.0, blur_prob=0.0)
        batch = make_batch(targeted, [0, 2], torch.Generator().manual_seed(0), **aug)
        student = build_student(teachers, cfg, seed=0)[0]
        torch.manual_seed(1)
        cached = make_cached_distill_loss(cfg, 19, channels)(student, batch)
        torch.manual_seed(1)
        online = make_distill_loss(ensemble, cfg, with_features=with_features)(
            student, {"image": batch["image"]}
        )
        for key in online:
            assert torch.allclose(cached[key], online[key], rtol=1e-2, atol=1e-3), key


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


def test_a_student_of_another_preset_starts_from_its_shipped_backbone():
    from feds2r.models import create_model
    from feds2r.server.distill import DistillConfig, build_student

    torch.manual_seed(0)
    teachers = [create_model("m2f-cpu") for _ in range(2)]
    student, ref, record = build_student(teachers, DistillConfig(student="segformer-cpu"), 0)
    assert student.preset.name == "segformer-cpu" and ref is None
    assert record["init"] == "pretrained"
    assert record["backbone"].endswith("segformer-cpu-public.safetensors")
    with pytest.raises(Feds2rError, match="use init 'pretrained' or 'scratch'"):
        build_student(teachers, DistillConfig(student="segformer-cpu", init="fedavg"), 0)
