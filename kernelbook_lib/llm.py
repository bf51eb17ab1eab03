"""Generic LLM requests to an OpenAI-compatible endpoint: requests, outcomes, cache records,
failure classification and the call itself. No orchestration here (``tasks/llm.py`` runs these
through Prefect: retries, caching and the concurrency limit are Prefect's).

Vocabulary:

- an :class:`LLMRequest` is one chat completion to make; its ``key`` is a SHA-256 over the model,
  the prompt version and the full prompt text (never the API key, never a row position), so the
  same question always hits the same cache entry;
- a *purpose* (``"judge"``, later the prompt generator's) names how a reply is validated: a
  reply its parser rejects is an ``invalid_reply`` failure, which is transient (retried);
- an :class:`LLMOutcome` is what the caller gets back for every request, in request order:
  the parsed reply, or a failure kind with a short detail that never holds a secret.

The SDK's own retries are off (``max_retries=0``): there is ONE retry policy, Prefect's.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from kernelbook_lib import rubric
from kernelbook_lib.errors import UserError

if TYPE_CHECKING:  # the SDK is imported lazily: importing it costs ~0.3 s
    from openai import AsyncOpenAI

    from kernelbook_lib.settings import Settings

# --- purposes: how each kind of reply is validated ----------------------------------------


@dataclass(frozen=True)
class Purpose:
    """How requests of one kind are sent and their replies validated.

    ``parse`` turns the reply text into a JSON-able dict or raises ``ValueError`` (an invalid
    reply). ``reply_model`` re-validates a reply read back from the cache. ``response_format``
    is sent with every request of this purpose (built once, never per call)."""

    name: str
    parse: Callable[[str], dict[str, Any]]
    reply_model: type[BaseModel] | None = None
    response_format: Mapping[str, Any] | None = None


_PURPOSES: dict[str, Purpose] = {}


def register_purpose(purpose: Purpose) -> None:
    """Register (or replace) a purpose. Modules that define a purpose register it at import."""
    _PURPOSES[purpose.name] = purpose


def get_purpose(name: str) -> Purpose:
    try:
        return _PURPOSES[name]
    except KeyError:
        raise ValueError(f"unknown LLM request purpose {name!r}; known: {sorted(_PURPOSES)}") from None


register_purpose(
    Purpose(
        name="judge",
        parse=lambda content: rubric.parse_judge_reply(content).model_dump(),
        reply_model=rubric.JudgeReply,
        response_format=rubric.JUDGE_RESPONSE_FORMAT,
    )
)

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
    """One chat completion to make. Build it with :meth:`build` so the key is always right."""

    model_config = ConfigDict(frozen=True)

    key: str
    model: str
    prompt_version: str
    purpose: str
    messages: tuple[dict[str, str], ...]

    @classmethod
    def build(
        cls, *, model: str, prompt_version: str, purpose: str, messages: Sequence[Mapping[str, str]]
    ) -> LLMRequest:
        get_purpose(purpose)  # fail at build time, not after thousands of calls
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
        return cls(
            key=request_key(model, prompt_version, msgs),
            model=model,
            prompt_version=prompt_version,
            purpose=purpose,
            messages=msgs,
        )

    @property
    def prompt_chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)


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
INVALID_REPLY = "invalid_reply"  # the purpose's parser rejected the reply
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
    """The endpoint answered, but the reply is unusable for its purpose (retried)."""

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
    if isinstance(exc, ValueError):  # a purpose parser's own error
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
    """One TLS context per process, shared by every client (building one loads the CA bundle,
    ~25 ms, which would otherwise be paid per client)."""
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


async def call(client: AsyncOpenAI, request: LLMRequest, *, secrets: Iterable[str | None] = ()) -> CallResult:
    """Make ONE chat completion for ``request`` and validate the reply for its purpose.

    Never raises for an API or reply problem: the failure is classified (see :func:`classify`).
    Uses ``chat.completions.create`` with the purpose's prebuilt ``response_format`` (the SDK's
    ``.parse()`` helper rebuilds the schema on every call and halves throughput)."""
    purpose = get_purpose(request.purpose)
    kwargs: dict[str, Any] = {}
    if purpose.response_format is not None:
        kwargs["response_format"] = purpose.response_format
    try:
        completion = await client.chat.completions.create(
            model=request.model, messages=list(request.messages), **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
        return CallResult(None, failure=classify(exc, secrets=secrets))
    if not hasattr(completion, "choices"):  # a 200 that is not JSON (a proxy's HTML page...)
        body = redact(str(completion), secrets)
        return CallResult(None, failure=classify(InvalidReply(f"response is not a chat completion: {body[:80]!r}")))
    usage = getattr(completion, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    try:
        if not completion.choices:
            raise InvalidReply("reply has no choices")
        message = completion.choices[0].message
        content = message.content
        if not content:
            refusal = getattr(message, "refusal", None)
            raise InvalidReply(f"model refused: {refusal}" if refusal else "reply content is empty")
        reply = purpose.parse(content)
    except ValueError as exc:
        failure = classify(exc if isinstance(exc, InvalidReply) else InvalidReply(str(exc)), secrets=secrets)
        return CallResult(None, prompt_tokens, completion_tokens, failure)
    return CallResult(reply, prompt_tokens, completion_tokens)


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
        "purpose": request.purpose,
        "model": request.model,
        "prompt_version": request.prompt_version,
        "reply": result.reply,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "run_token": run_token,
        "written_at": time.time(),
    }
    return {**fields, "checksum": _checksum(fields)}


def outcome_from_cache_record(record: Any, request: LLMRequest, run_token: str) -> LLMOutcome:
    """The outcome for ``request`` from a persisted record; raises :class:`CorruptCacheEntry`.

    The outcome is ``cached=True`` unless this very run wrote the record."""
    if not isinstance(record, dict):
        raise CorruptCacheEntry(f"entry is a {type(record).__name__}, not a record")
    fields = {k: v for k, v in record.items() if k != "checksum"}
    if record.get("format") != CACHE_RECORD_FORMAT:
        raise CorruptCacheEntry(f"unknown record format {record.get('format')!r}")
    if record.get("checksum") != _checksum(fields):
        raise CorruptCacheEntry("checksum mismatch")
    if record.get("key") != request.key:
        raise CorruptCacheEntry("entry belongs to another request")
    reply = record.get("reply")
    purpose = get_purpose(request.purpose)
    try:
        if purpose.reply_model is not None:
            reply = purpose.reply_model.model_validate(reply).model_dump()
        elif not isinstance(reply, dict):
            raise ValueError("reply is not an object")
    except ValueError as exc:
        raise CorruptCacheEntry(f"stored reply is invalid: {str(exc).splitlines()[0]}") from None
    return LLMOutcome(
        key=request.key,
        ok=True,
        reply=reply,
        prompt_tokens=int(record.get("prompt_tokens") or 0),
        completion_tokens=int(record.get("completion_tokens") or 0),
        cached=record.get("run_token") != run_token,
    )


# --- accounting ---------------------------------------------------------------------------------


def estimated_cost(prompt_tokens: int, completion_tokens: int, settings: Settings) -> float | None:
    """USD for the tokens paid, from the price settings; ``None`` when no price is set."""
    p_in, p_out = settings.llm_price_input_per_mtok, settings.llm_price_output_per_mtok
    if p_in is None and p_out is None:
        return None
    return round((prompt_tokens * (p_in or 0.0) + completion_tokens * (p_out or 0.0)) / 1e6, 6)
