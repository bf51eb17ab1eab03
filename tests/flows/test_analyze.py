"""The analysis tasks (through ``.fn()``) and the ``analyze`` flow (against a test Prefect server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

import pytest
from prefect.logging import disable_run_logger

from typer.testing import CliRunner

from flows.analyze import analyze
from kernelbook_cli import app
from kernelbook_lib import plots
from kernelbook_lib.errors import UserError
from tasks import analysis as analysis_tasks
from tests.lib.test_analysis import correlated, judged, write_out
from kernelbook_lib.params import AnalyzeParams


@pytest.fixture
def out_folder(tmp_path) -> Path:
    """A finished curate run's output folder with 80 judged rows (72 train, 8 validation)."""
    df = correlated(80)
    return write_out(tmp_path / "run", df.head(72), df.tail(8))


# --- tasks through .fn(): no Prefect server needed --------------------------------------


def test_prepare_out_defaults_to_input_analysis(tmp_path):
    assert analysis_tasks.prepare_analysis_out.fn(str(tmp_path), None) == str(tmp_path / "analysis")
    assert (tmp_path / "analysis").is_dir()
    assert analysis_tasks.prepare_analysis_out.fn(str(tmp_path), str(tmp_path / "x" / "y")) == str(tmp_path / "x" / "y")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="exists and is not a folder"):
        analysis_tasks.prepare_analysis_out.fn(str(tmp_path), str(tmp_path / "file"))


def test_tasks_chain_into_json_and_report(out_folder, tmp_path):
    out = tmp_path / "analysis"
    out.mkdir()
    with disable_run_logger():
        df = analysis_tasks.load_judged.fn(str(out_folder))
        result = analysis_tasks.compute_analysis.fn(df)
        info = analysis_tasks.describe_judges.fn(df)
        json_path = analysis_tasks.write_analysis_json.fn(result, str(out))
        report_path = analysis_tasks.write_report.fn(result, [str(out / n) for n in plots.PLOT_FILES], info, str(out))
    assert df.height == 80
    assert json.loads(Path(json_path).read_text()) == result
    text = Path(report_path).read_text()
    assert "n = 80 rows** (train: 72, validation: 8)" in text
    assert "](correlation_analysis.png)" in text


def test_tasks_carry_no_cache_policy_but_the_drawing():
    from prefect.cache_policies import NO_CACHE

    for t in (analysis_tasks.load_judged, analysis_tasks.compute_analysis, analysis_tasks.write_plots):
        assert t.cache_policy is NO_CACHE
    assert analysis_tasks.draw_plots.cache_policy is not NO_CACHE and analysis_tasks.draw_plots.persist_result


# --- the flow, against the shared test server --------------------------------------------


def test_analyze_flow_writes_every_output_and_the_artifact(prefect_harness, out_folder):
    result = analyze(AnalyzeParams(input=str(out_folder)))
    out = out_folder / "analysis"
    assert result["out"] == str(out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["analysis.json", "report.md", *plots.PLOT_FILES])  # no temp files left
    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk == result["analysis"]
    assert on_disk["n"] == 80 and set(on_disk["pairs"]) == {"difficulty~reward", "style~reward", "difficulty~style"}
    for name in plots.PLOT_FILES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "`openai/gpt-5.2` (80 rows)" in report and "`rubric-v1` (80 rows)" in report

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["analysis-report"])))
    assert artifacts, "the report artifact was not published"
    latest = max(artifacts, key=lambda a: a.created)
    assert latest.type == "markdown"
    assert "n = 80 rows**" in latest.data and "openai/gpt-5.2" in latest.data
    assert "![" not in latest.data  # the UI cannot load local images: paths are listed instead


def test_the_same_data_reuses_its_drawing_and_changed_data_draws_again(prefect_harness, tmp_path, monkeypatch):
    """Drawing costs seconds; the pictures are a pure function of the plotted values, so a
    re-run on the same judged data writes the earlier drawing's bytes, and one changed value
    draws again."""
    df = correlated(90, seed=int.from_bytes(os.urandom(4), "little"))  # data no other test drew
    folder = write_out(tmp_path / "run", df.head(80), df.tail(10))
    first = analyze(AnalyzeParams(input=str(folder), out=str(tmp_path / "first")))

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew again")

    monkeypatch.setattr(plots, "render_plot_images", no_drawing)
    second = analyze(AnalyzeParams(input=str(folder), out=str(tmp_path / "second")))
    assert [Path(p).read_bytes() for p in second["plots"]] == [Path(p).read_bytes() for p in first["plots"]]
    assert second["analysis"]["plots"] == first["analysis"]["plots"]  # what analysis.json vouches for

    changed = df.with_columns(reward=pl.when(pl.int_range(pl.len()) == 0).then(pl.col("reward") + 0.001).otherwise(pl.col("reward")))
    other = write_out(tmp_path / "changed", changed.head(80), changed.tail(10))
    with pytest.raises(AssertionError, match="drew again"):
        analyze(AnalyzeParams(input=str(other), out=str(tmp_path / "third")))


def test_analyze_flow_fails_clearly_on_a_bad_input(prefect_harness, tmp_path):
    bad = write_out(tmp_path / "run", judged([1, 2, 3], [1, 2, 3], [0.9, None, 1.0]), judged([], [], []))
    with pytest.raises(UserError, match="1 null value\\(s\\) in 'reward'"):
        analyze(AnalyzeParams(input=str(bad), out=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "analysis.json").exists()


def test_cli_reports_a_missing_folder_in_one_line_without_a_run(tmp_path):
    result = CliRunner().invoke(app, ["analyze", "--input", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.startswith("error: no such output folder") and result.output.count("\n") == 1


def test_cli_runs_the_flow(prefect_harness, out_folder, tmp_path):
    result = CliRunner().invoke(app, ["analyze", "--input", str(out_folder), "--out", str(tmp_path / "custom")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "custom" / "report.md").is_file()
    assert f"report: {tmp_path / 'custom' / 'report.md'}" in result.output

