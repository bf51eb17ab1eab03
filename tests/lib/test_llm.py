"""The LLM library without Prefect: task objects, the judge rubric and reply parsing, request
keys, the call and its failure classification against a loopback server, cache records, cost."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import pickle
import re
import subprocess
import sys

import pytest

from kernelbook_lib import llm, prompt_gen, rubric
from kernelbook_lib.errors import UserError
from kernelbook_lib.settings import load_settings
from tests.fixtures.fake_data import judge_requests
from tests.fixtures.llm_server import expected_judge_reply, fault_marker, prompt_text
from tests.fixtures.llm import LLM_TEST_KEY


def judge_request(marker: str = "", i: int = 0, model: str = "test/judge-model") -> llm.LLMRequest:
    return rubric.JUDGE_TASK.request(model, module_name=f"Mod{i}", python_code=f"import torch  # {i}\n{marker}",
                                     solution=f"answer {i}")


def call_once(request: llm.LLMRequest, task: llm.LLMTask = rubric.JUDGE_TASK, **settings_overrides) -> llm.CallResult:
    settings = load_settings().model_copy(update=settings_overrides)

    async def go() -> llm.CallResult:
        client = llm.make_async_client(settings, max_connections=4)
        try:
            return await llm.call(client, task, request, secrets=(LLM_TEST_KEY,))
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
    assert rubric.JUDGE_TASK.response_format is fmt  # the same object for every call


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
    assert LLM_TEST_KEY not in json.dumps(rubric.JUDGE_TASK.request(
        "m", module_name="M", python_code="code", solution="solution").model_dump())


def _key_as_derived_before_task_objects(model: str, prompt_version: str, messages: list[dict[str, str]]) -> str:
    """The derivation the cache keys of every existing judge verdict were made with."""
    canonical = json.dumps(["kernelbook-llm-request-v1", model, prompt_version,
                            [[m["role"], m["content"]] for m in messages]], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_judge_keys_built_by_the_task_are_the_keys_of_existing_caches():
    code, solution = "import torch\nclass Gate(torch.nn.Module):\n    pass\n", "<answer>x = {1}</answer>"
    request = rubric.JUDGE_TASK.request("openai/gpt-5.2", module_name="Gate", python_code=code, solution=solution)
    old_messages = [{"role": "system", "content": rubric.JUDGE_SYSTEM_PROMPT},
                    {"role": "user", "content": rubric.JUDGE_USER_TEMPLATE.format(
                        module_name="Gate", python_code=code, solution=solution)}]
    assert list(request.messages) == old_messages
    assert request.key == _key_as_derived_before_task_objects("openai/gpt-5.2", "judge-v1", old_messages)
    # Recorded with the code before task objects existed: a user's cache must still hit.
    assert request.key == "f161bd1341207583d33597456883c1e78b4aa36f7ae7f12686f11e3e33928c62"
    assert hashlib.sha256(rubric.JUDGE_SYSTEM_PROMPT.encode()).hexdigest() == (
        "41d4d3e4fc116aaa26bc2a8d41b207879048c4344b5ff558cdd293154f03a795")  # judge-v1's prompt, unchanged


def test_the_generic_client_knows_no_concrete_task():
    from kernelbook_lib import llm_failures, llm_limits

    own = {"kernelbook_lib.llm", "kernelbook_lib.llm_failures", "kernelbook_lib.llm_limits"}  # the client's own parts
    for module in (llm, llm_failures, llm_limits):
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        ours = {name for name in imported if name and name.startswith("kernelbook_lib")} - own
        assert ours <= {"kernelbook_lib.errors", "kernelbook_lib.settings"}, (module.__name__, ours)
    assert not hasattr(llm, "register_purpose") and not hasattr(llm, "get_purpose")  # no process-global registry


def test_a_request_from_another_task_is_refused_before_any_call():
    spec = prompt_gen.SPECIFICATION_TASK.request("m", module_name="Gate", python_code="import torch\n")
    with pytest.raises(ValueError, match="built for task 'generate'"):
        llm.check_requests(rubric.JUDGE_TASK, [judge_request(), spec])


# Run in a fresh interpreter, as a Dask worker would: nothing registered there beforehand.
_UNPICKLE_AND_PARSE = """
import pickle, sys
task, request, good, bad = pickle.loads(sys.stdin.buffer.read())
print(task.parse(good, request)["specification"])
try:
    task.parse(bad, request)
except ValueError as exc:
    print("rejected:", exc)
