"""Generic LLM requests to an OpenAI-compatible endpoint: tasks, requests, outcomes, cache
records, failure classification and the call itself. No orchestration here (``tasks/llm.py``
runs these through Prefect: retries, caching and the concurrency limit are Prefect's), and no
concrete task: the judge's lives in ``rubric.py``, the prompt generator's in ``prompt_gen.py``.

Vocabulary:

- an :class:`LLMTask` is one kind of request (the judge, the prompt generator): it builds the
  messages from a row's fields with its prompt templates, names the reply format it asks for,
  and parses and checks a reply *with the request in hand* (``parse(reply, request)``), so a
  check that depends on the row (the generator's "names ``{module_name}New``") needs no state
  outside the request. A task holds no per-run state and pickles (it travels with requests);
- an :class:`LLMRequest` is one chat completion to make; its ``key`` is a SHA-256 over the model,
  the prompt version and the full prompt text (never the API key, never a row position, never
  the task object), so the same question always hits the same cache entry;
- an :class:`LLMOutcome` is what the caller gets back for every request, in request order:
  the parsed reply, or a failure kind with a short detail that never holds a secret.

A reply the task's ``parse`` rejects is an ``invalid_reply`` failure, which is transient
(retried). The SDK's own retries are off (``max_retries=0``): there is ONE retry policy, Prefect's.

Request parameters (docs/llm.md, "Request parameters"): ``max_completion_tokens`` (or the old
name ``max_tokens``), ``reasoning_effort`` and ``temperature`` are sent only when their setting
is set. The two that change the reply (temperature, effort) are in ``LLMRequest.params`` and in
the key; the token budget is not (a reply cut by it is a ``length`` failure, never cached).

Structured output (docs/llm.md, "Structured-output fallback"): a request is sent in one of three
modes, ``json_schema`` (the task's strict schema), ``json_object`` (JSON mode, the schema in the
system prompt and in llama.cpp's ``schema`` key) or ``text`` (the schema in the system prompt
only). The key does not depend on the mode: the task's ``parse`` reads the reply of every mode,
and only a reply it accepts is ever cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kernelbook_lib.errors import UserError
# The failures and the rate-limit headers live in their own modules; ``llm.X`` stays their interface.
from kernelbook_lib.llm_failures import (  # noqa: F401  (re-exported: callers use llm.<name>)
    AUTH,
    BAD_REQUEST,
    CONNECTION_ERROR,
    CONTENT_FILTER,
    FORMAT_REJECTED,
    Failure,
    INVALID_REPLY,
    InvalidReply,
    LENGTH,
    LENGTH_RETRIES,
    LLMAuthError,
    LLMParameterError,
    MAX_BUDGET_FACTOR,
    MAX_RETRY_AFTER_S,
    NOT_FOUND,
    PARAMETER_SETTINGS,
    PROMPT_TOO_LONG,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    UNEXPECTED,
    UNSUPPORTED_PARAMETER,
    auth_error_message,
    classify,
    ledger_reason,
    parse_retry_after,
    prompt_too_long,
    redact,
    unsupported_parameter_message,
)
from kernelbook_lib.llm_limits import RateLimitInfo, parse_duration, parse_rate_limit_headers  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # the SDK is imported lazily, only where a call is made (docs/design.md, "Imports")
    from openai import AsyncOpenAI

    from kernelbook_lib.settings import Settings


# --- tasks: how one kind of request is built and its replies read ---------------------------


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI's strict structured outputs require:
    every property required and no additional properties."""
    schema = copy.deepcopy(model.model_json_schema())
    schema["additionalProperties"] = False
    schema["required"] = list(schema["properties"])
    return schema


