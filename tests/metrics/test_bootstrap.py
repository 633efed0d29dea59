"""Paired bootstrap intervals on hand-made confusion matrices."""

import numpy as np
import pytest

from feds2r.metrics import ConfusionMatrix
from feds2r.metrics.bootstrap import miou_from_confusion, paired_bootstrap


def _cm(pairs: list[tuple[int, int, int]], k: int = 3) -> np.ndarray:
    m = np.zeros((k, k), np.int64)
    for t, p, n in pairs:
        m[t, p] += n
    return m


def test_miou_from_confusion_matches_the_confusion_matrix_class():
    m = _cm([(0, 0, 8), (0, 1, 2), (1, 1, 5), (1, 0, 5)])  # class 2 absent from the labels
    cm = ConfusionMatrix(3)
    cm.matrix[:] = __import__("torch").from_numpy(m)
    assert miou_from_confusion(m) == pytest.approx(cm.summary()["miou"])
    # by hand: IoU0 = 8 / (10 + 13 - 8) = 8/15, IoU1 = 5 / (10 + 7 - 5) = 5/12
    assert miou_from_confusion(m) == pytest.approx(100 * (8 / 15 + 5 / 12) / 2)


def test_identical_models_give_a_zero_interval():
    imgs = np.stack([_cm([(0, 0, 5 + i), (1, 1, 3), (1, 0, i)]) for i in range(10)])
    r = paired_bootstrap([imgs], [imgs], replicates=200)
    assert r["diff"] == r["lo"] == r["hi"] == 0.0


def test_a_model_better_on_every_image_has_an_interval_above_zero():
    good = np.stack([_cm([(0, 0, 10), (1, 1, 10)]) for _ in range(20)])
    bad = np.stack([_cm([(0, 0, 8), (0, 1, 2), (1, 1, 10)]) for _ in range(20)])
    r = paired_bootstrap([good, good], [bad, bad], replicates=300)
    # one domain: IoU0 = 8/10, IoU1 = 10/12 for bad; 1 and 1 for good
    want = 100 * (1 - (0.8 + 10 / 12) / 2)
    assert r["diff"] == pytest.approx(want)
    assert 0 < r["lo"] <= r["diff"] <= r["hi"]  # every image agrees: a tight interval
    assert r["hi"] - r["lo"] < 1e-9


def test_pairing_cancels_image_difficulty():
    """Hard and easy images differ a lot; the models differ by a little on each: paired, the
    interval excludes 0, though each model's own spread over images is much wider."""
    rng = np.random.default_rng(0)
    a, b = [], []
    for _ in range(40):
        hard = int(rng.integers(0, 50))
        a.append(_cm([(0, 0, 100 - hard), (0, 1, hard), (1, 1, 100)]))
        b.append(_cm([(0, 0, 97 - hard), (0, 1, hard + 3), (1, 1, 100)]))
    r = paired_bootstrap([np.stack(a)], [np.stack(b)], replicates=500, seed=1)
    assert r["lo"] > 0 and r["diff"] > 0
    with pytest.raises(ValueError):
        paired_bootstrap([np.stack(a)], [np.stack(b)[:-1]])
