"""feds2r/io.py: atomic writes, file checks, and the one output-folder policy with its lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from feds2r.io import (
    LOCK_NAME,
    STATE_NAME,
    OutputError,
    check_output_file,
    prepare_output,
    read_state,
    write_atomic,
)


def listing(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    dest = tmp_path / "a" / "x.json"
    write_atomic(dest, b"one")
    write_atomic(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert listing(tmp_path) == {"a", "a/x.json"}


def test_write_atomic_onto_a_folder_is_one_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_atomic(tmp_path / "d", b"x")
    assert listing(tmp_path) == {"d"}


def test_write_atomic_removes_its_temp_file_when_the_rename_fails(tmp_path, monkeypatch):
    def fail(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match="cannot write .*Permission denied"):
        write_atomic(tmp_path / "x.bin", b"data")
    assert listing(tmp_path) == set()


def test_check_output_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("keep")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path / "d")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f" / "report.json")
    assert check_output_file(tmp_path / "f") == tmp_path / "f"  # an existing file is replaced
    assert check_output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    assert listing(tmp_path) == {"d", "f"}


def test_prepare_output_new_folder_is_marked_until_finished(tmp_path):
    out = prepare_output(tmp_path / "o", "predict")
    assert out.created and not out.previous
    assert (tmp_path / "o" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert read_state(tmp_path / "o") == {"kind": "predict", "complete": False}
    (tmp_path / "o" / "x.png").write_bytes(b"x")
    out.close()  # stopped before the end: stays marked incomplete, lock released
    assert read_state(tmp_path / "o")["complete"] is False
    assert not (tmp_path / "o" / LOCK_NAME).exists()
    again = prepare_output(tmp_path / "o", "predict")
    assert again.previous and again.entries == ["x.png"]
    again.clear()
    again.finish()
    assert listing(tmp_path / "o") == {STATE_NAME}
    assert read_state(tmp_path / "o") == {"kind": "predict", "complete": True}


def test_prepare_output_removes_a_folder_it_created_when_nothing_was_written(tmp_path):
    with prepare_output(tmp_path / "o", "predict"):
        pass
    assert not (tmp_path / "o").exists()
    (tmp_path / "keep").mkdir()
    with prepare_output(tmp_path / "keep" / "a" / "b", "predict"):
        pass
    assert listing(tmp_path) == {"keep"}  # the folders above it that it created are gone too


def test_prepare_output_refuses_another_commands_folder(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.json").write_text("{}")
    (ckpt / "loss_curve.png").write_bytes(b"png")
    with pytest.raises(OutputError, match="already holds other files .*model.json"):
        prepare_output(ckpt, "predict", marker="predictions.json")
    assert listing(ckpt) == {"model.json", "loss_curve.png"}  # untouched, no lock left
    # the kind's own manifest marks an earlier output (e.g. from before the state file)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "predictions.json").write_text("{}")
    with prepare_output(tmp_path / "old", "predict", marker="predictions.json") as out:
        assert out.previous


def _bytes(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_prepare_output_decides_before_it_writes_anything(tmp_path):
    """A refusal of the folder's own kind (other inputs, or the caller's own comparison) leaves
    every byte as it was: the state file is not marked incomplete, no lock is left."""
    with prepare_output(tmp_path / "o", "server augment", inputs={"num": 2}) as out:
        (tmp_path / "o" / "x.png").write_bytes(b"x")
        out.finish()
    before = _bytes(tmp_path / "o")
    with pytest.raises(OutputError, match=r"other settings \(num differs\)"):
        prepare_output(tmp_path / "o", "server augment", inputs={"num": 3})

    def refuse(path) -> None:
        raise OutputError("not this run")

    with pytest.raises(OutputError, match="not this run"):
        prepare_output(tmp_path / "o", "server augment", inputs={"num": 2}, same=refuse)
    assert _bytes(tmp_path / "o") == before
    # accepted, but nothing begun: the folder is still marked complete until begin()
    with prepare_output(tmp_path / "o", "server augment", inputs={"num": 2}) as again:
        assert again.previous and read_state(tmp_path / "o")["complete"] is True
        again.begin()
        assert read_state(tmp_path / "o")["complete"] is False


def test_a_failed_run_puts_a_new_or_empty_folder_back(tmp_path):
    """Without anything worth keeping (``keep``), a new folder is removed, an empty one emptied."""
    for folder in (tmp_path / "new", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        with prepare_output(folder, "client train", keep=lambda p: (p / "state").is_dir()):
            (folder / "config.toml").write_text("[client]\n")
    assert not (tmp_path / "new").exists() and listing(tmp_path / "empty") == set()
    with prepare_output(tmp_path / "kept", "client train", keep=lambda p: (p / "state").is_dir()):
        (tmp_path / "kept" / "state").mkdir()  # a resumable state: kept, marked incomplete
    assert read_state(tmp_path / "kept")["complete"] is False


def test_prepare_output_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_output(tmp_path / "f", "predict")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        prepare_output(tmp_path / "f" / "sub", "predict")
    assert listing(tmp_path) == {"f"} and (tmp_path / "f").read_text() == "keep"


def test_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
    first = prepare_output(tmp_path / "o", "predict")
    (tmp_path / "o" / "x.png").write_bytes(b"x")
    with pytest.raises(OutputError, match=f"in use by another feds2r run \\(PID {os.getpid()}"):
        prepare_output(tmp_path / "o", "predict")
    first.close()
    # a live process's lock (this test's parent) is respected
    (tmp_path / "o" / LOCK_NAME).write_text(f"{os.getppid()}\n")
    with pytest.raises(OutputError, match="in use"):
        prepare_output(tmp_path / "o", "predict")
    # a dead process's lock is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "o" / LOCK_NAME).write_text(f"{dead.pid}\n")
    with prepare_output(tmp_path / "o", "predict") as out:
        assert (out.path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "o" / LOCK_NAME).exists()


def test_two_processes_on_one_out_one_is_refused(tmp_path):
    """A second process on a claimed --out fails with one message instead of mixing files."""
    code = (
        "import sys, time; from feds2r.io import prepare_output\n"
        "out = prepare_output(sys.argv[1], 'predict'); print('claimed', flush=True)\n"
        "time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "o")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(OutputError, match=f"PID {holder.pid}"):
            prepare_output(tmp_path / "o", "predict")
    finally:
        holder.kill()
        holder.wait()
    with prepare_output(tmp_path / "o", "predict") as out:  # its lock is stale now
        assert json.loads((out.path / STATE_NAME).read_text())["kind"] == "predict"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_places_are_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            prepare_output(ro, "predict")
        with pytest.raises(OutputError, match="not writable"):
            prepare_output(ro / "sub", "predict")
        with pytest.raises(OutputError, match="not writable"):
            check_output_file(ro / "r.json")
        assert listing(ro) == set()
    finally:
        ro.chmod(0o700)
