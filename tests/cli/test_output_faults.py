"""The fault suite for outputs: every command that writes a folder, run into (a) another
command's finished run, (b) a dataset folder and (c) its own finished run with other settings,
is refused with one message (exit 2) and leaves every byte of that folder as it was.

The finished runs are built once per module, tiny (2 images of 32x64, 1-2 steps). The same table
is in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from feds2r.cli import main

TINY = ["--batch-size", "2", "--height", "32", "--crop", "32x64", "--device", "cpu"]
STEPS = ["--steps", "2", "--warmup-steps", "1"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 of its bytes ("dir" for a
    folder), so that a file added, removed or changed shows."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(Path(folder, name), root)] = "dir"
        for name in files:
            path = Path(folder, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run(*argv: str) -> int:
    return main([*argv])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """A tiny world and one finished output of every command that writes a folder."""
    root = tmp_path_factory.mktemp("faults")
    r = {k: str(root / k) for k in ("gta", "cs", "a", "b", "inc", "aug", "distill", "st", "lite",
                                     "pt", "pred", "app", "certs", "exp")}  # fmt: skip
    q = "--quiet"
    assert run("data", "synth", "--domain", "gta5-like", "--num", "2", "--size", "32x64",
               "--out", r["gta"], q) == 0  # fmt: skip
    assert run("data", "synth", "--domain", "cityscapes-like", "--num", "2", "--size", "32x64",
               "--out", r["cs"], q) == 0  # fmt: skip
    r["gta_spec"] = f"gta5:{r['gta']}?split=train"
    r["cs_spec"] = f"cityscapes:{r['cs']}?split=train"
    for name, seed in (("a", "0"), ("b", "1")):
        assert run("client", "train", "--data", r["gta_spec"], "--preset", "segformer-cpu",
                   *STEPS, *TINY, "--seed", seed, "--out", r[name], q) == 0  # fmt: skip
    clients = ["--clients", r["a"], r["b"]]
    assert run("server", "inconsistency", *clients, "--data", r["cs_spec"], "--height", "32",
               "--device", "cpu", "--out", r["inc"], q) == 0  # fmt: skip
    assert run("server", "augment", "--inconsistency", r["inc"], "--num", "2", "--size",
               "32x64", "--out", r["aug"], q) == 0  # fmt: skip
    assert run("server", "distill", *clients, "--data", r["cs_spec"], "--student-preset",
               "segformer-cpu", *STEPS, *TINY, "--out", r["distill"], q) == 0  # fmt: skip
    assert run("server", "self-train", "--model", r["distill"], *clients, "--data", r["cs_spec"],
               *STEPS, *TINY, "--out", r["st"], q) == 0  # fmt: skip
    lite = ["--student-preset", "m2f-cpu"]  # the bridge is a tiny segformer-cpu
    assert run("server", "lite", "--bridge", r["st"], *clients, "--data", r["cs_spec"], *lite,
               *STEPS, *TINY, "--out", r["lite"], q) == 0  # fmt: skip
    assert run("pretrain", "--preset", "segformer-cpu", "--images", "2", "--steps", "1",
               "--warmup-steps", "0", "--batch-size", "2", "--device", "cpu", "--out", r["pt"],
               q) == 0  # fmt: skip
    assert run("predict", "--model", r["a"], "--data", r["cs_spec"], "--height", "32",
               "--device", "cpu", "--out", r["pred"], q) == 0  # fmt: skip
    assert run("federate", "app", "--app", r["app"], "--server-data", r["cs_spec"], "--out",
               "/srv/federation") == 0  # fmt: skip
    assert run("federate", "certs", "--out", r["certs"]) == 0
    assert run("export", "--model", r["a"], "--format", "hf", "--height", "32",
               "--out", r["exp"]) == 0  # fmt: skip
    return r


def argv(command: str, r: dict[str, str], out: str, other: bool = False) -> list[str]:
    """The command line of ``command`` writing into ``out``; ``other``: with settings other than
    those of its finished run in the fixture."""
    q = "--quiet"
    clients = ["--clients", r["a"], r["b"]]
    steps = ["--steps", "3", "--warmup-steps", "1"] if other else STEPS
    table = {
        "data synth": ["data", "synth", "--domain", "gta5-like", "--num", "3" if other else "2",
                       "--size", "32x64", "--out", out, q],
        "pretrain": ["pretrain", "--preset", "segformer-cpu", "--images", "2", "--steps",
                     "2" if other else "1", "--warmup-steps", "0", "--batch-size", "2",
                     "--device", "cpu", "--out", out, q],
        "client train": ["client", "train", "--data", r["gta_spec"], "--preset", "segformer-cpu",
                         *steps, *TINY, "--out", out, q],
        "server inconsistency": ["server", "inconsistency", *clients, "--data", r["cs_spec"],
                                 "--height", "64" if other else "32", "--device", "cpu",
                                 "--out", out, q],
        "server augment": ["server", "augment", "--inconsistency", r["inc"], "--num",
                           "3" if other else "2", "--size", "32x64", "--out", out, q],
        "server distill": ["server", "distill", *clients, "--data", r["cs_spec"],
                           "--student-preset", "segformer-cpu", *steps, *TINY, "--out", out, q],
        "server self-train": ["server", "self-train", "--model", r["distill"], *clients,
                              "--data", r["cs_spec"], *steps, *TINY, "--out", out, q],
        "server lite": ["server", "lite", "--bridge", r["st"], *clients, "--data", r["cs_spec"],
                        "--student-preset", "m2f-cpu", *steps, *TINY, "--out", out, q],
        "predict": ["predict", "--model", r["a"], "--data", r["cs_spec"], "--height",
                    "48" if other else "32", "--device", "cpu", "--out", out, q],
        "federate app": ["federate", "app", "--app", out, "--server-data", r["cs_spec"],
                         "--client-steps", "400" if other else "300", "--out", "/srv/federation"],
        "federate certs": ["federate", "certs", "--out", out, "--node-keys", "1" if other else "0"],
        "export": ["export", "--model", r["a"], "--format", "hf", "--height",
                   "48" if other else "32", "--out", out],
    }  # fmt: skip
    return table[command]


OWN = {
    "data synth": "gta",
    "pretrain": "pt",
    "client train": "a",
    "server inconsistency": "inc",
    "server augment": "aug",
    "server distill": "distill",
    "server self-train": "st",
    "server lite": "lite",
    "predict": "pred",
    "federate app": "app",
    "federate certs": "certs",
    "export": "exp",
}
"""Each command and its own finished run in the fixture."""

ANOTHER = {c: ("distill" if own == "a" else "a") for c, own in OWN.items()}
"""Another command's finished run for each command (a client run, or a distillation run)."""

