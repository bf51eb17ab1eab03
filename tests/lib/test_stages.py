"""filter, dedupe and split: the rules users rely on, on hand-made rows."""

from __future__ import annotations

import polars as pl
import pytest

from kernelbook_lib import loading, schema, stages
from kernelbook_lib.errors import UserError
from tests.fixtures import fake_data


def prepared(tmp_path, rows):
    path = fake_data.write_rows(rows, tmp_path / "src.parquet")
    return loading.prepare(loading.read_source(str(path))).frame


def judged(frame, difficulty, style):
    return stages.add_score(frame.with_columns(pl.Series("difficulty", difficulty), pl.Series("style", style)))


def test_filter_is_strict_and_counts_the_rest(tmp_path):
    frame = prepared(tmp_path, [fake_data.row(i, reward=r) for i, r in enumerate([0.85, 0.8500001, 0.2, 1.0])])
    result = stages.filter_rewards(frame, 0.85)
    assert result.frame.get_column("reward").to_list() == [0.8500001, 1.0]
    assert result.report.dropped == {"reward_not_above_threshold": 2}


def test_limit_keeps_the_first_passing_rows_and_records_the_rest(tmp_path):
    frame = prepared(tmp_path, [fake_data.row(i, reward=0.9) for i in range(5)])
    result = stages.filter_rewards(frame, 0.85, limit=2)
    assert result.frame.get_column("example_id").to_list() == [0, 1]
    assert result.report.dropped == {"beyond_limit": 3}
    assert result.report.rows_in == 5


def test_dedupe_keeps_best_score_with_deterministic_ties(tmp_path):
    # Three rollouts of problem A (k=1), two of problem B (k=2) sharing module_name "Scale".
    rows = [
        fake_data.row(10, k=1, reward=0.90),
        fake_data.row(10, k=1, reward=0.95),
        fake_data.row(10, k=1, reward=0.95),  # exact tie with the previous row: source order wins
        fake_data.row(20, k=2, reward=0.99),
        fake_data.row(20, k=2, reward=0.90),
    ]
    frame = judged(prepared(tmp_path, rows), [5, 5, 5, 3, 3], [8, 8, 8, 2, 9])
    result = stages.dedupe(frame, "problem_id")
    assert result.frame.get_column(schema.ROW).to_list() == [1, 4]  # A: tie -> first; B: 0.90*3*9 > 0.99*3*2
    assert result.report.dropped == {"lower_score_than_best_of_problem_id": 3}
    by_name = stages.dedupe(frame, "module_name")  # the original's grouping merges A and B
    assert by_name.report.rows_out == 1


def test_dedupe_breaks_score_ties_by_reward_then_example_id(tmp_path):
    rows = [fake_data.row(30, k=1, reward=0.9), fake_data.row(31, k=1, reward=0.9), fake_data.row(29, k=1, reward=0.9)]
    frame = judged(prepared(tmp_path, rows), [4, 4, 4], [5, 5, 5])
    assert stages.dedupe(frame).frame.get_column("example_id").to_list() == [29]
    frame = judged(prepared(tmp_path, rows), [9, 4, 4], [2, 5, 5])  # 0.9*18 < 0.9*20
    assert stages.dedupe(frame).frame.get_column("example_id").to_list() == [29]


def test_split_is_by_problem_stable_and_near_the_fraction():
    problems = [f"p{i}" for i in range(4000)]
    splits = [stages.split_of(p, 42, 0.1) for p in problems]
    share = splits.count("validation") / len(splits)
    assert 0.08 < share < 0.12
    assert splits == [stages.split_of(p, 42, 0.1) for p in problems]  # deterministic
    assert splits != [stages.split_of(p, 7, 0.1) for p in problems]  # the seed matters


def test_assign_splits_never_leaks_a_problem(tmp_path):
    rows = [fake_data.row(i // 3, k=i // 3) for i in range(60)]
    frame = stages.assign_splits(prepared(tmp_path, rows), 42, 0.3)
    assert stages.leaked_problems(frame) == []
    counts = stages.split_counts(frame)
    assert counts["train"] + counts["validation"] == 60 and counts["validation"] > 0


def test_bad_parameters_are_user_errors(tmp_path):
    frame = prepared(tmp_path, [fake_data.row(0)])
    with pytest.raises(UserError):
        stages.filter_rewards(frame, 1.5)
    with pytest.raises(UserError):
        stages.assign_splits(frame, 42, 1.0)
