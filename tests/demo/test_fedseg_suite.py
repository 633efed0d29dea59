"""`feds2r demo --suite fedseg` end to end on a tiny world (the quick profile): results.json in
the demo's schema, the partition, the per-round curves, the communication, the report."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from feds2r.cli import main  # noqa: E402
from feds2r.data.labels import NUM_CLASSES  # noqa: E402
from feds2r.data.partition import Partition  # noqa: E402
from feds2r.demo import SUITES  # noqa: E402
from feds2r.demo.results import SHARED_KEYS  # noqa: E402
from feds2r.demo.suites.fedseg import PAPER, PROFILES, ROWS, run_fedseg  # noqa: E402
from feds2r.errors import Feds2rError  # noqa: E402

QUICK = PROFILES["quick"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One quick run of the suite (non-IID₁); its OUT and the world it built."""
    root = tmp_path_factory.mktemp("fedseg")
    results = run_fedseg("quick", root / "out", world=root / "world", progress=False)
    return {"out": root / "out", "world": root / "world", "results": results}


def test_the_fedseg_suite_is_registered_with_the_papers_rows():
    assert SUITES["fedseg"].run is run_fedseg
    assert [r.name for r in SUITES["fedseg"].rows] == [
        "fedavg-ce",
        "fedavg-backce",
        "fedprox-backce",
        "fedseg",
    ]
    assert all(set(PAPER[k]) == {r.name for r in ROWS} for k in PAPER)


def test_the_suite_writes_results_in_the_demos_schema(run):
    out, results = run["out"], run["results"]
    on_disk = json.loads((out / "results.json").read_text())
    assert set(SHARED_KEYS) <= set(on_disk) and list(on_disk)[-2:] == ["timing_s", "environment"]
    assert list(on_disk["methods"]) == [r.name for r in ROWS]
    for name, row in results["methods"].items():
        assert set(row["miou"]) == set(results["domains"]) and 0 <= row["mean"] <= 100
        assert all(len(v) == NUM_CLASSES for v in row["per_class"].values())
        assert results["fedseg"]["in_domain"][name] == row["miou"]["cityscapes-like"]
        # the per-round curve: the initial model and every round (evaluate_every=1)
        assert [p[0] for p in results["curves"][name]] == list(range(QUICK.rounds + 1))
        comm = results["communication"][name]
        assert comm["rounds"] == QUICK.rounds and comm["megabytes"] > 0
        assert comm["train_steps"] == QUICK.rounds * QUICK.clients_per_round * QUICK.local_steps
    assert "fedseg - fedavg-backce" in results["intervals"]
    assert "fedavg-backce - fedavg-ce (cityscapes-like)" in results["intervals"]
    assert results["fedseg"]["paper"] == PAPER["noniid1"]
    confident = results["fedseg"]["confident_pixels"]
    assert list(confident) == [r.name for r in ROWS]
    assert all(0 <= v <= 100 for v in confident.values())
    # every row drew the same clients in each round: paired rows
    sampled = list(results["fedseg"]["sampled"].values())
    assert all(s == sampled[0] for s in sampled)
    assert all(len(r) == QUICK.clients_per_round for r in sampled[0])


def test_the_partition_and_the_report_are_written(run):
    out = run["out"]
    partition = Partition.load(out / "partition.json")
    assert partition.kind == "noniid1" and len(partition.parts) == NUM_CLASSES
    assert [p.classes for p in partition.parts] == [(c,) for c in range(NUM_CLASSES)]
    report = (out / "report.md").read_text()
    assert "in-domain" in report and "Fig. 4" in report and "Communication" in report
    assert (out / "curves.png").is_file() and (out / "samples.png").is_file()
    assert (out / "fedseg" / "global" / "model.safetensors").is_file()


def test_a_rerun_reuses_every_row_and_another_partition_is_refused(run):
    out = run["out"]
    rows_before = {r.name: (out / r.name / "results.json").read_bytes() for r in ROWS}
    again = run_fedseg("quick", out, world=run["world"], progress=False)
    assert {r.name: (out / r.name / "results.json").read_bytes() for r in ROWS} == rows_before
    assert again["methods"]["fedseg"]["mean"] == run["results"]["methods"]["fedseg"]["mean"]
    before = (out / "results.json").read_bytes()
    with pytest.raises(Feds2rError):  # another partition into the same OUT: refused
        run_fedseg("quick", out, world=run["world"], progress=False, partition="iid")
    assert (out / "results.json").read_bytes() == before


def test_partition_is_checked_against_the_suites_own_partitions(tmp_path, capsys):
    code = main(["demo", "--partition", "iid", "--profile", "quick", "--out", str(tmp_path / "o")])
    assert code == 2 and "not a flag of the feds2r suite" in capsys.readouterr().err
    code = main(["demo", "--suite", "fedseg", "--partition", "domain", "--profile", "quick",
                 "--out", str(tmp_path / "d")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "not a partition of the fedseg suite" in err and "noniid2" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
    with pytest.raises(Feds2rError, match="unknown partition"):
        run_fedseg("quick", tmp_path / "p", partition="noniid3", progress=False)


def test_a_row_does_not_depend_on_the_rows_run_before_it(run, tmp_path):
    alone = run_fedseg("quick", tmp_path / "alone", world=run["world"], progress=False,
                       rows=ROWS[3:])  # fmt: skip
    assert alone["methods"]["fedseg"]["miou"] == run["results"]["methods"]["fedseg"]["miou"]
