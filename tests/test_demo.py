"""The whole demo end to end on a tiny profile (the CI run of the federation pipeline)."""

from __future__ import annotations

import json

import pytest

from feds2r.demo import METHODS, PROFILES, Profile, run_demo
from feds2r.errors import Feds2rError

TINY = Profile(
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
)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    results = run_demo(TINY, tmp_path, seed=0, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results
    domains = ["cityscapes-like", "bdd-like", "mapillary-like", "idd-like", "acdc-like"]
    assert results["profile"] == "tiny" and results["domains"] == domains
    expected = {"client:gta5-like", "client:synthia-like", "client:synscapes-like", *METHODS}
    assert set(results["methods"]) == expected
    for name, row in results["methods"].items():
        assert set(row) == {"miou", "mean", "per_class", "checkpoint"}
        assert set(row["miou"]) == set(domains)
        assert all(0 <= v <= 100 for v in row["miou"].values())
        assert all(len(v) == 19 for v in row["per_class"].values())
        if name == "ensemble":
            assert row["checkpoint"] is None
        else:
            assert (tmp_path / row["checkpoint"] / "model.safetensors").is_file() or (
                __import__("pathlib").Path(row["checkpoint"]) / "model.safetensors"
            ).is_file()
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
