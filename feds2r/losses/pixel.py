"""Per-pixel cross-entropy (the standard semantic-segmentation loss, e.g. SegFormer's)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from feds2r.data.labels import IGNORE_INDEX


def pixel_cross_entropy(seg_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``seg_logits`` (B, K, h, w) upsampled to ``labels`` (B, H, W); 255 ignored."""
    logits = F.interpolate(seg_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    return {"loss": ce, "loss_ce": ce}
