"""`feds2r client train --dry-run`: the data and --out checked, a few steps of the command's own
training measured in a temporary folder, the projection printed, nothing written to --out."""

from __future__ import annotations

import tempfile

import pytest

from feds2r.cli import main
from feds2r.cli.train import DRY_RUN_STEPS
from feds2r.client import ClientSettings
from feds2r.data.world import synth_domain
from feds2r.engine.train import TrainConfig
from feds2r.plan import DRY_RUN_STEPS as PLAN_STEPS
from feds2r.plan import check_data, dry_run_client
from tests.conftest import TINY_RECIPE, train_tiny_client


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    synth_domain("gta5-like", root / "gta", split="train", num=12, size=(64, 128), progress=False)
    return root


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """A temporary directory of its own for the dry run's folder, to see it removed."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def dry_run_argv(world, out, *extra: str) -> list[str]:
    spec = f"gta5:{world}/gta?split=train"
    argv = ["client", "train", "--data", spec, "--preset", "segformer-cpu", *TINY_RECIPE]
    return [*argv, "--steps", "1000", "--warmup-steps", "10", "--out", str(out), *extra]


def test_dry_run_reports_and_writes_nothing(world, tmp_path, own_tmp, capsys) -> None:
    out = tmp_path / "run"
    assert main(dry_run_argv(world, out, "--dry-run", "--quiet")) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written to --out, not even the folder
    assert list(own_tmp.iterdir()) == []  # the temporary run is removed
    assert f"{DRY_RUN_STEPS} steps in a temporary folder" in text
    assert "12 samples listed and paired; 8 read and checked (64x128 x8)" in text
    assert f"{out}: new" in text and "segformer-cpu" in text
    assert "s per step of 2 images" in text and "waiting for data" in text
    assert "peak host" in text and "projected 1000 steps" in text
    assert "peak GPU" not in text  # a CPU run


def test_the_plan_measures_the_run(world, tmp_path, own_tmp) -> None:
    train = TrainConfig(
        steps=400, batch_size=2, height=32, crop=(32, 64), device="cpu", checkpoint_every=100
    )
    client = ClientSettings(data=f"gta5:{world}/gta?split=train", preset="segformer-cpu")
    plan = dry_run_client(tmp_path / "run", client, train, steps=4, progress=False)
    assert plan.measured_steps == 4 and plan.steps == 400 and plan.saves == 4
    assert plan.parameters > 0 and plan.peak_host_mib > 0 and plan.peak_gpu_mib is None
    assert 0 < plan.step_s and plan.data_s is not None and 0 <= plan.data_s <= plan.step_s
    assert plan.projected_s == pytest.approx(plan.startup_s + 399 * plan.step_s + 4 * plan.save_s)
    assert plan.to_dict()["projected_s"] == plan.projected_s
    assert not (tmp_path / "run").exists() and list(own_tmp.iterdir()) == []
    assert DRY_RUN_STEPS == PLAN_STEPS


def test_dry_run_names_a_run_it_would_resume(world, tmp_path, own_tmp, capsys) -> None:
    out = tmp_path / "run"
    assert train_tiny_client(f"gta5:{world}/gta?split=train", out, steps=2) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    argv = dry_run_argv(world, out, "--dry-run", "2", "--quiet")
    argv[argv.index("1000")] = "2"  # the same config as the finished run
    argv[argv.index("10")] = "1"
    assert main(argv) == 0
    assert "a finished run of this config (step 2)" in capsys.readouterr().out
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_dry_run_refuses_what_the_run_would_refuse(world, tmp_path, own_tmp, capsys) -> None:
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(dry_run_argv(world, out, "--dry-run", "--quiet")) == 2
    assert "already holds" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # a missing dataset is named before any model is built
    argv = dry_run_argv(world, tmp_path / "run", "--dry-run", "--quiet")
    argv[argv.index("--data") + 1] = f"gta5:{tmp_path}/nowhere"
    assert main(argv) == 2
    assert "nowhere" in capsys.readouterr().err
    assert list(own_tmp.iterdir()) == []


def test_the_data_check_names_a_bad_sample(world, tmp_path) -> None:
    import shutil

    root = tmp_path / "gta"
    shutil.copytree(world / "gta", root)
    label = sorted((root / "labels").iterdir())[-1]  # the last sample is always read
    label.write_bytes(b"not a png")
    from feds2r.errors import DataError

    with pytest.raises(DataError, match=label.name):
        check_data(f"gta5:{root}?split=train")
    # left out with --skip-bad, as the run would leave it out
    found = check_data(f"gta5:{root}?split=train", on_error="skip")
    assert found.num_samples == 12 and found.num_read == 7
