"""The whole demo end to end on a tiny profile (the CI run of the federation pipeline)."""

from __future__ import annotations

import dataclasses
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
        keys = {"miou", "mean", "per_class", "checkpoint", "dev", "classes_above_10", "parameters"}
        if name != "ensemble":  # a single model: its preset and inference speed
            keys |= {"preset", "inference_img_s"}
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
    default = {*METHODS, ORACLE, LABEL_FREE}  # not the rows of --self-train, --lite, --multi-round
    assert ran == [(a, b) for a, b in COMPARISONS if a in default and b in default]
    assert len(ran) == 9
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
    assert set(PROFILES) == {"quick", "default", "public", "imagenet", "full"}
    # the default (ImageNet, per-pixel) and the imagenet profile are the public profile's world
    # and recipe on an ImageNet preset, with the steps cut to the public profile's wall time
    default, imagenet, public = PROFILES["default"], PROFILES["imagenet"], PROFILES["public"]
    assert imagenet.world == default.world == public.world
    assert (default.preset, imagenet.preset, public.preset) == ("seg-effl0", "m2f-effl0", "m2f-cpu")
    assert (imagenet.clients.steps, default.clients.steps, public.clients.steps) == (200, 250, 300)
    assert default.server.train.steps == 250 and default.lite_student == "seg-effl0-tiny"
    assert default.lite_recipe == {"steps": 500, "backbone_lr_mult": 1.0}  # chosen on dev
    # only the default distils a student started from the clients at a lower rate (dev)
    rates = {n: p.server.distill.finetune_lr for n, p in PROFILES.items()}
    assert rates == {"quick": 1.0, "default": 0.1, "public": 1.0, "imagenet": 1.0,
                     "full": 1.0}  # fmt: skip
    # every profile's clients read their small worlds into memory (bit-identical figures)
    assert {p.clients.loader for p in PROFILES.values()} == {"memory"}
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


def test_merge_curves_keeps_reused_and_resumed_runs_and_replaces_retrained_ones():
    from feds2r.demo import merge_curves

    before = {"reused": [[150, 1.0], [300, 2.0]], "resumed": [[150, 1.0], [300, 2.0]],
              "retrained": [[150, 1.0], [300, 2.0]]}  # fmt: skip
    now = {"resumed": [[300, 2.5]], "retrained": [[150, 0.5], [300, 0.7]], "new": [[150, 3.0]]}
    merged = merge_curves(before, now)
    assert merged["reused"] == [[150, 1.0], [300, 2.0]]  # drew nothing now: kept whole
    assert merged["resumed"] == [[150, 1.0], [300, 2.5]]  # earlier points before the resume
    assert merged["retrained"] == [[150, 0.5], [300, 0.7]]
    assert merged["new"] == [[150, 3.0]]


@pytest.mark.slow
def test_lite_and_multi_round_rows_and_a_rerun_that_trains_only_the_new_rows(tmp_path):
    pytest.importorskip("flwr")
    from feds2r.demo import LITE_ROWS, ROUND_ROWS, ROWS

    feds2r = next(r for r in ROWS if r.name == "feds2r")
    first = run_demo(TINY, tmp_path, seed=0, progress=False, rows=(feds2r,))
    assert "feds2r-lite" not in first["methods"]
    state = tmp_path / "feds2r" / "state" / "state.json"
    stamp = state.stat().st_mtime_ns
    two = dataclasses.replace(ROUND_ROWS[0], rounds={"method": "fedavg", "rounds": 2})
    rows = (feds2r, *LITE_ROWS, two)  # TINY trains 2 client steps: 2 rounds of 1
    results = run_demo(TINY, tmp_path, seed=0, progress=False, rows=rows)
    assert state.stat().st_mtime_ns == stamp  # the finished feds2r training was reused
    assert results["curves"]["feds2r"] == first["curves"]["feds2r"]  # its curve carried over
    methods = results["methods"]
    assert methods["feds2r-lite"]["preset"] == "segformer-cpu"
    assert methods["feds2r-lite"]["parameters"] < methods["feds2r"]["parameters"] / 2
    assert methods["feds2r-lite"]["inference_img_s"] > 0
    assert methods["fedavg-5"]["checkpoint"].endswith("fedavg-5/global")
    comm = results["communication"]
    assert comm["measured"] and comm["feds2r"]["rounds"] == 1 and comm["fedavg-5"]["rounds"] == 2
    assert comm["fedavg-5"]["megabytes"] > 1.9 * comm["feds2r"]["megabytes"]  # 2 exchanges vs 1
    assert [p[0] for p in results["round_curves"]["fedavg-5"]] == [0, 1, 2]
    assert {"feds2r-lite - direct-lite", "feds2r - fedavg-5"} <= set(results["intervals"])
    assert (tmp_path / "communication.png").is_file()
    again = run_demo(TINY, tmp_path, seed=0, progress=False, rows=rows)  # all reused
    assert again["methods"]["fedavg-5"]["mean"] == methods["fedavg-5"]["mean"]
