"""Pseudo-label refinement with class-agnostic regions (CLOUDS, Benigmim et al., CVPR 2024).

CLOUDS refines a teacher's pseudo-labels with the masks of a class-agnostic segmenter (Segment
Anything): a region that the segmenter finds is one object or one surface, so its pixels should
share one class. The region proposers sit behind one interface, :class:`RegionProposer`:

- ``builtin``: Felzenszwalb-Huttenlocher graph segmentation (scikit-image; offline, CPU, about
  20 ms for a 128x256 image). Chosen over OpenCV's grid-seeded watershed and mean-shift and over
  scikit-image's SLIC on the rendered labels of the built-in world (``docs/method.md``,
  "Pseudo-label refinement").
- ``sam``: Segment Anything through ``transformers`` from a local model folder, automatic masks
  from a grid of point prompts, on the GPU when there is one.
- ``watershed``: OpenCV's watershed from a grid of seeds; no dependency beyond OpenCV, the
  reference of that comparison.

The rule (:func:`refine`): inside each region, the majority of the confident pseudo-labels
(arg-max where the teacher's probability is >= ``threshold``) labels the whole region; a region
whose majority covers less than ``min_share`` of its pixels is one the teacher is unsure about
(or one that spans two objects) and is dropped (255). :class:`RegionRefiner` puts a proposer and
the rule together as the ``refiner(images, probs) -> labels`` that self-training takes.

Shapes: images (3, H, W) or (B, 3, H, W), uint8 RGB or float in [0, 1]; region maps (H, W) or
(B, H, W) int32, ids >= 1 for regions and 0 for pixels no region covers; probabilities (K, H, W)
or (B, K, H, W); labels (H, W) or (B, H, W) int64 with 255 = ignore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.data.labels import IGNORE_INDEX
from feds2r.errors import Feds2rError

NO_REGION = 0
"""Region id of pixels that no region covers (SAM's masks need not cover the whole image)."""


class RegionProposer(Protocol):
    name: str

    def regions(self, images: Tensor | np.ndarray) -> np.ndarray:
        """Class-agnostic regions (H, W) or (B, H, W) int32 of images (3, H, W) or (B, 3, H, W)."""
        ...


def _as_hwc(images: Tensor | np.ndarray) -> tuple[list[np.ndarray], bool]:
    """Images (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1], as a list of (H, W, 3) uint8
    arrays, and whether a batch was given."""
    if isinstance(images, Tensor):
        images = images.detach().cpu()
        if images.is_floating_point():
            images = (images.clamp(0, 1) * 255).round()
        images = images.to(torch.uint8).numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    batched = images.ndim == 4
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"images must be (3, H, W) or (B, 3, H, W), got {images.shape}")
    batch = images if batched else images[None]
    return [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in batch], batched


def _stack(maps: list[np.ndarray], batched: bool) -> np.ndarray:
    return np.stack(maps) if batched else maps[0]


