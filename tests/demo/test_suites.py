"""The suite registry, the rows each flag adds, and the command line's --suite (no training)."""

from __future__ import annotations

import pytest

from feds2r.demo import LITE_ROWS, ROUND_ROWS, ROWS, SELFTRAIN_ROWS, SUITES, get_suite, run_demo
from feds2r.demo.rows import Row
from feds2r.errors import Feds2rError


def test_the_feds2r_suite_is_the_default_and_runs_run_demo():
    suite = get_suite("feds2r")
    assert SUITES["feds2r"] is suite and suite.run is run_demo and suite.rows == ROWS


def test_an_unknown_suite_lists_the_valid_ones():
    with pytest.raises(Feds2rError, match=r"unknown suite 'nope'; valid: feds2r"):
        get_suite("nope")


def test_each_flag_adds_its_rows_after_the_default_ones_in_a_fixed_order():
    suite = get_suite("feds2r")
    assert suite.rows_with([]) == ROWS
    every = suite.rows_with(["multi_round", "self_train", "lite"])  # the order given is ignored
    assert every == ROWS + SELFTRAIN_ROWS + LITE_ROWS + ROUND_ROWS
    assert suite.rows_with(["lite"]) == ROWS + LITE_ROWS


def test_a_flag_the_suite_lacks_is_named_with_the_suite_and_its_flags():
    with pytest.raises(Feds2rError, match="--fast is not a flag of the feds2r suite; its flags: "
                       "--self-train, --lite, --multi-round"):  # fmt: skip
        get_suite("feds2r").rows_with(["fast"])


def test_a_row_of_an_unknown_kind_stops_the_run_before_it_writes(tmp_path):
    with pytest.raises(Feds2rError, match="unknown row kind"):
        run_demo("quick", tmp_path / "out", rows=(Row("x", "teleport"),))
    assert not (tmp_path / "out").exists()


def test_the_command_line_names_an_unknown_suite_and_writes_nothing(tmp_path, capsys):
    from feds2r.cli import main

    code = main(["demo", "--suite", "nope", "--profile", "quick", "--out", str(tmp_path / "o")])
    assert code != 0
    assert "unknown suite 'nope'; valid: feds2r" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
