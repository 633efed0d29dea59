"""Every command that writes: a bad --out/--json is one message and exit 2, nothing left behind;
--skip-bad counts each readable sample once; predict never writes over another command's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feds2r.cli import main
from feds2r.data.world import synth_domain
from tests.conftest import TINY_RECIPE

TINY = (32, 64)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """8 labelled images (one truncated), a tiny labelled client set, a random checkpoint."""
    import torch

    from feds2r.data import open_dataset
    from feds2r.engine.checkpoint import save_checkpoint
    from feds2r.models import create_model

    root = tmp_path_factory.mktemp("outputs-world")
    synth_domain("cityscapes-like", root / "cs", split="val", num=8, size=TINY, progress=False)
    synth_domain("gta5-like", root / "gta", split="train", num=2, size=TINY, progress=False)
    cs = f"cityscapes:{root / 'cs'}?split=val"
    bad = open_dataset(cs).samples[5]
    bad.image.write_bytes(bad.image.read_bytes()[:300])
    torch.manual_seed(0)
    save_checkpoint(create_model("segformer-cpu", num_classes=19), root / "ckpt")
    (root / "ckpt" / "loss_curve.png").write_bytes(b"a checkpoint folder's own file")
    scores = {"bus": 0.9, "train": 0.5, "rider": 0.4}
    (root / "inconsistency.json").write_text(
        json.dumps({"scores": scores, "unstable_classes": list(scores)})
    )
    return {
        "root": root,
        "cs": cs,
        "gta": f"gta5:{root / 'gta'}?split=train",
        "ckpt": str(root / "ckpt"),
        "bad": bad.name,
        "inc": str(root / "inconsistency.json"),
    }


# ----------------------------------------------------------------------------- --skip-bad


def test_eval_skip_bad_scores_each_readable_image_once(world, tmp_path):
    dest = tmp_path / "eval.json"
    args = ["eval", "--model", world["ckpt"], "--data", world["cs"], "--height", "32"]
    with pytest.warns(UserWarning, match="skipping bad sample"):
        code = main([*args, "--device", "cpu", "--skip-bad", "--json", str(dest), "--quiet"])
    assert code == 0
    assert json.loads(dest.read_text())["datasets"][0]["num_images"] == 7


def test_predict_skip_bad_says_how_many_it_wrote(world, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict", "--model", world["ckpt"], "--data", world["cs"], "--height", "32"]
    with pytest.warns(UserWarning, match="skipping bad sample"):
        code = main([*args, "--device", "cpu", "--skip-bad", "--out", str(out), "--quiet"])
    assert code == 0
    written = sorted(p.stem for p in out.glob("*.png"))
    assert len(written) == 7 and world["bad"] not in written
    assert "wrote 7 predictions" in capsys.readouterr().out
    assert json.loads((out / "predictions.json").read_text())["num_images"] == 7


def test_predict_limit_and_refusals(world, tmp_path, capsys):
    ckpt = Path(world["ckpt"])
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    args = ["predict", "--model", world["ckpt"], "--data", world["cs"], "--height", "32"]
    assert main([*args, "--device", "cpu", "--skip-bad", "--out", world["ckpt"], "--quiet"]) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing overwritten
    with pytest.raises(SystemExit) as info:
        main([*args, "--limit", "-1", "--out", str(tmp_path / "p")])
    assert info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    # its own earlier output of the same settings is replaced, not mixed; one of other settings
    # (another --limit) is refused and left as it was
    out = str(tmp_path / "again")
    with pytest.warns(UserWarning):
        assert main([*args, "--skip-bad", "--limit", "2", "--out", out, "--quiet"]) == 0
        first = {p.name: p.read_bytes() for p in Path(out).glob("*.png")}
        assert main([*args, "--skip-bad", "--limit", "2", "--out", out, "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in Path(out).glob("*.png")} == first
    assert len(first) == 2 and "wrote 2" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        assert main([*args, "--skip-bad", "--device", "cpu", "--out", out, "--quiet"]) == 2
    assert "other settings (limit differs)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in Path(out).glob("*.png")} == first


# ----------------------------------------------------------------------------- bad --out/--json


def commands(w: dict) -> dict[str, tuple[str, list[str]]]:
    """Each writing command: the flag that names its output, and its other arguments."""
    recipe = [*TINY_RECIPE, "--steps", "1", "--warmup-steps", "1"]
    infer = ["--height", "32", "--device", "cpu", "--quiet"]
    return {
        "data check": ("--json", ["data", "check", w["cs"], "--quiet"]),
        "data synth": ("--out", ["data", "synth", "--domain", "gta5-like", "--num", "1",
                                 "--size", "32x64", "--quiet"]),
        "data synth --all": ("--out", ["data", "synth", "--all", "--scale", "0.001", "--size",
                                       "32x64", "--quiet"]),
        "eval": ("--json", ["eval", "--model", w["ckpt"], "--data", w["cs"], "--skip-bad",
                            *infer]),
        "predict": ("--out", ["predict", "--model", w["ckpt"], "--data", w["cs"], "--skip-bad",
                              *infer]),
        "server inconsistency": ("--out", ["server", "inconsistency", "--clients", w["ckpt"],
                                           w["ckpt"], "--data", w["cs"], "--skip-bad", *infer]),
        "server augment": ("--out", ["server", "augment", "--inconsistency", w["inc"], "--num",
                                     "1", "--size", "32x64", "--quiet"]),
        "server distill": ("--out", ["server", "distill", "--clients", w["ckpt"], w["ckpt"],
                                     "--data", w["gta"], *recipe, "--quiet"]),
        "client train": ("--out", ["client", "train", "--data", w["gta"], "--preset",
                                   "segformer-cpu", "--no-pretrained", *recipe, "--quiet"]),
        "demo": ("--out", ["demo", "--profile", "quick", "--quiet"]),
        "pretrain": ("--out", ["pretrain", "--preset", "segformer-cpu", "--images", "2",
                               "--steps", "1", "--warmup-steps", "0", "--quiet"]),
        "federate local": ("--out", ["federate", "local", "--client", f"a={w['gta']}",
                                     "--client", f"b={w['gta']}", "--server-data", w["cs"],
                                     "--quiet"]),
        "federate certs": ("--out", ["federate", "certs"]),
        "federate app": ("--app", ["federate", "app", "--server-data", w["cs"], "--out",
                                   "/srv/federation"]),
    }  # fmt: skip


def bad_paths(tmp: Path, flag: str) -> dict[str, Path]:
    """Bad destinations for ``flag``: a file (for a folder), a folder (for a file), a path under
    a file, a read-only folder."""
    (tmp / "a-file").write_text("keep me")
    (tmp / "a-folder").mkdir()
    (tmp / "read-only").mkdir()
    paths = {"under a file": tmp / "a-file" / "sub", "read-only": tmp / "read-only" / "x"}
    if flag == "--json":
        paths["a folder"] = tmp / "a-folder"
    else:
        paths["a file"] = tmp / "a-file"
    return paths


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


CASES = [
    (name, case)
    for name in commands({k: "" for k in ("cs", "gta", "ckpt", "inc")})
    for case in ("a file", "a folder", "under a file", "read-only")
    if (case == "a folder") == (name in ("data check", "eval"))
    or case in ("under a file", "read-only")
]


@pytest.mark.parametrize("name, case", CASES)
def test_bad_output_path_is_one_message_and_exit_2(name, case, world, tmp_path, capsys):
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    flag, args = commands(world)[name]
    dest = bad_paths(tmp_path, flag)[case]
    (tmp_path / "read-only").chmod(0o500)
    before = snapshot(tmp_path)
    try:
        try:
            code = main([*args, flag, str(dest)])
        except SystemExit as exc:
            code = exc.code
        after = snapshot(tmp_path)
    finally:
        (tmp_path / "read-only").chmod(0o700)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(dest) in lines[0], err
    assert after == before  # nothing created, nothing changed, no .NAME.tmp left
