"""Frozen per-pixel features for unsupervised segmentation (FUSS, ``docs/fuss.md``).

FUSS and STEGO read pixel features from a frozen self-supervised foundation model (DINO ViTs).
feds2r has no such model offline; the strongest frozen backbone it ships is EfficientNet-Lite0
with real ImageNet weights (:mod:`feds2r.models.efficientnet`), so it is the default
(``"imagenet"``). The ``"public"`` backbone is the m2f-cpu preset's Swin trained on the built-in
world's `public` domain (:data:`feds2r.models.PUBLIC`), the stand-in every other preset falls back
to; a linear probe finds little in its features (``docs/models.md``), so it is kept as the
weaker reference.

Features are taken at strides 8 and 16, each level L2-normalised over channels, the stride-16
level upsampled bilinearly to stride 8, both concatenated and the result L2-normalised again:
(B, C, H/8, W/8) with C = 40 + 112 (``imagenet``) or 48 + 96 (``public``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feds2r.errors import Feds2rError

FEATURE_BACKBONES = ("imagenet", "public")
"""Valid ``backbone`` names of :class:`FrozenFeatures`; the first is the default."""

LEVELS = (1, 2)
"""The backbones' feature maps used: strides 8 and 16 (of 4, 8, 16, 32)."""


class FrozenFeatures(nn.Module):
    """A frozen backbone returning L2-normalised per-pixel features.

    ``forward(images (B, 3, H, W), uint8 or float in [0, 1]) -> (B, C, ceil(H/8), ceil(W/8))``.
    Every parameter is frozen and the module stays in evaluation mode (BatchNorm statistics
    fixed) even when ``train()`` is called.
    """

    def __init__(self, backbone: str = "imagenet") -> None:
        super().__init__()
        if backbone not in FEATURE_BACKBONES:
            raise Feds2rError(
                f"unknown feature backbone {backbone!r}; valid: {', '.join(FEATURE_BACKBONES)}"
            )
        self.name = backbone
        if backbone == "imagenet":
            from feds2r.models.efficientnet import (
                IMAGENET_MEAN,
                IMAGENET_STD,
                EfficientNetLite,
                load_imagenet_backbone,
            )

            net = EfficientNetLite()
            load_imagenet_backbone(net)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            from feds2r.models.segmodel import PUBLIC, create_model

            seg = create_model("m2f-cpu", backbone_weights=PUBLIC)
            net = seg.backbone()
            mean, std = seg.mean.flatten().tolist(), seg.std.flatten().tolist()
        self.net = net
        channels = list(getattr(net, "channels", None) or net.num_features[1:])
        self.channels = sum(channels[i] for i in LEVELS)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenFeatures:
        return super().train(False)  # frozen: BatchNorm and dropout always in evaluation mode

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        maps = self.net((images - self.mean) / self.std).feature_maps
        size = maps[LEVELS[0]].shape[-2:]
        levels = [F.normalize(maps[i], dim=1) for i in LEVELS]
        levels = [
            lv if lv.shape[-2:] == size else F.interpolate(lv, size, mode="bilinear")
            for lv in levels
        ]
        return F.normalize(torch.cat(levels, dim=1), dim=1)


def compute_features(extractor: FrozenFeatures, images: Tensor, batch_size: int = 16) -> Tensor:
    """Features of every image, computed once: (N, 3, H, W) uint8 -> (N, C, H/8, W/8) float32.

    The result is the in-memory cache the training reads every step (the backbone is frozen, so
    a pixel's feature never changes); it holds C x H/8 x W/8 floats per image, which suits the
    small built-in world, not a large dataset.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise Feds2rError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    out = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.new_zeros((0, extractor.channels, 0, 0)).float()


__all__ = ["FEATURE_BACKBONES", "FrozenFeatures", "compute_features"]
