"""The helpers the five-seed scripts share (feds2r/demo/results.py): the t-interval over seeds,
mean ± sd, and runs grouped by partition."""

from __future__ import annotations

import json

import pytest

from feds2r.demo.results import mean_sd, runs_by_partition, seed_interval
from feds2r.errors import Feds2rError


def test_seed_interval_is_the_t_interval_of_the_mean():
    mean, lo, hi = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd 1.5811, t(0.975, 4) = 2.7764: half width 2.7764 * 1.5811 / sqrt(5) = 1.9632
    assert mean == 3.0 and lo == pytest.approx(3.0 - 1.9632, abs=1e-4)
    assert hi == pytest.approx(3.0 + 1.9632, abs=1e-4)
    one = seed_interval([2.5])
    assert one[0] == 2.5 and one[1] != one[1]  # NaN bounds for a single seed
    assert mean_sd([1.0, 2.0, 3.0]) == "2.0 ± 1.0" and mean_sd([4.0]) == "4.0 ± 0.0"


def test_runs_are_grouped_by_partition_in_seed_order(tmp_path):
    for name, seed, part in [("a", 2, "iid"), ("b", 0, "iid"), ("c", 1, "domain")]:
        (tmp_path / name).mkdir()
        doc = {"seed": seed, "fuss": {"partition": part}}
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    groups = runs_by_partition([tmp_path / n for n in "abc"], "fuss")
    assert {k: [r["seed"] for r in v] for k, v in groups.items()} == {"iid": [0, 2], "domain": [1]}
    with pytest.raises(Feds2rError, match="not a run of the fedseg suite"):
        runs_by_partition([tmp_path / "a"], "fedseg")
