"""Request parameters, finish reasons, rate limits and the structured-output fallback of the LLM
machinery (``kernelbook_lib/llm.py``, ``tasks/llm/``), against loopback servers with the knobs
of ``tests/fixtures/llm_server.py`` (docs/llm.md: "Request parameters", "Rate limits",
"Structured-output fallback"). No test asserts a timing."""

from __future__ import annotations

import logging

import pytest

import tasks  # noqa: F401  (Prefect environment defaults, before prefect)

from prefect import flow

from kernelbook_lib import llm, prompt_gen
from kernelbook_lib.errors import UserError
from kernelbook_lib.llm import LLMParameterError, LLMRequest
from kernelbook_lib.rubric import JUDGE_TASK
from kernelbook_lib.settings import load_settings
from kernelbook_lib.summary import format_llm
from tasks.llm import LLMRunResult, run_llm_requests
from tests.fixtures import llm_server as loopback
from tests.fixtures.fake_data import judge_requests
from tests.fixtures.llm_server import expected_judge_reply, expected_specification, fault_marker, prompt_hash

harness = pytest.mark.usefixtures("prefect_harness")


def run_in_flow(requests: list[LLMRequest], task: llm.LLMTask = JUDGE_TASK, **kwargs) -> LLMRunResult:
    @flow(name="llm-requests-test")
    def llm_requests_test_flow() -> LLMRunResult:
        return run_llm_requests(task, requests, **kwargs)

    return llm_requests_test_flow()


def marked(marker: str, i: int) -> LLMRequest:
    return JUDGE_TASK.request("test/judge-model", module_name=f"Mod{i}", python_code=f"import torch\n# case {i} {marker}",
                              solution=f"answer {i}")


def warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


# --- the library: bodies, keys, headers (no server) -------------------------------------------


def test_the_body_holds_only_what_is_set_under_the_right_names():
    request = judge_requests(1)[0]
    body = llm.request_body(JUDGE_TASK, request)
    assert set(body) == {"model", "messages", "response_format"}  # nothing unset is sent
    assert body["response_format"] is not None and body["messages"] == list(request.messages)

    with_all = llm.request_body(JUDGE_TASK, request.with_params({"temperature": 0.2, "reasoning_effort": "low"}),
                                budget=300)
    assert (with_all["max_completion_tokens"], with_all["temperature"], with_all["reasoning_effort"]) == (300, 0.2, "low")
    old_name = llm.request_body(JUDGE_TASK, request, budget=300, token_parameter="max_tokens")
    assert old_name["max_tokens"] == 300 and "max_completion_tokens" not in old_name

    # The fallback modes: JSON mode with the schema (llama.cpp's key and the prompt), then text.
    as_json = llm.request_body(JUDGE_TASK, request, mode=llm.JSON_OBJECT)
    assert as_json["response_format"] == {"type": "json_object", "schema": JUDGE_TASK.response_format["json_schema"]["schema"]}
    as_text = llm.request_body(JUDGE_TASK, request, mode=llm.TEXT)
    assert "response_format" not in as_text
    for body in (as_json, as_text):
        system = body["messages"][0]["content"]
        assert system.startswith(JUDGE_TASK.system_prompt) and llm.FORMAT_INSTRUCTIONS_START in system
        assert body["messages"][1:] == list(request.messages[1:])  # the per-row part is untouched
    assert loopback.FORMAT_INSTRUCTIONS_START == llm.FORMAT_INSTRUCTIONS_START  # the test server knows it
    assert loopback.canonical_messages(as_text["messages"]) == list(request.messages)


