"""The failures of an LLM call: the kinds a call can end in, which of them are retried, how an
exception of the SDK becomes a :class:`Failure` (:func:`classify`), and the one-line messages of
the failures that stop a whole run (a rejected key, a parameter the endpoint refuses). Details
are short and have every secret redacted. Part of :mod:`kernelbook_lib.llm`, which re-exports
every name here.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernelbook_lib.errors import UserError

if TYPE_CHECKING:
    from kernelbook_lib.llm import LLMRequest


#: Failure kinds. Transient ones are retried by Prefect; the others are recorded at once.
RATE_LIMITED = "rate_limited"  # 429
SERVER_ERROR = "server_error"  # 5xx
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
INVALID_REPLY = "invalid_reply"  # the task's parse rejected the reply
BAD_REQUEST = "bad_request"  # 400, 409, 413, 422 and other 4xx
NOT_FOUND = "not_found"  # 404 (usually a wrong model name or base URL)
AUTH = "auth"  # 401/403: stops the whole run
PROMPT_TOO_LONG = "prompt_too_long"  # over LLM_MAX_PROMPT_CHARS (never sent), or refused by the server as over the model's context
#: What a server's refusal of a prompt longer than the model's context says (checked on 4xx bodies).
_CONTEXT_WORDS = re.compile(
    r"context[_ ]length[_ ]exceeded|exceed(s|ed)?[_ ](the[_ ])?(available[_ ])?context|maximum context length|"
    r"context window|prompt is too long|too many (input )?tokens", re.IGNORECASE)
UNEXPECTED = "unexpected_error"
#: ``finish_reason: "length"``: the reply was cut at the token budget. Re-sent at once with a
#: larger budget when LLM_MAX_COMPLETION_TOKENS is set (see ``LENGTH_RETRIES``), else recorded.
LENGTH = "length"
#: ``finish_reason: "content_filter"``: the provider withheld the reply (recorded at once).
CONTENT_FILTER = "content_filter"
#: The endpoint rejected our ``response_format`` (a 4xx, or a 5xx whose body names it): the run
#: falls back to the next structured-output mode and sends the request again. Never recorded.
FORMAT_REJECTED = "response_format_rejected"
#: A 400/422 naming a request parameter a setting made us send: stops the whole run
#: (:class:`LLMParameterError`). Never recorded per row.
UNSUPPORTED_PARAMETER = "unsupported_parameter"

#: A reply cut by the budget is re-sent this many times, each time with twice the budget...
LENGTH_RETRIES = 1
#: ... but never more than this multiple of LLM_MAX_COMPLETION_TOKENS.
MAX_BUDGET_FACTOR = 4

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
    #: The request parameter an ``unsupported_parameter`` failure names.
    param: str | None = None


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


#: The request parameters a setting makes us send, with the setting.
PARAMETER_SETTINGS: dict[str, str] = {
    "max_completion_tokens": "LLM_MAX_COMPLETION_TOKENS",
    "max_tokens": "LLM_MAX_COMPLETION_TOKENS",
    "reasoning_effort": "LLM_REASONING_EFFORT",
    "temperature": "LLM_TEMPERATURE",
}
_FORMAT_WORDS = re.compile(r"response_format|json_schema|json_object", re.IGNORECASE)


def _names(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text, re.IGNORECASE) is not None


#: Words saying a parameter itself is refused (not, say, a budget too large for one long prompt).
_REFUSAL_WORDS = re.compile(r"unsupported|not supported|does not support|unrecognized|unknown|not allowed|"
                            r"not permitted|extra (inputs|fields)|invalid", re.IGNORECASE)


def _named_parameter(body: Any, text: str, sent: Iterable[str]) -> str | None:
    """The parameter (of those a setting made us send) that an error body refuses: its
    ``param`` field (OpenAI's errors have one), else the first named in the message; and the
    error says the parameter is unsupported, unknown or invalid (OpenAI's codes
    ``unsupported_parameter`` / ``unsupported_value``, or such words). A 400 that names
    ``max_tokens`` because one prompt leaves too little room in the context is a row's
    ``bad_request``, not a setting to change."""
    sent = [name for name in sent if name in PARAMETER_SETTINGS]
    code = str(body.get("code") or "") if isinstance(body, dict) else ""
    if not code.startswith("unsupported") and not _REFUSAL_WORDS.search(text):
        return None
    param = body.get("param") if isinstance(body, dict) else None  # the SDK's body is the error object
    if isinstance(param, str) and param in sent:
        return param
    return next((name for name in sent if _names(text, name)), None)


def classify(exc: BaseException, *, secrets: Iterable[str | None] = (),
             sent: Iterable[str] = ()) -> Failure:
    """Map an exception raised by a call to a :class:`Failure`.

    429, 5xx, timeouts, connection errors and invalid replies are transient; 400/404 and other
    4xx are not; 401/403 are ``auth`` (the caller stops the run). ``sent`` names the optional
    body keys the request carried: a 4xx, or a 5xx, whose body names ``response_format`` (or
    ``json_schema``/``json_object``) when one was sent is ``response_format_rejected``; a 400 or
    422 naming a parameter a setting made us send is ``unsupported_parameter``. The detail is
    short and has every secret in ``secrets`` redacted (providers sometimes echo the key in
    error bodies)."""
    import openai  # lazily: see TYPE_CHECKING above

    secrets = tuple(secrets)
    sent = tuple(sent)
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
        text = json.dumps(body, default=str) if isinstance(body, (dict, list)) else str(body or exc.message or "")
        if "response_format" in sent and status not in (401, 403, 404, 408, 429) and _FORMAT_WORDS.search(text):
            return Failure(FORMAT_REJECTED, False, None, detail, status)
        if status in (400, 413, 422) and _CONTEXT_WORDS.search(text):
            # The server refused a prompt longer than the model's context (llama.cpp's
            # exceed_context_size_error, OpenAI's and llama-cpp-python's context_length_exceeded):
            # the row's prompt is too long, as one over LLM_MAX_PROMPT_CHARS is; never retried.
            return Failure(PROMPT_TOO_LONG, False, None, detail, status)
        if status in (400, 422) and (param := _named_parameter(body, text, sent)) is not None:
            return Failure(UNSUPPORTED_PARAMETER, False, None, detail, status, param)
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


class LLMParameterError(UserError):
    """The endpoint rejected a request parameter a setting made us send: stop the whole run
    with one line naming the parameter and the setting to change (not retried, and no row is
    recorded as failed: the next run, with the setting changed, asks again)."""


def unsupported_parameter_message(param: str, base_url: str, detail: str) -> str:
    """One line: the parameter, what the endpoint said, and the setting to change."""
    fixes = {
        "max_completion_tokens": "set LLM_TOKEN_PARAMETER=max_tokens (for a server that only knows the old "
                                 "name) or unset LLM_MAX_COMPLETION_TOKENS",
        "max_tokens": "set LLM_TOKEN_PARAMETER=max_completion_tokens (the default) or unset LLM_MAX_COMPLETION_TOKENS",
        "reasoning_effort": "unset LLM_REASONING_EFFORT or choose a level this model takes",
        "temperature": "unset LLM_TEMPERATURE or choose a value this model takes",
    }
    fix = fixes.get(param, f"unset {PARAMETER_SETTINGS.get(param, 'the setting that sends it')}")
    line = (f"the LLM endpoint {base_url} rejected the request parameter `{param}` ({detail}): {fix}. "
            "The run was stopped; no verdict was recorded for the remaining rows.")
    return " ".join(line.split())


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
