"""Bad values a user can give `client train` and `eval`: one clear message, exit 2, no traceback."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from feds2r.cli import main
from feds2r.data.world import synth_domain
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.models import create_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w")
    synth_domain("gta5-like", root / "gta", split="train", num=2, size=(64, 128), progress=False)
    synth_domain("cityscapes-like", root / "cs", split="val", num=2, size=(64, 128), progress=False)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(create_model("segformer-cpu"), tmp_path_factory.mktemp("ck") / "m")


def _fails_cleanly(capsys, argv: list[str], message: str) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors: usage line + message, exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--height", "0"], "argument --height: must be at least 16, got 0"),
        (["--height", "7"], "argument --height: must be at least 16, got 7"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_bad_eval_values(world, ckpt, capsys, flags, message):
    spec = f"cityscapes:{world}/cs?split=val"
    argv = ["eval", "--model", str(ckpt), "--data", spec, "--quiet", *flags]
    _fails_cleanly(capsys, argv, message)


def test_eval_refuses_nan_weights(world, ckpt, tmp_path, capsys):
    import shutil

    bad = tmp_path / "nan"
    shutil.copytree(ckpt, bad)
    state = load_file(str(bad / "model.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[:3] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "feds2r-checkpoint"})
    spec = f"cityscapes:{world}/cs?split=val"
    argv = ["eval", "--model", str(bad), "--data", spec, "--quiet", "--device", "cpu"]
    _fails_cleanly(capsys, argv, "holds NaN or infinite values")
    argv = ["server", "inconsistency", "--clients", str(bad), str(ckpt), "--data", spec]
    _fails_cleanly(capsys, [*argv, "--out", str(tmp_path / "inc"), "--quiet"], "NaN or infinite")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--height", "7"], "height must be >= 16 pixels, got 7"),
        (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_bad_client_train_values(world, tmp_path, capsys, flags, message):
    spec = f"gta5:{world}/gta?split=train"
    argv = ["client", "train", "--data", spec, "--steps", "2", "--warmup-steps", "1", *flags]
    err = _fails_cleanly(capsys, [*argv, "--out", str(tmp_path / "x"), "--quiet"], message)
    assert "crop" not in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_client_train_on_a_dataset_without_labels(world, tmp_path, capsys):
    argv = ["client", "train", "--data", f"folder:{world}/cs/leftImg8bit", "--quiet"]
    _fails_cleanly(capsys, [*argv, "--out", str(tmp_path / "x")], "has no labels")
    _fails_cleanly(capsys, ["client", "train", "--data", "folder:", "--out", "x"], "dataset spec")
    assert not (tmp_path / "x").exists()


def test_client_train_advertises_and_has_skip_bad(ckpt, tmp_path, capsys):
    """Data errors advise --skip-bad; `client train` has it and it leaves the bad sample out."""
    root = tmp_path / "gta"
    synth_domain("gta5-like", root, split="train", num=3, size=(64, 128), progress=False)
    # the sample the first step draws (seed 0): a streamed run meets a bad file when it draws it
    victim = sorted((root / "images").iterdir())[2]
    victim.write_bytes(b"not a png")
    spec = f"gta5:{root}?split=train"
    base = ["client", "train", "--data", spec, "--preset", "segformer-cpu", "--steps", "1"]
    base += ["--warmup-steps", "0", "--batch-size", "1", "--height", "32", "--crop", "32x64"]
    base += ["--device", "cpu", "--quiet", "--init", str(ckpt)]
    _fails_cleanly(capsys, [*base, "--out", str(tmp_path / "a")], "--skip-bad")
    with pytest.warns(UserWarning, match="skipping"):
        assert main([*base, "--skip-bad", "--out", str(tmp_path / "b")]) == 0


def test_server_distill_has_skip_bad_too(ckpt, tmp_path, capsys):
    """Every command that reads a dataset and may advise --skip-bad has it."""
    root = tmp_path / "cs"
    synth_domain("cityscapes-like", root, split="train", num=3, size=(64, 128), progress=False)
    victim = sorted((root / "leftImg8bit").rglob("*.png"))[0]
    victim.write_bytes(b"not a png")
    base = ["server", "distill", "--clients", str(ckpt), str(ckpt), "--student", "segformer-cpu"]
    base += ["--data", f"cityscapes:{root}?split=train", "--kd", "pixel", "--no-fusion"]
    base += ["--steps", "1", "--warmup-steps", "0", "--batch-size", "1", "--height", "32"]
    base += ["--crop", "32x64", "--device", "cpu", "--quiet"]
    _fails_cleanly(capsys, [*base, "--out", str(tmp_path / "a")], "--skip-bad")
    with pytest.warns(UserWarning, match="skipping"):
        assert main([*base, "--skip-bad", "--out", str(tmp_path / "b")]) == 0
