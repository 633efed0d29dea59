"""A light segmentation head and K semantic centroids on frozen pixel features (FUSS).

The head is STEGO's (Hamilton et al., ICLR 2022): a linear 1x1 projection plus a small
non-linear branch (1x1 conv, ReLU, 1x1 conv), summed, applied to frozen features after channel
dropout; it maps each pixel's feature to a D-dimensional code. The centroids are K learnable
D-dimensional vectors (STEGO's cluster probe); a pixel belongs to the centroid of highest cosine
similarity with its code. The head's tensors are what federated averaging averages; the
centroids are exchanged separately (:data:`CENTROIDS`), so FedAvg can keep them per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feds2r.errors import Feds2rError

CENTROIDS = "centroids"
"""The name of the centroid parameter in :class:`ClusterHead`'s state dict."""


def cluster_scores(codes: Tensor, centroids: Tensor) -> Tensor:
    """Cosine similarity of every pixel's code (B, D, h, w) to every centroid (K, D):
    (B, K, h, w)."""
    return torch.einsum("bdhw,kd->bkhw", F.normalize(codes, dim=1), F.normalize(centroids, dim=1))


@dataclass(frozen=True)
class ClusterHeadConfig:
    """Shape of the head and of the clustering."""

    in_channels: int
    """Channels of the frozen features (``FrozenFeatures.channels``)."""
    code_dim: int = 32
    """D: the width of each pixel's code."""
    hidden: int = 128
    """Width of the non-linear branch."""
    num_clusters: int = 19
    """K: the number of semantic centroids (19 matches the classes; more is over-clustering)."""
    dropout: float = 0.1
    """Channel dropout on the frozen features while training (STEGO's Dropout2d 0.1)."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "code_dim", "hidden", "num_clusters"):
            if int(getattr(self, name)) < 1:
                raise Feds2rError(f"ClusterHeadConfig.{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise Feds2rError(f"ClusterHeadConfig.dropout must be in [0, 1), got {self.dropout}")


class ClusterHead(nn.Module):
    """Head and centroids: ``forward(features (B, C, h, w)) -> codes (B, D, h, w)``.

    ``centroids`` (K, D) is a parameter trained by the clustering loss only (the codes it sees
    are detached), as STEGO trains its cluster probe.
    """

    def __init__(self, config: ClusterHeadConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config.in_channels, config.code_dim
        self.dropout = nn.Dropout2d(config.dropout)
        self.linear = nn.Conv2d(c, d, 1)
        self.nonlinear = nn.Sequential(
            nn.Conv2d(c, config.hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(config.hidden, d, 1)
        )
        self.centroids = nn.Parameter(torch.randn(config.num_clusters, d))

    def forward(self, features: Tensor) -> Tensor:
        x = self.dropout(features)
        return self.linear(x) + self.nonlinear(x)

    def head_state(self) -> dict[str, Tensor]:
        """The head's tensors (everything but the centroids), detached copies."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k != CENTROIDS}

    def load_head(self, state: dict[str, Tensor]) -> None:
        """Load the head's tensors (strictly: exactly the keys of :meth:`head_state`)."""
        want = set(self.head_state())
        if set(state) != want:
            raise Feds2rError(
                f"head tensors {sorted(set(state) ^ want)} differ from this ClusterHead's; "
                "the sender and receiver must use the same ClusterHeadConfig"
            )
        self.load_state_dict({**state, CENTROIDS: self.centroids.detach()}, strict=True)

    def set_centroids(self, centroids: Tensor) -> None:
        """Replace the centroids by ``centroids`` (K, D)."""
        if tuple(centroids.shape) != tuple(self.centroids.shape):
            raise Feds2rError(
                f"centroids {tuple(centroids.shape)} differ from this head's "
                f"{tuple(self.centroids.shape)} (num_clusters, code_dim)"
            )
        with torch.no_grad():
            self.centroids.copy_(centroids)

    @torch.no_grad()
    def scores(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Cosine of each pixel's code to each centroid: (B, K, h, w), bilinearly upsampled to
        ``size`` (H, W) when given (STEGO upsamples before assigning)."""
        codes = self(features)
        if size is not None and tuple(codes.shape[-2:]) != tuple(size):
            codes = F.interpolate(codes, size, mode="bilinear", align_corners=False)
        return cluster_scores(codes, self.centroids)

    @torch.no_grad()
    def assign(self, features: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Each pixel's cluster: (B, h, w) long, or (B, H, W) at ``size``."""
        return self.scores(features, size).argmax(dim=1)


__all__ = ["CENTROIDS", "ClusterHead", "ClusterHeadConfig", "cluster_scores"]