class FelzenszwalbProposer:
    """Felzenszwalb-Huttenlocher graph segmentation (``skimage.segmentation.felzenszwalb``).

    ``scale``: larger gives larger regions; ``sigma``: Gaussian smoothing before segmenting;
    ``min_size``: smallest region, in pixels. The defaults were chosen on 128x256 images of the
    built-in world (``docs/method.md``); every pixel belongs to a region.
    """

    name = "builtin"

    def __init__(self, *, scale: float = 60.0, sigma: float = 0.5, min_size: int = 20) -> None:
        try:
            from skimage.segmentation import felzenszwalb
        except ImportError:
            raise Feds2rError(
                "the builtin region proposer needs scikit-image: pip install 'feds2r[refine]'"
            ) from None
        if scale <= 0 or sigma < 0 or min_size < 1:
            raise ValueError("scale must be > 0, sigma >= 0 and min_size >= 1")
        self._segment = felzenszwalb
        self.scale, self.sigma, self.min_size = scale, sigma, min_size

    def regions(self, images: Tensor | np.ndarray) -> np.ndarray:
        hwc, batched = _as_hwc(images)
        # felzenszwalb numbers its regions from 0; 0 means "no region" here
        seg = [
            self._segment(im, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
            for im in hwc
        ]
        maps = [r.astype(np.int32) + 1 for r in seg]
        return _stack(maps, batched)


class WatershedProposer:
    """OpenCV's watershed flooded from a regular grid of seeds, ``step`` pixels apart (a
    superpixel method with no dependency beyond ``opencv-python-headless``). Kept as the
    dependency-free reference of the comparison in ``docs/method.md``; ``builtin`` is better."""

    name = "watershed"

    def __init__(self, *, step: int = 10) -> None:
        if step < 2:
            raise ValueError(f"step must be >= 2, got {step}")
        self.step = step

    def regions(self, images: Tensor | np.ndarray) -> np.ndarray:
        import cv2

        hwc, batched = _as_hwc(images)
        maps = []
        for im in hwc:
            h, w = im.shape[:2]
            markers = np.zeros((h, w), np.int32)
            ys = np.arange(min(self.step // 2, h // 2), h, self.step)
            xs = np.arange(min(self.step // 2, w // 2), w, self.step)
            markers[np.ix_(ys, xs)] = np.arange(1, len(ys) * len(xs) + 1).reshape(len(ys), -1)
            bgr = cv2.GaussianBlur(cv2.cvtColor(im, cv2.COLOR_RGB2BGR), (3, 3), 0)
            cv2.watershed(bgr, markers)
            # watershed marks the lines between basins and the image's frame -1 (and may leave a
            # pixel enclosed by lines unlabelled): give each such pixel a neighbour's id
            line = markers <= 0
            markers[line] = 0
            while line.any():
                grown = cv2.dilate(markers.astype(np.float32), np.ones((3, 3), np.uint8))
                fill = line & (grown > 0)
                if not fill.any():  # no basin at all (an image too small for the frame)
                    markers[line] = markers.max() + 1
                    break
                markers[fill] = grown[fill].astype(np.int32)
                line &= ~fill
            maps.append(markers)
        return _stack(maps, batched)


class SamProposer:
    """Segment Anything's automatic masks: a ``points_per_side`` x ``points_per_side`` grid of
    point prompts over the image, three masks per point, kept where the predicted IoU is above
    ``pred_iou_thresh`` and the stability score (the IoU of the mask thresholded at +-1 logit) is
    above ``stability_thresh`` (the SAM paper's automatic mask generator, without its crops and
    NMS: overlaps are settled by painting the kept masks largest first, so that a smaller mask
    inside a larger one stays its own region). Masks under ``min_area`` pixels are left out.

    ``model_dir``: a local folder written by ``SamModel.save_pretrained`` (``config.json`` and
    weights, e.g. a downloaded ``facebook/sam-vit-base``), read with ``local_files_only=True``.
    Its ``preprocessor_config.json`` is used when present; otherwise the image processor is made
    from the model's own input size.
    """

    name = "sam"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        points_per_side: int = 16,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_thresh: float = 0.92,
        min_area: int = 16,
    ) -> None:
        from feds2r.engine.device import resolve_device

        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise Feds2rError(
                f"{model_dir} is not a SAM model folder (no config.json); give the folder that "
                "SamModel.save_pretrained() wrote (e.g. a local copy of facebook/sam-vit-base)"
            )
        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise Feds2rError(f"cannot read {config_path}: {exc}") from None
        if model_type != "sam":
            raise Feds2rError(
                f"{model_dir} holds a {model_type!r} model, not Segment Anything (model_type "
                "'sam'); give a SAM model folder"
            )
        if points_per_side < 1 or points_per_batch < 1 or min_area < 0:
            raise ValueError("points_per_side and points_per_batch must be >= 1, min_area >= 0")
        from transformers import SamModel
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

        self.device = resolve_device(device)
        try:
            self.model = SamModel.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise Feds2rError(f"cannot load the SAM model in {model_dir}: {exc}") from None
        self.model.to(self.device).eval().requires_grad_(False)
        side = self.model.config.vision_config.image_size
        if (model_dir / "preprocessor_config.json").is_file():
            self.processor = SamImageProcessorPil.from_pretrained(
                str(model_dir), local_files_only=True
            )
        else:
            self.processor = SamImageProcessorPil(
                size={"longest_edge": side}, pad_size={"height": side, "width": side}
            )
        self.points_per_side, self.points_per_batch = points_per_side, points_per_batch
        self.pred_iou_thresh, self.stability_thresh = pred_iou_thresh, stability_thresh
        self.min_area = min_area

    def regions(self, images: Tensor | np.ndarray) -> np.ndarray:
        hwc, batched = _as_hwc(images)
        return _stack([self._one(im) for im in hwc], batched)

    @torch.no_grad()
    def _one(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        inputs = self.processor(images=[image], return_tensors="pt")
        rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
        pad = inputs["pixel_values"].shape[-1]  # the padded square the encoder sees
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        # the grid in the resized image's coordinates (x, y), cell centres
        n = self.points_per_side
        cells = (np.arange(n) + 0.5) / n
        grid = np.stack(np.meshgrid(cells * rw, cells * rh), -1).reshape(-1, 2)
        points = torch.tensor(grid, dtype=torch.float32, device=self.device)
        masks, areas = [], []
        for start in range(0, len(points), self.points_per_batch):
            chunk = points[start : start + self.points_per_batch]
            out = self.model(
                image_embeddings=embeddings,
                input_points=chunk[None, :, None, :],  # (1, P, 1, 2): one point per prompt
                multimask_output=True,
            )
            low = out.pred_masks[0]  # (P, 3, m, m): logits over the padded square
            m = low.shape[-1]
            low = low[..., : max(1, round(rh * m / pad)), : max(1, round(rw * m / pad))]
            logits = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
            inter = (logits > 1.0).flatten(2).sum(-1)
            union = (logits > -1.0).flatten(2).sum(-1).clamp_min(1)
            keep = (out.iou_scores[0] > self.pred_iou_thresh) & (
                inter / union > self.stability_thresh
            )
            kept = (logits > 0)[keep]  # (M, H, W)
            area = kept.flatten(1).sum(-1)
            big = area >= max(self.min_area, 1)
            masks.append(kept[big].cpu())
            areas.append(area[big].cpu())
        regions = np.zeros((h, w), np.int32)  # NO_REGION where no mask is kept
        if masks and sum(len(a) for a in areas):
            masks_t, areas_t = torch.cat(masks), torch.cat(areas)
            for k, i in enumerate(torch.argsort(areas_t, descending=True).tolist()):
                regions[masks_t[i].numpy()] = k + 1
        return regions


PROPOSERS = {"builtin": FelzenszwalbProposer, "watershed": WatershedProposer, "sam": SamProposer}


def make_proposer(name: str, **kwargs) -> RegionProposer:
    """The region proposer ``name`` (``builtin``, ``watershed`` or ``sam``, which needs
    ``model_dir``), built with ``kwargs``."""
    if name not in PROPOSERS:
        raise Feds2rError(
            f"unknown region proposer {name!r}; valid proposers: {', '.join(PROPOSERS)}"
        )
    if name == "sam" and not kwargs.get("model_dir"):
        raise Feds2rError("the sam region proposer needs a model_dir (a local SAM model folder)")
    return PROPOSERS[name](**kwargs)


def confident_labels(probs: Tensor, threshold: float) -> Tensor:
    """Per-pixel pseudo-labels: the arg-max of ``probs`` (K, H, W) or (B, K, H, W) where its
    probability is >= ``threshold``, 255 elsewhere (the labels before refinement)."""
    conf, labels = probs.max(-3)
    return torch.where(conf >= threshold, labels, IGNORE_INDEX)


def refine(
    probs: Tensor,
    regions: Tensor | np.ndarray,
    *,
    threshold: float = 0.968,
    min_share: float = 0.5,
) -> Tensor:
    """Region-wise pseudo-labels from the teacher's ``probs`` (K, H, W) or (B, K, H, W) and
    class-agnostic ``regions`` (H, W) or (B, H, W) of the same size.

    Each region (id >= 1) takes the class that most of its confident pixels (probability >=
    ``threshold``) vote for, on all its pixels, provided those votes cover at least
    ``min_share`` of the region; otherwise the whole region is 255 (the teacher is unsure about
    it, or the region spans several objects). Pixels of no region (id 0) keep their own
    confident label (:func:`confident_labels`). ``threshold=0, min_share=0`` labels every pixel
    of every region with its arg-max majority. Returns labels (H, W) or (B, H, W) int64 on the
    device of ``probs``.
    """
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}")
    batched = probs.dim() == 4
    if not batched:
        probs = probs[None]
    regions = torch.as_tensor(regions).to(probs.device, torch.int64)
    if regions.dim() == 2:
        regions = regions[None]
    b, k, h, w = probs.shape
    if tuple(regions.shape) != (b, h, w):
        raise ValueError(f"regions {tuple(regions.shape)} do not fit probs {tuple(probs.shape)}")
    if regions.numel() and regions.min() < 0:
        raise ValueError("region ids must be >= 0 (0: no region)")
    conf, labels = probs.max(1)  # (B, H, W)
    confident = conf >= threshold
    # one compact id per (image, region), so that all votes are counted in one bincount
    span = int(regions.max()) + 1 if regions.numel() else 1
    offsets = span * torch.arange(b, device=probs.device)[:, None, None]
    _, ids = torch.unique((regions + offsets).flatten(), return_inverse=True)
    n = int(ids.max()) + 1 if ids.numel() else 0
    votes = torch.bincount(
        ids * k + labels.flatten(), weights=confident.flatten().float(), minlength=n * k
    ).view(n, k)  # confident pixels of each class, per region
    sizes = torch.bincount(ids, minlength=n)
    best, major = votes.max(1)
    keep = (best > 0) & (best >= min_share * sizes)
    out = torch.where(keep, major, IGNORE_INDEX)[ids].view(b, h, w)
    # pixels of no region keep their own confident label
    own = torch.where(confident, labels, IGNORE_INDEX)
    out = torch.where(regions == NO_REGION, own, out)
    return out if batched else out[0]


class RegionRefiner:
    """A proposer and the rule as one callable: ``refiner(images, probs) -> labels`` for images
    (B, 3, H, W) (uint8, or float in [0, 1]) and the teacher's probabilities (B, K, h, w), which
    are resized (bilinear) to the images' size when they differ; labels come back at the
    probabilities' size (nearest), on their device."""

    def __init__(
        self, proposer: RegionProposer, *, threshold: float = 0.968, min_share: float = 0.5
    ) -> None:
        self.proposer, self.threshold, self.min_share = proposer, threshold, min_share

    def __call__(self, images: Tensor, probs: Tensor) -> Tensor:
        size = tuple(images.shape[-2:])
        full = probs
        if tuple(probs.shape[-2:]) != size:
            full = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        regions = self.proposer.regions(images)
        labels = refine(full, regions, threshold=self.threshold, min_share=self.min_share)
        if tuple(probs.shape[-2:]) != size:
            labels = F.interpolate(labels[:, None].float(), size=probs.shape[-2:], mode="nearest")
            labels = labels[:, 0].long()
        return labels