def json_schema_response_format(name: str, model: type[BaseModel]) -> dict[str, Any]:
    """A strict ``response_format`` for ``model``. Build it once per task, never per call
    (docs/design.md, "The call")."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": strict_json_schema(model)}}


#: How the system prompt's structured-output instructions begin in the ``json_object`` and
#: ``text`` modes (the JSON schema follows; the loopback test server looks for this text).
FORMAT_INSTRUCTIONS_START = ("Reply with one JSON object and nothing else (no prose, no code fence) that "
                             "follows this JSON schema:\n")


class LLMTask:
    """One kind of LLM request, in the spirit of distilabel's ``format_input`` /
    ``format_output``: :meth:`messages` formats a row's fields into chat messages with the
    task's prompt templates, :meth:`parse` reads a reply with its request in hand.

    A subclass sets the class attributes and implements :meth:`parse`. The system prompt is
    fixed (no per-row field) and comes first, then the user template: every request of a task
    starts with the same text, so a provider's prefix cache can serve it. A task instance has
    no state of its own, so it pickles (to a Dask worker) and compares equal to a fresh one.
    """

    #: Names the task in requests and cache records ("judge", "generate").
    name: ClassVar[str]
    #: Part of every cache key: change it whenever a template, the reply format or the reply
    #: checks change, so a reply given or accepted under other rules is never reused.
    prompt_version: ClassVar[str]
    system_prompt: ClassVar[str]
    #: ``str.format`` template over the row's fields (values are inserted whole, never cut).
    user_template: ClassVar[str]
    #: Sent with every request (built once); ``None`` asks for plain text.
    response_format: ClassVar[Mapping[str, Any] | None] = None
    #: Re-validates a reply read back from the cache.
    reply_model: ClassVar[type[BaseModel]]
    #: The row fields :meth:`parse` needs, kept on the request (``request.context``).
    context_fields: ClassVar[tuple[str, ...]] = ()

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages for one row: the fixed system prompt, then the user template."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.user_template.format(**fields)}]

    def request(self, model: str, **fields: str) -> LLMRequest:
        """The request for one row (its key covers the model, the prompt version and the
        messages; ``context`` keeps the fields :meth:`parse` needs)."""
        return LLMRequest.build(model=model, task=self, messages=self.messages(**fields),
                                context={name: fields[name] for name in self.context_fields})

    def parse(self, reply: str, request: LLMRequest) -> dict[str, Any]:
        """The reply text as a JSON-able dict, checked for ``request``; raises ``ValueError``
        (an invalid reply, retried) for anything unusable."""
        raise NotImplementedError

    def stored_reply(self, stored: Any, request: LLMRequest) -> dict[str, Any]:
        """A reply read back from the cache, re-validated (raises ``ValueError``)."""
        return self.reply_model.model_validate(stored).model_dump()

    def format_instructions(self) -> str | None:
        """What the system prompt gains when the endpoint will not take the task's
        ``response_format`` (modes ``json_object`` and ``text``): the JSON schema of the reply.
        ``None`` for a task that asks for plain text."""
        schema = _response_schema(self.response_format)
        if schema is None:
            return None
        return FORMAT_INSTRUCTIONS_START + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, prompt_version={self.prompt_version!r})"


# --- requests and outcomes --------------------------------------------------------------------

#: Bump when the key derivation or the cache record layout changes.
KEY_SCHEME = "kernelbook-llm-request-v1"
CACHE_RECORD_FORMAT = "kernelbook-llm-cache-v1"


def request_key(model: str, prompt_version: str, messages: Sequence[Mapping[str, str]],
                params: Mapping[str, Any] | None = None, sample: int = 0) -> str:
    """SHA-256 (hex) over the model, the prompt version, the full prompt text and the request
    parameters that change the reply (``params``: temperature, reasoning effort).

    Every message's role and complete content count; nothing else does (no API key, no row
    position, no time, no token budget, no structured-output mode), so a second run of the same
    job finds every answer again. Without ``params`` the key is the one every existing cache
    entry was written under. ``sample``: the index of a repeated verdict of the same prompt
    (``--judge-samples``); sample 0 has the key it always had, sample k its own."""
    parts: list[Any] = [KEY_SCHEME, model, prompt_version, [[m["role"], m["content"]] for m in messages]]
    if params:
        parts.append(sorted([str(name), value] for name, value in params.items()))
    if sample:
        parts.append(["sample", int(sample)])
    canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class LLMRequest(BaseModel):
    """One chat completion to make. Build it with :meth:`LLMTask.request` (or :meth:`build`)
    so the key is always right."""

    model_config = ConfigDict(frozen=True)

    key: str
    model: str
    prompt_version: str
    task: str  # the LLMTask's name; the task object itself travels beside the requests
    messages: tuple[dict[str, str], ...]
    #: The row fields the task's ``parse`` needs (not part of the key: the messages hold them).
    context: dict[str, str] = Field(default_factory=dict)
    #: Request parameters that change the reply (``temperature``, ``reasoning_effort``): sent
    #: with the request and part of the key. Empty unless set (see :func:`reply_params`).
    params: dict[str, Any] = Field(default_factory=dict)
    #: Which repeated verdict of the same prompt this is (``--judge-samples``): part of the key
    #: only, never sent.
    sample: int = Field(default=0, ge=0)

    @classmethod
    def build(cls, *, model: str, task: LLMTask, messages: Sequence[Mapping[str, str]],
              context: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None, sample: int = 0) -> LLMRequest:
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
        return cls(
            key=request_key(model, task.prompt_version, msgs, params, sample),
            sample=sample,
            model=model,
            prompt_version=task.prompt_version,
            task=task.name,
            messages=msgs,
            context=dict(context or {}),
            params=dict(params or {}),
        )

    def with_params(self, params: Mapping[str, Any]) -> LLMRequest:
        """The same request with ``params`` as its reply-changing parameters (and the key
        they give); ``self`` when they are the ones it has."""
        if dict(params) == self.params:
            return self
        return self.model_copy(update={"params": dict(params),
                                       "key": request_key(self.model, self.prompt_version, self.messages, params, self.sample)})

    def as_sample(self, sample: int) -> LLMRequest:
        """The same prompt as its ``sample``-th repeated verdict (its own cache key)."""
        if sample == self.sample:
            return self
        return self.model_copy(update={"sample": sample, "key": request_key(self.model, self.prompt_version, self.messages, self.params, sample)})

    @property
    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


def check_requests(task: LLMTask, requests: Iterable[LLMRequest]) -> None:
    """Raise ``ValueError`` unless every request was built by ``task`` (a caller's bug: fail
    before the first call, not after thousands)."""
    for request in requests:
        if request.task != task.name or request.prompt_version != task.prompt_version:
            raise ValueError(
                f"request {request.key[:12]} was built for task {request.task!r} ({request.prompt_version}), "
                f"not for {task.name!r} ({task.prompt_version})"
            )


class LLMOutcome(BaseModel):
    """The result for one request. ``ok`` with a ``reply``, or a failure ``kind`` + ``detail``.

    ``calls`` is the number of API calls this run made for the request (0 for a cache hit or a
    prompt that was never sent); the token counts are those of the call that produced the reply
    (for a cache hit: of the original call, which this run did not pay for)."""

    model_config = ConfigDict(frozen=True)

    key: str
    ok: bool
    reply: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Of ``prompt_tokens``, those the provider served from its prompt (prefix) cache.
    cached_prompt_tokens: int = 0
    #: Of ``completion_tokens``, those the model spent reasoning
    #: (``usage.completion_tokens_details.reasoning_tokens``; 0 when not reported).
    reasoning_tokens: int = 0
    cached: bool = False
    calls: int = Field(default=0, ge=0)
    failure_kind: str | None = None
    failure_detail: str | None = None


# --- the client and the call -------------------------------------------------------------------


def require_api_key(settings: Settings) -> str:
    if not settings.has_llm_key:
        raise UserError("PRIME_API_KEY is not set: the LLM judge needs an API key (environment or .env)")
    assert settings.prime_api_key is not None
    return settings.prime_api_key.get_secret_value().strip()


_SSL_CONTEXT: Any = None


def _ssl_context() -> Any:
    """One TLS context per process, shared by every client: building one loads the CA bundle,
    which would otherwise be paid per client (docs/design.md, "HTTP clients")."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import httpx2

        _SSL_CONTEXT = httpx2.create_ssl_context()
    return _SSL_CONTEXT


