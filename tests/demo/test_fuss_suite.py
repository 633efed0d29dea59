"""`feds2r demo --suite fuss` end to end on a tiny world: results.json in the demo's schema."""

from __future__ import annotations

import json

import pytest

from feds2r.demo import SUITES
from feds2r.demo.profiles import PROFILES, make_profile
from feds2r.demo.results import SHARED_KEYS
from feds2r.demo.suites.fuss import ROWS, run_fuss, suite_config
from feds2r.errors import Feds2rError
from feds2r.fuss import METHODS

# ACDC-like divides its test split over four conditions: at least 4 test images
TINY = make_profile("tiny", (32, 64), 3, 1, 4, 1, 4, 4, batch_size=2, height=32, crop=(32, 64),
                    warmup_steps=1, dev_images=2)  # fmt: skip


def test_the_fuss_suite_is_registered_with_its_four_rows():
    assert SUITES["fuss"].run is run_fuss
    assert [r.name for r in SUITES["fuss"].rows] == list(METHODS)


def test_the_default_profile_keeps_the_suites_budget_of_300_client_steps():
    # the default profile trains seg-effl0 for 250 steps; FUSS's heads keep 5 rounds of 60
    config = suite_config(PROFILES["default"], seed=0)
    assert (config.rounds, config.local_steps, config.height, config.batch_size) == (5, 60, 96, 8)
    assert suite_config(PROFILES["public"], seed=0).local_steps == 60


def test_the_suite_writes_results_a_report_and_cluster_maps(tmp_path):
    results = run_fuss(TINY, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    on_disk = json.loads((out / "results.json").read_text())
    assert set(SHARED_KEYS) <= set(on_disk) and list(on_disk)[-2:] == ["timing_s", "environment"]
    assert list(on_disk["methods"]) == [r.name for r in ROWS]
    for name, row in results["methods"].items():
        assert set(row["miou"]) == set(results["domains"])
        assert 0 <= row["mean"] <= 100
        assert len(row["models"]) == (3 if name in ("local-only", "fedavg") else 1)
        assert all(len(v) == 19 for v in row["per_class"].values())
    assert "fuss - centralized" in results["intervals"]
    assert "fuss - local-only:gta5-like" in results["intervals"]
    assert results["communication"]["fuss"]["megabytes"] > 0
    assert "fuss" in (out / "report.md").read_text() and (out / "samples.png").is_file()
    assert (out / "fuss" / "fuss_model.pt").is_file()


def test_unknown_rows_and_no_pretrained_are_refused(tmp_path):
    from feds2r.demo.rows import Row

    with pytest.raises(Feds2rError, match="unknown fuss rows"):
        run_fuss(TINY, tmp_path / "a", rows=(Row("feddf", "fuss"),), progress=False)
    with pytest.raises(Feds2rError, match="no-pretrained"):
        run_fuss(TINY, tmp_path / "b", pretrained=False, progress=False)


def test_out_is_claimed_by_the_demo_output_rule(tmp_path):
    out = tmp_path / "out"
    run_fuss(TINY, out, progress=False, rows=ROWS[2:3])
    before = (out / "results.json").read_bytes()
    with pytest.raises(Feds2rError):  # another seed into the same OUT: refused, nothing written
        run_fuss(TINY, out, seed=1, progress=False, rows=ROWS[2:3])
    assert (out / "results.json").read_bytes() == before


def test_the_iid_partition_deals_the_same_images_at_random(tmp_path):
    by_domain = run_fuss(TINY, tmp_path / "d", progress=False, rows=ROWS[:1])
    iid = run_fuss(TINY, tmp_path / "i", progress=False, rows=ROWS[:1], partition="iid",
                   world=tmp_path / "d" / "world")  # fmt: skip
    assert iid["fuss"]["partition"] == "iid" and by_domain["fuss"]["partition"] == "domain"
    sizes = by_domain["fuss"]["clients"]
    assert list(iid["fuss"]["clients"]) == ["client-0", "client-1", "client-2"]
    assert sum(iid["fuss"]["clients"].values()) == sum(sizes.values())
    assert max(iid["fuss"]["clients"].values()) - min(iid["fuss"]["clients"].values()) <= 1
    assert "at random" in (tmp_path / "i" / "report.md").read_text()
    with pytest.raises(Feds2rError, match="unknown partition"):
        run_fuss(TINY, tmp_path / "x", progress=False, partition="noniid1")


def test_the_over_clustering_variant_runs_with_the_majority_mapping(tmp_path):
    results = run_fuss(TINY, tmp_path / "k", progress=False, rows=ROWS[2:3],
                       overrides={"num_clusters": 6, "mapping": "majority"})  # fmt: skip
    assert results["fuss"]["config"]["num_clusters"] == 6
    assert results["fuss"]["config"]["mapping"] == "majority"
    assert "majority mapping" in (tmp_path / "k" / "report.md").read_text()