DATASET = {c: ("cs" if own == "gta" else "gta") for c, own in OWN.items()}
"""A dataset folder that is not the command's own."""

CASES = [
    *[(c, "another command's run", ANOTHER[c]) for c in OWN],
    *[(c, "a dataset", DATASET[c]) for c in OWN],
    *[(c, "its own run, other settings", OWN[c]) for c in OWN],
]
"""(command, what OUT holds, the fixture's folder)."""


@pytest.mark.parametrize(("command", "what", "key"), CASES, ids=[f"{c}-{w}" for c, w, _ in CASES])
def test_a_refused_output_keeps_every_byte(runs, command, what, key, capsys):
    folder = Path(runs[key])
    before = snapshot(folder)
    other = what.startswith("its own")
    code = run(*argv(command, runs, str(folder), other=other))
    err = capsys.readouterr().err
    assert code == 2, f"{command} into {what} was not refused: {err}"
    assert err.startswith("error: ") and "Traceback" not in err
    assert snapshot(folder) == before


def test_a_refused_synth_leaves_the_dataset_complete(runs, capsys):
    """A refused `data synth` does not mark the dataset incomplete (`data check` stays clean)."""
    assert run(*argv("data synth", runs, runs["gta"], other=True)) == 2
    capsys.readouterr()
    assert run("data", "check", runs["gta_spec"], "--quiet") == 0
    assert "incomplete" not in capsys.readouterr().out


def test_the_same_command_again_resumes_or_redoes_its_own_run(runs, capsys):
    """The rule's other side: the same settings into the command's own run are accepted."""
    for command in ("data synth", "client train", "server inconsistency", "predict"):
        assert run(*argv(command, runs, runs[OWN[command]])) == 0, command
    capsys.readouterr()


# ----------------------------------------------------------------------------- the cases


def test_pretrain_refuses_another_preset_without_touching_its_finished_run(runs, capsys):
    before = snapshot(Path(runs["pt"]))
    command = argv("pretrain", runs, runs["pt"])
    command[command.index("segformer-cpu")] = "m2f-cpu"
    assert run(*command) == 2
    err = capsys.readouterr().err
    assert "other inputs" in err and "'m2f-cpu'" in err
    assert snapshot(Path(runs["pt"])) == before  # config.toml keeps the finished run's settings


