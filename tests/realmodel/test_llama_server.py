"""The judge and the prompt generator against llama.cpp's own ``llama-server`` with a real model.

A 135M-parameter model's verdicts and specifications are worth nothing: these tests check the
plumbing (requests a real server accepts, real usage numbers, every row judged or recorded with
its failure kind, bounded retries), never the grades (docs/realmodel.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from kernelbook_lib import prompt_gen
from kernelbook_lib.rubric import JUDGE_RESPONSE_FORMAT
from tests.realmodel.conftest import RealServer, realmodel_settings, require_built
from tests.realmodel.runs import (
    GENERATE_FAILURE_PREFIXES,
    JUDGE_FAILURE_PREFIXES,
    curate,
    generate,
    generate_rejections,
    generated,
    overflow_source,
)

pytestmark = [pytest.mark.realmodel, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(900)]


def chat(server: RealServer, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer x"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# --- the server itself: what it does with our requests ---------------------------------------------


def test_llama_server_enforces_our_json_schema(llama_server):
    """The judge's strict ``response_format: json_schema`` is accepted and enforced (a grammar):
    the reply is the schema's object, with usage numbers."""
    status, body = chat(llama_server, {"model": llama_server.model, "response_format": JUDGE_RESPONSE_FORMAT,
                                       "messages": [{"role": "user", "content": "Grade this kernel: x + 1."}]})
    assert status == 200, body
    reply = json.loads(body["choices"][0]["message"]["content"]) if body["choices"][0]["finish_reason"] == "stop" else None
    if reply is not None:  # a reply cut by the length cap is not JSON (about one in twenty)
        assert set(reply) == {"difficulty", "style", "rationale"}
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0


# --- the judge ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge_run(llama_server, prefect_harness, tmp_path_factory):
    """``curate --judge llm --limit 3`` on the bundled sample, then the same run again."""
    tmp = tmp_path_factory.mktemp("judge")
    with realmodel_settings(llama_server, tmp / "cache"):
        first = curate(tmp / "out", "--limit", "3")
        again = curate(tmp / "again", "--limit", "3")
    print(f"\njudge: 3 rows in {first.wall_s:.1f} s, the cached re-run in {again.wall_s:.1f} s")
    return first, again


def test_judge_end_to_end_judges_or_records_every_row_with_real_usage(judge_run, llama_server):
    run, _ = judge_run
    assert run.exit_code == 0, run.output
    assert "Traceback" not in run.output
    summary = run.json("run_summary.json")
    assert summary["judge"] == "llm" and summary["judge_model"] == llama_server.model
    accounting = summary["llm"]
    # Real usage numbers, reported by the server.
    assert accounting["calls_made"] >= 1
    assert accounting["prompt_tokens"] > 0 and accounting["completion_tokens"] > 0
    # Every row that reached the judge is judged or recorded with its failure kind.
    judge = run.stage("run_summary.json", "judge")
    assert judge["rows_in"] == 3
    judged = run.filtered()
    rejected = run.judge_rejections()
    assert judged.height + len(rejected) == 3 == judge["rows_out"] + sum(judge["dropped"].values())
    assert all(r["reason"].startswith(JUDGE_FAILURE_PREFIXES) for r in rejected), rejected
    assert sum(accounting["failures_by_kind"].values()) == accounting["failed"] == len(rejected)
    if judged.height:
        assert judged["judge"].unique().to_list() == ["llm"]
        assert judged["judge_model"].unique().to_list() == [llama_server.model]
        assert judged["difficulty"].is_between(0, 10).all() and judged["style"].is_between(0, 10).all()
        assert (judged["judge_prompt_tokens"] > 0).all() and (judged["judge_completion_tokens"] > 0).all()


def test_a_rerun_calls_only_for_the_rows_that_failed(judge_run):
    first, again = judge_run
    assert again.exit_code == 0, again.output
    before, after = first.json("run_summary.json")["llm"], again.json("run_summary.json")["llm"]
    assert after["cache_hits"] == before["succeeded"]
    assert after["calls_made"] <= before["failed"] * (1 + 1)  # failures are never cached; LLM_RETRIES=1


# --- a prompt longer than the model's context ------------------------------------------------------


@pytest.fixture(scope="module")
def overflow_run(llama_server, prefect_harness, tmp_path_factory):
    """One row whose judge prompt is about 30,000 tokens (under LLM_MAX_PROMPT_CHARS, so it is
    sent): the server must refuse it, once."""
    tmp = tmp_path_factory.mktemp("overflow")
    with realmodel_settings(llama_server, tmp / "cache", llm_retries=2):
        return curate(tmp / "out", source=str(overflow_source(tmp)))


def test_a_prompt_over_the_context_is_recorded_once_never_retried_nor_a_crash(overflow_run, llama_server):
    run = overflow_run
    assert run.exit_code == 0, run.output
    assert "Traceback" not in run.output
    rejected = run.judge_rejections()
    assert len(rejected) == 1 and rejected[0]["reason"].startswith(JUDGE_FAILURE_PREFIXES), rejected
    accounting = run.json("run_summary.json")["llm"]
    assert accounting["calls_made"] == 1, accounting  # a 400 is not transient: sent once, never again
    assert accounting["failed"] == 1
    # The server refused it and said why (it does not truncate the prompt silently).
    assert "exceeds the available context size (8192 tokens)" in rejected[0]["detail"], rejected


