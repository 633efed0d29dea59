"""The whole demo end to end on a tiny profile (the CI run of the federation pipeline)."""

from __future__ import annotations

import json

import pytest

from feds2r.demo import COMPARISONS, LABEL_FREE, METHODS, ORACLE, PROFILES, make_profile, run_demo
from feds2r.errors import Feds2rError

TINY = make_profile(
    "tiny",
    (64, 128),
    client_images=6,
    server_images=6,
    test_images=4,
    generated_images=3,
    client_steps=2,
    distill_steps=2,
    batch_size=2,
    height=32,
    crop=(32, 64),
    warmup_steps=1,
    dev_images=4,
    curve_every=1,
)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    results = run_demo(TINY, tmp_path, seed=0, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results
    domains = ["cityscapes-like", "bdd-like", "mapillary-like", "idd-like", "acdc-like"]
    assert results["profile"] == "tiny" and results["domains"] == domains
    clients = {"client:gta5-like", "client:synthia-like", "client:synscapes-like"}
    assert set(results["methods"]) == {*clients, *METHODS, ORACLE, LABEL_FREE}
    rows = results["methods"]
    assert rows[ORACLE]["picked"] in clients and rows[LABEL_FREE]["picked"] in clients
    assert rows[ORACLE]["mean"] == max(rows[c]["mean"] for c in clients)
    agreement = results["premise"]["client_agreement"]
    assert rows[LABEL_FREE]["picked"] == "client:" + max(agreement, key=agreement.get)
    for name, row in results["methods"].items():
        keys = {"miou", "mean", "per_class", "checkpoint", "dev", "classes_above_10"}
        assert set(row) == keys | ({"picked", "how"} if name in (ORACLE, LABEL_FREE) else set())
        assert 0 <= row["classes_above_10"] <= 19 and 0 <= row["dev"] <= 100
        assert set(row["miou"]) == set(domains)
        assert all(0 <= v <= 100 for v in row["miou"].values())
        assert all(len(v) == 19 for v in row["per_class"].values())
        if name == "ensemble":
            assert row["checkpoint"] is None
        else:
            assert (tmp_path / row["checkpoint"] / "model.safetensors").is_file() or (
                __import__("pathlib").Path(row["checkpoint"]) / "model.safetensors"
            ).is_file()
    # every row starts from the shipped public backbone, and the report says so
    assert results["start"]["pretrained"] and "m2f-cpu-public" in results["start"]["backbone"]
    assert "pretrained `public` backbone" in (tmp_path / "report.md").read_text()
    # learning curves: every training run, at every step (curve_every=1), ending at its budget
    curves = results["curves"]
    assert set(curves) == {*clients, "upper-bound-1x", "upper-bound", "feddf", "feds2r",
                           "feds2r-no-aug", "feds2r-no-fusion"}  # fmt: skip
    assert [p[0] for p in curves["upper-bound"]] == [1, 2, 3, 4, 5, 6]
    assert [p[0] for p in curves["client:gta5-like"]] == [1, 2]
    rows = results["methods"]
    ran = [(a, b) for a, b in COMPARISONS if a in rows and b in rows]
    assert len(ran) == len(COMPARISONS) - 3  # all but those of the self-training rows
    assert set(results["intervals"]) == {f"{a} - {b}" for a, b in ran}
    for r in results["intervals"].values():
        assert r["lo"] <= r["diff"] + 1e-9 and r["diff"] <= r["hi"] + 1e-9
    premise = results["premise"]
    assert -1 <= premise["feature_cosine"]["mean"] <= 1 and 0 <= premise["fedavg_agreement"] <= 1
    assert set(premise["change_from_start"]) == {c.split(":")[1] for c in clients}
    import numpy as np

    with np.load(tmp_path / "confusion.npz") as npz:
        cm = npz[f"feds2r|{domains[0]}"]
        assert cm.shape == (4, 19, 19)  # one matrix per test image
    assert (
        set(results["inconsistency"]) == set(__import__("feds2r").CLASS_NAMES)
        and results["unstable_classes"]
    )
    assert {
        "world",
        "clients",
        "upper_bound",
        "inconsistency",
        "augmentation",
        "distill:feds2r",
        "evaluation",
        "report",
        "total",
    } <= set(results["timing_s"])
    for name in (
        "report.md",
        "inconsistency.png",
        "samples.png",
        "curves.png",
        "config.toml",
        "inconsistency.json",
    ):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "| feds2r |" in report and "samples.png" in report
    # the world is reused on a second run with the same profile
    stamp = (tmp_path / "world" / "demo_world.json").stat().st_mtime
    run_demo(TINY, tmp_path / "again", seed=1, world=tmp_path / "world", progress=False)
    assert (tmp_path / "world" / "demo_world.json").stat().st_mtime == stamp


def test_profiles_and_errors():
    assert set(PROFILES) == {"quick", "default", "full"}
    with pytest.raises(Feds2rError, match="unknown profile"):
        run_demo("huge", "/tmp/nowhere")


@pytest.mark.slow
def test_demo_runs_any_list_of_rows_including_self_training(tmp_path):
    from feds2r.demo import ROWS, SELFTRAIN_ROWS

    rows = (next(r for r in ROWS if r.name == "feds2r"), *SELFTRAIN_ROWS)
    results = run_demo(TINY, tmp_path, seed=0, progress=False, rows=rows)
    assert {"feds2r", "feds2r+st", "feds2r+st-no-refine", ORACLE} <= set(results["methods"])
    assert "feddf" not in results["methods"] and "ensemble" not in results["methods"]
    assert [p[0] for p in results["curves"]["feds2r+st"]] == [1, 2]
    assert {"distill:feds2r", "selftrain:feds2r+st"} <= set(results["timing_s"])
    assert {"feds2r+st - feds2r", "feds2r+st - feds2r+st-no-refine"} <= set(results["intervals"])
    assert "feds2r - feddf" not in results["intervals"]  # only comparisons of rows that ran
