"""Every preset builds offline and exposes the wrapper interface."""

import pytest
import torch
from safetensors.torch import save_file

from feds2r.errors import Feds2rError
from feds2r.models import PRESETS, create_model, load_backbone_weights

CPU = [n for n, p in PRESETS.items() if p.scale == "cpu"]
PAPER = [n for n, p in PRESETS.items() if p.scale == "paper"]


def check_interface(model, h=64, w=128):
    model.eval()
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    out = model(images)
    assert out.features.shape[:1] == (2,) and out.features.shape[-2:] == (h // 4, w // 4)
    if model.is_mask_classification:
        q = out.class_logits.shape[1]
        assert out.class_logits.shape == (2, q, 20)
        assert out.mask_logits.shape == (2, q, h // 4, w // 4)
        assert out.seg_logits is None
    else:
        assert out.seg_logits.shape == (2, 19, h // 4, w // 4) and out.class_logits is None
    probs = out.semantic_probs((h, w))
    assert probs.shape == (2, 19, h, w)
    assert torch.allclose(probs.sum(1), torch.ones(2, h, w), atol=1e-4)


@pytest.mark.parametrize("preset", CPU)
def test_cpu_presets(preset):
    model = create_model(preset)
    n = sum(p.numel() for p in model.parameters())
    # "of the order of 1M parameters"; EfficientNet-Lite0's backbone alone has 2.96M
    assert 2e5 < n < (4e6 if PRESETS[preset].backbone is not None else 2e6)
    check_interface(model)
    model.train()
    out = model(torch.zeros(1, 3, 64, 128))
    assert len(out.aux) == (2 if model.is_mask_classification else 0)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PAPER)
def test_paper_presets_build_offline(preset):
    model = create_model(preset)
    assert sum(p.numel() for p in model.parameters()) > 3e6
    if preset in ("m2f-swin-t", "segformer-b0"):
        check_interface(model, 64, 128)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(Feds2rError, match="valid presets: m2f-cpu"):
        create_model("deeplab")


def test_backbone_weights_load_with_prefix_and_refuse_pickles(tmp_path):
    source = create_model("m2f-cpu")
    state = {f"backbone.{k}": v.clone() for k, v in source.backbone().state_dict().items()}
    save_file(state, str(tmp_path / "bb.safetensors"))
    target = create_model("m2f-cpu", backbone_weights=tmp_path / "bb.safetensors")
    for k, v in source.backbone().state_dict().items():
        assert torch.equal(target.backbone().state_dict()[k], v)
    torch.save(state, tmp_path / "bb.pt")
    with pytest.raises(Feds2rError, match="refusing to load"):
        load_backbone_weights(target, tmp_path / "bb.pt")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(Feds2rError, match="do not fit preset"):
        load_backbone_weights(target, tmp_path / "other.safetensors")


def test_fused_features_of_identical_teachers_change_nothing():
    torch.manual_seed(0)
    t = create_model("m2f-cpu").eval()
    x = torch.randint(0, 255, (1, 3, 64, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = t(x)
        fused = torch.stack([out.features, out.features]).mean(0)
        again = t.head_from_features(out, fused)
    assert torch.allclose(again.semantic_probs((64, 128)), out.semantic_probs((64, 128)), atol=1e-5)
