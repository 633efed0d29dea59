"""One wrapper over every preset: what training, distillation and evaluation need from a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerForUniversalSegmentation, SegformerForSemanticSegmentation

from feds2r.data.labels import NUM_CLASSES
from feds2r.errors import Feds2rError
from feds2r.models.presets import PRESETS, Preset

# ImageNet statistics, the usual input normalisation of both backbone families.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class SegOutput:
    """A forward pass. Shapes: B batch, K classes, Q queries, C feature channels, (h, w) = H/4, W/4.

    ``features`` (B, C, h, w): the decoder features used for feature fusion (Mask2Former: the
    pixel decoder's mask features; SegFormer: the all-MLP head's fused features).
    ``class_logits`` (B, Q, K+1) and ``mask_logits`` (B, Q, h, w): mask classification outputs
    (None for per-pixel models); the last class is "no object".
    ``seg_logits`` (B, K, h, w): per-pixel class logits (None for mask classification models).
    ``aux``: (class_logits, mask_logits) of intermediate decoder layers, for deep supervision.
    ``mask_embeddings`` (B, Q, C): Mask2Former's final per-query mask embeddings; the mask logits
    are ``einsum("bqc,bchw->bqhw", mask_embeddings, features)``.
    """

    features: Tensor
    class_logits: Tensor | None = None
    mask_logits: Tensor | None = None
    seg_logits: Tensor | None = None
    aux: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    mask_embeddings: Tensor | None = None

    def semantic_probs(self, size: tuple[int, int]) -> Tensor:
        """Per-class probabilities (B, K, H, W) at ``size``; they sum to 1 over K at each pixel.

        Mask classification: ``sum_q softmax(class)[q, k] * sigmoid(mask)[q]`` (Cheng et al.'s
        semantic inference), then normalised over classes so that it is a distribution.
        """
        if self.seg_logits is not None:
            logits = F.interpolate(self.seg_logits, size=size, mode="bilinear", align_corners=False)
            return logits.softmax(dim=1)
        cls = self.class_logits.softmax(dim=-1)[..., :-1]  # (B, Q, K)
        masks = F.interpolate(self.mask_logits, size=size, mode="bilinear", align_corners=False)
        sem = torch.einsum("bqk,bqhw->bkhw", cls, masks.sigmoid())
        return sem / sem.sum(dim=1, keepdim=True).clamp_min(1e-6)


class SegModel(nn.Module):
    """A segmentation network from a preset, with one interface for both families.

    ``forward(images)`` takes RGB images (B, 3, H, W), uint8 or float in [0, 1], and returns a
    :class:`SegOutput`; normalisation happens inside.
    """

    def __init__(self, preset: Preset, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.preset = preset
        self.num_classes = num_classes
        config = preset.build_config(num_classes)
        if preset.family == "mask2former":
            self.net = Mask2FormerForUniversalSegmentation(config)
        else:
            self.net = SegformerForSemanticSegmentation(config)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    @property
    def is_mask_classification(self) -> bool:
        return self.preset.family == "mask2former"

    def normalize(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> SegOutput:
        x = self.normalize(images)
        if self.is_mask_classification:
            embeds: list[Tensor] = []  # one per decoder layer; the last is the final one
            embedder = self.net.model.transformer_module.decoder.mask_predictor.mask_embedder
            hook = embedder.register_forward_hook(
                lambda _module, _inputs, output: embeds.append(output)
            )
            try:
                out = self.net(pixel_values=x, output_auxiliary_logits=self.training)
            finally:
                hook.remove()
            aux = [
                (a["class_queries_logits"], a["masks_queries_logits"])
                for a in (out.auxiliary_logits or [])
            ]
            return SegOutput(
                features=out.pixel_decoder_last_hidden_state,
                class_logits=out.class_queries_logits,
                mask_logits=out.masks_queries_logits,
                aux=aux,
                mask_embeddings=embeds[-1],
            )
        captured: list[Tensor] = []
        hook = self.net.decode_head.classifier.register_forward_pre_hook(
            lambda _module, inputs: captured.append(inputs[0])
        )
        try:
            out = self.net(pixel_values=x)
        finally:
            hook.remove()
        return SegOutput(features=captured[0], seg_logits=out.logits)

    def head_from_features(self, out: SegOutput, features: Tensor) -> SegOutput:
        """This model's prediction had its decoder produced ``features`` (B, C, h, w) instead.

        Used for feature fusion: the features of several models are averaged and each model's
        own last layer reads them. Mask2Former: new mask logits from the same mask embeddings
        (class logits unchanged); SegFormer: its 1x1 classifier on the features.
        """
        if self.is_mask_classification:
            masks = torch.einsum("bqc,bchw->bqhw", out.mask_embeddings, features)
            return SegOutput(
                features=features,
                class_logits=out.class_logits,
                mask_logits=masks,
                mask_embeddings=out.mask_embeddings,
            )
        return SegOutput(features=features, seg_logits=self.net.decode_head.classifier(features))

    @torch.no_grad()
    def predict(self, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Semantic probabilities (B, K, H, W) at ``size`` (default: the input size)."""
        size = size or tuple(images.shape[-2:])
        return self(images).semantic_probs(size)

    def backbone(self) -> nn.Module:
        if self.is_mask_classification:
            return self.net.model.pixel_level_module.encoder
        return self.net.segformer


def create_model(
    preset: str, num_classes: int = NUM_CLASSES, backbone_weights: str | Path | None = None
) -> SegModel:
    """Build a model from a preset name (see :data:`PRESETS`); nothing is downloaded.

    ``backbone_weights``: a local ``.safetensors`` file of pretrained backbone weights.
    """
    if preset not in PRESETS:
        raise Feds2rError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    model = SegModel(PRESETS[preset], num_classes)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


_PREFIXES = ("backbone.", "model.", "encoder.", "swin.", "resnet.", "segformer.", "module.")


def load_backbone_weights(model: SegModel, path: str | Path) -> None:
    """Load a ``.safetensors`` state dict into the model's backbone, strictly.

    Key prefixes that public checkpoints commonly carry (``backbone.``, ``swin.``, ...) are
    stripped until the keys match. Pickle files are refused.
    """
    from safetensors.torch import load_file

    from feds2r.engine.checkpoint import refuse_pickle

    path = Path(path)
    refuse_pickle(path)
    try:
        weights = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for bad files
        raise Feds2rError(f"cannot read backbone weights {path}: {exc}") from None
    backbone = model.backbone()
    expected = set(backbone.state_dict())
    for _ in range(3):
        if set(weights) >= expected:
            break
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in weights):
                weights = {k[len(prefix) :]: v for k, v in weights.items()}
                break
        else:
            break
    missing = sorted(expected - set(weights))
    if missing:
        raise Feds2rError(
            f"backbone weights {path} do not fit preset {model.preset.name!r}: "
            f"{len(missing)} tensors missing (e.g. {missing[:3]}); expected a "
            f"{type(backbone).__name__} state dict"
        )
    state = {k: weights[k] for k in expected}
    bad = [k for k, v in backbone.state_dict().items() if v.shape != state[k].shape]
    if bad:
        raise Feds2rError(f"backbone weights {path}: shape mismatch for {bad[:3]}")
    backbone.load_state_dict(state, strict=True)
