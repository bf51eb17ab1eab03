"""Several verdicts per row: K samples from one judge, a panel of judges, a reliability sample;
each verdict its own cached call, and the agreement in the summary (against the loopback server,
whose judges vary by model and by sample when asked to)."""

from __future__ import annotations

import json
from pathlib import Path

import krippendorff
import numpy as np
import polars as pl
import pytest

from tests.flows.test_curate_llm import curate, source
from tests.fixtures.llm import loopback_llm

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "sk-panel-test-SECRET-0b7e"


@pytest.fixture
def server(monkeypatch, tmp_path):
    with loopback_llm(monkeypatch, tmp_path / "cache", KEY) as srv:
        srv.app.noisy_verdicts = True
        yield srv


def frame_of(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "filtered" / "data" / "*.parquet")


def test_k_samples_are_k_cached_calls_aggregated_by_the_lower_median(server, tmp_path):
    src = source(tmp_path)  # 8 distinct prompts (two rollouts each)
    first = curate(src, tmp_path / "out1", "--judge", "llm", "--judge-samples", "3")
    assert first.exit_code == 0, first.output
    assert server.stats()["calls_total"] == 8 * 3
    frame = frame_of(tmp_path / "out1")
    for verdicts, difficulty, style in frame.select("judge_verdicts", "difficulty", "style").iter_rows():
        assert sorted(v["sample"] for v in verdicts) == [0, 1, 2]
        assert difficulty == sorted(v["difficulty"] for v in verdicts)[1] and style == sorted(v["style"] for v in verdicts)[1]
    summary = json.loads((tmp_path / "out1" / "run_summary.json").read_text())
    within = summary["judge_reliability"]["grades"]["difficulty"]["within"]["openai/gpt-5.2"]
    problems = frame.unique("problem_id")  # the summary measures every judged row; two rollouts share verdicts
    table = np.array([[v["difficulty"] for v in sorted(row, key=lambda v: v["sample"])] for row in frame["judge_verdicts"].to_list()], float)
    assert within["alpha"] == pytest.approx(krippendorff.alpha(reliability_data=table.T, level_of_measurement="ordinal",
                                                                value_domain=list(range(11))), abs=1e-4)
    assert within["rows"] == frame.height and problems.height == 8
    assert "judge reliability" in first.output
    again = curate(src, tmp_path / "out2", "--judge", "llm", "--judge-samples", "3")
    assert again.exit_code == 0 and server.stats()["calls_total"] == 24  # every sample was cached
    assert frame_of(tmp_path / "out2")["judge_verdicts"].to_list() == frame["judge_verdicts"].to_list()


def test_a_panel_of_two_models_and_the_static_judge_writes_every_verdict(server, tmp_path):
    src = source(tmp_path)
    result = curate(src, tmp_path / "out", "--judge", "llm", "--judge-model", "judge-a", "--judge-model", "judge-b",
                    "--judge-model", "static")
    assert result.exit_code == 0, result.output
    assert server.stats()["calls_total"] == 8 * 2
    frame = frame_of(tmp_path / "out")
    assert set(frame["judge_model"].unique()) == {"judge-a, judge-b, static-ast-v1 (heuristic)"}
    assert set(frame["judge"].unique()) == {"llm-panel"}
    assert all({v["judge"] for v in row} == {"judge-a", "judge-b", "static-ast-v1 (heuristic)"} for row in frame["judge_verdicts"])
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    reliability = summary["judge_reliability"]
    assert reliability["grades"]["style"]["across"] is not None and set(reliability["halo"]) == set(reliability["judges"])
    assert summary["judge_model"] == "judge-a, judge-b, static"


def test_a_reliability_sample_pays_exactly_n_times_k_minus_1_extra_calls(server, tmp_path):
    src = source(tmp_path)
    result = curate(src, tmp_path / "out", "--judge", "llm", "--judge-samples", "3", "--reliability-sample", "5")
    assert result.exit_code == 0, result.output
    frame = frame_of(tmp_path / "out")
    several = frame.filter(pl.col("judge_verdicts").list.len() > 1)
    assert several.height == 5  # rows, drawn with the seed (two rollouts of a problem are two rows)
    distinct = several.select("problem_id").unique().height
    assert server.stats()["calls_total"] == 8 + distinct * (3 - 1)  # rows sharing a prompt share its calls


def test_a_bad_panel_is_one_line_before_any_call(server, tmp_path):
    src = source(tmp_path)
    result = curate(src, tmp_path / "out", "--judge", "llm", "--judge-model", "static", "--judge-model", "judge-a")
    assert result.exit_code == 2 and "primary" in result.output and server.stats()["calls_total"] == 0
    result = curate(src, tmp_path / "out", "--judge", "llm", "--reliability-sample", "some")
    assert result.exit_code == 2 and "--reliability-sample" in result.output


def test_the_analysis_report_and_the_cards_show_the_reliability_and_the_corrected_correlations(server, tmp_path):
    from typer.testing import CliRunner

    from kernelbook_cli import app

    src = source(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", "--source", str(src), "--out", str(out), "--judge", "llm", "--judge-samples", "2"])
    assert result.exit_code == 0, result.output
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["reliability"]["rows_measured"] > 0
    pairs = analysis["pairs"]
    defined = [p for p in pairs.values() if not p.get("undefined")]
    assert defined and all("r_corrected" in p["pearson"] and "reliability" in p for p in defined)
    report = (out / "analysis" / "report.md").read_text()
    assert "## Judge reliability" in report and "corrected for attenuation" in report
    card = (out / "filtered" / "README.md").read_text()
    assert "## Judge reliability" in card and "Krippendorff" in card


def test_the_static_judge_says_it_ignores_the_panel_options(tmp_path):
    result = curate(source(tmp_path), tmp_path / "out", "--judge", "static", "--judge-samples", "3")
    assert result.exit_code == 0, result.output
    assert "warning: the static judge is deterministic and judges alone" in result.output
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["judge_reliability"] is None and any("--judge-samples" in w for w in summary["warnings"])
