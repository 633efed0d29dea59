"""The shared parts every suite writes with: results.json's schema, the paired intervals, the
stage clock and report.md (a fake results dict, one tiny model; no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feds2r.demo.evaluation import class_means, classes_above
from feds2r.demo.report import (
    communication_section,
    intervals_table,
    per_class_table,
    results_table,
    write_report,
)
from feds2r.demo.results import (
    SHARED_KEYS,
    paired_intervals,
    results_document,
    save_confusion,
    write_results,
)
from feds2r.demo.stages import StageClock
from feds2r.models import create_model

DOMAINS = ["cityscapes-like", "bdd-like"]


def fake_results() -> dict:
    per_class = [50.0, None] + [5.0] * 17  # one class absent from every domain
    row = {"miou": dict.fromkeys(DOMAINS, 20.0), "per_class": dict.fromkeys(DOMAINS, per_class),
           "mean": 20.0, "dev": 18.0, "classes_above_10": 1}  # fmt: skip
    content = {
        "profile": "tiny",
        "seed": 3,
        "domains": DOMAINS,
        "methods": {"a": row, "b": {**row, "mean": 25.0, "picked": "a"}},
        "intervals": {"b - a": {"diff": 5.0, "lo": 1.0, "hi": 9.5, "replicates": 10}},
        "curves": {"a": [[1, 10.0], [2, 12.0]]},
        "communication": {"measured": False, "why": "Flower is not installed"},
        "own": {"x": 1},
    }
    return results_document(content, {"world": 1.0, "total": 1.0})


def test_results_document_keeps_the_suite_order_and_ends_with_timing_and_environment():
    results = fake_results()
    assert list(results)[-3:] == ["own", "timing_s", "environment"]
    assert set(SHARED_KEYS) <= set(results) and results["environment"]["threads"] >= 1
    with pytest.raises(ValueError, match=r"lacks the shared keys \['intervals'"):
        results_document({k: results[k] for k in ("profile", "seed", "domains", "methods")}, {})


def test_write_results_and_the_confusions_round_trip(tmp_path):
    results = fake_results()
    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    cm = np.ones((2, 19, 19), np.int64)
    save_confusion(tmp_path, {"a": [cm, 2 * cm]}, DOMAINS)
    with np.load(tmp_path / "confusion.npz") as npz:
        assert sorted(npz.files) == ["a|bdd-like", "a|cityscapes-like"]
        assert npz["a|bdd-like"].sum() == 2 * cm.sum()


def test_paired_intervals_only_for_comparisons_whose_methods_ran():
    rng = np.random.default_rng(0)
    confusion = {m: [rng.integers(0, 50, (4, 19, 19))] for m in ("a", "b")}
    got = paired_intervals(confusion, [("a", "b"), ("a", "missing")], seed=0)
    assert list(got) == ["a - b"]
    assert got["a - b"]["lo"] <= got["a - b"]["diff"] <= got["a - b"]["hi"]
    same = paired_intervals({"a": confusion["a"], "b": confusion["a"]}, [("a", "b")], seed=0)
    assert same["a - b"]["diff"] == 0.0


def test_the_stage_clock_adds_up_a_stage_entered_twice():
    clock = StageClock(progress=False)
    for _ in range(2):
        with clock("x"):
            pass
    with clock("y"):
        pass
    summary = clock.summary()
    assert list(summary) == ["x", "y", "total"]
    assert summary["total"] == round(summary["x"] + summary["y"], 2)


def test_tables_mark_picks_and_absent_classes():
    results = fake_results()
    table = results_table(results).splitlines()
    assert table[0] == "| method | cityscapes-like | bdd-like | mean | dev | classes > 10 |"
    assert table[3] == "| b (= a) | 20.0 | 20.0 | **25.0** | 18.0 | 1 |"
    assert "| b - a | +5.00 | [+1.00, +9.50] |" in intervals_table(results)
    assert per_class_table(results).splitlines()[2].startswith("| a | 50 | - | 5 |")
    assert np.isnan(class_means(results["methods"]["a"])[1])
    assert classes_above(results["methods"]["a"], 10.0) == 1
    heading, body = communication_section(results)
    assert heading == "Communication" and body.endswith("directions).\n\nFlower is not installed\n")


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.rand(3, 32, 64), "label": torch.zeros(32, 64, dtype=torch.long)}


def test_write_report_puts_the_suite_head_and_sections_in_order_then_the_timing(tmp_path):
    results = fake_results()
    model = create_model("segformer-cpu").eval()
    tests = dict.fromkeys(DOMAINS, Images())
    sections = [("First", "one"), ("Second", "two")]
    write_report(results, tmp_path, {"a": model}, tests, 32, head="HEAD", sections=sections)
    text = (tmp_path / "report.md").read_text()
    assert text == (
        "# feds2r demo report\n\nHEAD\n\n## First\n\none\n\n## Second\n\ntwo\n\n"
        "## Timing (s)\n\n- world: 1.0\n- total: 1.0\n"
    )
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "curves.png").is_file()
    assert not (tmp_path / "communication.png").exists()  # not measured
