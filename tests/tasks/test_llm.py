"""The LLM machinery through Prefect (``tasks/llm/``) against loopback servers: results,
retries, the concurrency limit, caching and resuming, auth failures, secrets, counts, prompt-cache
accounting and the Prefect artifacts."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest

from prefect import flow

from kernelbook_lib import llm, prompt_gen
from kernelbook_lib.errors import UserError
from kernelbook_lib.llm import LLMAuthError, LLMRequest
from kernelbook_lib.rubric import JUDGE_TASK
from tests.fixtures.fake_data import judge_requests
from tests.fixtures.llm_server import expected_judge_reply, fault_marker, prompt_hash
from tasks.llm import LLMRunResult, run_llm_requests
from tests.fixtures.llm import LLM_TEST_KEY

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


def run_in_flow(requests: list[LLMRequest], task: llm.LLMTask = JUDGE_TASK, **kwargs) -> LLMRunResult:
    @flow(name="llm-test")
    def llm_test_flow() -> LLMRunResult:
        return run_llm_requests(task, requests, **kwargs)

    return llm_test_flow()


def marked(marker: str, i: int) -> LLMRequest:
    return JUDGE_TASK.request("test/judge-model", module_name=f"Mod{i}", python_code=f"import torch\n# case {i} {marker}",
                              solution=f"answer {i}")


def calls_for(server, request: LLMRequest) -> int:
    return server.stats()["calls_by_hash"].get(prompt_hash(list(request.messages)), 0)


def test_results_concurrency_cache_and_refresh(llm_server, llm_env, caplog):
    llm_env(llm_server, llm_concurrency=4, llm_price_input_per_mtok=1.0, llm_price_output_per_mtok=2.0)
    distinct = judge_requests(30)
    requests = distinct + [distinct[3], distinct[7]]  # the same prompt twice is one call

    caplog.set_level(logging.INFO)
    first = run_in_flow(requests, progress_label="judge", chunk_size=4)  # 8 task runs
    assert "judge: 32/32 requests done (100.0%)" in caplog.text and "judge: accounting" in caplog.text
    stats = llm_server.stats()
    assert len(first.outcomes) == len(requests)
    for request, outcome in zip(requests, first.outcomes, strict=True):  # in request order
        assert outcome.key == request.key and outcome.ok and not outcome.cached and outcome.calls == 1
        assert outcome.reply == expected_judge_reply(list(request.messages))
    assert stats["calls_total"] == 30
    assert stats["max_in_flight"] <= 4
    acc = first.accounting
    assert (acc["requests"], acc["distinct_requests"], acc["succeeded"], acc["failed"]) == (32, 30, 32, 0)
    assert (acc["calls_made"], acc["cache_hits"], acc["failures_by_kind"]) == (30, 0, {})
    assert acc["prompt_tokens"] > 0 and acc["completion_tokens"] > 0
    # No cached-input price set: cached prompt tokens cost the input price.
    assert acc["estimated_cost_usd"] == pytest.approx((acc["prompt_tokens"] + 2 * acc["completion_tokens"]) / 1e6)

    again = run_in_flow(requests, progress_label="judge")
    assert llm_server.stats()["calls_total"] == 30  # the second run made no call
    assert all(o.cached and o.calls == 0 for o in again.outcomes)
    assert [o.reply for o in again.outcomes] == [o.reply for o in first.outcomes]
    assert (again.accounting["cache_hits"], again.accounting["calls_made"]) == (32, 0)

    refreshed = run_in_flow(requests, refresh=True)
    assert llm_server.stats()["calls_total"] == 60
    assert all(o.ok and not o.cached for o in refreshed.outcomes)
    assert run_in_flow(requests).accounting["calls_made"] == 0  # the refreshed answers were stored


def test_every_fault_is_retried_or_recorded(make_llm_server, llm_env):
    server = make_llm_server(latency=0.02, hang_s=30)
    llm_env(server, llm_retries=2, llm_timeout_s=0.5, llm_max_prompt_chars=20_000)
    cases = {
        "rate_limited_once": marked(fault_marker("429", 1, 0.3), 0),
        "server_error_twice": marked(fault_marker("500", 2), 1),
        "malformed": marked(fault_marker("malformed"), 2),
        "tags": marked(fault_marker("tags"), 3),
        "hang": marked(fault_marker("hang"), 4),
        "bad_request": marked(fault_marker("400"), 5),
        "not_found": marked(fault_marker("404"), 6),
        "too_long": marked("x" * 25_000, 7),
        "fine": marked("", 8),
    }
    requests = list(cases.values())
    result = run_in_flow(requests, chunk_size=3)
    out = dict(zip(cases, result.outcomes, strict=True))

    assert out["rate_limited_once"].ok and calls_for(server, cases["rate_limited_once"]) == 2
    arrivals = server.stats()["times_by_hash"][prompt_hash(list(cases["rate_limited_once"].messages))]
    assert arrivals[1] - arrivals[0] >= 0.3  # Retry-After honoured
    assert out["server_error_twice"].ok and out["server_error_twice"].calls == 3
    assert out["malformed"].failure_kind == llm.INVALID_REPLY and calls_for(server, cases["malformed"]) == 3
    tags_expected = expected_judge_reply(list(cases["tags"].messages))
    assert out["tags"].ok and out["tags"].reply == {**tags_expected, "rationale": ""}
    assert out["hang"].failure_kind == llm.TIMEOUT and out["hang"].calls == 3
    assert out["bad_request"].failure_kind == llm.BAD_REQUEST and calls_for(server, cases["bad_request"]) == 1
    assert out["not_found"].failure_kind == llm.NOT_FOUND and calls_for(server, cases["not_found"]) == 1
    assert out["too_long"].failure_kind == llm.PROMPT_TOO_LONG and calls_for(server, cases["too_long"]) == 0
    assert out["fine"].ok and out["fine"].reply == expected_judge_reply(list(cases["fine"].messages))
    for name in ("malformed", "hang", "bad_request", "not_found", "too_long"):
        assert not out[name].ok and out[name].failure_detail  # recorded with a reason, never dropped

    acc = result.accounting
    assert acc["failures_by_kind"] == {"bad_request": 1, "invalid_reply": 1, "not_found": 1,
                                       "prompt_too_long": 1, "timeout": 1}
    assert acc["succeeded"] + acc["failed"] == len(requests)
    assert acc["calls_made"] == server.stats()["calls_total"] == 2 + 3 + 3 + 1 + 3 + 1 + 1 + 0 + 1

    # Failures are not cached: the next run asks again for them, and only for them.
    before = server.stats()["calls_total"]
    rerun = run_in_flow(requests, chunk_size=3)
    assert rerun.accounting["cache_hits"] == 4
    assert server.stats()["calls_total"] - before == 3 + 3 + 1 + 1  # malformed, hang, 400, 404


def test_wrong_key_stops_the_run_at_once(make_llm_server, llm_env):
    server = make_llm_server(api_key="sk-the-server-wants-another-key", echo_key_in_errors=True)
    llm_env(server, llm_concurrency=4, llm_retries=3)
    with pytest.raises(LLMAuthError) as caught:
        run_in_flow(judge_requests(40))
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert "HTTP 401" in message and "PRIME_API_KEY" in message
    assert LLM_TEST_KEY not in message
    assert server.stats()["calls_total"] <= 4  # at most the first wave; nothing retried


def test_wrong_team_stops_the_run_with_a_team_hint(make_llm_server, llm_env):
    server = make_llm_server(team_id="team-42")
    llm_env(server, prime_team_id="team-7", llm_concurrency=2)
    with pytest.raises(LLMAuthError, match="PRIME_TEAM_ID") as caught:
        run_in_flow(judge_requests(10))
    assert "HTTP 403" in str(caught.value)
    assert server.stats()["calls_total"] <= 2


def test_the_key_appears_in_no_log_cache_file_or_exception(make_llm_server, llm_env, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    server = make_llm_server(latency=0.02)
    env = llm_env(server, llm_retries=1)
    requests = [marked(fault_marker(kind), i) for i, kind in enumerate(("500", "malformed", "400", "tags"))]
    requests += judge_requests(4)
    run_in_flow(requests)

    echoing = make_llm_server(api_key="sk-the-server-wants-another-key", echo_key_in_errors=True)
    llm_env(echoing)
    with pytest.raises(LLMAuthError) as caught:
        run_in_flow(judge_requests(3, seed=99))  # not cached: they reach the server
    exception_text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)

    assert LLM_TEST_KEY not in exception_text
    assert caplog.records and LLM_TEST_KEY not in caplog.text
    assert all(LLM_TEST_KEY not in str(r.__dict__) for r in caplog.records)
    files = [p for p in Path(env["KERNELBOOK_CACHE_DIR"]).rglob("*") if p.is_file()]
    assert files and all(LLM_TEST_KEY.encode() not in p.read_bytes() for p in files)


def test_damaged_cache_entries_are_misses_with_a_warning(llm_server, llm_env, caplog):
    env = llm_env(llm_server)
    requests = judge_requests(6)
    first = run_in_flow(requests)
    cache = Path(env["KERNELBOOK_CACHE_DIR"]) / "llm"
    paths = [cache / request.key[:2] / f"{request.key}.json" for request in requests]
    assert all(p.is_file() for p in paths)
    truncated, edited, garbage = paths[0], paths[1], paths[2]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    original = expected_judge_reply(list(requests[1].messages))["difficulty"]
    text = edited.read_text()
    needle = f'\\"difficulty\\": {original}'
    assert needle in text  # the reply is stored as JSON inside Prefect's JSON record
    edited.write_text(text.replace(needle, f'\\"difficulty\\": {(original + 1) % 11}'))  # still valid JSON
    garbage.write_bytes(b"\x00\xff not json")

    caplog.set_level(logging.WARNING)
    again = run_in_flow(requests)
    assert llm_server.stats()["calls_total"] == 6 + 3
    assert [o.reply for o in again.outcomes] == [o.reply for o in first.outcomes]  # never a wrong score
    assert [o.cached for o in again.outcomes] == [False, False, False, True, True, True]
    assert again.accounting["cache_warnings"] == 3
    assert caplog.text.count("ignoring damaged cache entry") == 3


def test_a_server_set_limit_wins_over_llm_concurrency(llm_server, llm_env, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.utilities.asyncutils import run_coro_as_sync

    env = llm_env(llm_server, llm_concurrency=8)

    async def create() -> None:
        async with get_client() as client:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=env["LLM_CONCURRENCY_LIMIT_NAME"], limit=2))

    run_coro_as_sync(create())
    caplog.set_level(logging.INFO)
    result = run_in_flow(judge_requests(16))
    assert all(o.ok for o in result.outcomes)
    assert llm_server.stats()["max_in_flight"] <= 2
    assert result.accounting["concurrency"] == 2
    assert "using the server's value" in caplog.text


CHILD = textwrap.dedent(
    """
    import sys
    import tasks
    from prefect import flow
    from tests.fixtures.fake_data import judge_requests
    from kernelbook_lib.rubric import JUDGE_TASK
    from tasks.llm import run_llm_requests

    @flow(name="llm-killed")
    def killed():
        run_llm_requests(JUDGE_TASK, judge_requests(int(sys.argv[1])))

    killed()
    """
)


@pytest.mark.slow
def test_a_killed_run_resumes_without_paying_twice(make_llm_server, llm_env, tmp_path):
    from prefect.settings import PREFECT_API_URL

    server = make_llm_server(latency=0.2)
    env = llm_env(server, llm_concurrency=4)
    n = 60
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child_env = {**os.environ, **env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "child.log"
    with log.open("wb") as sink:
        child = subprocess.Popen([sys.executable, str(script), str(n)], env=child_env, cwd=ROOT,
                                 stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while server.stats()["calls_total"] < 16:
            assert child.poll() is None, f"the child run ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the child run made no progress"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    made_before_kill = server.stats()["calls_total"]
    assert made_before_kill < n

    resumed = run_in_flow(judge_requests(n))  # must not wait for the dead run's slots
    assert all(o.ok for o in resumed.outcomes)
    total = server.stats()["calls_total"]
    assert total <= n + 4  # every answer paid once, plus at most the calls in flight at the kill
    assert resumed.accounting["cache_hits"] >= made_before_kill - 4
    for request, outcome in zip(judge_requests(n), resumed.outcomes, strict=True):
        assert outcome.reply == expected_judge_reply(list(request.messages))


def test_a_missing_prefect_limit_fails_loudly_instead_of_hanging(llm_server, llm_env, monkeypatch):
    import tasks.llm.run as llm_run  # the module that calls it

    llm_env(llm_server)

    async def limit_not_created(name, wanted, logger):  # as if someone deleted the limit
        return wanted

    monkeypatch.setattr(llm_run, "ensure_concurrency_limit", limit_not_created)
    with pytest.raises(RuntimeError, match="could not lease slots from Prefect concurrency limit"):
        run_in_flow(judge_requests(3))
    assert llm_server.stats()["calls_total"] == 0


def test_async_flows_use_arun_llm_requests(llm_server, llm_env):
    import asyncio

    from tasks.llm import arun_llm_requests

    llm_env(llm_server)
    requests = judge_requests(5)

    @flow(name="llm-test-async")
    async def llm_async_flow() -> LLMRunResult:
        return await arun_llm_requests(JUDGE_TASK, requests, progress_label="judge")

    result = asyncio.run(llm_async_flow())
    assert [o.reply for o in result.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]


def test_every_count_of_cache_hits_agrees_with_the_accounting(llm_server, llm_env, caplog):
    """The log lines once said 16 cached while the accounting said 17 (a prompt two rows share
    counted once in one, twice in the other). One tally feeds both."""
    llm_env(llm_server)
    distinct = judge_requests(6)
    requests = distinct + [distinct[0], distinct[2]]  # two prompts asked by two rows each
    run_in_flow(requests[:4] + requests[6:], progress_label="judge")  # caches 4 of the 6 prompts
    caplog.clear()
    caplog.set_level(logging.INFO)
    again = run_in_flow(requests, progress_label="judge")
    acc = again.accounting
    assert acc["cache_hits"] == sum(o.cached for o in again.outcomes) == 6  # rows 0-3 and both repeats
    assert acc["calls_made"] == 2 and acc["succeeded"] == 8
    logged = [int(a or b) for a, b in re.findall(r"(\d+) answered from the cache|cache hits (\d+)", caplog.text)]
    assert len(logged) >= 2 and set(logged) == {acc["cache_hits"]}, logged
    final = [line for line in caplog.text.splitlines() if "(finished)" in line]
    assert len(final) == 1 and "judge: 8/8 requests done (100.0%)" in final[0] and "calls 2" in final[0]


def test_cached_prompt_tokens_are_accounted_and_priced_apart(llm_server, llm_env, caplog):
    llm_env(llm_server, llm_concurrency=1, llm_price_input_per_mtok=2.0, llm_price_output_per_mtok=8.0,
            llm_price_cached_input_per_mtok=0.5)
    caplog.set_level(logging.INFO)
    result = run_in_flow(judge_requests(5))
    acc, stats = result.accounting, llm_server.stats()
    assert acc["prompt_tokens"] == stats["prompt_tokens"] and acc["cached_prompt_tokens"] == stats["cached_prompt_tokens"]
    assert 0 < acc["cached_prompt_tokens"] < acc["prompt_tokens"]  # one call at a time: calls 2-5 hit the system prompt
    assert acc["cached_prompt_share"] == pytest.approx(acc["cached_prompt_tokens"] / acc["prompt_tokens"], abs=1e-4)
    uncached = acc["prompt_tokens"] - acc["cached_prompt_tokens"]
    assert acc["estimated_cost_usd"] == pytest.approx(
        (uncached * 2.0 + acc["cached_prompt_tokens"] * 0.5 + acc["completion_tokens"] * 8.0) / 1e6, abs=1e-6)
    assert re.search(r"tokens \S+ in \(\d+% cached\) / \S+ out", caplog.text)
    assert sum(o.cached_prompt_tokens for o in result.outcomes) == acc["cached_prompt_tokens"]


def read_artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


def test_progress_and_failures_are_prefect_artifacts_with_stable_keys(make_llm_server, llm_env):
    server = make_llm_server(latency=0.01)
    llm_env(server, llm_retries=0)
    requests = judge_requests(4) + [marked(fault_marker("400"), 1), marked(fault_marker("malformed"), 2)]
    run_in_flow(requests[:2], progress_label="judge")  # so the next run starts a third done
    before = {a.id for a in read_artifacts("judge-progress")}

    result = run_in_flow(requests, progress_label="judge")
    assert result.accounting["failed"] == 2
    progress = [a for a in read_artifacts("judge-progress") if a.id not in before]
    assert len(progress) == 1 and progress[0].type == "progress"
    assert float(progress[0].data) == 100.0  # created at 33.3 % (the cache hits), updated to the end
    failures = sorted(read_artifacts("judge-failures"), key=lambda a: a.created)[-1]
    assert failures.type == "table"
    table = __import__("json").loads(failures.data)
    assert sorted((row["failure"], row["requests"], row["ledger reason"]) for row in table) == [
        ("bad_request", 1, "judge_failed:bad_request"), ("invalid_reply", 1, "judge_invalid_reply")]
    assert all(row["example"] for row in table) and LLM_TEST_KEY not in failures.data

    # The prompt generator's stage has keys of its own.
    spec = prompt_gen.SPECIFICATION_TASK.request("test/model", module_name="Gate",
                                                 python_code="import torch\nclass Gate(torch.nn.Module):\n    pass\n")
    run_in_flow([spec], task=prompt_gen.SPECIFICATION_TASK)
    assert read_artifacts("generate-progress") and read_artifacts("generate-failures")


def test_the_progress_artifact_is_updated_while_the_calls_run(make_llm_server, llm_env, monkeypatch):
    import tasks.llm.reporting as llm_reporting  # the module that reads them

    server = make_llm_server(latency=0.3)
    llm_env(server, llm_concurrency=1)
    monkeypatch.setattr(llm_reporting, "PROGRESS_TICK_S", 0.05)
    monkeypatch.setattr(llm_reporting, "ARTIFACT_EVERY_S", 0.0)
    seen: list[float] = []
    real_update = llm_reporting.aupdate_progress_artifact

    async def recording_update(artifact_id, progress, **kwargs):
        seen.append(progress)
        return await real_update(artifact_id, progress=progress, **kwargs)

    monkeypatch.setattr(llm_reporting, "aupdate_progress_artifact", recording_update)
    run_in_flow(judge_requests(4, seed=5), progress_label="judge")
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert [p for p in seen if 0 < p < 100], seen  # at least one value between the start and the end
    assert float(sorted(read_artifacts("judge-progress"), key=lambda a: a.created)[-1].data) == 100.0
