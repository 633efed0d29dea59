"""Training views: resize to one height, then random scale, crop, flip, colour, blur.

Two ways to hold the resized samples: in memory (:class:`ResizedCache`, decoded once before the
first step) or not at all (:mod:`feds2r.engine.loader`: read from disk per sample in DataLoader
workers). Both make a view with :func:`random_view` from uniform numbers drawn by
:func:`view_draws` from one ``torch.Generator`` in the main process, so the two give the same
batches and a run can save and restore that generator and resume exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from feds2r.data.labels import IGNORE_INDEX


def resized_width(h: int, w: int, height: int) -> int:
    """The width of an image of ``h`` x ``w`` pixels resized to ``height`` by
    :func:`resize_images` (the aspect ratio kept)."""
    if h == height:
        return w
    return max(int(round(w * height / h)), 1)


def resize_images(images: Tensor, height: int) -> Tensor:
    """Resize uint8 images (..., 3, H, W) so that H = ``height``, keeping the aspect ratio."""
    h, w = images.shape[-2:]
    if h == height:
        return images
    width = resized_width(h, w, height)
    batch = images.reshape(-1, *images.shape[-3:]).float()
    out = F.interpolate(
        batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return out.round().clamp(0, 255).to(torch.uint8).reshape(*images.shape[:-2], height, width)


def resize_pair(image: Tensor, label: Tensor | None, height: int) -> tuple[Tensor, Tensor | None]:
    """Resize an image (3, H, W) and its label (H, W, nearest) to height ``height``."""
    image_out = resize_images(image, height)
    if label is not None and label.shape[-2:] != image_out.shape[-2:]:
        size = tuple(image_out.shape[-2:])
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image_out, label


class ResizedCache:
    """A dataset's samples resized to one height and kept in memory (uint8 images, uint8 labels)."""

    def __init__(
        self,
        dataset: Dataset,
        height: int,
        *,
        with_labels: bool = True,
        progress: bool = True,
        desc: str = "loading",
    ) -> None:
        self.images: list[Tensor] = []
        self.labels: list[Tensor | None] = []
        self.maps: Sequence[Tensor] | None = None
        """Optional per-sample maps (C, H/4, W/4) that follow each view's geometry (e.g. cached
        teacher targets); a cache with maps is made by :meth:`with_maps`."""
        for i in tqdm(range(len(dataset)), desc=desc, unit="img", disable=not progress):
            item = dataset[i]
            label = item.get("label") if with_labels else None
            image, label = resize_pair(item["image"], label, height)
            self.images.append(image)
            self.labels.append(None if label is None else label.to(torch.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def image_shape(self, index: int) -> tuple[int, ...]:
        """The shape (3, H, W) of sample ``index``'s resized image."""
        return tuple(self.images[index].shape)

    def with_maps(self, maps: Sequence[Tensor]) -> ResizedCache:
        """A cache of the same samples (shared, not copied) whose batches also carry ``maps``
        (one (C, H/4, W/4) tensor per sample, as ``batch["maps"]``, through the same scale, crop
        and flip as each view: :func:`random_view`); this cache is left as it is. A list is
        copied (the cache may be extended); any other sequence (e.g. maps read from a file on
        access, :class:`~feds2r.server.targets.DiskTargets`) is kept as it is given."""
        if len(maps) != len(self.images):
            raise ValueError(f"{len(maps)} maps for {len(self.images)} samples")
        other = copy.copy(self)
        other.maps = list(maps) if isinstance(maps, list) else maps  # type: ignore[assignment]
        return other

    def extend(self, other: ResizedCache) -> ResizedCache:
        """Append another cache's samples (e.g. generated images to the server's real ones)."""
        if (self.maps is None) != (other.maps is None):
            raise ValueError("cannot join caches with and without maps")
        if self.maps is not None and not isinstance(self.maps, list):
            raise ValueError("cannot extend a cache whose maps are not a list (given as they are)")
        self.images.extend(other.images)
        self.labels.extend(other.labels)
        if self.maps is not None:
            self.maps.extend(other.maps)
        return self


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    radius = max(int(math.ceil(2 * sigma)), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(img.dtype)
    c = img.shape[0]
    out = F.conv2d(
        F.pad(img[None], (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
        groups=c,
    )
    out = F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
        groups=c,
    )
    return out[0]


def view_draws(g: torch.Generator, *, flip: bool, jitter: float, blur_prob: float) -> list[float]:
    """The uniform numbers in [0, 1) that one :func:`random_view` uses, drawn from ``g``.

    In this order: scale, crop top, crop left; the flip (if ``flip``); brightness, contrast,
    saturation (if ``jitter`` > 0); the blur (if ``blur_prob`` > 0) and, only when that draw is
    below ``blur_prob``, the blur's sigma. So how many numbers a view takes depends on the
    settings and on its own blur draw, never on the image.
    """
    u = lambda: float(torch.rand((), generator=g))  # noqa: E731
    draws = [u(), u(), u()]
    if flip:
        draws.append(u())
    if jitter > 0:
        draws += [u(), u(), u()]
    if blur_prob > 0:
        draws.append(u())
        if draws[-1] < blur_prob:
            draws.append(u())
    return draws


def random_view(
    image: Tensor,
    label: Tensor | None,
    *,
    crop: tuple[int, int],
    scale: tuple[float, float],
    flip: bool,
    jitter: float,
    blur_prob: float,
    g: torch.Generator | None = None,
    draws: Sequence[float] | None = None,
    maps: Tensor | None = None,
    stride: int = 4,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One training view: image (3, H, W) uint8 -> float (3, ch, cw) in [0, 1]; label -> int64.

    Random scale in ``scale``, random crop to ``crop`` (padding with 0 / 255 when smaller),
    horizontal flip, brightness/contrast/saturation jitter of strength ``jitter``, Gaussian blur.
    ``maps`` (C, H/stride, W/stride) go through the same scale, crop and flip (zero padding) and
    come out as (C, ch/stride, cw/stride); the photometric changes touch the image only.

    The randomness: ``draws``, the numbers :func:`view_draws` gives for these settings (drawn
    elsewhere, e.g. in the main process for a DataLoader worker), or drawn here from ``g``.
    """
    if draws is None:
        if g is None:
            raise ValueError("random_view needs a generator g or its draws")
        draws = view_draws(g, flip=flip, jitter=jitter, blur_prob=blur_prob)
    numbers = iter(draws)

    def u() -> float:
        value = next(numbers, None)
        if value is None:
            raise ValueError(f"random_view was given {len(draws)} draws, fewer than it uses")
        return value

    s = scale[0] + (scale[1] - scale[0]) * u()
    h, w = image.shape[-2:]
    nh, nw = max(int(h * s), 8), max(int(w * s), 8)
    img = F.interpolate(
        image[None].float() / 255.0, size=(nh, nw), mode="bilinear", align_corners=False
    )[0]
    lbl = None
    if label is not None:
        lbl = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    ch, cw = crop
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        if lbl is not None:
            lbl = F.pad(lbl, (0, pw, 0, ph), value=IGNORE_INDEX)
    top = int(u() * (img.shape[1] - ch + 1))
    left = int(u() * (img.shape[2] - cw + 1))
    img = img[:, top : top + ch, left : left + cw]
    if lbl is not None:
        lbl = lbl[top : top + ch, left : left + cw]
    out_maps = None
    if maps is not None:
        mh, mw = max(round(nh / stride), 1), max(round(nw / stride), 1)
        m = F.interpolate(maps[None].float(), size=(mh, mw), mode="bilinear", align_corners=False)[
            0
        ]
        sh, sw = ch // stride, cw // stride
        m = F.pad(m, (0, max(sw + left // stride - mw, 0), 0, max(sh + top // stride - mh, 0)))
        out_maps = m[:, top // stride : top // stride + sh, left // stride : left // stride + sw]
    if flip and u() < 0.5:
        img = img.flip(-1)
        lbl = lbl.flip(-1) if lbl is not None else None
        out_maps = out_maps.flip(-1) if out_maps is not None else None
    if jitter > 0:
        b = 1 + jitter * (2 * u() - 1)
        c = 1 + jitter * (2 * u() - 1)
        sat = 1 + jitter * (2 * u() - 1)
        img = img * b
        mean = img.mean()
        img = (img - mean) * c + mean
        gray = img.mean(0, keepdim=True)
        img = (img - gray) * sat + gray
    if blur_prob > 0 and u() < blur_prob:
        img = _gaussian_blur(img, 0.3 + 1.2 * u())
    if next(numbers, None) is not None:
        raise ValueError(f"random_view was given {len(draws)} draws, more than its settings use")
    return img.clamp(0, 1), lbl, out_maps


View = tuple[Tensor, Tensor | None, Tensor | None]
"""What :func:`random_view` returns: image, label (or None) and maps (or None)."""


def stack_views(views: Sequence[View]) -> dict[str, Tensor]:
    """Stack views into ``image`` (B, 3, h, w), ``label`` (B, h, w) and ``maps`` if they have
    them."""
    batch = {"image": torch.stack([v[0] for v in views])}
    if views[0][1] is not None:
        batch["label"] = torch.stack([v[1] for v in views])
    if views[0][2] is not None:
        batch["maps"] = torch.stack([v[2] for v in views])
    return batch


def make_batch(
    cache: ResizedCache, indices: list[int], g: torch.Generator, **aug
) -> dict[str, Tensor]:
    """Stack augmented views of ``indices`` into ``image`` (B, 3, h, w) and ``label`` (B, h, w)."""
    views = [
        random_view(
            cache.images[i],
            cache.labels[i],
            g=g,
            maps=None if cache.maps is None else cache.maps[i],
            **aug,
        )
        for i in indices
    ]
    return stack_views(views)
