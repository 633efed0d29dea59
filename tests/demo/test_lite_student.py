"""The lite rows distil into the profile's small student (``Profile.lite_student``)."""

from __future__ import annotations

import dataclasses

import pytest

from feds2r.demo import LITE_ROWS, PROFILES, ROWS, make_profile, run_demo
from feds2r.demo.rows import Row
from feds2r.demo.suites.feds2r import lite_rows, with_lite_student
from feds2r.errors import Feds2rError


def test_the_imagenet_profile_distils_into_its_imagenet_small_student():
    assert PROFILES["imagenet"].lite_student == "seg-effl0-tiny"
    for name in ("quick", "default", "full"):
        assert PROFILES[name].lite_student == "segformer-cpu"
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
    )
    feds2r = next(r for r in ROWS if r.name == "feds2r")
    results = run_demo(profile, tmp_path, seed=0, progress=False, rows=(feds2r, *LITE_ROWS))
    methods = results["methods"]
    assert methods["feds2r"]["preset"] == "m2f-cpu"
    assert methods["feds2r-lite"]["preset"] == methods["direct-lite"]["preset"] == "seg-effl0-tiny"
    assert results["student_init"]["direct-lite"]["backbone"].startswith("imagenet")
