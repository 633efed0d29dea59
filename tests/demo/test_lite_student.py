"""The lite rows distil into the profile's small student (``Profile.lite_student``)."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from feds2r.demo import LITE_ROWS, PROFILES, ROWS, make_profile, run_demo
from feds2r.demo.rows import Row
from feds2r.demo.suites.feds2r import lite_rows, with_lite_student
from feds2r.errors import Feds2rError


def test_the_imagenet_profiles_distil_into_their_imagenet_small_student():
    for name in ("default", "imagenet"):
        assert PROFILES[name].lite_student == "seg-effl0-tiny"
    for name in ("quick", "public", "full"):
        assert PROFILES[name].lite_student == "segformer-cpu"
        assert PROFILES[name].lite_recipe == {}
    with pytest.raises(Feds2rError, match="unknown lite_student 'nope'; valid presets: m2f-cpu"):
        dataclasses.replace(PROFILES["quick"], lite_student="nope")


def test_only_the_suites_lite_rows_take_the_profiles_student():
    mine = Row("my-lite", "lite", {"feature_fusion": True}, lite={"student": "segformer-cpu"},
               after="feds2r")  # fmt: skip
    rows = (*ROWS, *LITE_ROWS, mine)
    assert with_lite_student(rows, "segformer-cpu") == rows  # the default profile: unchanged
    swapped = with_lite_student(rows, "seg-effl0-tiny")
    assert swapped[: len(ROWS)] == ROWS and swapped[-1] == mine
    lite, direct = swapped[len(ROWS) : -1]
    assert (lite.name, lite.lite["student"]) == ("feds2r-lite", "seg-effl0-tiny")
    assert (direct.name, direct.distill["student"]) == ("direct-lite", "seg-effl0-tiny")
    assert lite_rows("seg-effl0-tiny") == (lite, direct)
    assert {**direct.distill, "student": "segformer-cpu"} == dict(LITE_ROWS[1].distill)
    # a profile's lite recipe reaches both lite rows, and no other
    recipe = {"steps": 500, "backbone_lr_mult": 1.0}
    swapped = with_lite_student(rows, "seg-effl0-tiny", recipe)
    assert [r.name for r in swapped if r.recipe] == ["feds2r-lite", "direct-lite"]
    assert all(dict(r.recipe) == recipe for r in swapped if r.recipe)


@pytest.mark.slow
def test_the_lite_rows_of_a_profile_train_its_student_from_imagenet(tmp_path):
    profile = make_profile(
        "tiny-imagenet-lite",
        (64, 128),
        client_images=4,
        server_images=4,
        test_images=4,
        generated_images=2,
        client_steps=1,
        distill_steps=2,
        batch_size=2,
        height=32,
        crop=(32, 64),
        warmup_steps=1,
        dev_images=2,
        curve_every=1,
        lite_student="seg-effl0-tiny",
        lite_recipe={"steps": 3, "backbone_lr_mult": 1.0},
    )
    feds2r = next(r for r in ROWS if r.name == "feds2r")
    results = run_demo(profile, tmp_path, seed=0, progress=False, rows=(feds2r, *LITE_ROWS))
    methods = results["methods"]
    assert methods["feds2r"]["preset"] == "m2f-cpu"
    assert methods["feds2r-lite"]["preset"] == methods["direct-lite"]["preset"] == "seg-effl0-tiny"
    assert results["student_init"]["direct-lite"]["backbone"].startswith("imagenet")
    # the lite rows train with the profile's lite recipe, the feds2r row with the distillation's
    steps = {}
    for row in ("feds2r", "feds2r-lite", "direct-lite"):
        train = tomllib.loads((tmp_path / row / "config.toml").read_text())["train"]
        steps[row] = (train["steps"], train["backbone_lr_mult"])
    assert steps == {"feds2r": (2, 0.1), "feds2r-lite": (3, 1.0), "direct-lite": (3, 1.0)}
    run_config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert run_config["lite_train"]["steps"] == 3 and run_config["distill_train"]["steps"] == 2
    assert len(results["curves"]["feds2r-lite"]) == 3  # curve_every 1: a point per step
