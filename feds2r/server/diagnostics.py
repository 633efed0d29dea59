"""Does FedS2R's premise hold? Label-free diagnostics of a set of client models.

FedS2R assumes that the clients fine-tuned one shared pretrained backbone, so that they share a
feature space: their decoder features can be averaged (feature fusion), their parameter mean is
still a model (FedAvg), and their ensemble beats each of them. Everything here is computed on the
server's own unlabelled images, so a real server can run it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.models import SegModel


@torch.no_grad()
def relative_change(model: SegModel, start: SegModel) -> float:
    """``||w - w0|| / ||w0||`` over every parameter: how far a client moved from the start."""
    num = sum(
        ((p - q) ** 2).sum() for p, q in zip(model.parameters(), start.parameters(), strict=True)
    )
    den = sum((q**2).sum() for q in start.parameters())
    return float((num / den) ** 0.5)


@torch.no_grad()
def premise_diagnostics(
    clients: dict[str, SegModel],
    start: SegModel,
    fedavg: SegModel,
    images: Tensor,
) -> dict[str, Any]:
    """The premise's label-free checks on server images (B, 3, H, W) uint8.

    Returns ``feature_cosine`` (mean pixel-wise cosine of the decoder features of every pair of
    clients, and their mean), ``change_from_start`` (per client, :func:`relative_change`),
    ``fedavg_agreement`` (share of pixels where FedAvg's arg-max equals the ensemble's) and
    ``client_agreement`` (the same for each client: how much each agrees with the ensemble).
    """
    names = list(clients)
    outs = {n: clients[n](images) for n in names}
    size = tuple(images.shape[-2:])
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            fa, fb = outs[a].features, outs[b].features
            pairs[f"{a}/{b}"] = float(F.cosine_similarity(fa, fb, dim=1).mean())
    probs = {n: o.semantic_probs(size) for n, o in outs.items()}
    ensemble = torch.stack(list(probs.values())).mean(0).argmax(1)
    fed = fedavg(images).semantic_probs(size).argmax(1)
    return {
        "images": int(images.shape[0]),
        "feature_cosine": {
            "pairs": pairs,
            "mean": float(sum(pairs.values()) / max(len(pairs), 1)),
        },
        "change_from_start": {n: relative_change(clients[n], start) for n in names},
        "fedavg_agreement": float((fed == ensemble).float().mean()),
        "client_agreement": {
            n: float((p.argmax(1) == ensemble).float().mean()) for n, p in probs.items()
        },
    }
