"""Failure behaviour a user relies on (issue 14): mistakes caught before any work, a folder whose
``run_summary.json`` always means a finished run, and honest outcomes when nothing is kept or
every judge call fails.

In process: ``CliRunner`` for the CLI's exit codes and lines, the flows themselves for what a
deployment run does, both against the shared Prefect test server.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import loading, plot_files, plots
from kernelbook_lib.errors import SourceUnavailableError, UserError
from tests.fixtures import fake_data
from tests.fixtures.llm import loopback_llm

KEY = "sk-failures-test-SECRET-0b9d2e71"


def invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def lines_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def rows_source(tmp_path: Path, n: int = 12, reward: float = 0.95) -> Path:
    """``n`` problems, one rollout each, all with ``reward``."""
    rows = [fake_data.row(i, name=f"M{i}", k=i, reward=reward) for i in range(n)]
    return fake_data.write_rows(rows, tmp_path / "evals.parquet")


@pytest.fixture
def server(monkeypatch, tmp_path):
    with loopback_llm(monkeypatch, tmp_path / "cache", KEY) as srv:
        yield srv


# --- mistakes caught before any work -----------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--val-fraction", "1.5"], "--val-fraction 1.5: input should be less than 1"),
        (["--threshold", "2"], "--threshold 2.0: input should be less than or equal to 1"),
        (["--source", "mydata/evals.parquet"], "--source mydata/evals.parquet: no such file or folder"),
    ],
)
def test_a_bad_option_is_one_line_before_any_llm_call_and_before_prefect(server, tmp_path, option, message):
    """``--val-fraction 1.5`` used to be reported at the split stage, after the paid judge calls;
    ``--threshold 2`` after the load; a mistyped path-like source was looked up on the Hub."""
    out = tmp_path / "out"
    result = invoke("curate", "--source", str(rows_source(tmp_path)), "--judge", "llm", "--out", str(out), *option)
    assert result.exit_code == 2, result.output
    [line] = lines_of(result.output)
    assert line.startswith("error: ") and message in line, line
    assert server.stats()["calls_total"] == 0
    assert not out.exists()  # nothing read, nothing written


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_itself_validates_at_its_start_before_the_source_is_read(server, tmp_path, monkeypatch):
    """What a deployment run (no CLI) does with the same mistakes."""
    from flows.curate import curate

    monkeypatch.setattr(loading, "read_source", lambda *a, **k: pytest.fail("the source must not be read"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"--val-fraction 1.5: input should be less than 1"):
        curate({"source": "sample", "judge": "llm", "val_fraction": 1.5, "out": str(out)})  # as a deployment passes it
    with pytest.raises(UserError, match=r"--threshold 2.0"):
        curate({"source": "sample", "judge": "llm", "threshold": 2.0, "out": str(out)})
    with pytest.raises(SourceUnavailableError, match="no such file or folder"):
        curate({"source": "mydata/evals.parquet", "judge": "static", "out": str(out)})
    assert server.stats()["calls_total"] == 0 and not out.exists()


def test_bad_settings_are_caught_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_CONCURRENCY", "lots")
    out = tmp_path / "out"
    result = invoke("curate", "--source", "sample", "--judge", "static", "--out", str(out))
    assert result.exit_code == 2
    [line] = lines_of(result.output)
    assert "LLM_CONCURRENCY" in line and not out.exists()


def test_llm_judge_without_a_key_is_refused_before_the_source_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("PRIME_API_KEY", raising=False)
    out = tmp_path / "out"
    result = invoke("curate", "--source", "sample", "--judge", "llm", "--out", str(out))
    assert result.exit_code == 2
    [line] = lines_of(result.output)
    assert "PRIME_API_KEY is not set: --judge llm needs an API key" in line and not out.exists()


# --- run_summary.json is the last file, so its presence means "finished" ---------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_that_dies_in_the_analysis_leaves_no_run_summary(tmp_path, monkeypatch):
    """The summary used to be written before the analysis: a run killed while plotting left a
    folder that looked finished. A previous run's summary is removed at the start."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_summary.json").write_text('{"from": "an older run"}\n')

    def die(*args, **kwargs):
        raise RuntimeError("killed while plotting")

    # Writing the plots, not drawing them: the drawing of the same data may be reused.
    monkeypatch.setattr(plot_files, "write_images", die)
    result = invoke("curate", "--source", str(rows_source(tmp_path)), "--judge", "static", "--out", str(out))
    assert result.exit_code != 0
    assert (out / "filtered").is_dir() and (out / "analysis").is_dir()  # the work so far
    assert not (out / "run_summary.json").exists()
    # `kernelbook analyze` and `publish` refuse such a folder: it is an unfinished run.
    refused = invoke("analyze", "--input", str(out))
    assert refused.exit_code == 2 and "did not finish" in refused.output


