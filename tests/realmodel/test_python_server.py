"""The judge against llama-cpp-python's server (``python -m llama_cpp.server``), which refuses
``response_format: {"type": "json_schema"}`` (it knows ``text`` and ``json_object`` with an
optional ``schema``): the structured-output fallback's real counterpart (docs/realmodel.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from kernelbook_lib.rubric import JUDGE_RESPONSE_FORMAT
from tests.realmodel.conftest import RealServer, realmodel_settings
from tests.realmodel.runs import JUDGE_FAILURE_PREFIXES, curate, overflow_source

pytestmark = [pytest.mark.realmodel, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(900)]


def chat(server: RealServer, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_the_python_server_refuses_json_schema_and_accepts_json_object(python_server):
    """What the fallback has to cope with, as this server version answers it."""
    messages = [{"role": "user", "content": "Grade this kernel: x + 1. Answer in JSON."}]
    status, body = chat(python_server, {"model": python_server.model, "messages": messages, "response_format": JUDGE_RESPONSE_FORMAT})
    assert status >= 400 and "response_format" in body, (status, body[:500])
    schema = JUDGE_RESPONSE_FORMAT["json_schema"]["schema"]
    status, body = chat(python_server, {"model": python_server.model, "messages": messages, "max_tokens": 200,
                                        "response_format": {"type": "json_object", "schema": schema}})
    assert status == 200, body[:500]
    assert json.loads(body)["usage"]["prompt_tokens"] > 0


@pytest.fixture(scope="module")
def judge_run(python_server, prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("python-judge")
    with realmodel_settings(python_server, tmp / "cache"):
        run = curate(tmp / "out", "--limit", "2")
    print(f"\njudge on the Python server: 2 rows in {run.wall_s:.1f} s")
    return run


def test_every_row_is_judged_or_recorded_never_a_crash(judge_run):
    run = judge_run
    assert run.exit_code == 0, run.output
    assert "Traceback" not in run.output
    judge = run.stage("run_summary.json", "judge")
    assert judge["rows_in"] == 2
    rejected = run.judge_rejections()
    assert run.filtered().height + len(rejected) == 2
    assert all(r["reason"].startswith(JUDGE_FAILURE_PREFIXES) for r in rejected), rejected
    accounting = run.json("run_summary.json")["llm"]
    assert accounting["calls_made"] >= 1 and accounting["failed"] == len(rejected)


def test_the_judge_falls_back_from_json_schema_to_json_object_and_says_so(judge_run):
    """The server's HTTP 500 naming ``response_format`` makes the run fall back (docs/llm.md,
    "Structured-output fallback"); JSON mode with the schema (a grammar) then gives verdicts."""
    accounting = judge_run.json("run_summary.json")["llm"]
    assert accounting["structured_output_fallbacks"] == ["json_schema->json_object"], accounting
    assert accounting["structured_output"] == "json_object"
    assert "server_error" not in accounting["failures_by_kind"], accounting
    assert accounting["succeeded"] >= 1 and accounting["prompt_tokens"] > 0 and accounting["completion_tokens"] > 0


@pytest.fixture(scope="module")
def overflow_run(python_server, prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("python-overflow")
    with realmodel_settings(python_server, tmp / "cache", llm_retries=2):
        return curate(tmp / "out", source=str(overflow_source(tmp)))


def test_a_prompt_over_the_context_is_recorded_once_after_the_fallback(overflow_run):
    run = overflow_run
    assert run.exit_code == 0, run.output
    [row] = run.judge_rejections()
    assert row["reason"].startswith(JUDGE_FAILURE_PREFIXES), row
    assert "maximum context length is 8192 tokens" in row["detail"], row  # OpenAI's wording, code context_length_exceeded
    accounting = run.json("run_summary.json")["llm"]
    # One call refused for its response_format (HTTP 500), one refused for its length (HTTP 400).
    assert accounting["calls_made"] == 2 and accounting["failed"] == 1, accounting


def test_a_prompt_over_the_context_is_recorded_as_its_own_kind(overflow_run):
    [row] = overflow_run.judge_rejections()
    assert row["reason"] == "judge_prompt_too_long" and "context" in row["detail"], row