def make_async_client(settings: Settings, *, max_connections: int) -> AsyncOpenAI:
    """One AsyncOpenAI client for one event loop: key from the SecretStr, ``X-Prime-Team-ID``
    when a team is set, the settings' timeout, a connection pool of ``max_connections``, and
    ``max_retries=0`` (Prefect owns retries)."""
    import httpx2
    import openai

    headers = {"X-Prime-Team-ID": settings.prime_team_id} if settings.prime_team_id else None
    connections = max(1, int(max_connections))
    http_client = openai.DefaultAsyncHttpxClient(
        timeout=httpx2.Timeout(settings.llm_timeout_s, connect=min(settings.llm_timeout_s, 30.0)),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
        verify=_ssl_context(),
    )
    return openai.AsyncOpenAI(
        api_key=require_api_key(settings),
        base_url=settings.llm_base_url,
        timeout=settings.llm_timeout_s,
        max_retries=0,
        default_headers=headers,
        http_client=http_client,
    )


# --- structured output, request parameters and the request body ----------------------------------

#: Structured-output modes, in fallback order (docs/llm.md, "Structured-output fallback").
JSON_SCHEMA = "json_schema"
JSON_OBJECT = "json_object"
TEXT = "text"
STRUCTURED_MODES = (JSON_SCHEMA, JSON_OBJECT, TEXT)


