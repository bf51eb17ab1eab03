"""The LLM library without Prefect: the judge rubric and reply parsing, request keys, the call
and its failure classification against a loopback server, cache records."""

from __future__ import annotations

import asyncio
import json

import pytest

from kernelbook_lib import llm, rubric
from kernelbook_lib.errors import UserError
from kernelbook_lib.settings import load_settings
from tests.fixtures.fake_data import judge_requests
from tests.fixtures.llm_server import expected_judge_reply, fault_marker
from tests.fixtures.llm import LLM_TEST_KEY


def judge_request(marker: str = "", i: int = 0, model: str = "test/judge-model") -> llm.LLMRequest:
    messages = rubric.build_judge_messages(f"Mod{i}", f"import torch  # {i}\n{marker}", f"answer {i}")
    return llm.LLMRequest.build(model=model, prompt_version=rubric.JUDGE_PROMPT_VERSION, purpose="judge",
                                messages=messages)


def call_once(request: llm.LLMRequest, **settings_overrides) -> llm.CallResult:
    settings = load_settings().model_copy(update=settings_overrides)

    async def go() -> llm.CallResult:
        client = llm.make_async_client(settings, max_connections=4)
        try:
            return await llm.call(client, request, secrets=(LLM_TEST_KEY,))
        finally:
            await client.close()

    return asyncio.run(go())


# --- rubric ---------------------------------------------------------------------------------


def test_judge_messages_carry_the_full_module_and_solution():
    code = "import torch\n" + "x = 1\n" * 20_000  # ~120 kB: far past any old truncation limit
    solution = "<answer>\n" + "y = 2\n" * 30_000 + "</answer>"
    messages = rubric.build_judge_messages("Big", code, solution)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert code in messages[1]["content"] and solution in messages[1]["content"]
    for band in ("0: nothing to compute", "9-10: advanced", "0-1: broken", "9-10: excellent"):
        assert band in messages[0]["content"]


def test_judge_schema_is_strict_and_built_once():
    fmt = rubric.JUDGE_RESPONSE_FORMAT
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"difficulty", "style", "rationale"}
    assert schema["properties"]["difficulty"]["maximum"] == 10
    assert llm.get_purpose("judge").response_format is fmt  # the same object for every call


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"difficulty": 3, "style": 7, "rationale": "ok"}', (3, 7, "ok")),
        ('```json\n{"difficulty": 0, "style": 10, "rationale": "r"}\n```', (0, 10, "r")),
        ('{"difficulty": 4, "style": 5, "rationale": "r", "extra": 1}', (4, 5, "r")),
        ("<difficulty>6</difficulty>\n<style>2</style>", (6, 2, "")),
        ("Verdict: <difficulty> 8 </difficulty> <style>9</style> <rationale>fast</rationale>", (8, 9, "fast")),
    ],
)
def test_parse_judge_reply_accepts_json_and_tags(content, expected):
    reply = rubric.parse_judge_reply(content)
    assert (reply.difficulty, reply.style, reply.rationale) == expected


@pytest.mark.parametrize(
    "content",
    [
        "", "   ", "I think it is a 7.", "[3, 4]", '{"difficulty": 3, "style": 4',
        '{"difficulty": 11, "style": 4, "rationale": "r"}', '{"difficulty": -1, "style": 4, "rationale": "r"}',
        '{"difficulty": 3.5, "style": 4, "rationale": "r"}', '{"difficulty": "3", "style": 4, "rationale": "r"}',
        '{"difficulty": true, "style": 4, "rationale": "r"}', '{"difficulty": 3, "rationale": "r"}',
        "<difficulty>3</difficulty>", "<difficulty>3</difficulty><difficulty>4</difficulty><style>1</style>",
        "<difficulty>high</difficulty><style>1</style>", "<difficulty>12</difficulty><style>1</style>",
    ],
)
def test_parse_judge_reply_rejects_everything_else(content):
    with pytest.raises(ValueError):
        rubric.parse_judge_reply(content)


# --- request keys ---------------------------------------------------------------------------------


def test_request_key_depends_on_model_version_and_every_prompt_character_only():
    messages = rubric.build_judge_messages("M", "code", "solution")
    key = llm.request_key("m", "v1", messages)
    assert key == llm.request_key("m", "v1", [dict(m) for m in messages])  # stable, content-only
    assert len(key) == 64
    assert key != llm.request_key("m2", "v1", messages)
    assert key != llm.request_key("m", "v2", messages)
    changed = [messages[0], {"role": "user", "content": messages[1]["content"] + " "}]
    assert key != llm.request_key("m", "v1", changed)
    assert LLM_TEST_KEY not in json.dumps(llm.LLMRequest.build(
        model="m", prompt_version="v1", purpose="judge", messages=messages).model_dump())


def test_unknown_purpose_fails_at_build_time():
    with pytest.raises(ValueError, match="unknown LLM request purpose"):
        llm.LLMRequest.build(model="m", prompt_version="v", purpose="nope", messages=[{"role": "user", "content": "x"}])


def test_prompt_over_the_limit_is_never_sent():
    request = judge_request("x" * 5000)
    failure = llm.prompt_too_long(request, max_chars=1000)
    assert failure is not None and failure.kind == llm.PROMPT_TOO_LONG and not failure.transient
    assert llm.prompt_too_long(request, max_chars=request.prompt_chars) is None


# --- the call against a loopback server -------------------------------------------------------------


def test_valid_reply_is_parsed_with_usage(llm_server, llm_env):
    llm_env(llm_server)
    request = judge_request()
    result = call_once(request)
    assert result.failure is None
    assert result.reply == expected_judge_reply(list(request.messages))
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    assert llm_server.stats()["calls_total"] == 1


