"""`feds2r server inconsistency` and `feds2r server augment` end to end on a tiny world."""

from __future__ import annotations

import json

import pytest

from feds2r.cli import main
from feds2r.data.world import synth_domain
from tests.conftest import TINY_RECIPE, train_tiny_client


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    synth_domain("gta5-like", root / "gta", split="train", num=4, size=(64, 128), progress=False)
    synth_domain("synthia-like", root / "syn", split="train", num=4, size=(64, 128), progress=False)
    synth_domain(
        "cityscapes-like", root / "cs", split="train", num=3, size=(64, 128), progress=False
    )
    clients = []
    for name, spec in (
        ("a", f"gta5:{root}/gta?split=train"),
        ("b", f"synthia:{root}/syn?split=train"),
    ):
        out = root / "runs" / name
        assert train_tiny_client(spec, out, steps=3, seed=1 if name == "b" else 0) == 0
        clients.append(str(out))
    return root, clients


def test_inconsistency_then_augment(setup, tmp_path, capsys):
    root, clients = setup
    out = tmp_path / "server"
    code = main(
        [
            "server",
            "inconsistency",
            "--clients",
            *clients,
            "--data",
            f"cityscapes:{root}/cs?split=train",
            "--out",
            str(out),
            "--height",
            "32",
            "--min-unstable",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "inconsistency.json").read_text())
    assert len(report["scores"]) == 19 and report["num_images"] == 3
    assert 2 <= len(report["unstable_classes"]) <= 6
    assert all(0 <= v <= 1 for v in report["scores"].values() if v is not None)
    assert (out / "inconsistency.png").is_file()
    assert "unstable:" in capsys.readouterr().out

    gen = tmp_path / "gen"
    code = main(
        [
            "server",
            "augment",
            "--inconsistency",
            str(out),
            "--num",
            "5",
            "--out",
            str(gen),
            "--size",
            "64x128",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((gen / "generated.json").read_text())
    assert summary["num_images"] == 5
    assert set(summary["per_class"]) <= set(report["unstable_classes"])
    assert len(list((gen / "images").glob("*.png"))) == 5
    assert "folder:" in capsys.readouterr().out


def test_server_errors(setup, tmp_path, capsys):
    root, clients = setup
    code = main(
        [
            "server",
            "inconsistency",
            "--clients",
            clients[0],
            "--data",
            f"cityscapes:{root}/cs?split=train",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 2 and "at least two --clients" in capsys.readouterr().err
    code = main(
        [
            "server",
            "augment",
            "--inconsistency",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "g"),
            "--quiet",
        ]
    )
    assert code == 2 and "run `feds2r server inconsistency` first" in capsys.readouterr().err


def test_distill_variants(setup, tmp_path, capsys):
    root, clients = setup
    server = tmp_path / "server"
    assert (
        main(
            [
                "server",
                "inconsistency",
                "--clients",
                *clients,
                "--data",
                f"cityscapes:{root}/cs?split=train",
                "--out",
                str(server),
                "--height",
                "32",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "server",
                "augment",
                "--inconsistency",
                str(server),
                "--num",
                "3",
                "--out",
                str(tmp_path / "gen"),
                "--size",
                "64x128",
                "--quiet",
            ]
        )
        == 0
    )
    common = [
        "--clients",
        *clients,
        "--data",
        f"cityscapes:{root}/cs?split=train",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        *TINY_RECIPE,
        "--quiet",
        "--student",
        "segformer-cpu",
    ]
    out = tmp_path / "global"
    assert (
        main(
            [
                "server",
                "distill",
                *common,
                "--generated",
                str(tmp_path / "gen"),
                "--inconsistency",
                str(server),
                "--inconsistency-weighted",
                "--combine",
                "majority",
                "--fusion",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    meta = json.loads((out / "model.json").read_text())
    assert meta["role"] == "server" and meta["steps"] == 2
    assert meta["server_data"]["real"]["num_images"] == 3
    assert meta["server_data"]["generated"]["num_images"] == 3
    assert meta["distill_config"]["inconsistency_weighting"] is True
    assert meta["distill_config"]["combine"] == "majority"
    assert meta["distill_config"]["feature_fusion"] is True  # --fusion (off by default)
    agree = meta["student_init"]["agreement_clients"]
    most = max(range(len(agree)), key=lambda k: agree[k])
    assert meta["student_init"]["majority_fallback"] == f"client {most}"
    log = (out / "train_log.jsonl").read_text()
    assert "loss_feat" in log  # student of the clients' preset: the feature term is on
    feddf = tmp_path / "feddf"
    assert (
        main(["server", "distill", *common, "--kd", "pixel", "--no-fusion", "--out", str(feddf)])
        == 0
    )
    meta = json.loads((feddf / "model.json").read_text())
    assert (
        meta["distill_config"]["feature_fusion"] is False and "generated" not in meta["server_data"]
    )
    assert "loss_kd" in (feddf / "train_log.jsonl").read_text()
    code = main(
        ["server", "distill", *common, "--inconsistency-weighted", "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "needs an inconsistency report" in capsys.readouterr().err


def test_distill_resume_with_other_clients_is_refused(setup, tmp_path, capsys):
    """A finished distillation is not relabelled by a rerun with other clients."""
    root, clients = setup
    common = ["server", "distill", "--data", f"cityscapes:{root}/cs?split=train", "--steps", "1",
              "--warmup-steps", "0", *TINY_RECIPE, "--quiet", "--student", "segformer-cpu",
              "--init", "scratch", "--out", str(tmp_path / "g")]  # fmt: skip
    assert main([*common, "--clients", *clients]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*common, "--clients", clients[0]]) == 2
    err = capsys.readouterr().err
    assert "clients" in err and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir() if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_self_train_and_lite_commands(setup, tmp_path, capsys):
    from feds2r.engine.checkpoint import load_checkpoint

    root, clients = setup
    data = f"cityscapes:{root}/cs?split=train"
    recipe = ["--steps", "2", "--batch-size", "2", "--height", "32", "--crop", "32x64",
              "--warmup-steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    st = tmp_path / "st"
    code = main(["server", "self-train", "--model", clients[0], "--clients", *clients,
                 "--data", data, "--threshold", "0.05", "--refine", "builtin",
                 "--out", str(st), *recipe])  # fmt: skip
    assert code == 0 and "self-trained" in capsys.readouterr().out
    _, meta = load_checkpoint(st)
    assert meta["route"] == "distill+selftrain" and meta["selftrain_config"]["refine"] == "builtin"
    lite = tmp_path / "lite"
    # the bridge's own preset is no lightweight model: refused before anything is written
    code = main(["server", "lite", "--bridge", str(st), "--clients", *clients, "--data", data,
                 "--student-preset", "segformer-cpu", "--out", str(lite), *recipe])  # fmt: skip
    assert code == 2 and "is the preset of --bridge" in capsys.readouterr().err
    assert not lite.exists()
    # (the tiny clients are segformer-cpu: here the other preset stands in for a smaller one)
    code = main(["server", "lite", "--bridge", str(st), "--clients", *clients, "--data", data,
                 "--student-preset", "m2f-cpu", "--out", str(lite), *recipe])  # fmt: skip
    assert code == 0 and "lightweight global model" in capsys.readouterr().out
    model, meta = load_checkpoint(lite)
    assert model.preset.name == "m2f-cpu"
    assert meta["route"] == "lite" and meta["bridge_route"] == "distill+selftrain"
    # its config.toml is a config file of the command: the same run, so it is resumed (no step)
    code = main(["server", "lite", "--config", str(lite / "config.toml"), "--out", str(lite),
                 "--quiet"])  # fmt: skip
    assert code == 0
    # the direct route: `server distill` starting the student from its shipped backbone
    direct = tmp_path / "direct"
    code = main(["server", "distill", "--clients", *clients, "--data", data, "--init",
                 "pretrained", "--student-preset", "segformer-cpu", "--out", str(direct),
                 *recipe])  # fmt: skip
    assert code == 0
    model, meta = load_checkpoint(direct)
    assert model.preset.name == "segformer-cpu" and meta["route"] == "distill"
    assert meta["student_init"]["init"] == "pretrained"
    # missing inputs are named
    assert main(["server", "lite", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "give --bridge, --clients and --data" in capsys.readouterr().err


@pytest.mark.slow
def test_the_pipeline_runs_every_stage_of_its_route(setup, tmp_path):
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.engine.train import TrainConfig
    from feds2r.server.lite import LiteConfig
    from feds2r.server.pipeline import ServerConfig, run_server_pipeline
    from feds2r.server.selftrain import SelfTrainConfig

    root, clients = setup
    recipe = TrainConfig(steps=2, batch_size=2, height=32, crop=(32, 64), warmup_steps=1)
    config = ServerConfig(
        train=recipe,
        route="distill+selftrain+lite",
        selftrain=SelfTrainConfig(threshold=0.05),
        lite=LiteConfig(student="segformer-cpu"),
    )
    summary = run_server_pipeline(
        dict(zip("ab", clients, strict=True)),
        f"cityscapes:{root}/cs?split=train",
        tmp_path / "srv",
        config,
        progress=False,
    )
    assert summary["route"] == "distill+selftrain+lite"
    assert summary["stages"] == {
        "distill": str(tmp_path / "srv" / "distilled"),
        "selftrain": str(tmp_path / "srv" / "selftrained"),
        "lite": str(tmp_path / "srv" / "global"),
    }
    model, meta = load_checkpoint(tmp_path / "srv" / "global")
    assert model.preset.name == "segformer-cpu" and meta["bridge"] == summary["stages"]["selftrain"]
    assert set(summary["timing_s"]) >= {"distill", "selftrain", "lite"}
    with pytest.raises(ValueError, match="route must be one of"):
        ServerConfig(route="lite")


@pytest.mark.slow
def test_self_train_and_lite_train_the_same_model_with_disk_targets(setup, tmp_path):
    import tomllib

    import torch

    from feds2r.engine.checkpoint import load_checkpoint

    root, clients = setup
    data = f"cityscapes:{root}/cs?split=train"
    recipe = ["--steps", "2", "--batch-size", "2", "--height", "32", "--crop", "32x64",
              "--warmup-steps", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    stages = {
        "self-train": ["--model", clients[0], "--threshold", "0.05"],
        "lite": ["--bridge", clients[0], "--student-preset", "m2f-cpu"],
    }
    for command, own in stages.items():
        for targets in ("memory", "disk"):
            out = tmp_path / f"{command}-{targets}"
            code = main(["server", command, *own, "--clients", *clients, "--data", data,
                         "--targets", targets, "--out", str(out), *recipe])  # fmt: skip
            assert code == 0
            config = tomllib.loads((out / "config.toml").read_text())
            assert config["distill"]["targets"] == targets
            assert not (out / "teacher_targets").exists()  # removed once the stage is done
        a, _ = load_checkpoint(tmp_path / f"{command}-memory")
        b, _ = load_checkpoint(tmp_path / f"{command}-disk")
        pairs = zip(a.state_dict().items(), b.state_dict().values(), strict=True)
        assert all(torch.equal(p, q) for (_, p), q in pairs), command
