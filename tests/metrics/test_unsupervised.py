"""The unsupervised protocol: clusters mapped to classes on dev, applied unchanged on test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feds2r.errors import Feds2rError
from feds2r.metrics.unsupervised import (
    UNMATCHED,
    ClusterConfusion,
    apply_mapping,
    fit_mapping,
    mapped_summary,
)


def _labels(seed: int, shape=(4, 8, 8)) -> torch.Tensor:
    return torch.randint(19, shape, generator=torch.Generator().manual_seed(seed))


def _confusion(clusters: torch.Tensor, target: torch.Tensor, k: int = 19) -> torch.Tensor:
    cc = ClusterConfusion(k)
    cc.update(clusters, target)
    return cc.matrix


def test_a_permuted_labelling_scores_100_after_hungarian_matching():
    perm = torch.randperm(19, generator=torch.Generator().manual_seed(3))
    dev, test = _labels(0), _labels(1)
    mapping = fit_mapping(_confusion(perm[dev], dev))
    assert np.array_equal(mapping[perm.numpy()], np.arange(19))  # cluster perm[c] -> class c
    out = mapped_summary(_confusion(perm[test], test), mapping)
    assert out["miou"] == pytest.approx(100.0) and out["pixel_acc"] == pytest.approx(100.0)
    assert torch.equal(apply_mapping(perm[test], mapping), test)


def test_the_mapping_is_fitted_on_dev_and_not_refitted_on_test():
    gen = torch.Generator().manual_seed(4)
    perm_dev, perm_test = torch.randperm(19, generator=gen), torch.randperm(19, generator=gen)
    dev, test = _labels(0), _labels(1)
    mapping = fit_mapping(_confusion(perm_dev[dev], dev))
    out = mapped_summary(_confusion(perm_test[test], test), mapping)
    assert out["miou"] < 30  # a different labelling on test is not rescued by a new matching


def test_over_clustering_majority_maps_each_cluster_to_its_class():
    dev, test = _labels(0), _labels(1)
    split = lambda t, s: t * 2 + _labels(s, t.shape) % 2  # noqa: E731  two clusters per class
    majority = fit_mapping(_confusion(split(dev, 5), dev, 38), "majority")
    assert np.array_equal(majority, np.repeat(np.arange(19), 2))
    out = mapped_summary(_confusion(split(test, 6), test, 38), majority)
    assert out["miou"] == pytest.approx(100.0)
    # one-to-one matching leaves 19 of the 38 clusters without a class: their pixels are wrong
    hungarian = fit_mapping(_confusion(split(dev, 5), dev, 38), "hungarian")
    assert (hungarian == UNMATCHED).sum() == 19
    assert mapped_summary(_confusion(split(test, 6), test, 38), hungarian)["pixel_acc"] < 70


def test_hand_made_counts():
    # clusters 0, 1, 2 over classes 0 and 1 (2 classes); cluster 2 is left unmatched
    confusion = np.array([[8, 2], [1, 5], [0, 4]])
    mapping = fit_mapping(confusion)
    assert mapping.tolist() == [0, 1, UNMATCHED]
    out = mapped_summary(confusion, mapping)
    # class 0: tp 8, gt 9, predicted 10 -> 8 / 11; class 1: tp 5, gt 11, predicted 6 -> 5 / 12
    assert out["per_class"] == pytest.approx([800 / 11, 500 / 12])
    assert out["pixel_acc"] == pytest.approx(13 / 20 * 100)
    assert out["pixels"] == 20


def test_ignore_pixels_count_nowhere_and_bad_input_is_refused():
    target = torch.tensor([[0, 255], [1, 1]])
    clusters = torch.tensor([[1, 0], [0, 0]])
    assert _confusion(clusters, target, 2).sum() == 3
    with pytest.raises(ValueError, match="cluster map holds ids outside"):
        _confusion(torch.full((2, 2), 5), target, 2)
    with pytest.raises(Feds2rError, match="unknown cluster mapping"):
        fit_mapping(np.eye(2), "nearest")