@pytest.mark.parametrize(
    ("marker", "kind", "transient"),
    [
        (fault_marker("429", retry_after=0.25), llm.RATE_LIMITED, True),
        (fault_marker("500"), llm.SERVER_ERROR, True),
        (fault_marker("503"), llm.SERVER_ERROR, True),
        (fault_marker("malformed"), llm.INVALID_REPLY, True),
        (fault_marker("empty"), llm.INVALID_REPLY, True),
        (fault_marker("html"), llm.INVALID_REPLY, True),
        (fault_marker("400"), llm.BAD_REQUEST, False),
        (fault_marker("404"), llm.NOT_FOUND, False),
    ],
)
def test_failures_are_classified_and_sdk_retries_are_off(llm_server, llm_env, marker, kind, transient):
    llm_env(llm_server)
    result = call_once(judge_request(marker))
    assert result.reply is None and result.failure is not None
    assert (result.failure.kind, result.failure.transient) == (kind, transient)
    assert llm_server.stats()["calls_total"] == 1  # max_retries=0: the SDK never retried
    if kind == llm.RATE_LIMITED:
        assert result.failure.retry_after == pytest.approx(0.25)  # retry-after-ms wins over Retry-After


def test_tags_reply_is_accepted(llm_server, llm_env):
    llm_env(llm_server)
    request = judge_request(fault_marker("tags"))
    result = call_once(request)
    expected = expected_judge_reply(list(request.messages))
    assert result.failure is None
    assert result.reply == {"difficulty": expected["difficulty"], "style": expected["style"], "rationale": ""}


def test_hang_past_the_timeout_is_a_transient_timeout(make_llm_server, llm_env):
    server = make_llm_server(hang_s=30)
    llm_env(server, llm_timeout_s=0.3)
    result = call_once(judge_request(fault_marker("hang")))
    assert result.failure is not None and (result.failure.kind, result.failure.transient) == (llm.TIMEOUT, True)


def test_connection_refused_is_a_transient_connection_error(llm_env, make_llm_server):
    server = make_llm_server()
    llm_env(server)
    server.stop()  # nothing listens there any more
    result = call_once(judge_request())
    assert result.failure is not None and (result.failure.kind, result.failure.transient) == (llm.CONNECTION_ERROR, True)


def test_wrong_key_is_an_auth_failure_and_the_echoed_key_is_redacted(make_llm_server, llm_env):
    server = make_llm_server(api_key="sk-the-server-wants-another-key", echo_key_in_errors=True)
    llm_env(server)
    result = call_once(judge_request())
    assert result.failure is not None and result.failure.kind == llm.AUTH and result.failure.status == 401
    assert LLM_TEST_KEY not in result.failure.detail and "***" in result.failure.detail


def test_team_header_is_sent_and_checked(make_llm_server, llm_env):
    server = make_llm_server(team_id="team-42")
    llm_env(server, prime_team_id="team-42")
    assert call_once(judge_request()).failure is None
    llm_env(server, prime_team_id="team-7")
    failure = call_once(judge_request(i=1)).failure
    assert failure is not None and failure.kind == llm.AUTH and failure.status == 403


def test_missing_key_is_a_user_error(llm_server, llm_env):
    llm_env(llm_server, prime_api_key=None)
    with pytest.raises(UserError, match="PRIME_API_KEY"):
        llm.make_async_client(load_settings(), max_connections=1)


def test_auth_message_names_the_variables_and_never_the_key():
    for status, team in ((401, False), (403, False), (403, True)):
        message = llm.auth_error_message(status, "http://127.0.0.1:1/v1", team)
        assert "PRIME_API_KEY" in message and str(status) in message
    assert "PRIME_TEAM_ID" in llm.auth_error_message(403, "u", True)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"retry-after-ms": "1500"}, 1.5), ({"retry-after": "3"}, 3.0), ({"retry-after": "bogus"}, None),
     ({"retry-after": "-2"}, None), ({"retry-after": "99999"}, llm.MAX_RETRY_AFTER_S), ({}, None),
     ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, None)],  # a date in the past: no wait
)
def test_parse_retry_after(headers, seconds):
    assert llm.parse_retry_after(headers) == seconds


# --- cache records ----------------------------------------------------------------------------------


def test_cache_record_round_trip_and_damage_detection():
    request = judge_requests(1)[0]
    result = llm.CallResult({"difficulty": 4, "style": 6, "rationale": "fine"}, 100, 20)
    record = llm.cache_record(request, result, run_token="run-a")
    assert LLM_TEST_KEY not in json.dumps(record)

    same_run = llm.outcome_from_cache_record(record, request, "run-a")
    later_run = llm.outcome_from_cache_record(record, request, "run-b")
    assert same_run.ok and not same_run.cached and same_run.reply == result.reply
    assert later_run.cached and later_run.prompt_tokens == 100

    edited = dict(record, reply={**record["reply"], "difficulty": 9})  # in range, but not what was said
    with pytest.raises(llm.CorruptCacheEntry, match="checksum"):
        llm.outcome_from_cache_record(edited, request, "run-b")
    other = judge_requests(2)[1]
    with pytest.raises(llm.CorruptCacheEntry, match="another request"):
        llm.outcome_from_cache_record(record, other, "run-b")
    forged = {k: v for k, v in record.items() if k != "checksum"} | {"reply": {"difficulty": 42, "style": 1, "rationale": ""}}
    forged["checksum"] = llm._checksum({k: v for k, v in forged.items() if k != "checksum"})
    with pytest.raises(llm.CorruptCacheEntry, match="invalid"):
        llm.outcome_from_cache_record(forged, request, "run-b")
    for junk in (None, [], "text", {"format": "other"}):
        with pytest.raises(llm.CorruptCacheEntry):
            llm.outcome_from_cache_record(junk, request, "run-b")
