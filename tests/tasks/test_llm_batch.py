"""Batch mode (``tasks/llm/batch.py``) against the loopback server's Batch API: a batch run
equals an online run, a re-run makes no request, a stopped or killed run collects its batches
without submitting them again, expired and failed requests are resubmitted then recorded, a
provider without the Batch API stops the run at once, and ``no_wait`` raises its own error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tasks  # noqa: F401  (Prefect environment defaults, before prefect)

from prefect import flow

from kernelbook_lib import llm, llm_batch
from kernelbook_lib.errors import BatchesPendingError, UserError
from kernelbook_lib.llm import LLMAuthError, LLMRequest
from kernelbook_lib.rubric import JUDGE_TASK
from kernelbook_lib.settings import load_settings
from tasks.llm import LLMRunResult, run_llm_requests
from tests.fixtures.fake_data import judge_requests
from tests.fixtures.llm_server import expected_judge_reply, fault_marker, prompt_hash

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]
#: What a re-run must not touch on the server.
REQUESTS_MADE = ("calls_total", "files_uploaded", "batches_created", "batch_lines_total")


def run_in_flow(requests: list[LLMRequest], **kwargs) -> LLMRunResult:
    @flow(name="llm-batch-test")
    def llm_batch_test_flow() -> LLMRunResult:
        return run_llm_requests(JUDGE_TASK, requests, **kwargs)

    return llm_batch_test_flow()


def batch(requests: list[LLMRequest], **kwargs) -> LLMRunResult:
    return run_in_flow(requests, llm_mode="batch", **kwargs)


def marked(marker: str, i: int) -> LLMRequest:
    return JUDGE_TASK.request("test/judge-model", module_name=f"Mod{i}", python_code=f"import torch\n# case {i} {marker}",
                              solution=f"answer {i}")


def made(server) -> dict[str, int]:
    stats = server.stats()
    return {name: stats[name] for name in REQUESTS_MADE}


def jobs(env: dict[str, str]) -> list[Path]:
    return sorted((Path(env["KERNELBOOK_CACHE_DIR"]) / "batches").glob("*.json"))


def test_a_batch_run_equals_an_online_run_and_a_rerun_makes_no_request(make_llm_server, llm_env, monkeypatch, tmp_path):
    # The server enforces limits of its own; the settings split within them.
    server = make_llm_server(latency=0.0, batch_max_requests=8, batch_max_bytes=40_000)
    env = llm_env(server, llm_batch_poll_s=0.01, llm_batch_max_requests=8, llm_batch_max_bytes=40_000,
                  llm_price_input_per_mtok=2.0, llm_price_output_per_mtok=8.0)
    distinct = judge_requests(30)
    requests = distinct + [distinct[4], distinct[9]]  # a prompt two rows share is submitted once

    online = run_in_flow(requests)
    monkeypatch.setenv("KERNELBOOK_CACHE_DIR", str(tmp_path / "batch-cache"))
    env["KERNELBOOK_CACHE_DIR"] = str(tmp_path / "batch-cache")
    before = server.stats()
    result = batch(requests)
    stats = server.stats()

    assert [o.reply for o in result.outcomes] == [o.reply for o in online.outcomes]  # row for row
    for request, outcome in zip(requests, result.outcomes, strict=True):
        assert outcome.key == request.key and outcome.ok and not outcome.cached
        assert outcome.reply == expected_judge_reply(list(request.messages))
    assert stats["calls_total"] == before["calls_total"]  # no online call in batch mode
    assert stats["batch_lines_total"] - before["batch_lines_total"] == 30
    acc = result.accounting
    assert acc["mode"] == "batch" and acc["batches"] == stats["batches_created"] - before["batches_created"] >= 4
    assert len(acc["batch_ids"]) == acc["batches"] and all(i.startswith("batch") for i in acc["batch_ids"])
    assert acc["bytes_uploaded"] == stats["bytes_uploaded"] - before["bytes_uploaded"]
    assert (acc["requests"], acc["distinct_requests"], acc["succeeded"], acc["failed"], acc["calls_made"]) == (32, 30, 32, 0, 30)
    assert acc["prompt_tokens"] == online.accounting["prompt_tokens"]
    online_price = llm.estimated_cost(acc["prompt_tokens"], acc["completion_tokens"], load_settings(),
                                      acc["cached_prompt_tokens"])
    assert acc["batch_price_factor"] == 0.5 and acc["estimated_cost_usd"] == pytest.approx(0.5 * online_price, abs=1e-6)
    assert not jobs(env)  # a finished job leaves no job file

    # Interchangeable: the same cache answers a batch re-run and an online run; neither asks anything.
    before = made(server)
    again = batch(requests)
    assert made(server) == before
    assert all(o.cached and o.calls == 0 for o in again.outcomes) and again.accounting["cache_hits"] == 32
    assert run_in_flow(requests).accounting["calls_made"] == 0 and made(server) == before

    # --refresh in batch mode submits everything again.
    refreshed = batch(requests, refresh=True)
    assert all(o.ok and not o.cached for o in refreshed.outcomes)
    assert server.stats()["batch_lines_total"] - before["batch_lines_total"] == 30


def test_expired_and_failed_requests_are_resubmitted_then_recorded(make_llm_server, llm_env):
    server = make_llm_server(latency=0.0)
    env = llm_env(server, llm_retries=2, llm_batch_poll_s=0.01)
    cases = {
        "expired_once": marked(fault_marker("expired", 1), 0),
        "always_expired": marked(fault_marker("expired"), 1),
        "server_error_once": marked(fault_marker("500", 1), 2),
        "bad_request": marked(fault_marker("400"), 3),
        "not_found": marked(fault_marker("404"), 4),
        "malformed": marked(fault_marker("malformed"), 5),
        "hang": marked(fault_marker("hang"), 6),
        "fine": marked("", 7),
    }
    result = batch(list(cases.values()))
    out = dict(zip(cases, result.outcomes, strict=True))

    def submitted(name: str) -> int:
        return server.stats()["calls_by_hash"].get(prompt_hash(list(cases[name].messages)), 0)

    assert out["expired_once"].ok and submitted("expired_once") == 2
    assert out["expired_once"].reply == expected_judge_reply(list(cases["expired_once"].messages))
    assert out["server_error_once"].ok and submitted("server_error_once") == 2
    assert out["always_expired"].failure_kind == llm_batch.EXPIRED and submitted("always_expired") == 3  # 1 + LLM_RETRIES
    assert llm.ledger_reason("judge", out["always_expired"].failure_kind) == "judge_failed:expired"
    assert out["bad_request"].failure_kind == llm.BAD_REQUEST and submitted("bad_request") == 1  # recorded at once
    assert out["not_found"].failure_kind == llm.NOT_FOUND and submitted("not_found") == 1
    assert out["malformed"].failure_kind == llm.INVALID_REPLY and submitted("malformed") == 3
    assert out["hang"].failure_kind == llm.TIMEOUT and submitted("hang") == 3
    assert out["fine"].ok and submitted("fine") == 1
    for name in ("always_expired", "bad_request", "not_found", "malformed", "hang"):
        assert not out[name].ok and out[name].failure_detail  # recorded with a reason, never dropped
    acc = result.accounting
    assert acc["failures_by_kind"] == {"bad_request": 1, "expired": 1, "invalid_reply": 1, "not_found": 1, "timeout": 1}
    assert acc["succeeded"] + acc["failed"] == len(cases)
    assert not jobs(env)

    # Failures are not cached: the next run submits exactly the failed requests again.
    before = server.stats()["batch_lines_total"]
    rerun = batch(list(cases.values()))
    assert rerun.accounting["cache_hits"] == 3
    assert server.stats()["batch_lines_total"] - before == 3 + 1 + 1 + 3 + 3  # expired x3, 400, 404, malformed x3, hang x3


def test_a_run_stopped_while_waiting_collects_its_batches_without_submitting_again(make_llm_server, llm_env, monkeypatch):
    server = make_llm_server(latency=0.0, batch_steps=2)
    env = llm_env(server, llm_batch_poll_s=0.01, llm_batch_max_requests=5)
    requests = judge_requests(12, seed=3)
    real_client = llm.make_async_client

    class Stopped(RuntimeError):
        pass

    def stopping_client(settings, **kwargs):  # the run is stopped at its second status check
        client = real_client(settings, **kwargs)
        retrieve, checks = client.batches.retrieve, []

        async def check(*args, **kw):
            checks.append(1)
            if len(checks) > 1:
                raise Stopped("stopped while waiting")
            return await retrieve(*args, **kw)

        client.batches.retrieve = check
        return client

    monkeypatch.setattr(llm, "make_async_client", stopping_client)
    with pytest.raises(Stopped):
        batch(requests)
    submitted = made(server)
    assert submitted["batches_created"] == 3 and submitted["files_uploaded"] == 3
    [job] = jobs(env)
    saved = json.loads(job.read_text())
    assert [p["id"] for p in saved["parts"]] and all(p["id"] and not p["collected"] for p in saved["parts"])

    monkeypatch.setattr(llm, "make_async_client", real_client)
    resumed = batch(requests)
    assert made(server) == {**submitted, "batch_lines_total": 12}  # the same batches collected: nothing submitted again
    assert resumed.accounting["batch_ids"] == [p["id"] for p in saved["parts"]]
    assert [o.reply for o in resumed.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    assert resumed.accounting["bytes_uploaded"] == 0 and not jobs(env)


CHILD = textwrap.dedent(
    """
    import sys
    import tasks
    from prefect import flow
    from tests.fixtures.fake_data import judge_requests
    from kernelbook_lib.rubric import JUDGE_TASK
    from tasks.llm import run_llm_requests

    @flow(name="llm-batch-killed")
    def killed():
        run_llm_requests(JUDGE_TASK, judge_requests(int(sys.argv[1]), seed=11), llm_mode="batch")

    killed()
    """
)


@pytest.mark.slow
def test_a_run_killed_while_waiting_collects_the_same_batches(make_llm_server, llm_env, tmp_path):
    from prefect.settings import PREFECT_API_URL

    server = make_llm_server(latency=0.0, batch_steps=1_000_000)  # the batches wait until the kill
    env = llm_env(server, llm_batch_poll_s=0.05, llm_batch_max_requests=4)
    n = 10
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child_env = {**os.environ, **env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "child.log"
    with log.open("wb") as sink:
        child = subprocess.Popen([sys.executable, str(script), str(n)], env=child_env, cwd=ROOT,
                                 stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while server.stats()["batch_retrieves"] < 6:  # all 3 batches submitted and being waited for
            assert child.poll() is None, f"the child run ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the child run made no progress"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    submitted = made(server)
    assert submitted["batches_created"] == 3 and submitted["batch_lines_total"] == 0
    [job] = jobs(env)
    ids = [p["id"] for p in json.loads(job.read_text())["parts"]]

    server.app.batch_steps = 1  # the provider gets on with them
    resumed = batch(judge_requests(n, seed=11))
    assert made(server) == {**submitted, "batch_lines_total": n}  # run once each, nothing submitted again
    assert resumed.accounting["batch_ids"] == ids
    assert [o.reply for o in resumed.outcomes] == [expected_judge_reply(list(r.messages)) for r in judge_requests(n, seed=11)]
    assert not jobs(env)


def test_no_wait_submits_then_exits_with_its_own_error_and_a_later_run_collects(make_llm_server, llm_env):
    server = make_llm_server(latency=0.0)
    env = llm_env(server, llm_batch_poll_s=0.01)
    requests = judge_requests(6, seed=5)
    with pytest.raises(BatchesPendingError) as caught:
        batch(requests, no_wait=True)
    message = str(caught.value)
    assert caught.value.exit_code == 3 and isinstance(caught.value, UserError)
    assert "\n" not in message and "without --no-wait" in message and "1 batch (6 requests)" in message
    [job] = jobs(env)
    assert job.name in message
    submitted = made(server)
    assert submitted["batches_created"] == 1 and submitted["batch_lines_total"] == 0

    with pytest.raises(BatchesPendingError):  # --no-wait again: one check, still pending, nothing new
        batch(requests, no_wait=True)
    assert server.stats()["batches_created"] == 1 and server.stats()["files_uploaded"] == 1

    collected = batch(requests)
    assert made(server) == {**submitted, "batch_lines_total": 6}
    assert [o.reply for o in collected.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    assert not jobs(env)
    assert batch(requests, no_wait=True).accounting["cache_hits"] == 6  # nothing pending: the run finishes


def test_a_provider_without_the_batch_api_stops_the_run_before_any_upload(make_llm_server, llm_env):
    server = make_llm_server(batch_api=False)
    env = llm_env(server)
    with pytest.raises(UserError) as caught:
        batch(judge_requests(5))
    message = str(caught.value)
    assert "has no Batch API (HTTP 404 on /batches)" in message and "--llm-mode online" in message
    assert "\n" not in message and caught.value.exit_code == 2
    stats = server.stats()
    assert stats["batch_api_requests"] == 1 and stats["files_uploaded"] == 0 and stats["calls_total"] == 0
    assert not jobs(env)


def test_a_wrong_key_stops_the_run_before_any_upload(make_llm_server, llm_env):
    server = make_llm_server(api_key="sk-the-server-wants-another-key")
    llm_env(server)
    with pytest.raises(LLMAuthError, match="PRIME_API_KEY"):
        batch(judge_requests(5))
    assert server.stats()["files_uploaded"] == 0


def test_lines_are_the_online_body_and_files_respect_both_limits():
    requests = judge_requests(7, seed=2)
    lines = [(r.key, llm_batch.batch_line(JUDGE_TASK, r)) for r in requests]
    first = json.loads(lines[0][1])
    assert first == {"custom_id": requests[0].key, "method": "POST", "url": "/v1/chat/completions",
                     "body": llm.request_body(JUDGE_TASK, requests[0])}
    assert len(first["custom_id"]) == 64  # OpenAI's maximum
    size = max(len(line) for _, line in lines)
    files, oversized = llm_batch.split_lines(lines, max_requests=3, max_bytes=2 * size + 1)
    assert not oversized and [len(f.keys) for f in files] == [2, 2, 2, 1]
    assert [k for f in files for k in f.keys] == [r.key for r in requests]  # order kept
    assert all(len(f.content) <= 2 * size + 1 for f in files)
    files, oversized = llm_batch.split_lines(lines, max_requests=3, max_bytes=10**9)
    assert [len(f.keys) for f in files] == [3, 3, 1]
    files, oversized = llm_batch.split_lines(lines, max_requests=3, max_bytes=size - 1)
    assert len(oversized) >= 1 and all(size_ > size - 1 for _, size_ in oversized)


def test_a_batch_that_fails_validation_and_an_oversized_request_are_recorded(make_llm_server, llm_env, monkeypatch):
    server = make_llm_server(latency=0.0, batch_max_requests=2)  # the provider's limit is below the setting
    llm_env(server, llm_batch_poll_s=0.01, llm_batch_max_requests=3)
    result = batch(judge_requests(3, seed=8))
    assert [o.failure_kind for o in result.outcomes] == [llm.BAD_REQUEST] * 3
    assert all("batch failed validation" in o.failure_detail for o in result.outcomes)

    monkeypatch.setenv("LLM_BATCH_MAX_BYTES", "20000")
    requests = [marked("y" * 25_000, 0), *judge_requests(2, seed=9)]
    before = server.stats()["batch_lines_total"]
    result = batch(requests)
    assert result.outcomes[0].failure_kind == llm.BAD_REQUEST and "LLM_BATCH_MAX_BYTES" in result.outcomes[0].failure_detail
    assert all(o.ok for o in result.outcomes[1:]) and server.stats()["batch_lines_total"] - before == 2
