"""STEGO's correspondence loss and the cluster-probe loss: shapes, signs and parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feds2r.losses.unsupervised import (
    PAIRS,
    cluster_loss,
    cluster_scores,
    correlation,
    correspondence_loss,
    stego_loss,
)


def _grouped_features(b: int = 2, c: int = 8, h: int = 6, w: int = 6) -> torch.Tensor:
    """Features whose pixels fall in three groups (three directions plus a little noise)."""
    gen = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(3, c, generator=gen), dim=1)
    groups = torch.randint(3, (b, h, w), generator=gen)
    feats = directions[groups].permute(0, 3, 1, 2)  # (B, C, h, w)
    return feats + 0.05 * torch.randn(feats.shape, generator=gen)


def test_correlation_is_the_cosine_of_every_pixel_pair():
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 2, 6)
    corr = correlation(a, b)
    assert corr.shape == (2, 3, 4, 2, 6)
    want = F.cosine_similarity(a[1, :, 2, 3], b[1, :, 1, 5], dim=0)
    assert torch.allclose(corr[1, 2, 3, 1, 5], want, atol=1e-6)


@pytest.mark.parametrize("pointwise", [True, False])
def test_codes_that_mirror_the_features_score_lower_than_shuffled_codes(pointwise):
    feats = _grouped_features()
    codes = feats.clone()  # codes correlated exactly as the features are
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(1))
    shuffled = codes.flatten(2)[:, :, perm].view_as(codes)  # same codes, wrong pixels
    good = correspondence_loss(feats, feats, codes, codes, 0.3, pointwise=pointwise)
    bad = correspondence_loss(feats, feats, shuffled, shuffled, 0.3, pointwise=pointwise)
    assert good.ndim == 0 and good < bad


def test_the_shift_sets_which_pairs_attract():
    feats = _grouped_features()
    codes = torch.randn(2, 4, 6, 6, requires_grad=True)
    # with a shift above every feature correlation every pair repels: the loss is >= 0
    loss = correspondence_loss(feats, feats, codes, codes, 2.0, pointwise=False)
    assert loss >= 0
    loss.backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0


def test_stego_loss_returns_the_weighted_sum_of_its_parts():
    feats = _grouped_features()
    codes = torch.randn(2, 4, 6, 6)
    out = stego_loss(
        feats, codes, feats.flip(0), codes.flip(0), feats.roll(1, 0), codes.roll(1, 0),
        weights=(1.0, 0.5, 2.0), shifts=(0.1, 0.2, 0.3),
    )  # fmt: skip
    assert set(out) == {"loss", *PAIRS}
    want = out["self"] + 0.5 * out["knn"] + 2.0 * out["random"]
    assert torch.allclose(out["loss"], want)


def test_cluster_loss_assigns_each_pixel_to_its_most_similar_centroid():
    centroids = torch.eye(3, 4)  # (K=3, D=4)
    ids = torch.tensor([[[0, 1], [2, 1]]])  # (B=1, h=2, w=2)
    codes = (3.0 * centroids[ids]).permute(0, 3, 1, 2)  # (1, 4, 2, 2), scale must not matter
    out = cluster_loss(codes, centroids)
    assert torch.equal(out["assignment"], ids)
    assert torch.isclose(out["loss"], torch.tensor(-1.0))
    assert cluster_scores(codes, centroids).shape == (1, 3, 2, 2)
    # random codes are farther from their nearest centroid
    assert cluster_loss(torch.randn(1, 4, 2, 2), centroids)["loss"] > -1.0
