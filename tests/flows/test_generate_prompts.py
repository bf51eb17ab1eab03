"""The ``generate-prompts`` flow end to end: the LLM backend against the loopback server (one call
per distinct problem, a cached re-run, retried and recorded invalid replies, both input schemas),
the offline template backend, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.generate_prompts import generate_prompts
from kernelbook_cli import app
from kernelbook_lib import prompt_gen, prompt_dataset
from kernelbook_lib.errors import RunFailedError, SchemaError, UserError
from tests.fixtures.llm_server import fault_marker, prompt_hash
from tests.fixtures import fake_data
from tests.fixtures.llm import loopback_llm
from kernelbook_lib.params import GenerateParams

pytestmark = pytest.mark.usefixtures("prefect_harness")
KEY = "sk-prompts-test-SECRET-9b3e1f0c2a7d"


@pytest.fixture
def server(monkeypatch, tmp_path):
    with loopback_llm(monkeypatch, tmp_path / "cache", KEY) as srv:
        yield srv


def module(name: str, k: int, fault: str | None = None) -> str:
    code = fake_data.MODULE.format(name=name, k=k)
    return code + f"# {fault_marker(fault)}\n" if fault else code


def kernelbook_source(tmp_path: Path, faults: dict[int, str] | None = None) -> Path:
    """Six problems in the KernelBook schema; problems 0 and 1 appear twice (same code, another
    uuid), plus one row with empty code: 9 rows. ``faults`` puts a server fault into a problem.
    The six modules differ only in a constant, so they are one near-duplicate family: the tests
    of the LLM machinery below run with ``near_dup=False`` (one prompt per problem)."""
    faults = faults or {}
    order = [0, 1, 2, 0, 3, 4, 1, 5]
    rows = [{"module_name": f"M{p}", "python_code": module(f"M{p}", p, faults.get(p)), "uuid": 100 + i,
             "repo_name": f"user/repo{i}"} for i, p in enumerate(order)]
    rows.append({"module_name": "Empty", "python_code": "", "uuid": 200, "repo_name": "user/empty"})
    path = tmp_path / "kernelbook.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def prompt_of(name: str, code: str) -> str:
    """The server's id of the generator prompt for one module."""
    return prompt_hash(prompt_gen.build_specification_messages(name, code))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_llm_backend_makes_one_call_per_problem_and_a_rerun_makes_none(server, tmp_path):
    src = kernelbook_source(tmp_path)
    out = tmp_path / "out"
    summary = generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(out), near_dup=False))
    stats = server.stats()
    assert stats["calls_total"] == 6  # six distinct problems; the two repeats were never sent
    assert sorted(stats["calls_by_hash"].values()) == [1] * 6
    assert summary["duplicates_collapsed"] == 2 and summary["calls_saved_by_dedupe"] == 2
    assert summary["distinct_problems"] == 6 and summary["llm"]["calls_made"] == 6
    assert summary["generator"] == "llm" and summary["generator_model"] == "openai/gpt-5.2"
    assert [(s["name"], s["rows_in"], s["rows_out"]) for s in summary["stages"]] == [
        ("load", 9, 8), ("families", 8, 8), ("decontaminate", 8, 8), ("dedupe", 8, 6), ("generate", 6, 6)]

    rows = read_jsonl(out / prompt_dataset.PROMPTS_FILE)
    assert [r["module_name"] for r in rows] == [f"M{p}" for p in (0, 1, 2, 3, 4, 5)]
    assert [r["uuid"] for r in rows] == [100, 101, 102, 104, 105, 107]  # the first row of each problem
    for r in rows:
        assert f"`{r['module_name']}New`" in r["prompt"] and r["python_code"] == module(r["module_name"], int(r["module_name"][1:]))
        assert r["generator_prompt_version"] == prompt_gen.GENERATOR_PROMPT_VERSION and r["generator_prompt_tokens"] > 0
    assert pl.read_parquet(out / "synthetic" / prompt_dataset.DATA_FILE).height == 6
    card = (out / "synthetic" / "README.md").read_text()
    assert "openai/gpt-5.2" in card and KEY not in card
    ledger = read_jsonl(out / prompt_dataset.REJECTED_FILE)
    assert sorted((r["source_index"], r["reason"]) for r in ledger) == [
        (3, "duplicate_problem"), (6, "duplicate_problem"), (8, "empty_python_code")]

    # Same job again: every answer comes from the cache, the outputs are the same.
    again = generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(tmp_path / "out2"), near_dup=False))
    assert server.stats()["calls_total"] == 6
    assert again["llm"]["calls_made"] == 0 and again["llm"]["cache_hits"] == 6
    assert read_jsonl(tmp_path / "out2" / prompt_dataset.PROMPTS_FILE) == rows
    # --refresh pays again.
    generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(tmp_path / "out3"), refresh=True, limit=2, near_dup=False))
    assert server.stats()["calls_total"] == 8
    for path in [*(tmp_path / "cache").rglob("*"), *out.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_invalid_replies_are_retried_then_recorded_with_their_reason(server, tmp_path):
    # Problem 2: the first reply lacks the class name, the retry is fine. Problem 3: every reply
    # copies the reference code. Problem 4: a reply in <specification> tags. Problem 5: HTTP 400.
    faults = {2: "unnamed*1", 3: "echo", 4: "tags", 5: "400"}
    src = kernelbook_source(tmp_path, faults)
    out = tmp_path / "out"
    summary = generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(out), near_dup=False))
    calls = server.stats()["calls_by_hash"]
    assert calls[prompt_of("M2", module("M2", 2, faults[2]))] == 2  # retried once, then valid
    assert calls[prompt_of("M3", module("M3", 3, faults[3]))] == 2  # LLM_RETRIES=1: two attempts
    assert calls[prompt_of("M5", module("M5", 5, faults[5]))] == 1  # a 400 is not retried
    generate = summary["stages"][-1]
    assert generate["rows_in"] == 6 and generate["rows_out"] == 4
    assert generate["dropped"] == {"generate_failed:bad_request": 1, "generate_invalid_reply": 1}
    assert summary["llm"]["failures_by_kind"] == {"bad_request": 1, "invalid_reply": 1}
    assert any("2 of 6 problems got no specification" in w for w in summary["warnings"])
    ledger = {r["source_index"]: r for r in read_jsonl(out / prompt_dataset.REJECTED_FILE) if r["stage"] == "generate"}
    assert ledger[4]["reason"] == "generate_invalid_reply" and "copies" in ledger[4]["detail"]
    assert ledger[7]["reason"] == "generate_failed:bad_request"
    names = [r["module_name"] for r in read_jsonl(out / prompt_dataset.PROMPTS_FILE)]
    assert names == ["M0", "M1", "M2", "M4"]