def test_pretrain_world_refusal_names_its_flag_and_leaves_the_dataset_complete(
    runs, tmp_path, capsys
):
    gta = Path(runs["gta"])
    before = snapshot(gta)
    command = [*argv("pretrain", runs, str(tmp_path / "pt")), "--world", str(gta)]
    assert run(*command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --world {gta}") and "--out" not in err
    assert not any(flag in err for flag in ("--force", "--num", "--size"))  # pretrain has none
    assert snapshot(gta) == before and not (tmp_path / "pt").exists()
    assert run("data", "check", runs["gta_spec"], "--quiet") == 0  # not marked incomplete
    # public images of other settings: refused, naming what pretrain can change
    public = tmp_path / "public"
    assert run("data", "synth", "--domain", "public", "--num", "1", "--size", "32x64",
               "--out", str(public), "--quiet") == 0  # fmt: skip
    capsys.readouterr()
    before = snapshot(public)
    assert run(*command[:-1], str(public)) == 2
    err = capsys.readouterr().err
    assert "--images 1" in err and "--force" not in err
    assert snapshot(public) == before


def test_self_train_refuses_settings_it_would_ignore(runs, tmp_path, capsys):
    out = tmp_path / "st"
    base = argv("server self-train", runs, str(out))
    assert run(*base, "--fusion") == 2
    assert "--fusion does not apply" in capsys.readouterr().err
    assert run(*base, "--sam-dir", str(tmp_path)) == 2
    assert "--refine sam" in capsys.readouterr().err
    assert not out.exists()


def test_lite_checks_its_student_preset_first(runs, tmp_path, capsys):
    out = tmp_path / "lite"
    base = argv("server lite", runs, str(out))
    preset = base.index("m2f-cpu")
    assert run(*base[:preset], "segformer-b9", *base[preset + 1 :]) == 2
    err = capsys.readouterr().err
    assert "unknown student preset 'segformer-b9'" in err and "segformer-cpu" in err
    assert run(*base[:preset], "segformer-cpu", *base[preset + 1 :]) == 2  # the bridge's preset
    assert "no lighter" in capsys.readouterr().err
    assert not out.exists()
    # a finished lite run of another student: the hint names the flag lite has
    before = snapshot(Path(runs["lite"]))
    other = argv("server lite", runs, runs["lite"])
    other[preset] = "segformer-b0"
    assert run(*other, "--no-pretrained") == 2
    err = capsys.readouterr().err
    assert "resume it with --student-preset m2f-cpu" in err
    assert snapshot(Path(runs["lite"])) == before


@pytest.mark.parametrize("command", ["server self-train", "server lite"])
def test_a_failed_stage_leaves_no_config_behind(runs, tmp_path, command, capsys):
    """The server's images fail to decode after OUT was claimed: OUT is put back (removed)."""
    import shutil

    from feds2r.data import open_dataset

    cs = tmp_path / "cs"
    shutil.copytree(runs["cs"], cs)
    spec = f"cityscapes:{cs}?split=train"
    bad = open_dataset(spec).samples[1].image
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "out"
    line = argv(command, runs, str(out))
    line[line.index(runs["cs_spec"])] = spec
    assert run(*line) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # an empty folder given: left empty
    assert run(*line) == 2
    assert list(out.iterdir()) == []


def test_a_run_from_before_the_state_file_is_still_recognised(runs, tmp_path, capsys):
    """Runs written before output folders carried a state file: recognised by the tables of
    their config.toml (resumed by their own command, refused by the others)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["a"], old)
    (old / ".feds2r_output.json").unlink()
    before = snapshot(old)
    assert run(*argv("pretrain", runs, str(old))) == 2
    assert "not an earlier `feds2r pretrain` output" in capsys.readouterr().err
    assert snapshot(old) == before
    assert run(*argv("client train", runs, str(old))) == 0  # finished: found so, not retrained
    after = snapshot(old)
    assert after["model.safetensors"] == before["model.safetensors"]


# ----------------------------------------------------------------------------- the demo


def test_demo_refuses_another_commands_run_and_a_dataset(runs, capsys):
    for key in ("a", "gta"):
        folder = Path(runs[key])
        before = snapshot(folder)
        assert run("demo", "--profile", "quick", "--out", str(folder), "--quiet") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {folder} already holds"), err
        assert snapshot(folder) == before


def test_demo_refuses_its_own_run_of_other_settings_and_accepts_the_same(tmp_path, capsys):
    from feds2r.demo.stages import demo_output

    out = tmp_path / "demo"
    inputs = {"profile": "quick", "seed": 0, "world": str(out / "world"), "pretrained": True,
              "preset": "m2f-cpu"}  # fmt: skip
    with demo_output(out, "feds2r", inputs) as path:
        (path / "results.json").write_text("{}")
    before = snapshot(out)
    assert run("demo", "--profile", "quick", "--seed", "1", "--out", str(out), "--quiet") == 2
    err = capsys.readouterr().err
    assert "other settings (seed differs)" in err and "Traceback" not in err
    assert snapshot(out) == before
    with demo_output(out, "feds2r", inputs) as path:  # the same settings: its own run, reused
        assert (path / "results.json").read_text() == "{}"


def test_demo_recognises_a_run_written_before_outputs_had_a_state_file(tmp_path):
    from feds2r.demo.stages import demo_output

    out = tmp_path / "old-demo"
    out.mkdir()
    (out / "config.toml").write_text('[demo]\nprofile = "quick"\n')
    (out / "results.json").write_text("{}")
    with demo_output(out, "feds2r", {"profile": "quick"}) as path:
        assert (path / "results.json").exists()
