"""The teacher ensemble (feds2r/server/teachers.py): per-class teacher weights, the feature
aligner and fusion, the combination rules and test-time prediction."""

import pytest
import torch

from feds2r.models import create_model
from feds2r.server.teachers import (
    FeatureAligner,
    TeacherEnsemble,
    agreement_weights,
    fuse_features,
    most_agreeing,
)


def test_agreement_weights_normalise_per_class():
    w = agreement_weights([[0.9, None, 0.0], [0.3, None, 0.5]])
    assert torch.allclose(w.sum(0), torch.ones(3))
    assert w[0, 0] == pytest.approx(0.75) and w[0, 1] == pytest.approx(0.5)
    assert w[0, 2] == pytest.approx(0.05 / 0.55)  # floor keeps a dissenting teacher in


def test_aligner_recovers_a_linear_map_between_feature_spaces():
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


def test_ensemble_predicts_the_mean_and_the_majority_rule_falls_back():
    torch.manual_seed(0)
    teachers = [create_model("segformer-cpu") for _ in range(3)]
    images = torch.randint(0, 255, (2, 3, 64, 128), dtype=torch.uint8)
    probs = torch.stack([t.eval().predict(images) for t in teachers])
    mean = TeacherEnsemble(teachers).predict(images)
    assert torch.allclose(mean, probs.mean(0))  # the demo's ``ensemble`` row
    rule = TeacherEnsemble(teachers, fallback=2).predict(images)
    share = (probs.argmax(2) == probs.mean(0).argmax(1)[None]).float().mean(0)
    agree = (share > 0.5)[:, None].expand_as(mean)
    assert torch.equal(rule[agree], mean[agree])
    assert torch.equal(rule[~agree], probs[2][~agree])
    # flip TTA: the mean of the image's and its mirror's predictions
    tta = TeacherEnsemble(teachers, tta=True).predict(images)
    mirror = torch.stack([t.predict(images.flip(-1)) for t in teachers]).mean(0).flip(-1)
    assert torch.allclose(tta, (mean + mirror) / 2, atol=1e-6)
    assert most_agreeing([0.2, 0.7, 0.7]) == 1
    with pytest.raises(ValueError, match="at least one"):
        TeacherEnsemble([])