def test_eval_rollouts_are_read_from_info_and_sent_once_per_problem(server, tmp_path):
    rows = [fake_data.row(i, name=f"E{i // 3}", k=i // 3) for i in range(12)]  # 4 problems x 3 rollouts
    src = tmp_path / "evals.parquet"
    fake_data.write_rows(rows, src)
    summary = generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(tmp_path / "out"), near_dup=False))
    assert summary["input_schema"] == "eval" and server.stats()["calls_total"] == 4
    assert summary["calls_saved_by_dedupe"] == 8
    written = read_jsonl(tmp_path / "out" / prompt_dataset.PROMPTS_FILE)
    assert [(r["module_name"], r["example_id"]) for r in written] == [("E0", 0), ("E1", 3), ("E2", 6), ("E3", 9)]
    assert written[0]["python_code"] == rows[0]["info"]["python_code"]


def test_template_backend_is_offline_and_deterministic_and_leaves_curate_outputs_alone(tmp_path, caplog):
    out = tmp_path / "out"
    (out / "filtered" / "data").mkdir(parents=True)
    (out / "run_summary.json").write_text('{"pipeline": "curate"}')
    caplog.set_level("INFO")
    first = generate_prompts(GenerateParams(source="sample", out=str(out)))  # no key configured: auto -> template
    assert "using the offline template backend" in caplog.text
    assert first["backend"] == "template" and first["generator"] == "template-ast-v2" and first["llm"] is None
    dedupe, generate = first["stages"][-2:]
    assert generate == {"name": "generate", "rows_in": dedupe["rows_out"], "rows_out": dedupe["rows_out"], "dropped": {}}
    data = (out / prompt_dataset.PROMPTS_FILE).read_bytes()
    parquet = pl.read_parquet(out / "synthetic" / prompt_dataset.DATA_FILE)
    second = generate_prompts(GenerateParams(source="sample", backend="template", out=str(tmp_path / "again")))
    assert (tmp_path / "again" / prompt_dataset.PROMPTS_FILE).read_bytes() == data
    assert pl.read_parquet(tmp_path / "again" / "synthetic" / prompt_dataset.DATA_FILE).equals(parquet)
    assert second["stages"] == first["stages"]
    assert set(parquet["generator"].to_list()) == {"template-ast-v2"}
    assert (out / "run_summary.json").read_text() == '{"pipeline": "curate"}' and (out / "filtered" / "data").is_dir()


def test_user_mistakes_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="PRIME_API_KEY is not set"):
        generate_prompts(GenerateParams(source="sample", backend="llm", out=str(tmp_path / "out")))
    wrong = tmp_path / "wrong.parquet"
    pl.DataFrame({"name": ["M"], "code": ["x"]}).write_parquet(wrong)
    with pytest.raises(SchemaError, match=r"Columns found: name \(String\), code \(String\)"):
        generate_prompts(GenerateParams(source=str(wrong), backend="template", out=str(tmp_path / "out")))
    assert not (tmp_path / "out" / prompt_dataset.SUMMARY_FILE).exists()


def test_a_run_without_any_specification_fails_after_writing(server, tmp_path):
    src = tmp_path / "one.parquet"
    pl.DataFrame({"module_name": ["M"], "python_code": [module("M", 1, "404")]}).write_parquet(src)
    with pytest.raises(RunFailedError, match="no specification could be generated"):
        generate_prompts(GenerateParams(source=str(src), backend="llm", out=str(tmp_path / "out")))
    summary = json.loads((tmp_path / "out" / prompt_dataset.SUMMARY_FILE).read_text())
    assert summary["stages"][-1]["dropped"] == {"generate_failed:not_found": 1}


# --- the command line ---------------------------------------------------------------------------


def test_cli_generates_from_the_sample_with_the_template_backend(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate-prompts", "--source", "sample", "--backend", "template",
                                      "--limit", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "duplicate rows collapsed" in result.output and "synthetic: train 5" in result.output
    assert len(read_jsonl(out / prompt_dataset.PROMPTS_FILE)) == 5
    assert json.loads((out / prompt_dataset.SUMMARY_FILE).read_text())["limit"] == 5


def test_cli_user_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["generate-prompts", "--source", "sample", "--backend", "llm", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "PRIME_API_KEY is not set" in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["generate-prompts", "--backend", "gpt"])
    assert bad.exit_code == 2
