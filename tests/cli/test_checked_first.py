"""Settings checked before any work: a setting that cannot work or would be ignored is refused at
once (exit 2, one message naming the flag given), with nothing written and no process started;
file types judged by content."""

from __future__ import annotations

import pytest
import torch

from feds2r.cli import main
from feds2r.data.world import synth_domain

TINY = (32, 64)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("checked")
    synth_domain("gta5-like", root / "gta", split="train", num=1, size=TINY, progress=False)
    synth_domain("cityscapes-like", root / "cs", split="train", num=1, size=TINY, progress=False)
    return {
        "gta": f"gta5:{root / 'gta'}?split=train",
        "cs": f"cityscapes:{root / 'cs'}?split=train",
        "missing": f"gta5:{root / 'nowhere'}?split=train",
    }


def local(world: dict[str, str], out, *flags: str, second: str | None = None) -> list[str]:
    return [
        "federate", "local", "--client", f"a={world['gta']}", "--client",
        f"b={second or world['gta']}", "--server-data", world["cs"], "--out", str(out), *flags,
    ]  # fmt: skip


def app(world: dict[str, str], folder, *flags: str) -> list[str]:
    return ["federate", "app", "--app", str(folder), "--server-data", world["cs"], "--out",
            "/srv/federation", *flags]  # fmt: skip


REFUSED = [
    (("--method", "fedavg", "--rounds", "2", "--route", "distill+lite"),
     "--route distill+lite applies only to --method feds2r"),
    (("--method", "fedseg", "--rounds", "2", "--route", "distill+selftrain"),
     "--route distill+selftrain applies only to --method feds2r"),
    (("--route", "distill+lite", "--lite-preset", "nope"), "--lite-preset 'nope' is not a model"),
    (("--preset", "nope"), "--preset 'nope' is not a model preset"),
    (("--lite-preset", "m2f-cpu"), "--lite-preset m2f-cpu applies only to a route with lite"),
    (("--route", "distill+lite", "--lite-preset", "seg-effl0"), "would be no lighter"),
]  # fmt: skip
"""Federation settings refused by `federate local` and `federate app` alike, and why."""


@pytest.mark.parametrize(("flags", "why"), REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_federate_local_and_app_refuse_the_same_settings(world, tmp_path, capsys, flags, why):
    assert main(local(world, tmp_path / "out", *flags)) == 2
    out, err = capsys.readouterr()
    assert why in err and "SuperLink" not in out
    assert main(app(world, tmp_path / "app", *flags)) == 2
    assert why in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no output folder, no app


def test_federate_local_checks_every_clients_data_before_starting(world, tmp_path, capsys):
    assert main(local(world, tmp_path / "out", second=world["missing"])) == 2
    out, err = capsys.readouterr()
    assert f"--client b={world['missing']}" in err and "does not exist" in err
    assert "SuperLink" not in out and list(tmp_path.iterdir()) == []


def test_a_misspelt_spec_option_lists_the_valid_ones(world, capsys):
    assert main(["data", "check", world["cs"].replace("?split=", "?spilt=")]) == 2
    err = capsys.readouterr().err
    assert "has no option 'spilt'" in err and "valid options: split" in err


def test_a_safetensors_checkpoint_named_bin_is_not_a_pickle(tmp_path):
    from feds2r.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from feds2r.models import create_model

    torch.manual_seed(0)
    save_checkpoint(create_model("segformer-cpu"), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model.bin")
    model, meta = load_checkpoint(tmp_path / "model.bin")  # judged by content: safetensors
    assert meta["preset"] == "segformer-cpu"
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.safetensors")  # a pickle by any name
    with pytest.raises(CheckpointError, match="it is a pickle"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.bin").write_bytes(b"not weights at all")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.bin")


@pytest.mark.parametrize("command", ["distill", "lite"])
def test_an_unknown_student_preset_is_refused_before_any_checkpoint_is_read(
    world, tmp_path, command, capsys
):
    inputs = ["--bridge", str(tmp_path / "nowhere")] if command == "lite" else []
    line = ["server", command, *inputs, "--clients", str(tmp_path / "a"), str(tmp_path / "b"),
            "--data", world["cs"], "--student-preset", "segformer-b9", "--out",
            str(tmp_path / "out")]  # fmt: skip
    assert main(line) == 2
    err = capsys.readouterr().err
    assert "unknown student preset 'segformer-b9'" in err and "segformer-cpu" in err
    assert not (tmp_path / "out").exists()
