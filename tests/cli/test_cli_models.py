"""client train, eval, predict and models from the command line, on a tiny world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from feds2r.cli import main
from feds2r.data.world import synth_domain
from tests.conftest import train_tiny_client


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    synth_domain("gta5-like", root / "gta", split="train", num=4, size=(64, 128), progress=False)
    synth_domain("cityscapes-like", root / "cs", split="val", num=3, size=(64, 128), progress=False)
    synth_domain("bdd-like", root / "bdd", split="val", num=2, size=(64, 128), progress=False)
    return root


@pytest.fixture(scope="module")
def ckpt(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gta"
    code = train_tiny_client(f"gta5:{world}/gta?split=train", out, steps=2)
    assert code == 0
    return out


def test_client_train_outputs(ckpt):
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "loss_curve.png").is_file()
    assert json.loads((ckpt / "model.json").read_text())["steps"] == 2


def test_eval_table_and_json(world, ckpt, tmp_path, capsys):
    dest = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--data",
            f"cityscapes:{world}/cs?split=val",
            "--data",
            f"bdd:{world}/bdd?split=val",
            "--height",
            "32",
            "--per-class",
            "--json",
            str(dest),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "road" in out and "mean" in out
    report = json.loads(dest.read_text())
    assert report["preset"] == "segformer-cpu" and len(report["datasets"]) == 2
    row = report["datasets"][0]
    assert 0 <= row["miou"] <= 100 and row["num_images"] == 3
    assert set(row["per_class"]) >= {"road", "bicycle"}
    assert report["mean_miou"] == pytest.approx(
        (report["datasets"][0]["miou"] + report["datasets"][1]["miou"]) / 2
    )


def test_sliding_window_eval_runs(world, ckpt, capsys):
    code = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--data",
            f"cityscapes:{world}/cs?split=val",
            "--height",
            "64",
            "--sliding",
            "--crop",
            "32x64",
            "--quiet",
            "--device",
            "cpu",
            "--json",
            "-",
        ]
    )
    assert code == 0 and json.loads(capsys.readouterr().out)["sliding"] == [32, 64]


def test_predict_writes_pngs(world, ckpt, tmp_path, capsys):
    out = tmp_path / "pred"
    code = main(
        [
            "predict",
            "--model",
            str(ckpt),
            "--data",
            f"cityscapes:{world}/cs?split=val",
            "--out",
            str(out),
            "--height",
            "32",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and pngs[0].startswith("frankfurt_")
    ids = np.asarray(Image.open(out / pngs[0]))
    assert ids.shape == (64, 128) and ids.max() < 19
    assert np.asarray(Image.open(out / "overlay" / pngs[0])).shape == (64, 128, 3)


def test_eval_refuses_a_pickle(world, tmp_path, capsys):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "model.pt"),
            "--data",
            f"cityscapes:{world}/cs?split=val",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: refusing to load") and "Traceback" not in err


def test_models_lists_presets(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "m2f-cpu" in out and "segformer-b5" in out and "m2f-r50" in out


def test_warmup_longer_than_training_is_explained(world, tmp_path, capsys):
    code = main(
        [
            "client",
            "train",
            "--data",
            f"gta5:{world}/gta?split=train",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "warmup_steps (100) must be between 0 and steps (2)" in err


def test_bad_train_config_key(world, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text("[train]\nstepz = 3\n")
    code = main(
        [
            "client",
            "train",
            "--data",
            f"gta5:{world}/gta?split=train",
            "--config",
            str(toml),
            "--out",
            str(tmp_path / "x"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown key(s) stepz" in err and "valid keys" in err


def test_eval_of_unlabelled_data_is_explained(world, ckpt, capsys):
    code = main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--data",
            f"folder:{world}/cs/leftImg8bit",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "has no labels to evaluate against" in err
