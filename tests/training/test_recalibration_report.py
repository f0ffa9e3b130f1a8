"""``bnserve recalibration-report --dry-run``: the report's structure, and that recalibrating
from a few unlabeled samples of a strong shift wins the accuracy back."""

from __future__ import annotations

import json

import pytest

from bnserve.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["--log-level", "WARNING", "recalibration-report", "--out", str(out),
                 "--dry-run"]) == 0
    return out, json.loads((out / "recalibration.json").read_text())


def test_the_report_has_a_cell_per_corruption_and_a_figure_per_sample_size(report):
    out, data = report
    assert (out / "recalibration.png").stat().st_size > 10_000
    markdown = (out / "recalibration.md").read_text()
    assert "| corruption | sev | base | n=8 | n=16 | n=32 | n=64 | n=128 | n=256 |" in markdown
    sizes = {str(n) for n in data["config"]["sample_sizes"]}
    assert sizes == {"8", "16", "32", "64", "128", "256"}
    assert [s["dataset"] for s in data["subjects"]] == ["digits", "audio"]
    for subject in data["subjects"]:
        corruptions = {c["corruption"] for c in subject["cells"]}
        assert len(corruptions) >= 5 and len(subject["cells"]) == len(corruptions)
        assert subject["calibration_rows"] >= 256 and subject["test_rows"] >= 400
        assert 0 <= subject["clean_false_alarm_rate"] <= 0.1  # calibrated at 1% per window
        for cell in subject["cells"]:
            assert set(cell["after"]) == sizes
            for figures in cell["after"].values():
                assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["clean_accuracy"] <= 1
                assert figures["drift_median"] >= 0 and 0 <= figures["alarm_rate"] <= 1
    assert set(data["target"]) >= {"mean_recovered", "met", "cells"}


def test_a_strong_shift_is_flagged_and_recalibration_wins_the_accuracy_back(report):
    _, data = report
    digits = data["subjects"][0]
    contrast = next(c for c in digits["cells"] if c["corruption"] == "contrast")
    clean, before = digits["clean_accuracy"], contrast["base_accuracy"]
    after = contrast["after"]["64"]
    assert clean >= 0.9 and before <= 0.5, contrast
    assert after["accuracy"] >= clean - 0.05, contrast
    # The monitor flags the shift; once recalibrated from a full reservoir it is quiet again
    # (from fewer rows the new reference's own estimation noise still trips it now and then).
    reservoir = contrast["after"]["256"]
    assert contrast["shifts_statistics"] and reservoir["alarm_rate"] <= 0.2
    assert contrast["drift_before"]["median"] > digits["threshold"] > reservoir["drift_median"]
    published = digits["published"]  # the served, refolded graph answers as the fed statistics
    assert abs(published["served_accuracy"] - published["fed_accuracy"]) <= 2 / digits["test_rows"]