def _response_schema(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return dict(schema) if isinstance(schema, Mapping) else None


def initial_mode(task: LLMTask) -> str:
    """``json_schema`` for a task with a strict schema, else ``text``."""
    return JSON_SCHEMA if _response_schema(task.response_format) is not None else TEXT


def next_mode(mode: str) -> str | None:
    """The mode to fall back to after ``mode`` was rejected (``None`` after ``text``)."""
    index = STRUCTURED_MODES.index(mode)
    return STRUCTURED_MODES[index + 1] if index + 1 < len(STRUCTURED_MODES) else None


def response_format_for(task: LLMTask, mode: str) -> dict[str, Any] | None:
    """What ``response_format`` is sent in ``mode``: the task's own in ``json_schema``; JSON
    mode with the schema under llama.cpp's ``schema`` key in ``json_object`` (llama-cpp-python
    turns it into a grammar; servers that ignore the key still get JSON mode); none in ``text``."""
    if mode == JSON_SCHEMA:
        return dict(task.response_format) if task.response_format is not None else None
    if mode == JSON_OBJECT:
        schema = _response_schema(task.response_format)
        return {"type": "json_object", "schema": schema} if schema is not None else {"type": "json_object"}
    return None


def messages_for(task: LLMTask, request: LLMRequest, mode: str) -> list[dict[str, str]]:
    """The messages sent in ``mode``: the request's own in ``json_schema``; in the other modes
    the system prompt gains the task's :meth:`~LLMTask.format_instructions` (a fixed suffix, so
    a provider's prefix cache still serves it). The key is over the request's own messages."""
    messages = [dict(m) for m in request.messages]
    instructions = task.format_instructions() if mode != JSON_SCHEMA else None
    if not instructions:
        return messages
    for message in messages:
        if message["role"] == "system":
            message["content"] = message["content"] + "\n\n" + instructions
            return messages
    return [{"role": "system", "content": instructions}, *messages]


def reply_params(settings: Settings) -> dict[str, Any]:
    """The request parameters that change the reply, as set: ``temperature`` (LLM_TEMPERATURE)
    and ``reasoning_effort`` (LLM_REASONING_EFFORT). Part of every request's key."""
    params: dict[str, Any] = {}
    if settings.llm_temperature is not None:
        params["temperature"] = settings.llm_temperature
    if settings.llm_reasoning_effort is not None:
        params["reasoning_effort"] = settings.llm_reasoning_effort
    return params


def with_reply_params(requests: Sequence[LLMRequest], settings: Settings) -> list[LLMRequest]:
    """``requests`` carrying the settings' :func:`reply_params` (new keys when any is set;
    the very same requests when none is)."""
    params = reply_params(settings)
    return [request.with_params(params) if params or request.params else request for request in requests]


@dataclass(frozen=True)
class CallOptions:
    """What the settings add to every call: the token budget and the name it is sent under.
    ``budget`` None: no budget is sent (the provider's default applies)."""

    budget: int | None = None
    token_parameter: str = "max_completion_tokens"

    @classmethod
    def from_settings(cls, settings: Settings) -> CallOptions:
        return cls(settings.llm_max_completion_tokens, settings.llm_token_parameter)

    def larger_budget(self, budget: int | None, cuts: int) -> int | None:
        """The budget for the next try of a reply cut ``cuts`` times at ``budget``, or ``None``
        when it may not grow: no budget set, LENGTH_RETRIES spent, or MAX_BUDGET_FACTOR reached."""
        if self.budget is None or budget is None or cuts > LENGTH_RETRIES:
            return None
        larger = min(2 * budget, MAX_BUDGET_FACTOR * self.budget)
        return larger if larger > budget else None


def request_body(task: LLMTask, request: LLMRequest, *, mode: str | None = None, budget: int | None = None,
                 token_parameter: str = "max_completion_tokens") -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create`` (the JSON body) for ``request`` in
    ``mode`` (default: the task's first): the model, the messages, the ``response_format`` of
    the mode, the request's reply parameters, and ``budget`` under ``token_parameter``. Nothing
    that is not set is sent."""
    mode = mode or initial_mode(task)
    body: dict[str, Any] = {"model": request.model, "messages": messages_for(task, request, mode)}
    response_format = response_format_for(task, mode)
    if response_format is not None:
        body["response_format"] = response_format
    body.update(request.params)
    if budget is not None:
        body[token_parameter] = int(budget)
    return body


#: Tokens per character assumed before a call (``chars / 4``), and per message for the
#: role and separators; a token-per-minute limit reserves this estimate of the input.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimated_input_tokens(task: LLMTask, request: LLMRequest, mode: str | None = None) -> int:
    """The input tokens of ``request`` in ``mode``, estimated from characters (``chars / 4``,
    rounded up, plus TOKENS_PER_MESSAGE per message): what a token-per-minute limit reserves
    before the call (the reported usage corrects it after)."""
    messages = messages_for(task, request, mode or initial_mode(task))
    chars = sum(len(m["content"]) for m in messages)
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


# --- the call ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallResult:
    """One API call: a parsed reply with its usage, or a failure (tokens may still be paid)."""

    reply: dict[str, Any] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: Failure | None = None
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens, spent reasoning
    rate_limits: RateLimitInfo | None = None  # the response's x-ratelimit-* headers
    #: Whether the provider reported usage (a token-per-minute limit is corrected from it).
    usage_reported: bool = False


def _usage(completion: Any) -> tuple[int, int, int, int]:
    """Prompt, completion, cached prompt and reasoning tokens
    (``usage.prompt_tokens_details.cached_tokens``, ``usage.completion_tokens_details.reasoning_tokens``;
    0 when the provider does not report them)."""
    usage = getattr(completion, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cached = int(getattr(details, "cached_tokens", 0) or 0)
    reasoning = int(getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", 0) or 0)
    return prompt, completion_tokens, min(cached, prompt), min(reasoning, completion_tokens)


async def call(client: AsyncOpenAI, task: LLMTask, request: LLMRequest, *,
               secrets: Iterable[str | None] = (), mode: str | None = None, budget: int | None = None,
               token_parameter: str = "max_completion_tokens") -> CallResult:
    """Make ONE chat completion for ``request`` (body: :func:`request_body`) and check the
    reply with ``task.parse``.

    Never raises for an API or reply problem: the failure is classified (see :func:`classify`).
    ``finish_reason`` ``length`` and ``content_filter`` are failures of their own, never parsed.
    Uses ``chat.completions.with_raw_response.create`` (for the rate-limit headers) with the
    task's prebuilt ``response_format``, not the SDK's ``.parse()`` helper, which rebuilds the
    schema on every call (docs/design.md, "The call")."""
    import openai  # lazily: see TYPE_CHECKING above

    kwargs = request_body(task, request, mode=mode, budget=budget, token_parameter=token_parameter)
    sent = [name for name in kwargs if name not in ("model", "messages")]
    try:
        raw = await client.chat.completions.with_raw_response.create(**kwargs)
        completion = raw.parse()
    except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
        headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
        return CallResult(None, failure=classify(exc, secrets=secrets, sent=sent),
                          rate_limits=parse_rate_limit_headers(headers))
    rate_limits = parse_rate_limit_headers(raw.headers)
    if not hasattr(completion, "choices"):  # a 200 that is not JSON (a proxy's HTML page...)
        body = redact(str(completion), secrets)
        return CallResult(None, failure=classify(InvalidReply(f"response is not a chat completion: {body[:80]!r}")),
                          rate_limits=rate_limits)
    prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens = _usage(completion)
    paid = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cached_prompt_tokens": cached_tokens, "reasoning_tokens": reasoning_tokens,
            "rate_limits": rate_limits, "usage_reported": getattr(completion, "usage", None) is not None}
    finish = getattr(completion.choices[0], "finish_reason", None) if completion.choices else None
    if finish == "length":
        where = f" of {budget} tokens" if budget is not None else ""
        failure = Failure(LENGTH, False, detail=f"reply cut at the token budget{where} (finish_reason length)")
        return CallResult(None, failure=failure, **paid)
    if finish == "content_filter":
        failure = Failure(CONTENT_FILTER, False, detail="the provider's content filter withheld the reply")
        return CallResult(None, failure=failure, **paid)
    try:
        if not completion.choices:
            raise InvalidReply("reply has no choices")
        message = completion.choices[0].message
        content = message.content
        if not content:
            refusal = getattr(message, "refusal", None)
            raise InvalidReply(f"model refused: {refusal}" if refusal else "reply content is empty")
        reply = task.parse(content, request)
    except ValueError as exc:
        failure = classify(exc if isinstance(exc, InvalidReply) else InvalidReply(str(exc)), secrets=secrets)
        return CallResult(None, failure=failure, **paid)
    return CallResult(reply, **paid)


# --- cache records ------------------------------------------------------------------------------


class CorruptCacheEntry(ValueError):
    """A cache entry that cannot be trusted (truncated, edited, for another key)."""


def _checksum(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_record(request: LLMRequest, result: CallResult, run_token: str) -> dict[str, Any]:
    """The JSON-able value persisted for a successful call. ``run_token`` names the run that
    made the call (so a retry in the same run knows the call is done, and ``refresh`` can tell
    this run's answers from older ones). A checksum over the fields makes any edit or bit rot
    detectable: a damaged entry is a cache miss, never a wrong score."""
    if result.reply is None:
        raise ValueError("only successful calls are cached")
    fields = {
        "format": CACHE_RECORD_FORMAT,
        "key": request.key,
        "purpose": request.task,  # the task's name (the field keeps its first layout's name)
        "model": request.model,
        "prompt_version": request.prompt_version,
        "reply": result.reply,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens,  # absent from older records: 0
        "reasoning_tokens": result.reasoning_tokens,  # absent from older records: 0
        "run_token": run_token,
        "written_at": time.time(),
    }
    return {**fields, "checksum": _checksum(fields)}


def outcome_from_cache_record(record: Any, task: LLMTask, request: LLMRequest, run_token: str) -> LLMOutcome:
    """The outcome for ``request`` from a persisted record, its reply re-validated by ``task``;
    raises :class:`CorruptCacheEntry`. The outcome is ``cached=True`` unless this very run
    wrote the record."""
    if not isinstance(record, dict):
        raise CorruptCacheEntry(f"entry is a {type(record).__name__}, not a record")
    fields = {k: v for k, v in record.items() if k != "checksum"}
    if record.get("format") != CACHE_RECORD_FORMAT:
        raise CorruptCacheEntry(f"unknown record format {record.get('format')!r}")
    if record.get("checksum") != _checksum(fields):
        raise CorruptCacheEntry("checksum mismatch")
    if record.get("key") != request.key:
        raise CorruptCacheEntry("entry belongs to another request")
    try:
        reply = task.stored_reply(record.get("reply"), request)
    except ValueError as exc:
        raise CorruptCacheEntry(f"stored reply is invalid: {str(exc).splitlines()[0]}") from None
    return LLMOutcome(
        key=request.key,
        ok=True,
        reply=reply,
        prompt_tokens=int(record.get("prompt_tokens") or 0),
        completion_tokens=int(record.get("completion_tokens") or 0),
        cached_prompt_tokens=int(record.get("cached_prompt_tokens") or 0),
        reasoning_tokens=int(record.get("reasoning_tokens") or 0),
        cached=record.get("run_token") != run_token,
    )


# --- accounting ---------------------------------------------------------------------------------


def estimated_cost(prompt_tokens: int, completion_tokens: int, settings: Settings,
                   cached_prompt_tokens: int = 0) -> float | None:
    """USD for the tokens paid, from the price settings; ``None`` when no price is set.

    ``cached_prompt_tokens`` (a part of ``prompt_tokens``) are priced at
    LLM_PRICE_CACHED_INPUT_PER_MTOK, or at the input price when that is not set (what a
    provider without a cache discount charges)."""
    p_in, p_out = settings.llm_price_input_per_mtok, settings.llm_price_output_per_mtok
    p_cached = settings.llm_price_cached_input_per_mtok
    if p_in is None and p_out is None and p_cached is None:
        return None
    cached = min(cached_prompt_tokens, prompt_tokens)
    p_cached = p_in if p_cached is None else p_cached
    usd = (prompt_tokens - cached) * (p_in or 0.0) + cached * (p_cached or 0.0) + completion_tokens * (p_out or 0.0)
    return round(usd / 1e6, 6)