"""


@pytest.mark.slow
def test_tasks_and_requests_travel_to_another_process_and_check_replies_there():
    task = prompt_gen.SPECIFICATION_TASK
    request = task.request("m", module_name="Gate", python_code="import torch\nclass Gate(torch.nn.Module):\n    pass\n")
    assert pickle.loads(pickle.dumps(task)) == task
    good, bad = json.dumps({"specification": "Write `GateNew`."}), json.dumps({"specification": "Write a module."})
    out = subprocess.run([sys.executable, "-c", _UNPICKLE_AND_PARSE], input=pickle.dumps((task, request, good, bad)),
                         capture_output=True, check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "Write `GateNew`." and lines[1].startswith("rejected:") and "GateNew" in lines[1]


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

    judge = rubric.JUDGE_TASK
    same_run = llm.outcome_from_cache_record(record, judge, request, "run-a")
    later_run = llm.outcome_from_cache_record(record, judge, request, "run-b")
    assert same_run.ok and not same_run.cached and same_run.reply == result.reply
    assert later_run.cached and later_run.prompt_tokens == 100

    edited = dict(record, reply={**record["reply"], "difficulty": 9})  # in range, but not what was said
    with pytest.raises(llm.CorruptCacheEntry, match="checksum"):
        llm.outcome_from_cache_record(edited, judge, request, "run-b")
    other = judge_requests(2)[1]
    with pytest.raises(llm.CorruptCacheEntry, match="another request"):
        llm.outcome_from_cache_record(record, judge, other, "run-b")
    forged = {k: v for k, v in record.items() if k != "checksum"} | {"reply": {"difficulty": 42, "style": 1, "rationale": ""}}
    forged["checksum"] = llm._checksum({k: v for k, v in forged.items() if k != "checksum"})
    with pytest.raises(llm.CorruptCacheEntry, match="invalid"):
        llm.outcome_from_cache_record(forged, judge, request, "run-b")
    for junk in (None, [], "text", {"format": "other"}):
        with pytest.raises(llm.CorruptCacheEntry):
            llm.outcome_from_cache_record(junk, judge, request, "run-b")


# --- prefix caching and cost -------------------------------------------------------------------


def _shared_prefix_chars(a: llm.LLMRequest, b: llm.LLMRequest) -> int:
    text_a, text_b = prompt_text(list(a.messages)), prompt_text(list(b.messages))
    n = 0
    while n < min(len(text_a), len(text_b)) and text_a[n] == text_b[n]:
        n += 1
    return n


@pytest.mark.parametrize("task", [rubric.JUDGE_TASK, prompt_gen.SPECIFICATION_TASK], ids=lambda t: t.name)
def test_every_fixed_part_comes_first_so_a_prefix_cache_can_hit(task):
    def build(name: str) -> llm.LLMRequest:
        code = f"import torch\nclass {name}(torch.nn.Module):\n    def forward(self, x):\n        return x * {len(name)}\n"
        fields = {"module_name": name, "python_code": code}
        if task is rubric.JUDGE_TASK:
            fields["solution"] = f"<answer>{name} kernel</answer>"
        return task.request("m", **fields)

    a, b = build("Gate"), build("Softmax2d")
    assert a.messages[0]["role"] == "system" and a.messages[0] == b.messages[0]  # no per-row text in it
    assert "Gate" not in a.messages[0]["content"] and "Softmax2d" not in b.messages[0]["content"]
    # Everything before the first per-row value is shared: the system prompt and the user label.
    assert _shared_prefix_chars(a, b) == len("system:" + task.system_prompt + "\nuser:Module name: ")


def test_cached_prompt_tokens_are_read_from_the_usage(llm_server, llm_env):
    llm_env(llm_server)
    first, second = call_once(judge_request(i=1)), call_once(judge_request(i=2))
    assert first.failure is None and second.failure is None
    assert first.cached_prompt_tokens == 0  # nothing seen yet
    system_blocks = len("system:" + rubric.JUDGE_SYSTEM_PROMPT) // 256  # the server caches whole 256-char blocks
    assert second.cached_prompt_tokens == system_blocks * 256 // 4 > 0
    assert second.cached_prompt_tokens < second.prompt_tokens
    assert llm_server.stats()["cached_prompt_tokens"] == second.cached_prompt_tokens


def test_generator_requests_share_the_cached_system_prompt(llm_server, llm_env):
    llm_env(llm_server)
    task = prompt_gen.SPECIFICATION_TASK
    results = [call_once(task.request("m", module_name=name, python_code=f"import torch\nclass {name}(torch.nn.Module):\n    pass\n"), task)
               for name in ("Gate", "Softmax2d")]
    assert all(r.failure is None for r in results)
    assert results[1].cached_prompt_tokens >= len("system:" + task.system_prompt) // 256 * 256 // 4 > 0


def test_cost_prices_cached_prompt_tokens_separately():
    settings = load_settings().model_copy(update={
        "llm_price_input_per_mtok": 2.0, "llm_price_output_per_mtok": 8.0, "llm_price_cached_input_per_mtok": 0.5})
    # 1M prompt tokens of which 400k cached, 100k completion tokens.
    assert llm.estimated_cost(1_000_000, 100_000, settings, 400_000) == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.1 * 8.0)
    no_discount = settings.model_copy(update={"llm_price_cached_input_per_mtok": None})
    assert llm.estimated_cost(1_000_000, 100_000, no_discount, 400_000) == pytest.approx(2.0 + 0.8)
    unpriced = settings.model_copy(update={"llm_price_input_per_mtok": None, "llm_price_output_per_mtok": None,
                                           "llm_price_cached_input_per_mtok": None})
    assert llm.estimated_cost(1_000_000, 100_000, unpriced, 400_000) is None


def test_the_cached_input_price_is_a_setting(monkeypatch):
    monkeypatch.setenv("LLM_PRICE_CACHED_INPUT_PER_MTOK", "0.25")
    assert load_settings().llm_price_cached_input_per_mtok == 0.25
    monkeypatch.setenv("LLM_PRICE_CACHED_INPUT_PER_MTOK", "-1")
    with pytest.raises(UserError, match="LLM_PRICE_CACHED_INPUT_PER_MTOK"):
        load_settings()


def test_every_design_reference_in_the_code_names_a_section_of_the_design_note():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    headings = {line[3:].strip() for line in (root / "docs" / "design.md").read_text().splitlines()
                if line.startswith("## ")}
    cited = []
    for folder in ("kernelbook_lib", "tasks", "flows", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "design note" not in text, f"{path}: name docs/design.md and its section"
            cited += [(path.name, name) for name in re.findall(r'docs/design\.md, "([^"]+)"', text)]
    assert cited and all(name in headings for _, name in cited), [c for c in cited if c[1] not in headings]
