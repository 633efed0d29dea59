"""The command line: help with examples, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from feds2r.cli import main
from tests.conftest import write_ids, write_rgb


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "data" in out and "examples:" in out


@pytest.mark.parametrize("sub", ["formats", "check", "synth"])
def test_every_subcommand_has_examples(sub, capsys):
    with pytest.raises(SystemExit):
        main(["data", sub, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"feds2r data {sub}" in out


def test_formats_lists_all(capsys):
    code, out, _ = run(capsys, "data", "formats", "--json")
    assert code == 0
    assert set(json.loads(out)) == {"gta5", "synthia", "synscapes", "cityscapes", "bdd",
                                    "mapillary", "idd", "acdc", "urbansyn", "folder"}  # fmt: skip


def test_check_exit_codes_and_json(tmp_path, capsys):
    root = tmp_path / "cs"
    stem = "aachen_000000_000019"
    write_rgb(root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
    write_ids(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", np.full((8, 20), 7))
    code, out, _ = run(capsys, "data", "check", f"cityscapes:{root}", "--quiet")
    assert code == 0 and "no defects" in out
    write_rgb(root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png")
    report = tmp_path / "r.json"
    code, out, _ = run(capsys, "data", "check", f"cityscapes:{root}", "--quiet", "--json",
                       str(report))  # fmt: skip
    assert code == 1 and "unpaired_image" in out
    assert json.loads(report.read_text())["defect_counts"] == {"unpaired_image": 1}


def test_user_errors_are_one_line_without_traceback(capsys):
    code, _, err = run(capsys, "data", "check", "kitti:/nowhere", "--quiet")
    assert code == 1 or code == 2
    code, _, err = run(capsys, "data", "synth", "--all")
    assert code == 2 and err.startswith("error:") and "--out" in err


def test_synth_one_domain_and_list(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "synth", "--list")
    assert code == 0 and "synthia-like" in out and "acdc-like" in out
    code, out, _ = run(capsys, "data", "synth", "--domain", "idd-like", "--split", "val", "--num",
                       "2", "--size", "64x128", "--out", str(tmp_path / "idd"),
                       "--quiet")  # fmt: skip
    assert code == 0 and "idd:" in out
    assert len(list((tmp_path / "idd/leftImg8bit/val").rglob("*.png"))) == 2


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "feds2r.cli", "data", "check", "nonsense"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: bad dataset spec") and "Traceback" not in proc.stderr
