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
