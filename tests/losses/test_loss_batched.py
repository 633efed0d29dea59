"""The batched set-prediction loss equals the layer-by-layer, image-by-image one it replaced."""

import pytest
import torch

from feds2r.losses import mask_classification as batched
from tests.losses import reference_set_loss as reference


def _inputs(b, q, layers, h=16, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(b, q, 20, generator=g, requires_grad=True) for _ in range(layers)]
    masks = [torch.randn(b, q, h, w, generator=g, requires_grad=True) for _ in range(layers)]
    labels = torch.randint(0, 19, (b, 4 * h, 4 * w), generator=g)
    labels[:, :, : w // 2] = torch.randint(0, 4, (1,), generator=g)  # a large region
    labels[1, :8] = 255  # some ignored pixels
    labels[-1] = 255  # an image without any target
    return cls, masks, labels


def _run(module, cls, masks, labels, **kwargs):
    torch.manual_seed(1)
    out = module.mask2former_loss(
        cls[0], masks[0], list(zip(cls[1:], masks[1:], strict=True)), labels, **kwargs
    )
    grads = torch.autograd.grad(out["loss"], [*cls, *masks])
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize(("b", "q", "layers"), [(4, 24, 3), (3, 6, 1), (2, 24, 4)])
def test_supervised_loss_and_gradients_equal_the_reference(b, q, layers):
    # q = 6 < the up-to-19 classes of an image: some targets stay unmatched
    cls, masks, labels = _inputs(b, q, layers)
    new, new_grads = _run(batched, cls, masks, labels, num_points=200)
    old, old_grads = _run(reference, cls, masks, labels, num_points=200)
    assert new.keys() == old.keys()
    for key in old:
        torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=1e-6)
    for a, o in zip(new_grads, old_grads, strict=True):
        torch.testing.assert_close(a, o, rtol=1e-4, atol=1e-7)
    assert old["loss_mask"] > 0 and old["loss_ce"] > 0  # the comparison is not between zeros


def test_distillation_targets_equal_the_reference():
    cls, masks, labels = _inputs(3, 12, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    targets, dists = [], []
    for i in range(3):
        t = 0 if i == 1 else 5  # the second image has no target
        classes = torch.randperm(19, generator=g)[:t].sort().values
        targets.append((classes, torch.rand(t, 64, 128, generator=g)))  # soft masks
        dists.append(torch.softmax(torch.randn(t, 20, generator=g), -1))
    kwargs = {"targets": targets, "class_dists": dists, "temperature": 2.0, "num_points": 128}
    new, new_grads = _run(batched, cls, masks, None, **kwargs)
    old, old_grads = _run(reference, cls, masks, None, **kwargs)
    for key in old:
        torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=1e-6)
    for a, o in zip(new_grads, old_grads, strict=True):
        torch.testing.assert_close(a, o, rtol=1e-4, atol=1e-7)


def test_no_targets_at_all_gives_the_class_term_only():
    cls, masks, _ = _inputs(2, 8, 2)
    labels = torch.full((2, 64, 128), 255)
    new, _ = _run(batched, cls, masks, labels, num_points=64)
    old, _ = _run(reference, cls, masks, labels, num_points=64)
    torch.testing.assert_close(new["loss"], old["loss"])
    assert float(new["loss_mask"]) == 0.0 and float(new["loss_ce"]) > 0


def test_semantic_targets_equal_the_reference():
    labels = torch.randint(0, 19, (3, 20, 30))
    labels[0, :5] = 255
    labels[2] = 7
    for (c_new, m_new), (c_old, m_old) in zip(
        batched.semantic_targets(labels, 19), reference.semantic_targets(labels, 19), strict=True
    ):
        assert torch.equal(c_new, c_old) and torch.equal(m_new, m_old)


def test_a_nan_prediction_still_stops_the_matcher():
    cls, masks, labels = _inputs(2, 8, 1)
    bad = masks[0].detach().clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        batched.mask2former_loss(cls[0], bad, [], labels, num_points=64)