def test_temperature_and_effort_are_in_the_key_and_nothing_else_is(monkeypatch):
    request = judge_requests(1)[0]
    assert request.params == {} and request.with_params({}) is request  # old keys: existing caches still hit
    hot = request.with_params({"temperature": 0.7})
    assert hot.key != request.key and hot.key == request.with_params({"temperature": 0.7}).key
    assert hot.key != request.with_params({"temperature": 0.7, "reasoning_effort": "high"}).key
    assert hot.with_params({}).key == request.key

    for name in ("LLM_TEMPERATURE", "LLM_REASONING_EFFORT", "LLM_MAX_COMPLETION_TOKENS", "LLM_TOKEN_PARAMETER"):
        monkeypatch.delenv(name, raising=False)
    assert llm.with_reply_params([request], load_settings()) == [request]
    monkeypatch.setenv("LLM_MAX_COMPLETION_TOKENS", "256")  # the budget does not change a complete reply
    monkeypatch.setenv("LLM_TOKEN_PARAMETER", "max_tokens")
    assert llm.with_reply_params([request], load_settings())[0].key == request.key
    monkeypatch.setenv("LLM_REASONING_EFFORT", "medium")
    assert llm.with_reply_params([request], load_settings())[0].params == {"reasoning_effort": "medium"}


@pytest.mark.parametrize(("name", "value"), [("LLM_REASONING_EFFORT", "extreme"), ("LLM_TEMPERATURE", "3"),
                                             ("LLM_MAX_COMPLETION_TOKENS", "0"), ("LLM_TOKEN_PARAMETER", "tokens"),
                                             ("LLM_MAX_REQUESTS_PER_MINUTE", "0"), ("LLM_MAX_TOKENS_PER_MINUTE", "-5")])
def test_bad_parameter_settings_are_a_user_error_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=name):
        load_settings()


def test_unset_parameter_settings_mean_not_sent(monkeypatch):
    for name in ("LLM_MAX_COMPLETION_TOKENS", "LLM_REASONING_EFFORT", "LLM_TEMPERATURE",
                 "LLM_MAX_REQUESTS_PER_MINUTE", "LLM_MAX_TOKENS_PER_MINUTE"):
        monkeypatch.setenv(name, "")  # `NAME=` as in .env.example
    settings = load_settings()
    assert llm.reply_params(settings) == {} and llm.CallOptions.from_settings(settings).budget is None
    assert settings.llm_max_requests_per_minute is None and settings.llm_max_tokens_per_minute is None


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("2m0s", 120.0), ("20ms", 0.02), ("1m30.5s", 90.5),
                                                ("0.25", 0.25), ("soon", None), ("", None), (None, None),
                                                ("2h", llm.MAX_RETRY_AFTER_S)])
def test_reset_durations_are_read_the_way_openai_writes_them(value, seconds):
    assert llm.parse_duration(value) == seconds


def test_rate_limit_headers_are_read_when_present():
    info = llm.parse_rate_limit_headers({"x-ratelimit-remaining-requests": "3", "x-ratelimit-remaining-tokens": "1200",
                                         "x-ratelimit-reset-requests": "850ms", "x-ratelimit-reset-tokens": "2s"})
    assert info == llm.RateLimitInfo(3, 1200, 0.85, 2.0)
    assert llm.parse_rate_limit_headers({"content-type": "application/json"}) is None
    # Wait for what is missing: without the limit, the whole reset; with it, the missing share.
    assert info.wait_for("requests", 3) == 0.0 and info.wait_for("requests", 4) == 0.85
    known = llm.RateLimitInfo(remaining_tokens=1000, reset_tokens_s=6.0, limit_tokens=7000)
    assert known.wait_for("tokens", 1500) == pytest.approx(0.5)  # 6000 tokens come back in 6 s
    assert known.wait_for("tokens", 99_000) == 6.0  # never past the reset


def _status_error(status: int, body: dict):
    import httpx2
    import openai

    response = httpx2.Response(status, request=httpx2.Request("POST", "http://127.0.0.1:1/v1/chat/completions"))
    return openai.APIStatusError(str(body.get("message")), response=response, body=body)


