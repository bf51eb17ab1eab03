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
"""

from __future__ import annotations

import copy
import email.utils
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from kernelbook_lib.errors import UserError

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


def request_key(model: str, prompt_version: str, messages: Sequence[Mapping[str, str]]) -> str:
    """SHA-256 (hex) over the model, the prompt version and the full prompt text.

    Every message's role and complete content count; nothing else does (no API key, no row
    position, no time), so a second run of the same job finds every answer again."""
    canonical = json.dumps(
        [KEY_SCHEME, model, prompt_version, [[m["role"], m["content"]] for m in messages]],
        ensure_ascii=False,
        separators=(",", ":"),
    )
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

    @classmethod
    def build(cls, *, model: str, task: LLMTask, messages: Sequence[Mapping[str, str]],
              context: Mapping[str, str] | None = None) -> LLMRequest:
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
        return cls(
            key=request_key(model, task.prompt_version, msgs),
            model=model,
            prompt_version=task.prompt_version,
            task=task.name,
            messages=msgs,
            context=dict(context or {}),
        )

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
    cached: bool = False
    calls: int = Field(default=0, ge=0)
    failure_kind: str | None = None
    failure_detail: str | None = None


# --- failures -------------------------------------------------------------------------------

#: Failure kinds. Transient ones are retried by Prefect; the others are recorded at once.
RATE_LIMITED = "rate_limited"  # 429
SERVER_ERROR = "server_error"  # 5xx
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
INVALID_REPLY = "invalid_reply"  # the task's parse rejected the reply
BAD_REQUEST = "bad_request"  # 400, 409, 413, 422 and other 4xx
NOT_FOUND = "not_found"  # 404 (usually a wrong model name or base URL)
AUTH = "auth"  # 401/403: stops the whole run
PROMPT_TOO_LONG = "prompt_too_long"  # never sent
UNEXPECTED = "unexpected_error"

#: Longest Retry-After honoured, in seconds (a provider asking for more is capped, not obeyed
#: for an hour; the retry then meets the limit again and Prefect's backoff takes over).
MAX_RETRY_AFTER_S = 300.0
_DETAIL_CHARS = 240


@dataclass(frozen=True)
class Failure:
    kind: str
    transient: bool
    retry_after: float | None = None
    detail: str = ""
    status: int | None = None


def ledger_reason(stage: str, kind: str | None) -> str:
    """The ledger reason for a request that still failed: ``{stage}_prompt_too_long``,
    ``{stage}_invalid_reply`` or ``{stage}_failed:<kind>``."""
    if kind == PROMPT_TOO_LONG:
        return f"{stage}_prompt_too_long"
    if kind == INVALID_REPLY:
        return f"{stage}_invalid_reply"
    return f"{stage}_failed:{kind or 'unknown'}"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of every (non-trivial) secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


def _short(text: str, secrets: Iterable[str | None]) -> str:
    text = " ".join(redact(str(text), secrets).split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
    if value is None and (raw := headers.get("retry-after")) is not None:
        try:
            value = float(raw)
        except ValueError:
            parsed = email.utils.parsedate_tz(raw)
            if parsed is not None:
                value = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    if value is None or math.isnan(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER_S)


class InvalidReply(ValueError):
    """The endpoint answered, but the reply is unusable for its task (retried)."""

    def __init__(self, detail: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(detail)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


def classify(exc: BaseException, *, secrets: Iterable[str | None] = ()) -> Failure:
    """Map an exception raised by a call to a :class:`Failure`.

    429, 5xx, timeouts, connection errors and invalid replies are transient; 400/404 and other
    4xx are not; 401/403 are ``auth`` (the caller stops the run). The detail is short and has
    every secret in ``secrets`` redacted (providers sometimes echo the key in error bodies)."""
    import openai  # lazily: see TYPE_CHECKING above

    secrets = tuple(secrets)
    if isinstance(exc, InvalidReply):
        return Failure(INVALID_REPLY, transient=True, detail=_short(str(exc), secrets))
    if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError: it is a subclass
        return Failure(TIMEOUT, transient=True, detail="request timed out")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        name = type(cause).__name__ if cause is not None else "connection error"
        return Failure(CONNECTION_ERROR, transient=True, detail=_short(name, secrets))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else body
        detail = f"HTTP {status}" + (f": {message}" if message else "")
        detail = _short(detail, secrets)
        if status == 429:
            retry_after = parse_retry_after(exc.response.headers)
            return Failure(RATE_LIMITED, True, retry_after, detail, status)
        if status >= 500:
            return Failure(SERVER_ERROR, True, parse_retry_after(exc.response.headers), detail, status)
        if status in (401, 403):
            return Failure(AUTH, False, None, detail, status)
        if status == 404:
            return Failure(NOT_FOUND, False, None, detail, status)
        if status == 408:  # request timeout reported by a proxy
            return Failure(TIMEOUT, True, None, detail, status)
        return Failure(BAD_REQUEST, False, None, detail, status)
    if isinstance(exc, openai.APIResponseValidationError):
        return Failure(INVALID_REPLY, True, None, _short(f"malformed response: {exc}", secrets))
    if isinstance(exc, ValueError):  # a task's parse error
        return Failure(INVALID_REPLY, True, None, _short(str(exc), secrets))
    return Failure(UNEXPECTED, False, None, _short(f"{type(exc).__name__}: {exc}", secrets))


class LLMAuthError(UserError):
    """The endpoint rejected our credentials: stop the whole run with one clear message."""


def auth_error_message(status: int | None, base_url: str, team_id_set: bool) -> str:
    if status == 403:
        what = "refused access (HTTP 403)"
        fix = (
            "check that PRIME_API_KEY may use this model and that PRIME_TEAM_ID is the right team"
            if team_id_set
            else "check that PRIME_API_KEY may use this model; team accounts also need PRIME_TEAM_ID"
        )
    else:
        what = "rejected the API key (HTTP 401)"
        fix = "check PRIME_API_KEY (and PRIME_TEAM_ID for a team account)"
    return f"the LLM endpoint {base_url} {what}: {fix}. The run was stopped; no verdict was recorded for the remaining rows."


def prompt_too_long(request: LLMRequest, max_chars: int) -> Failure | None:
    """A prompt over ``max_chars`` is never sent (and never truncated)."""
    chars = request.prompt_chars
    if chars > max_chars:
        return Failure(
            PROMPT_TOO_LONG,
            transient=False,
            detail=f"prompt has {chars} characters, over LLM_MAX_PROMPT_CHARS={max_chars}; not sent",
        )
    return None


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


@dataclass(frozen=True)
class CallResult:
    """One API call: a parsed reply with its usage, or a failure (tokens may still be paid)."""

    reply: dict[str, Any] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: Failure | None = None
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache


def _usage(completion: Any) -> tuple[int, int, int]:
    """Prompt, completion and cached prompt tokens (``usage.prompt_tokens_details.cached_tokens``;
    0 when the provider does not report it)."""
    usage = getattr(completion, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    cached = int(getattr(details, "cached_tokens", 0) or 0)
    return prompt, int(getattr(usage, "completion_tokens", 0) or 0), min(cached, prompt)


async def call(client: AsyncOpenAI, task: LLMTask, request: LLMRequest, *,
               secrets: Iterable[str | None] = ()) -> CallResult:
    """Make ONE chat completion for ``request`` and check the reply with ``task.parse``.

    Never raises for an API or reply problem: the failure is classified (see :func:`classify`).
    Uses ``chat.completions.create`` with the task's prebuilt ``response_format``, not the SDK's
    ``.parse()`` helper, which rebuilds the schema on every call (docs/design.md, "The call")."""
    kwargs: dict[str, Any] = {}
    if task.response_format is not None:
        kwargs["response_format"] = task.response_format
    try:
        completion = await client.chat.completions.create(
            model=request.model, messages=list(request.messages), **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
        return CallResult(None, failure=classify(exc, secrets=secrets))
    if not hasattr(completion, "choices"):  # a 200 that is not JSON (a proxy's HTML page...)
        body = redact(str(completion), secrets)
        return CallResult(None, failure=classify(InvalidReply(f"response is not a chat completion: {body[:80]!r}")))
    prompt_tokens, completion_tokens, cached_tokens = _usage(completion)
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
        return CallResult(None, prompt_tokens, completion_tokens, failure, cached_tokens)
    return CallResult(reply, prompt_tokens, completion_tokens, None, cached_tokens)


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
