"""Under autocast the multi-scale deformable attention samples in float32 (as Mask2Former's own
pixel decoder does), while the projections around it stay in the autocast dtype."""

from __future__ import annotations

import pytest
import torch

import feds2r.models.deformable as deformable
from feds2r.models import create_model
from feds2r.models.deformable import CanvasDeformableAttention


def attention_module() -> tuple[CanvasDeformableAttention, dict]:
    """The first pixel-decoder attention module of a random m2f-cpu, and inputs for it:
    3 levels of 8x16, 4x8 and 2x4 positions, every position a query at its own point."""
    torch.manual_seed(0)
    model = create_model("m2f-cpu")
    module = next(m for m in model.modules() if isinstance(m, CanvasDeformableAttention))
    shapes = [(8, 16), (4, 8), (2, 4)]
    s = sum(h * w for h, w in shapes)
    hidden = torch.randn(2, s, module.d_model)
    points = torch.rand(2, s, len(shapes), 2)
    inputs = {
        "hidden_states": hidden,
        "encoder_hidden_states": hidden,
        "position_embeddings": torch.randn_like(hidden),
        "reference_points": points,
        "spatial_shapes_list": shapes,
    }
    return module.eval(), inputs


@pytest.fixture
def seen(monkeypatch) -> list[dict]:
    """What each sampling call received: the dtypes of its tensors and whether autocast was on;
    both paths (the canvas with a backward pass, transformers' per-level one without) record."""
    calls: list[dict] = []

    def recording(function):
        def wrapped(value, shapes, locations, weights):
            out = function(value, shapes, locations, weights)
            calls.append(
                {
                    "dtypes": {value.dtype, locations.dtype, weights.dtype, out.dtype},
                    "autocast": torch.is_autocast_enabled("cpu"),
                    "args": (value, shapes, locations, weights),
                    "out": out,
                    "function": function,
                }
            )
            return out

        return wrapped

    monkeypatch.setattr(
        deformable, "canvas_deformable_attention", recording(deformable.canvas_deformable_attention)
    )
    monkeypatch.setattr(
        deformable, "per_level_attention", recording(deformable.per_level_attention)
    )
    return calls


@pytest.mark.parametrize("grad", [True, False], ids=["canvas (training)", "per-level (no grad)"])
def test_sampling_runs_in_float32_under_bf16_autocast(seen, grad) -> None:
    module, inputs = attention_module()
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = module(**inputs)
    assert len(seen) == 1
    call = seen[0]
    assert call["dtypes"] == {torch.float32}  # value, locations, weights and result
    assert call["autocast"] is False  # switched off around the sampling
    # the projections around it are autocast's: the module's output is bf16
    assert out.dtype == torch.bfloat16
    # what it computed is the float32 computation of those inputs, to float32 rounding
    value, shapes, locations, weights = call["args"]
    with torch.no_grad():
        again = call["function"](value.detach(), shapes, locations.detach(), weights.detach())
    torch.testing.assert_close(call["out"].detach(), again, rtol=1e-6, atol=1e-6)


def test_without_autocast_float32_stays_float32_and_bf16_weights_sample_in_float32(seen) -> None:
    module, inputs = attention_module()
    with torch.no_grad():
        out, _ = module(**inputs)
    assert seen[0]["dtypes"] == {torch.float32} and out.dtype == torch.float32
    # a model cast to bf16 as a whole (no autocast): the sampling still runs in float32, the
    # module's output is bf16 again
    seen.clear()
    bf16 = {k: v.bfloat16() if torch.is_tensor(v) else v for k, v in inputs.items()}
    with torch.no_grad():
        out16, _ = module.bfloat16()(**bf16)
    assert seen[0]["dtypes"] == {torch.float32} and out16.dtype == torch.bfloat16


def test_a_whole_model_trains_a_step_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    model = create_model("m2f-cpu").train()
    images = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    loss = out.class_logits.float().logsumexp(-1).mean() + out.mask_logits.float().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
