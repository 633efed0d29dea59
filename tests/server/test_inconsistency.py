"""Inconsistency on hand-made client predictions."""

import math

import pytest
import torch

from feds2r.data.labels import class_index
from feds2r.server import PairwiseAgreement, UnstableRule, plot_inconsistency, select_unstable
from feds2r.server.inconsistency import Inconsistency

ROAD, CAR, BUS, TRUCK = (class_index(n) for n in ("road", "car", "bus", "truck"))


def test_scores_by_hand():
    # 3 clients, one image of 1x4 pixels, sent in two halves to check accumulation
    preds = torch.tensor(
        [
            [[[ROAD, ROAD, CAR, BUS]]],  # client 0
            [[[ROAD, ROAD, CAR, TRUCK]]],  # client 1
            [[[ROAD, CAR, CAR, BUS]]],  # client 2
        ]
    )
    agree = PairwiseAgreement(3)
    agree.update(preds[..., :2])
    agree.update(preds[..., 2:])
    s = agree.scores()
    # road: pairs (0,1) IoU 2/2, (0,2) 1/2, (1,2) 1/2 -> 1 - 2/3
    assert s[ROAD] == pytest.approx(1 - (1 + 0.5 + 0.5) / 3)
    # car: (0,1) 1/1, (0,2) 1/2, (1,2) 1/2
    assert s[CAR] == pytest.approx(1 - (1 + 0.5 + 0.5) / 3)
    # bus: (0,1) 0/1, (0,2) 1/1, (1,2) 0/1
    # truck: only client 1 -> (0,1) 0/1, (1,2) 0/1; (0,2) predict none: agree, left out
    assert s[BUS] == pytest.approx(1 - 1 / 3)
    assert s[TRUCK] == pytest.approx(1.0)
    assert s[class_index("train")] is None  # nobody predicts it


def test_pairs_that_both_miss_a_class_do_not_count_as_disagreement():
    # clients 0 and 1 mark the same car pixels, client 2 sees no car: 2 of 3 pairs disagree
    preds = torch.tensor([[[[CAR, ROAD]]], [[[CAR, ROAD]]], [[[ROAD, ROAD]]]])
    agree = PairwiseAgreement(3)
    agree.update(preds)
    assert agree.scores()[CAR] == pytest.approx(1 - 1 / 3)
    # bus: nobody; each pair left out -> undefined
    assert agree.scores()[BUS] is None


def test_identical_clients_agree_fully():
    preds = torch.randint(0, 19, (1, 2, 8, 8)).expand(2, -1, -1, -1)
    scores = PairwiseAgreement(2)
    scores.update(preds)
    assert all(v is None or v == 0.0 for v in scores.scores())


def test_select_unstable_threshold_and_bounds():
    scores = [None] * 19
    for name, v in {
        "road": 0.05,
        "car": 0.1,
        "sky": 0.02,
        "bus": 0.8,
        "train": 0.9,
        "rider": 0.6,
        "person": 0.2,
    }.items():
        scores[class_index(name)] = v
    chosen, threshold = select_unstable(
        scores, UnstableRule(std_factor=0.5, min_unstable=1, max_unstable=6)
    )
    assert chosen == ["train", "bus", "rider"] and 0.4 < threshold < 0.6
    chosen, _ = select_unstable(
        scores, UnstableRule(std_factor=0.5, min_unstable=1, max_unstable=2)
    )
    assert chosen == ["train", "bus"]
    chosen, _ = select_unstable(scores, UnstableRule(std_factor=3.0, min_unstable=4))
    assert chosen == ["train", "bus", "rider", "person"]
    assert select_unstable([None] * 19)[0] == []
    assert math.isnan(select_unstable([None] * 19)[1])


def test_needs_two_clients():
    with pytest.raises(ValueError, match="two clients"):
        PairwiseAgreement(1)


def test_plot(tmp_path):
    scores = {n: 0.1 for n in ("road", "car")}
    plot_inconsistency(Inconsistency(scores, ["car"], 0.1), tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