@pytest.mark.parametrize(("status", "body", "sent", "kind", "param"), [
    (400, {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.", "param": "max_tokens", "code": "unsupported_parameter"},
     ["response_format", "max_tokens"], llm.UNSUPPORTED_PARAMETER, "max_tokens"),
    (400, {"message": "Unsupported value: 'temperature' does not support 0.2 with this model.", "param": "temperature",
           "code": "unsupported_value"}, ["response_format", "temperature"], llm.UNSUPPORTED_PARAMETER, "temperature"),
    (422, {"message": "1 validation error: reasoning_effort: Extra inputs are not permitted"},
     ["reasoning_effort"], llm.UNSUPPORTED_PARAMETER, "reasoning_effort"),
    # One long prompt leaving too little room for the budget: that row's prompt is too long for the
    # context, not a setting to change.
    (400, {"message": "'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context "
                      "length is 8192 tokens and your request has 7500 input tokens"},
     ["response_format", "max_completion_tokens"], llm.PROMPT_TOO_LONG, None),
    (400, {"message": "Unsupported parameter: 'temperature'", "param": "temperature"}, ["response_format"],
     llm.BAD_REQUEST, None),  # not sent by us: not ours to fix
    (500, {"message": "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be "
                      "'text' or 'json_object'"}, ["response_format"], llm.FORMAT_REJECTED, None),
    (400, {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
           "param": "response_format"}, ["response_format", "max_tokens"], llm.FORMAT_REJECTED, None),
    (500, {"message": "response_format json_schema blew up"}, ["max_tokens"], llm.SERVER_ERROR, None),  # none sent
    (503, {"message": "overloaded"}, ["response_format"], llm.SERVER_ERROR, None),
    # A prompt over the model's context, as llama.cpp's llama-server and llama-cpp-python's server
    # (and OpenAI) refuse it: the row's prompt is too long, never retried, never a setting to change.
    (400, {"message": "request (30687 tokens) exceeds the available context size (8192 tokens), try increasing it",
           "type": "exceed_context_size_error"}, ["response_format", "max_tokens"], llm.PROMPT_TOO_LONG, None),
    (400, {"message": "This model's maximum context length is 8192 tokens. However, you requested 30805 tokens.",
           "code": "context_length_exceeded"}, ["response_format", "max_tokens"], llm.PROMPT_TOO_LONG, None),
])
def test_refused_parameters_and_response_formats_are_told_apart(status, body, sent, kind, param):
    failure = llm.classify(_status_error(status, body), sent=sent)
    assert (failure.kind, failure.param) == (kind, param)
    assert failure.transient == (kind == llm.SERVER_ERROR)


def test_a_larger_budget_is_doubled_once_and_capped():
    options = llm.CallOptions(budget=100)
    assert options.larger_budget(100, 1) == 200
    assert options.larger_budget(200, 2) is None  # retried once only
    assert llm.CallOptions(budget=None).larger_budget(None, 1) is None  # no budget set: never re-sent
    assert llm.CallOptions(budget=100).larger_budget(400, 1) is None  # never past MAX_BUDGET_FACTOR x the setting


# --- request parameters against a server --------------------------------------------------------


@harness
def test_each_parameter_is_sent_only_when_set_and_under_the_name_the_endpoint_takes(llm_server, llm_env, caplog):
    requests = judge_requests(6)
    env = llm_env(llm_server, llm_max_completion_tokens=None, llm_reasoning_effort=None, llm_temperature=None)
    plain = run_in_flow(requests)
    assert llm_server.stats()["params_seen"] == {}  # nothing set, nothing sent
    assert plain.accounting["structured_output"] == "json_schema" and plain.accounting["reasoning_tokens"] == 0

    # The budget is not part of the key: the same answers are found again.
    llm_env(llm_server, llm_max_completion_tokens=300, kernelbook_cache_dir=env["KERNELBOOK_CACHE_DIR"])
    assert run_in_flow(requests).accounting["calls_made"] == 0
    run_in_flow(requests, refresh=True)
    assert llm_server.stats()["params_seen"] == {"max_completion_tokens=300": 6}
    llm_server.reset()
    llm_env(llm_server, llm_max_completion_tokens=300, llm_token_parameter="max_tokens",
            kernelbook_cache_dir=env["KERNELBOOK_CACHE_DIR"])
    run_in_flow(requests, refresh=True)
    assert llm_server.stats()["params_seen"] == {"max_tokens=300": 6}

    # Temperature and effort change the reply: new keys, new calls, the caller's keys on the outcomes.
    llm_server.reset()
    llm_env(llm_server, llm_temperature=0.2, llm_reasoning_effort="low", llm_max_completion_tokens=None,
            llm_token_parameter=None, kernelbook_cache_dir=env["KERNELBOOK_CACHE_DIR"])
    caplog.set_level(logging.INFO)
    tuned = run_in_flow(requests)
    stats = llm_server.stats()
    assert stats["params_seen"] == {"temperature=0.2": 6, 'reasoning_effort="low"': 6}
    assert tuned.accounting["calls_made"] == 6 and tuned.accounting["cache_hits"] == 0
    assert [o.key for o in tuned.outcomes] == [r.key for r in requests]
    assert [o.reply for o in tuned.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    # Reasoning tokens: per outcome, summed in the accounting, printed by the summary.
    per_call = loopback.REASONING_TOKENS["low"]
    assert all(o.reasoning_tokens == per_call for o in tuned.outcomes)
    assert tuned.accounting["reasoning_tokens"] == 6 * per_call
    assert f"({6 * per_call} reasoning)" in format_llm(tuned.accounting)
    assert "reasoning" not in format_llm(plain.accounting)
    again = run_in_flow(requests)
    assert again.accounting["calls_made"] == 0 and all(o.reasoning_tokens == per_call for o in again.outcomes)


@harness
@pytest.mark.parametrize(("setting", "value", "param", "fix"), [
    ("llm_max_completion_tokens", 100, "max_completion_tokens", "LLM_TOKEN_PARAMETER=max_tokens"),
    ("llm_temperature", 0.3, "temperature", "LLM_TEMPERATURE"),
    ("llm_reasoning_effort", "high", "reasoning_effort", "LLM_REASONING_EFFORT"),
])
def test_an_unsupported_parameter_ends_the_run_with_one_line(make_llm_server, llm_env, caplog, setting, value, param, fix):
    server = make_llm_server(accepted_params=())  # a server that takes no optional parameter
    llm_env(server, llm_concurrency=4, llm_retries=3, **{setting: value})
    caplog.set_level(logging.INFO)
    with pytest.raises(LLMParameterError) as caught:
        run_in_flow(judge_requests(40))
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 2
    message = str(caught.value)
    assert "\n" not in message and f"`{param}`" in message and fix in message
    assert server.stats()["calls_total"] <= 4  # at most the first wave; nothing retried
    assert "judge_failed" not in caplog.text and "recorded as failures" not in caplog.text  # no row recorded


@harness
def test_the_old_token_parameter_name_is_one_line_too(make_llm_server, llm_env):
    server = make_llm_server(accepted_params=("max_completion_tokens",))
    llm_env(server, llm_max_completion_tokens=100, llm_token_parameter="max_tokens")
    with pytest.raises(LLMParameterError, match="LLM_TOKEN_PARAMETER=max_completion_tokens"):
        run_in_flow(judge_requests(3))
    llm_env(server, llm_max_completion_tokens=100, llm_token_parameter=None)  # the default name: accepted
    assert all(o.ok for o in run_in_flow(judge_requests(3)).outcomes)


# --- finish reasons ------------------------------------------------------------------------------


@harness
def test_a_reply_cut_at_the_budget_is_sent_again_once_with_twice_the_budget(make_llm_server, llm_env):
    server = make_llm_server(length_below=150)  # a reply needs 150 tokens
    llm_env(server, llm_max_completion_tokens=100)
    requests = judge_requests(3)
    result = run_in_flow(requests)
    assert all(o.ok and o.calls == 2 for o in result.outcomes)
    assert [o.reply for o in result.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    assert server.stats()["params_seen"] == {"max_completion_tokens=100": 3, "max_completion_tokens=200": 3}
    assert result.accounting["calls_made"] == 6 and result.accounting["failures_by_kind"] == {}


@harness
def test_a_reply_still_cut_is_recorded_as_length_never_as_an_invalid_reply(make_llm_server, llm_env):
    server = make_llm_server(length_below=1000)
    llm_env(server, llm_max_completion_tokens=100, llm_retries=2)
    cut = run_in_flow(judge_requests(2))
    assert all(o.failure_kind == llm.LENGTH and o.calls == 2 for o in cut.outcomes)  # 100, then 200; no Prefect retry
    assert cut.accounting["failures_by_kind"] == {"length": 2}
    assert llm.ledger_reason("judge", llm.LENGTH) == "judge_failed:length"
    assert all(o.completion_tokens == 200 for o in cut.outcomes)  # the tokens of the last call, paid

    # Without LLM_MAX_COMPLETION_TOKENS there is no budget to grow: recorded at once.
    plain = make_llm_server()
    llm_env(plain, llm_max_completion_tokens=None, llm_retries=2)
    requests = [marked(fault_marker("length"), 1), marked(fault_marker("filter"), 2), marked("", 3)]
    out = run_in_flow(requests).outcomes
    assert (out[0].failure_kind, out[0].calls) == (llm.LENGTH, 1)
    assert (out[1].failure_kind, out[1].calls) == (llm.CONTENT_FILTER, 1)
    assert out[2].ok
    assert plain.stats()["calls_total"] == 3


# --- rate limits ---------------------------------------------------------------------------------


def _server_tokens(request: LLMRequest, budget: int) -> int:
    """What the loopback server charges a judge request with a budget."""
    return max(1, len(loopback.prompt_text(list(request.messages))) // 4) + budget


@harness
def test_a_tokens_per_minute_limit_below_the_servers_never_draws_a_429(make_llm_server, llm_env):
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    budget = 50
    requests = judge_requests(14)
    assert all(llm.estimated_input_tokens(JUDGE_TASK, r) + budget >= _server_tokens(r, budget)
               for r in requests)  # the estimate never undercounts
    total = sum(_server_tokens(r, budget) for r in requests)
    theirs = int(0.97 * total)  # sent at once, the requests would not fit the server's minute
    ours = int(0.93 * total)  # ours is lower: the last calls wait for our budget to refill

    # Without our limit the server's limit bites (its 429s are retried).
    server = make_llm_server(tokens_per_minute=theirs, ratelimit_headers=False)
    llm_env(server, llm_max_completion_tokens=budget, llm_retries=3, llm_retry_backoff_s=0.5)
    unlimited = run_in_flow(requests)
    assert server.stats()["by_status"].get("429", 0) > 0
    assert unlimited.accounting["rate_limits"] is None

    server = make_llm_server(tokens_per_minute=theirs)
    env = llm_env(server, llm_max_completion_tokens=budget, llm_max_tokens_per_minute=ours, llm_retries=0)
    limited = run_in_flow(requests, refresh=True)
    stats = server.stats()
    assert stats["by_status"] == {"200": len(requests)}  # never a 429 (and no retry was allowed)
    assert all(o.ok for o in limited.outcomes)
    assert stats["max_tokens_level"] <= ours
    acc = limited.accounting["rate_limits"]
    assert acc["tokens_per_minute"] == ours and acc["requests_per_minute"] is None
    assert acc["tokens_reserved"] >= total
    assert 0 < acc["tokens_given_back"] < acc["tokens_reserved"]  # the estimates, corrected from the usage

    async def read_limit():
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(env["LLM_CONCURRENCY_LIMIT_NAME"] + "-tpm")

    limit = run_coro_as_sync(read_limit())  # a Prefect limit with slot decay: shared by every run on the server
    assert limit.limit == ours and limit.slot_decay_per_second == pytest.approx(ours / 60)


@harness
def test_a_requests_per_minute_limit_is_a_prefect_rate_limit(llm_server, llm_env):
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    env = llm_env(llm_server, llm_max_requests_per_minute=600)
    result = run_in_flow(judge_requests(8))
    assert all(o.ok for o in result.outcomes)
    assert result.accounting["rate_limits"]["requests_per_minute"] == 600

    async def read_limit():
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(env["LLM_CONCURRENCY_LIMIT_NAME"] + "-rpm")

    limit = run_coro_as_sync(read_limit())
    assert limit.limit == 600 and limit.slot_decay_per_second == pytest.approx(10.0)


@harness
def test_the_providers_rate_limit_headers_slow_the_run_down_before_a_429(make_llm_server, llm_env):
    requests = judge_requests(16)
    # Six requests per second: the first wave of four leaves two, fewer than the calls in flight.
    blind = make_llm_server(requests_per_minute=6, rate_window_s=1.0, ratelimit_headers=False)
    llm_env(blind, llm_concurrency=4, llm_retries=4, llm_retry_backoff_s=0.2)
    run_in_flow(requests)
    assert blind.stats()["by_status"].get("429", 0) > 0  # without headers the limit is met

    server = make_llm_server(requests_per_minute=6, rate_window_s=1.0)
    llm_env(server, llm_concurrency=4, llm_retries=0)
    result = run_in_flow(requests, refresh=True)
    assert server.stats()["by_status"] == {"200": 16}
    assert all(o.ok for o in result.outcomes)
    assert result.accounting["rate_limits"]["header_waits"] > 0


# --- the structured-output fallback -----------------------------------------------------------------


@harness
@pytest.mark.parametrize("status", [500, 400], ids=["llama-cpp-python-500", "openai-style-400"])
def test_a_rejected_json_schema_falls_back_once_and_every_row_is_judged(make_llm_server, llm_env, caplog, status):
    server = make_llm_server(reject_json_schema=status)
    env = llm_env(server, llm_concurrency=4, llm_retries=0)
    requests = judge_requests(12)
    caplog.set_level(logging.INFO)
    result = run_in_flow(requests, chunk_size=4)
    assert [o.reply for o in result.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    assert all(o.ok for o in result.outcomes) and result.accounting["failures_by_kind"] == {}
    lines = warnings(caplog, "rejected response_format")
    assert len(lines) == 1 and "json_schema" in lines[0] and "JSON mode" in lines[0]
    acc = result.accounting
    assert acc["structured_output"] == "json_object" and acc["structured_output_fallbacks"] == ["json_schema->json_object"]
    assert "structured output json_object" in format_llm(acc)
    formats = server.stats()["response_formats"]
    assert formats["json_object"] == 12  # every row, once
    assert 1 <= formats["json_schema"] <= 4  # the first reply, and the calls already in flight: sent again
    assert acc["calls_made"] == 12 + formats["json_schema"]

    # A reply given in JSON mode is a valid cached reply for the same messages in any mode.
    accepting = make_llm_server()
    llm_env(accepting, kernelbook_cache_dir=env["KERNELBOOK_CACHE_DIR"])
    again = run_in_flow(requests)
    assert accepting.stats()["calls_total"] == 0 and again.accounting["cache_hits"] == 12
    assert again.accounting["structured_output"] == "json_schema"  # each run detects for itself


@harness
def test_when_json_mode_is_rejected_too_the_json_is_asked_for_in_the_text(make_llm_server, llm_env, caplog):
    server = make_llm_server(reject_json_schema=500, reject_json_object=400)
    llm_env(server, llm_concurrency=2, llm_retries=0)
    requests = judge_requests(6)
    caplog.set_level(logging.INFO)
    result = run_in_flow(requests)
    assert [o.reply for o in result.outcomes] == [expected_judge_reply(list(r.messages)) for r in requests]
    assert result.accounting["structured_output"] == "text"
    assert result.accounting["structured_output_fallbacks"] == ["json_schema->json_object", "json_object->text"]
    assert len(warnings(caplog, "rejected response_format")) == 2  # one line per change of mode
    assert server.stats()["response_formats"]["none"] == 6


@harness
def test_the_prompt_generator_falls_back_too(make_llm_server, llm_env):
    server = make_llm_server(reject_json_schema=500)
    llm_env(server, llm_concurrency=2, llm_retries=0)
    task = prompt_gen.SPECIFICATION_TASK
    code = "import torch\nclass {0}(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
    requests = [task.request("test/model", module_name=name, python_code=code.format(name)) for name in ("Gate", "Relu6")]
    result = run_in_flow(requests, task=task)
    assert [o.reply["specification"] for o in result.outcomes] == [
        expected_specification(list(r.messages)).strip() for r in requests]
    assert result.accounting["structured_output"] == "json_object"


@harness
def test_an_unrelated_500_is_still_a_server_error(make_llm_server, llm_env):
    server = make_llm_server()
    llm_env(server, llm_retries=1)
    request = marked(fault_marker("500"), 0)
    result = run_in_flow([request])
    assert result.outcomes[0].failure_kind == llm.SERVER_ERROR
    assert result.accounting["structured_output"] == "json_schema"
    assert server.stats()["calls_by_hash"][prompt_hash(list(request.messages))] == 2


# --- hedged requests --------------------------------------------------------------------------------


@harness
def test_a_call_slower_than_the_quantile_is_hedged_and_the_first_answer_wins(make_llm_server, llm_env):
    server = make_llm_server(latency=0.02, hang_s=20)
    llm_env(server, llm_concurrency=4, llm_timeout_s=30, llm_retries=0, llm_hedge_after_quantile=0.9)
    slow = marked(fault_marker("hang", 1), 99)  # its first call never answers; a second one would
    requests = judge_requests(24) + [slow]  # sent last: by then the run has seen 20 latencies
    result = run_in_flow(requests)
    assert all(o.ok for o in result.outcomes)
    assert result.outcomes[-1].reply == expected_judge_reply(list(slow.messages))
    assert result.outcomes[-1].calls == 2  # the hung copy and the hedge: both counted
    hedging = result.accounting["hedging"]
    assert hedging["after_quantile"] == 0.9 and hedging["sent"] >= 1 and hedging["won"] >= 1
    assert result.accounting["calls_made"] == len(requests) + hedging["sent"]
    # The winner is cached: the next run asks nothing.
    assert run_in_flow(requests).accounting["calls_made"] == 0


@harness
def test_hedging_is_off_unless_set(llm_server, llm_env):
    llm_env(llm_server, llm_hedge_after_quantile=None)
    result = run_in_flow(judge_requests(3))
    assert result.accounting["hedging"] is None and result.accounting["calls_made"] == 3


def test_every_new_setting_is_in_env_example_with_a_comment():
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines()
    for name in ("LLM_MAX_COMPLETION_TOKENS", "LLM_TOKEN_PARAMETER", "LLM_REASONING_EFFORT", "LLM_TEMPERATURE",
                 "LLM_MAX_REQUESTS_PER_MINUTE", "LLM_MAX_TOKENS_PER_MINUTE", "LLM_HEDGE_AFTER_QUANTILE"):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
        assert any(lines[j].startswith("#") for j in range(max(0, at - 3), at)), name
        assert name.lower() in load_settings().model_fields_set | set(type(load_settings()).model_fields), name
