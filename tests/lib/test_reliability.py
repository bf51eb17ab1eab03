"""Judge reliability: alpha within a judge and across a panel, its interval, disagreements, the
halo check and the correction for attenuation."""

from __future__ import annotations

import krippendorff
import numpy as np
import pytest

from kernelbook_lib import reliability


def verdicts(rows: list[list[tuple[str, int, int, int]]]) -> list[list[dict]]:
    return [[{"judge": j, "sample": s, "difficulty": d, "style": st} for j, s, d, st in row] for row in rows]


def test_alpha_is_the_librarys_on_the_table_the_verdicts_make():
    rows = verdicts([
        [("a", 0, 3, 7), ("a", 1, 4, 7), ("a", 2, 3, 6)],
        [("a", 0, 8, 2), ("a", 1, 8, 3), ("a", 2, 7, 2)],
        [("a", 0, 5, 5), ("a", 1, 6, 5), ("a", 2, 5, 4)],
        [("a", 0, 1, 9), ("a", 1, 1, 9)],  # a missing third sample
    ])
    report = reliability.reliability_report(rows)
    table = np.array([[3, 4, 3], [8, 8, 7], [5, 6, 5], [1, 1, np.nan]], dtype=float)
    expected = krippendorff.alpha(reliability_data=table.T, level_of_measurement="ordinal", value_domain=list(range(11)))
    within = report["grades"]["difficulty"]["within"]["a"]
    assert within["alpha"] == pytest.approx(expected, abs=1e-4) and within["rows"] == 4
    low, high = within["ci95"]
    assert low <= within["alpha"] <= high and not within["unreliable"]
    assert report["grades"]["difficulty"]["across"] is None  # one judge: no panel


def test_a_panel_is_compared_by_each_judges_median_and_disagreements_are_counted():
    rows = verdicts([
        [("a", 0, 2, 8), ("b", 0, 9, 1)],
        [("a", 0, 3, 7), ("b", 0, 3, 7)],
        [("a", 0, 6, 4), ("b", 0, 5, 4)],
        [("a", 0, 9, 2), ("b", 0, 1, 9)],
    ])
    report = reliability.reliability_report(rows)
    across = report["grades"]["difficulty"]["across"]
    table = np.array([[2, 9], [3, 3], [6, 5], [9, 1]], dtype=float)
    assert across["alpha"] == pytest.approx(krippendorff.alpha(reliability_data=table.T, level_of_measurement="ordinal",
                                                                value_domain=list(range(11))), abs=1e-4)
    assert across["unreliable"]  # two judges that disagree this much
    assert report["grades"]["difficulty"]["disagreement_share"] == 0.5
    assert set(report["halo"]) == {"a", "b"} and report["halo"]["a"] < 0
    assert any("UNRELIABLE" in line for line in reliability.format_reliability(report))


def test_nothing_to_measure_with_one_verdict_per_row_and_constant_grades():
    assert reliability.reliability_report(verdicts([[("a", 0, 3, 3)], [("a", 0, 4, 4)]])) is None
    constant = reliability.reliability_report(verdicts([[("a", 0, 5, 5), ("a", 1, 5, 5)], [("a", 0, 5, 5), ("a", 1, 5, 5)]]))
    assert constant["grades"]["style"]["within"]["a"] is None  # no variation: alpha is undefined, not 1


def test_the_correction_for_attenuation():
    assert reliability.attenuation_corrected(0.3, 0.5) == pytest.approx(0.3 / np.sqrt(0.5), abs=1e-4)
    assert reliability.attenuation_corrected(0.9, 0.5) == 1.0  # clipped
    assert reliability.attenuation_corrected(0.3, None) is None and reliability.attenuation_corrected(0.3, -0.1) is None
    report = {"grades": {"difficulty": {"within": {"a": {"alpha": 0.6}, "b": {"alpha": 0.8}}, "across": None}}}
    assert reliability.grade_reliability(report, "difficulty") == pytest.approx(0.7)
    report["grades"]["difficulty"]["across"] = {"alpha": 0.5}
    assert reliability.grade_reliability(report, "difficulty") == 0.5  # the panel's, when there is one