@pytest.mark.usefixtures("prefect_harness")
def test_run_summary_is_the_newest_file_of_a_finished_run(tmp_path):
    out = tmp_path / "out"
    result = invoke("curate", "--source", str(rows_source(tmp_path)), "--judge", "static", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = out / "run_summary.json"
    others = [p for p in out.rglob("*") if p.is_file() and p != summary]
    assert any(p.parent.name == "analysis" for p in others)
    newest_other = max(others, key=lambda p: p.stat().st_mtime_ns)
    assert summary.stat().st_mtime_ns >= newest_other.stat().st_mtime_ns, newest_other


# --- honest outcomes ---------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.usefixtures("prefect_harness")
def test_when_every_judge_call_fails_the_gate_speaks_before_the_analysis(tmp_path, monkeypatch):
    """Endpoint refused: the user used to see only "the judged dataset has no rows: nothing to
    analyse" (exit 2). Now: the judge gate's reason with the failure kinds, the counts table,
    exit code 1, no analysis, and a finished summary that records the failures."""
    monkeypatch.setenv("PRIME_API_KEY", KEY)
    monkeypatch.setenv("LLM_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    monkeypatch.setenv("LLM_RETRIES", "0")
    monkeypatch.setenv("KERNELBOOK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = invoke("curate", "--source", str(rows_source(tmp_path, n=4)), "--judge", "llm", "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "nothing to analyse" not in result.output and "Traceback" not in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert "4 of 4 rows (100.0%) could not be judged (judge_failed:" in error and "the analysis was not run" in error
    assert any(line.startswith("judge ") and line.split()[1:3] == ["4", "0"] for line in result.output.splitlines())
    assert not (out / "analysis").exists()
    summary = json.loads((out / "run_summary.json").read_text())
    judge_stage = next(stage for stage in summary["stages"] if stage["name"] == "judge")
    assert judge_stage["rows_out"] == 0 and KEY not in result.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("analysis", ["--analysis", "--no-analysis"])
def test_zero_rows_kept_finishes_with_a_warning_and_empty_datasets(tmp_path, analysis):
    """Used to exit 0 with --no-analysis and 2 without it, with no warning."""
    out = tmp_path / "out"
    result = invoke("curate", "--source", str(rows_source(tmp_path, reward=0.5)), "--judge", "static", "--out", str(out), analysis)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: no rows kept")]
    assert warnings == ["warning: no rows kept: the filter stage dropped all 12 rows it got (reward_not_above_threshold 12); "
                        "the datasets are empty and rejected.jsonl lists every row with its reason"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["datasets"] == {"filtered": {"train": 0, "validation": 0}, "unique": {"train": 0, "validation": 0}}
    assert pl.read_parquet(out / "filtered" / "data" / "train-*.parquet").height == 0
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 12
    if analysis == "--analysis":
        assert json.loads((out / "analysis" / "analysis.json").read_text())["n"] == 0
        assert "**No rows**" in (out / "analysis" / "report.md").read_text()
        assert not any((out / "analysis" / name).exists() for name in plots.PLOT_FILES)
    # `kernelbook analyze` on such a folder reports "no rows" too, and succeeds.
    again = invoke("analyze", "--input", str(out))
    assert again.exit_code == 0, again.output
    assert json.loads((out / "analysis" / "analysis.json").read_text())["n"] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_one_malformed_jsonl_line_is_a_rejection_and_the_rest_is_curated(tmp_path):
    """Used to refuse the whole file with "Syntax at character 0"."""
    lines = [json.dumps(fake_data.row(i, name=f"M{i}", k=i, reward=0.95)) for i in range(6)]
    lines[3] = '{"example_id": 3, "reward": 0.9, "info": {'  # cut off mid-row
    source = tmp_path / "evals.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = invoke("curate", "--source", str(source), "--judge", "static", "--out", str(out), "--no-analysis")
    assert result.exit_code == 0, result.output
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["reason"], r["source_index"]) for r in rejected] == [("load", "malformed_line", 3)]
    assert rejected[0]["detail"].startswith("evals.jsonl line 4: not JSON")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["stages"][0] == {"name": "load", "rows_in": 6, "rows_out": 5, "dropped": {"malformed_line": 1}}
    assert sum(summary["datasets"]["filtered"].values()) == 5


@pytest.mark.usefixtures("prefect_harness")
def test_generate_prompts_writes_its_summary_last(tmp_path):
    out = tmp_path / "out"
    result = invoke("generate-prompts", "--source", "sample", "--backend", "template", "--limit", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = out / "synthetic_summary.json"
    others = [p for p in out.rglob("*") if p.is_file() and p != summary]
    assert summary.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in others)

