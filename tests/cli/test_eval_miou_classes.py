"""`feds2r eval --miou-classes`: the official convention by default, the present one on request,
the convention recorded in the JSON report and in each dataset's row."""

from __future__ import annotations

import json

import pytest

from feds2r.cli import main
from feds2r.data.world import synth_domain
from tests.conftest import train_tiny_client


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    synth_domain("gta5-like", root / "gta", split="train", num=4, size=(64, 128), progress=False)
    # two small images: many classes are absent from their ground truth
    synth_domain("bdd-like", root / "bdd", split="val", num=2, size=(64, 128), progress=False)
    return root


@pytest.fixture(scope="module")
def ckpt(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gta"
    assert train_tiny_client(f"gta5:{world}/gta?split=train", out, steps=2) == 0
    return out


def run_eval(world, ckpt, dest, *extra: str) -> dict:
    argv = ["eval", "--model", str(ckpt), "--data", f"bdd:{world}/bdd?split=val"]
    argv += ["--height", "32", "--json", str(dest), "--quiet", "--device", "cpu", *extra]
    assert main(argv) == 0
    return json.loads(dest.read_text())


def test_official_by_default_present_on_request(world, ckpt, tmp_path) -> None:
    official = run_eval(world, ckpt, tmp_path / "official.json")
    present = run_eval(world, ckpt, tmp_path / "present.json", "--miou-classes", "present")
    assert official["miou_classes"] == "official" and present["miou_classes"] == "present"
    off, pre = official["datasets"][0], present["datasets"][0]
    assert off["miou_classes"] == "official" and pre["miou_classes"] == "present"
    # the same predictions: pixel accuracy and the classes in the ground truth agree
    assert off["pixel_acc"] == pytest.approx(pre["pixel_acc"])
    assert off["classes_present"] == pre["classes_present"] == pre["classes_counted"]
    # the official mean adds a 0 for every predicted but absent class, nothing else
    # (the 2-step model predicts classes the two images lack, so the two differ here)
    assert off["classes_counted"] > pre["classes_counted"]
    assert off["miou"] == pytest.approx(
        pre["miou"] * pre["classes_counted"] / off["classes_counted"]
    )
    per_off, per_pre = off["per_class"], pre["per_class"]
    extra = [k for k, v in per_off.items() if v is not None and per_pre[k] is None]
    assert len(extra) == off["classes_counted"] - pre["classes_counted"]
    assert all(per_off[k] == 0.0 for k in extra)
    assert "per_image_confusion" not in pre


def test_an_unknown_convention_is_a_usage_error(world, ckpt, capsys) -> None:
    argv = ["eval", "--model", str(ckpt), "--data", f"bdd:{world}/bdd?split=val"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--miou-classes", "all"])
    assert exc.value.code == 2
    assert "official" in capsys.readouterr().err
