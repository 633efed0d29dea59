"""The canvas path of multi-scale deformable attention computes what transformers' path does."""

import copy

import pytest
import torch
from transformers.models.mask2former import modeling_mask2former as hf

from feds2r.models import create_model
from feds2r.models.deformable import (
    CanvasDeformableAttention,
    canvas_deformable_attention,
    use_canvas_attention,
    use_transformers_attention,
)

SHAPES = [(16, 32), (8, 16), (4, 8)]


def _inputs(seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    b, heads, dim, points = 2, 4, 8, 4
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, heads, dim, generator=g, requires_grad=True)
    # locations in and around [0, 1]: some points fall outside their level, partly or wholly
    loc = (torch.rand(b, 37, heads, 3, points, 2, generator=g) - 0.5) * spread * 1.4 + 0.5
    loc.requires_grad_()
    weights = torch.softmax(torch.randn(b, 37, heads, 3, points, generator=g), -1)
    return value, loc, weights.requires_grad_()


@pytest.mark.parametrize("spread", [0.2, 1.0, 3.0])
def test_canvas_sampling_equals_per_level_sampling(spread):
    value, loc, weights = _inputs(spread=spread)
    ours = canvas_deformable_attention(value, SHAPES, loc, weights)
    theirs = hf.multi_scale_deformable_attention(value, SHAPES, loc, weights)
    # the canvas coordinates round differently (about 1e-6 pixel): equal to float rounding
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert theirs.abs().max() > 0.1
    g = torch.randn_like(ours)
    ours_grads = torch.autograd.grad((ours * g).sum(), [value, loc, weights])
    theirs_grads = torch.autograd.grad((theirs * g).sum(), [value, loc, weights])
    for name, a, b in zip(("value", "loc", "weights"), ours_grads, theirs_grads, strict=True):
        if name == "loc":
            # bilinear sampling's slope jumps where a point crosses a pixel; a point within
            # rounding of that line may take the other side's slope
            off = ~torch.isclose(a, b, rtol=1e-4, atol=1e-4)
            assert off.float().mean() < 0.005, f"{int(off.sum())} of {off.numel()} differ"
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_points_outside_their_level_read_zeros_not_a_neighbour():
    value, loc, weights = _inputs()
    with torch.no_grad():
        loc[..., 0] = 1.3  # every point right of its level: the next level is beside it
    out = canvas_deformable_attention(value, SHAPES, loc, weights)
    assert torch.equal(out, torch.zeros_like(out))


def test_the_model_switches_every_pixel_decoder_attention_and_keeps_its_outputs():
    torch.manual_seed(0)
    model = create_model("m2f-cpu")
    modules = [
        m
        for m in model.modules()
        if isinstance(m, hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention)
    ]
    assert modules and all(type(m) is CanvasDeformableAttention for m in modules)
    with torch.no_grad():  # transformers starts them uniform: give the attention weights a shape
        for m in modules:
            m.attention_weights.weight.normal_(0, 0.5)
    plain = copy.deepcopy(model)
    assert use_transformers_attention(plain) == len(modules)
    assert not any(type(m) is CanvasDeformableAttention for m in plain.modules())
    x = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    model.eval()
    plain.eval()
    a, b = model(x), plain(x)  # with autograd on: the canvas path
    assert a.mask_logits.requires_grad
    torch.testing.assert_close(a.mask_logits, b.mask_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.class_logits, b.class_logits, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # without: transformers' own sampling, our softmax
        torch.testing.assert_close(model(x).mask_logits, plain(x).mask_logits)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert use_canvas_attention(plain) == len(modules)


def test_the_written_out_softmax_equals_torch_softmax():
    from feds2r.models.deformable import _softmax

    x = torch.randn(3, 50, 4, 12) * 6
    x[0, 0, 0] = 80.0  # large logits: the maximum is subtracted first
    torch.testing.assert_close(_softmax(x), x.softmax(-1), rtol=1e-6, atol=1e-7)
    g = torch.randn_like(x)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    (_softmax(a) * g).sum().backward()
    (b.softmax(-1) * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