def test_a_prompt_over_the_context_is_recorded_as_its_own_kind(overflow_run):
    [row] = overflow_run.judge_rejections()
    assert row["reason"] == "judge_prompt_too_long" and "context" in row["detail"], row


# --- the length cap ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_server(realmodel_logs):
    """A llama-server whose replies stop after 8 tokens (its own ``--n-predict``): every verdict
    is cut short, whatever the request asks."""
    require_built("model", "llama-server")
    server = RealServer("llama-server", realmodel_logs / "llama-server-capped.log", extra=["--n-predict", "8"]).start()
    yield server
    server.stop()


def test_a_reply_cut_by_the_server_cap_is_recorded_as_length_at_once(capped_server, prefect_harness, tmp_path):
    """No LLM_MAX_COMPLETION_TOKENS: a ``finish_reason: length`` reply is recorded, not retried."""
    with realmodel_settings(capped_server, tmp_path / "cache", llm_retries=2):
        run = curate(tmp_path / "out", "--limit", "1")
    assert run.exit_code == 0, run.output
    [row] = run.judge_rejections()
    assert row["reason"] == "judge_failed:length", row
    accounting = run.json("run_summary.json")["llm"]
    assert accounting["calls_made"] == 1, accounting  # LLM_RETRIES=2 spent on nothing
    assert 0 < accounting["completion_tokens"] <= 8


def test_a_reply_cut_by_our_budget_is_sent_again_with_twice_the_budget_then_recorded(llama_server, prefect_harness, tmp_path):
    """LLM_MAX_COMPLETION_TOKENS=4: the server honours ``max_completion_tokens``; the cut reply is
    re-sent once with 8 tokens (LENGTH_RETRIES), still cut, then recorded."""
    with realmodel_settings(llama_server, tmp_path / "cache", llm_retries=2, llm_max_completion_tokens=4):
        run = curate(tmp_path / "out", "--limit", "1")
    assert run.exit_code == 0, run.output
    [row] = run.judge_rejections()
    assert row["reason"] == "judge_failed:length", row
    accounting = run.json("run_summary.json")["llm"]
    assert accounting["calls_made"] == 2, accounting
    assert 0 < accounting["completion_tokens"] <= 4 + 8, accounting


# --- the prompt generator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generate_run(llama_server, prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    with realmodel_settings(llama_server, tmp / "cache"):
        run = generate(tmp / "out", "--limit", "2")
    print(f"\ngenerate-prompts: 2 modules in {run.wall_s:.1f} s")
    return run


def test_generator_end_to_end_writes_or_records_every_module_with_real_usage(generate_run, llama_server):
    run = generate_run
    # A 135M model may fail both modules (e.g. a reply run to the length cap): the run then writes
    # everything, records both and exits 1 with one line saying so, which is the plumbing working.
    assert run.exit_code == 0 or (run.exit_code == 1 and "no specification could be generated" in run.output), run.output
    assert "Traceback" not in run.output
    summary = run.json("synthetic_summary.json")
    assert summary["generator"] == "llm" and summary["generator_model"] == llama_server.model
    accounting = summary["llm"]
    assert accounting["calls_made"] >= 1
    assert accounting["prompt_tokens"] > 0 and accounting["completion_tokens"] > 0
    stage = run.stage("synthetic_summary.json", "generate")
    assert stage["rows_in"] == 2
    written, rejected = generated(run), generate_rejections(run)
    assert len(written) + len(rejected) == 2
    assert all(r["reason"].startswith(GENERATE_FAILURE_PREFIXES) for r in rejected), rejected
    for row in written:  # what was written passed the generator's checks
        assert f"{row['module_name']}New" in row["prompt"]
        assert row["generator_prompt_version"] == prompt_gen.GENERATOR_PROMPT_VERSION and row["generator_prompt_tokens"] > 0



# --- judge reliability ---------------------------------------------------------------------------


def test_three_samples_per_row_give_a_real_within_model_alpha(llama_server, prefect_harness, tmp_path):
    """``--judge-samples 3`` against a real model at temperature 1: three cached calls per row, the
    verdicts kept per row, and an alpha the model really earned (its value is the model's, not
    asserted; a 135M model's agreement with itself is no measure of anything)."""
    with realmodel_settings(llama_server, tmp_path / "cache", llm_temperature=1.0):
        run = curate(tmp_path / "out", "--limit", "3", "--judge-samples", "3")
    assert run.exit_code == 0, run.output
    summary = run.json("run_summary.json")
    judged = run.filtered()
    assert summary["llm"]["calls_made"] >= 3 * judged.select("problem_id").unique().height
    for verdicts in judged.get_column("judge_verdicts").to_list():
        assert sorted(v["sample"] for v in verdicts) == [0, 1, 2] or len(verdicts) < 3  # a failed extra sample is missing
    reliability = summary["judge_reliability"]
    print(f"\njudge reliability of {llama_server.model}, 3 samples at temperature 1: {reliability['grades']}")
    assert reliability is None or reliability["rows_measured"] == judged.filter(judged["judge_verdicts"].list.len() > 1).height
