"""FUSS's library side on hand-made values: KNN, splits, head averaging, centroid clustering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feds2r.errors import Feds2rError
from feds2r.fuss import (
    ClientData,
    FussConfig,
    RoundRequest,
    average_heads,
    client_round,
    cluster_centroids,
    knn_neighbours,
    split_clients,
)


def test_global_clustering_recovers_clusters_that_clients_hold_in_different_orders():
    gen = torch.Generator().manual_seed(0)
    true = F.normalize(torch.randn(5, 16, generator=gen), dim=1)  # five clusters, D = 16
    client_a = true + 0.02 * torch.randn(5, 16, generator=gen)
    client_b = true[torch.tensor([3, 0, 4, 1, 2])] + 0.02 * torch.randn(5, 16, generator=gen)
    centroids = torch.cat([client_a, client_b])
    counts = torch.cat([torch.full((5,), 100.0), torch.full((5,), 50.0)])
    got = cluster_centroids(centroids, counts, 5, seed=1)
    assert got.shape == (5, 16)
    sim = got @ true.T  # each global centroid is one true cluster, each true cluster found once
    assert (sim.max(dim=1).values > 0.99).all()
    assert sorted(sim.argmax(dim=1).tolist()) == [0, 1, 2, 3, 4]


def test_centroids_that_no_pixel_chose_do_not_pull_the_global_ones():
    true = torch.eye(3, 8)
    stray = F.normalize(torch.ones(1, 8), dim=1)  # unused by its client: weight 0
    centroids = torch.cat([true, true, stray])
    counts = torch.tensor([10.0, 10, 10, 10, 10, 10, 0])
    got = cluster_centroids(centroids, counts, 3, seed=0)
    assert torch.allclose((got @ true.T).max(dim=1).values, torch.ones(3), atol=1e-6)


def test_head_averaging_is_weighted_by_image_count():
    a, b = {"w": torch.zeros(2, 2)}, {"w": torch.ones(2, 2)}
    assert torch.allclose(average_heads([a, b], [1.0, 3.0])["w"], torch.full((2, 2), 0.75))
    with pytest.raises(Feds2rError):
        average_heads([a], [1.0, 2.0])


def test_knn_excludes_the_image_itself():
    feats = torch.stack([torch.full((4, 2, 2), float(v)) for v in (1, 1.1, -1, -1.2)])
    feats[:, 0] = 1.0  # two groups: values +1 and -1 in channel 1..3
    nn = knn_neighbours(feats, 1)
    assert nn[:, 0].tolist() == [1, 0, 3, 2]
    assert knn_neighbours(feats[:1], 3).tolist() == [[0]]


def test_splits_by_domain_and_at_random():
    feats = {"a": torch.randn(4, 3, 2, 2), "b": torch.randn(2, 3, 2, 2)}
    by_domain = split_clients(feats, "domain", 2, knn=1)
    assert [(c.name, len(c)) for c in by_domain] == [("a", 4), ("b", 2)]
    iid = split_clients(feats, "iid", 3, knn=1, seed=0)
    assert [len(c) for c in iid] == [2, 2, 2]
    pooled = torch.cat(list(feats.values())).flatten(1)
    got = torch.cat([c.features for c in iid]).flatten(1)
    assert sorted(got.sum(1).tolist()) == pytest.approx(sorted(pooled.sum(1).tolist()))
    with pytest.raises(Feds2rError, match="one client per domain"):
        split_clients(feats, "domain", 3, knn=1)


def test_a_client_round_is_deterministic_and_needs_centroids():
    config = FussConfig(height=8, local_steps=2, batch_size=2, code_dim=4, hidden=8,
                        num_clusters=3)  # fmt: skip
    from feds2r.fuss import initial_model

    data = ClientData.build("c", torch.randn(3, 6, 2, 4), knn=2)
    init = initial_model(config, 6)
    request = RoundRequest(0, init.head_state(), init.centroids.detach())
    one, two = client_round(request, data, config), client_round(request, data, config)
    assert all(torch.equal(one.head[k], two.head[k]) for k in one.head)
    assert not torch.equal(one.head["linear.weight"], init.head_state()["linear.weight"])
    assert one.counts.sum() == 3 * 2 * 4 and one.images == 3
    with pytest.raises(Feds2rError, match="no centroids"):
        client_round(RoundRequest(1, init.head_state(), None), data, config)
