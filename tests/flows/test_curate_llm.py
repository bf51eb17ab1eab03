"""`kernelbook curate --judge llm` end to end against a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from tests.fixtures.llm_server import fault_marker
from tests.fixtures import fake_data
from tests.fixtures.llm import loopback_llm

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "sk-curate-test-SECRET-4f1c9e0a7b2d"


@pytest.fixture
def server(monkeypatch, tmp_path):
    with loopback_llm(monkeypatch, tmp_path / "cache", KEY) as srv:
        yield srv


def source(tmp_path: Path, faults: dict[int, str] | None = None) -> Path:
    """Eight problems x 2 rollouts, all above the threshold; ``faults`` maps a problem to a
    server fault injected into its prompt (through a comment in the module's code)."""
    rows = []
    for i in range(16):
        problem = i // 2
        code = fake_data.MODULE.format(name=f"M{problem}", k=problem)
        if faults and problem in faults:
            code += f"# {fault_marker(faults[problem])}\n"
        rows.append(fake_data.row(problem, name=f"M{problem}", code=code, reward=0.9 + i * 0.001))
    return fake_data.write_rows(rows, tmp_path / "src.parquet")


def curate(src: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["curate", "--source", str(src), "--out", str(out), "--no-analysis", *extra])


def test_llm_judge_labels_rows_and_a_rerun_makes_no_calls(server, tmp_path):
    src = source(tmp_path)
    first = curate(src, tmp_path / "out1", "--judge", "llm")
    assert first.exit_code == 0, first.output
    calls_first = server.stats()["calls_total"]
    assert calls_first == 8  # the two rollouts of a problem share module and solution: one prompt, paid once
    frame = pl.read_parquet(tmp_path / "out1" / "filtered" / "data" / "*.parquet")
    assert frame.height == 16
    assert frame["judge"].unique().to_list() == ["llm"]
    assert frame["judge_model"].unique().to_list() == ["openai/gpt-5.2"]
    assert frame["judge_prompt_version"].unique().to_list() == ["judge-v1"]
    assert (frame["judge_prompt_tokens"] > 0).all() and (frame["judge_completion_tokens"] > 0).all()
    summary = json.loads((tmp_path / "out1" / "run_summary.json").read_text())
    assert summary["judge"] == "llm" and summary["llm"]["calls_made"] == 8
    assert "llm: judged" in first.output
    cached_share = round(100 * summary["llm"]["cached_prompt_tokens"] / summary["llm"]["prompt_tokens"])
    assert 0 < cached_share < 100  # the judge's fixed system prompt comes first: the server's prefix cache hits
    assert f"tokens {summary['llm']['prompt_tokens']} in ({cached_share}% cached) / " in first.output

    # --judge auto picks the LLM judge when a key is configured; the cache answers everything.
    second = curate(src, tmp_path / "out2")
    assert second.exit_code == 0, second.output
    assert server.stats()["calls_total"] == calls_first
    again = json.loads((tmp_path / "out2" / "run_summary.json").read_text())
    assert again["llm"]["calls_made"] == 0 and again["llm"]["cache_hits"] == 16
    assert pl.read_parquet(tmp_path / "out2" / "filtered" / "data" / "*.parquet").equals(frame)

    # --refresh-judge pays again.
    third = curate(src, tmp_path / "out3", "--judge", "llm", "--refresh-judge")
    assert third.exit_code == 0, third.output
    assert server.stats()["calls_total"] == 2 * calls_first


def test_failed_judgements_are_recorded_and_fail_the_run_after_writing(server, tmp_path):
    src = source(tmp_path, faults={1: "400", 2: "malformed"})
    result = curate(src, tmp_path / "out", "--judge", "llm")
    assert result.exit_code == 1
    assert "could not be judged" in result.output and "Traceback" not in result.output
    out = tmp_path / "out"
    summary = json.loads((out / "run_summary.json").read_text())
    judge = {stage["name"]: stage for stage in summary["stages"]}["judge"]
    assert judge["dropped"] == {"judge_failed:bad_request": 2, "judge_invalid_reply": 2}
    assert judge["rows_in"] == judge["rows_out"] + 4
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["example_id"] for r in rejected if r["stage"] == "judge") == [1, 1, 2, 2]
    # A high enough tolerance lets the same run succeed, from the cache plus the failed rows.
    ok = curate(src, tmp_path / "out-ok", "--judge", "llm", "--max-judge-failure-rate", "0.5")
    assert ok.exit_code == 0, ok.output


