"""`data check` and the readers name each kind of defect precisely."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from feds2r.data import check_dataset, open_dataset
from feds2r.errors import DataError
from tests.conftest import write_ids, write_rgb, write_synthia_label

GOOD = "aachen_000000_000019"


def cityscapes_tree(root: Path, stems: list[str]) -> None:
    for stem in stems:
        write_rgb(root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
        write_ids(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", np.full((8, 20), 7))


def img(root: Path, stem: str) -> Path:
    return root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png"


def lbl(root: Path, stem: str) -> Path:
    return root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_defect(kind: str, root: Path) -> Path:
    """Add one defect of ``kind`` to a clean tree; return the path the report must name."""
    bad = "aachen_000001_000019"
    if kind == "unpaired_image":
        write_rgb(img(root, bad))
        return img(root, bad)
    if kind == "unpaired_label":
        write_ids(lbl(root, bad), np.full((8, 20), 7))
        return lbl(root, bad)
    cityscapes_tree(root, [bad])
    if kind == "unreadable_image":
        truncate(img(root, bad))
        return img(root, bad)
    if kind == "unreadable_label":
        lbl(root, bad).write_bytes(b"not a png at all")
        return lbl(root, bad)
    if kind == "bad_label_value":
        write_ids(lbl(root, bad), np.full((8, 20), 40))
        return lbl(root, bad)
    if kind == "size_mismatch":
        write_ids(lbl(root, bad), np.full((8, 10), 7))
        return lbl(root, bad)
    raise AssertionError(kind)


KINDS = [
    "unpaired_image",
    "unpaired_label",
    "unreadable_image",
    "unreadable_label",
    "bad_label_value",
    "size_mismatch",
]


@pytest.mark.parametrize("kind", KINDS)
def test_check_names_each_defect(kind, tmp_path):
    root = tmp_path / "cs"
    cityscapes_tree(root, [GOOD])
    culprit = make_defect(kind, root)
    report = check_dataset(f"cityscapes:{root}", progress=False)
    assert not report.ok
    assert [d.kind for d in report.defects] == [kind]
    assert str(culprit) in report.defects[0].message
    assert report.to_dict()["defect_counts"] == {kind: 1}
    assert kind in report.to_text()


@pytest.mark.parametrize("kind", KINDS)
def test_reader_stops_with_clear_message_or_skips(kind, tmp_path):
    root = tmp_path / "cs"
    cityscapes_tree(root, [GOOD])
    culprit = make_defect(kind, root)
    with pytest.raises(DataError) as info:
        ds = open_dataset(f"cityscapes:{root}")
        for i in range(len(ds)):
            ds[i]
    assert info.value.kind == kind and str(culprit) in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(f"cityscapes:{root}", on_error="skip")
        names = {ds[i]["name"] for i in range(len(ds))}
    assert names == {GOOD}
    assert any(str(culprit) in str(w.message) for w in caught)


def test_missing_folder_is_named(tmp_path):
    root = tmp_path / "cs"
    write_rgb(img(root, GOOD))
    report = check_dataset(f"cityscapes:{root}", progress=False)
    assert [d.kind for d in report.defects] == ["missing_folder"]
    assert "gtFine" in report.defects[0].message


def test_clean_tree_reports_counts_sizes_and_histogram(tmp_path):
    root = tmp_path / "cs"
    cityscapes_tree(root, [GOOD, "aachen_000002_000019"])
    report = check_dataset(f"cityscapes:{root}", progress=False).to_dict()
    assert report["ok"] and report["num_samples"] == 2 and report["num_read"] == 2
    assert report["image_sizes"] == {"8x20": 2}
    assert report["class_pixels"]["road"] == 2 * 8 * 20
    assert report["class_fraction"]["road"] == 1.0


def test_truncated_synthia_label_and_bad_value(tmp_path):
    root = tmp_path / "syn"
    for i in (1, 2):
        write_rgb(root / f"RGB/{i:07d}.png")
        write_synthia_label(root / f"GT/LABELS/{i:07d}.png", np.full((8, 20), 3))
    truncate(root / "GT/LABELS/0000001.png")
    write_synthia_label(root / "GT/LABELS/0000002.png", np.full((8, 20), 300))
    kinds = sorted(d.kind for d in check_dataset(f"synthia:{root}", progress=False).defects)
    assert kinds == ["bad_label_value", "unreadable_label"]


def test_colour_label_is_refused_with_hint(tmp_path):
    root = tmp_path / "cs"
    write_rgb(img(root, GOOD))
    write_rgb(lbl(root, GOOD))  # an RGB image where ids are expected
    with pytest.raises(DataError, match="expected single-channel ids"):
        open_dataset(f"cityscapes:{root}")[0]


# ----------------------------------------------------------------------------- partial outputs


class Stop(Exception):
    """Stands in for a kill: raised midway through writing."""


def synth_stopped_midway(root: Path, monkeypatch, after: int = 3) -> None:
    from feds2r.data.world import synth, synth_domain

    real, calls = synth.encode, []

    def encode(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "encode", encode)
    with pytest.raises(Stop):
        synth_domain("cityscapes-like", root, split="val", num=8, size=(32, 64), progress=False)
    monkeypatch.setattr(synth, "encode", real)


def test_synth_stopped_midway_is_reported_incomplete_until_rerun(tmp_path, monkeypatch):
    from feds2r.data.world import synth_domain

    root = tmp_path / "cs"
    synth_stopped_midway(root, monkeypatch)
    report = check_dataset(f"cityscapes:{root}?split=val", progress=False)
    assert not report.ok and [d.kind for d in report.defects] == ["incomplete"]
    assert "data synth" in report.defects[0].message and report.num_read == 3
    # running it again (other settings too: the stopped split is ours and incomplete) completes
    synth_domain("cityscapes-like", root, split="val", num=5, size=(32, 64), progress=False)
    report = check_dataset(f"cityscapes:{root}?split=val", progress=False)
    assert report.ok and report.num_samples == 5, report.to_text()


def test_synth_killed_with_sigkill_leaves_a_set_check_calls_incomplete(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "cs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "feds2r.cli", "data", "synth", "--domain", "cityscapes-like",
         "--split", "val", "--num", "2000", "--size", "32x64", "--out", str(root), "--quiet"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(root.rglob("*_gtFine_labelIds.png"))) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    report = check_dataset(f"cityscapes:{root}?split=val", progress=False)
    assert "incomplete" in [d.kind for d in report.defects], report.to_text()


def test_predict_stopped_midway_is_reported_incomplete(tmp_path):
    import torch

    from feds2r.data.world import synth_domain
    from feds2r.engine.evaluate import write_predictions

    synth_domain("cityscapes-like", tmp_path / "cs", split="val", num=4, size=(32, 64),
                 progress=False)  # fmt: skip
    ds = open_dataset(f"cityscapes:{tmp_path / 'cs'}?split=val", labels=False)

    class Model:
        calls = 0

        def predict(self, images, size):
            Model.calls += 1
            if Model.calls > 2:
                raise Stop
            return torch.full((images.shape[0], 19, *size), 1 / 19)

    with pytest.raises(Stop):
        write_predictions(Model(), ds, tmp_path / "pred", height=32, progress=False)
    report = check_dataset(f"folder:{tmp_path / 'pred'}", progress=False)
    assert "incomplete" in [d.kind for d in report.defects] and "predict" in report.to_text()
    Model.calls = -100
    assert write_predictions(Model(), ds, tmp_path / "pred", height=32, progress=False) == 4
    assert check_dataset(f"folder:{tmp_path / 'pred'}", progress=False).ok


def test_data_check_exit_codes(tmp_path, capsys):
    from feds2r.cli import main

    root = tmp_path / "cs"
    cityscapes_tree(root, [GOOD])
    assert main(["data", "check", f"cityscapes:{root}", "--quiet"]) == 0
    # a bad request is a user error (2), like a bad format, whatever the data holds
    assert main(["data", "check", f"cityscapes:{root}", "--split", "nope", "--quiet"]) == 2
    assert main(["data", "check", f"cityscapes:{root}?split=nope", "--quiet"]) == 2
    assert main(["data", "check", f"nosuchformat:{root}", "--quiet"]) == 2
    assert main(["data", "check", f"acdc:{root}", "--condition", "hail", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no split 'nope'" in err and "unknown dataset format" in err
    make_defect("unreadable_image", root)
    assert main(["data", "check", f"cityscapes:{root}", "--quiet"]) == 1  # defects: 1