def test_the_key_appears_in_no_output_and_no_log(server, tmp_path, caplog):
    caplog.set_level("DEBUG")
    src = source(tmp_path, faults={3: "500"})
    result = curate(src, tmp_path / "out", "--judge", "llm", "--max-judge-failure-rate", "1")
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and KEY not in caplog.text
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_wrong_key_stops_fast_with_a_clear_message(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIME_API_KEY", "sk-wrong-key-000000000000")
    result = curate(source(tmp_path), tmp_path / "out", "--judge", "llm")
    assert result.exit_code == 2
    assert "PRIME_API_KEY" in result.output and "sk-wrong-key" not in result.output
    assert server.stats()["calls_total"] < 16
    assert not (tmp_path / "out" / "run_summary.json").exists()


def test_batch_mode_judges_the_sample_as_online_mode_does_and_collects_after_no_wait(server, tmp_path, monkeypatch):
    """``--llm-mode batch`` (docs/llm.md, "Batch mode") on the bundled sample: ``--no-wait``
    submits and exits 3 with the line that says how to collect; the same command without it
    collects those batches (none submitted again) and writes what an online run writes; a
    re-run makes no request."""
    monkeypatch.setenv("LLM_BATCH_POLL_S", "0.02")
    sample = ["curate", "--source", "sample", "--judge", "llm", "--no-analysis"]
    online = CliRunner().invoke(app, [*sample, "--out", str(tmp_path / "online")])
    assert online.exit_code == 0, online.output
    monkeypatch.setenv("KERNELBOOK_CACHE_DIR", str(tmp_path / "batch-cache"))  # nothing cached for the batch runs
    out = tmp_path / "batch"
    batch = [*sample, "--out", str(out), "--llm-mode", "batch"]

    pending = CliRunner().invoke(app, [*batch, "--no-wait"])
    assert pending.exit_code == 3, pending.output
    assert "without --no-wait" in pending.output and "error:" not in pending.output and "Traceback" not in pending.output
    assert not (out / "run_summary.json").exists()
    submitted = server.stats()
    assert submitted["batches_created"] >= 1 and submitted["batch_lines_total"] == 0

    done = CliRunner().invoke(app, batch)
    assert done.exit_code == 0, done.output
    stats = server.stats()
    assert (stats["batches_created"], stats["files_uploaded"]) == (submitted["batches_created"], submitted["files_uploaded"])
    assert stats["calls_total"] == submitted["calls_total"]  # no online call
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["llm"]["mode"] == "batch" and summary["llm"]["batch_ids"] and summary["llm"]["failed"] == 0
    assert "batch mode:" in done.output
    frames = [pl.read_parquet(path / "filtered" / "data" / "*.parquet") for path in (tmp_path / "online", out)]
    assert frames[0].height > 0 and frames[0]["judge"].unique().to_list() == ["llm"]
    assert frames[1].equals(frames[0])  # row for row, the same verdicts

    again = CliRunner().invoke(app, [*sample, "--out", str(tmp_path / "again"), "--llm-mode", "batch"])
    assert again.exit_code == 0, again.output
    asked = ("calls_total", "files_uploaded", "batches_created", "batch_lines_total")
    assert [server.stats()[k] for k in asked] == [stats[k] for k in asked]
    assert json.loads((tmp_path / "again" / "run_summary.json").read_text())["llm"]["calls_made"] == 0
