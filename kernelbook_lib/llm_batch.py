"""Batch mode's pure parts (no Prefect): the JSONL lines of a batch input file, the split of a
job into files within the provider's limits, the job's key and its persisted state, and the
reading of a batch's output and error files into the same :class:`~kernelbook_lib.llm.CallResult`
an online call gives. ``tasks/llm/batch.py`` runs them through Prefect (docs/llm.md, "Batch
mode"; docs/design.md, "Batch mode").

The format is OpenAI's Batch API (relied on: the openai SDK's ``types/batch*.py`` and
``resources/{files,batches}.py``, and OpenAI's API reference for the per-line
``BatchRequestInput`` / ``BatchRequestOutput`` / ``BatchRequestOutputError`` objects):

- an input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``,
  the body being exactly what an online call sends (:func:`kernelbook_lib.llm.request_body`)
  and the ``custom_id`` the request's cache key (64 hex characters, OpenAI's maximum);
- an output or error line is ``{"id", "custom_id", "response": {"status_code", "request_id",
  "body"} | null, "error": {"code", "message"} | null}``; a request the batch did not run before
  its window ended is in the error file with code ``batch_expired``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelbook_lib import llm
from kernelbook_lib.llm import CallResult, Failure, LLMRequest, LLMTask

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: Bump when the job key or the state file's layout changes.
JOB_FORMAT = "kernelbook-llm-batch-job-v1"

#: Failure kinds of batch mode, beside ``kernelbook_lib.llm``'s (the ledger reads
#: ``<stage>_failed:expired``): a request the batch did not run before its 24 h window ended
#: (transient: resubmitted), and one in a batch someone cancelled (recorded).
EXPIRED = "expired"
CANCELLED = "cancelled"

#: A batch in one of these statuses changes no more: its files can be read.
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})


# --- input files ----------------------------------------------------------------------------


def batch_line(task: LLMTask, request: LLMRequest, **call_options: Any) -> bytes:
    """One line of a batch input file (with its newline): the body an online call sends
    (:func:`kernelbook_lib.llm.request_body`, with the same ``call_options``: the token budget
    and its parameter name), keyed by the request's cache key."""
    line = {"custom_id": request.key, "method": "POST", "url": BATCH_ENDPOINT,
            "body": llm.request_body(task, request, **call_options)}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=dict).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class InputFile:
    """One batch input file: its requests' keys, in line order, and its bytes."""

    keys: tuple[str, ...]
    content: bytes


def iter_files(lines: Iterable[tuple[str, bytes]], *, max_requests: int,
               max_bytes: int) -> Iterator[InputFile | tuple[str, int]]:
    """Split ``(key, line)`` pairs, in order, into files of at most ``max_requests`` lines and
    ``max_bytes`` bytes, each yielded as soon as it is full (so a caller can upload it before
    the next is built: one file in memory at a time). A line longer than ``max_bytes`` fits no
    file: it is yielded apart, as ``(key, size)``, for the caller to record."""
    keys: list[str] = []
    parts: list[bytes] = []
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            yield key, len(line)
            continue
        if keys and (len(keys) >= max_requests or size + len(line) > max_bytes):
            yield InputFile(tuple(keys), b"".join(parts))
            keys, parts, size = [], [], 0
        keys.append(key)
        parts.append(line)
        size += len(line)
    if keys:
        yield InputFile(tuple(keys), b"".join(parts))


def split_lines(lines: Iterable[tuple[str, bytes]], *, max_requests: int,
                max_bytes: int) -> tuple[list[InputFile], list[tuple[str, int]]]:
    """:func:`iter_files` as two lists: the files, and the lines too long for any file."""
    files: list[InputFile] = []
    oversized: list[tuple[str, int]] = []
    for item in iter_files(lines, max_requests=max_requests, max_bytes=max_bytes):
        (files if isinstance(item, InputFile) else oversized).append(item)  # type: ignore[arg-type]
    return files, oversized


def job_key(*, base_url: str, task: str, keys: Iterable[str], refresh: bool) -> str:
    """The key of a job: the endpoint, the task and every sendable request of the run (cached
    or not, so a run resumed after collecting part of its batches finds the same job), and
    whether the cache is ignored. The same arguments give the same job."""
    canonical = json.dumps([JOB_FORMAT, base_url.rstrip("/"), task, bool(refresh), sorted(set(keys))],
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- output and error files -----------------------------------------------------------------


def read_jsonl(text: str) -> dict[str, dict[str, Any]]:
    """The lines of an output or error file by ``custom_id`` (blank or unreadable lines are
    skipped: their requests are then missing, which the caller records)."""
    lines: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            lines[line["custom_id"]] = line
    return lines


def error_failure(error: Mapping[str, Any], secrets: Iterable[str | None] = ()) -> Failure:
    """A line the batch did not run (``error`` set, no response): ``batch_expired`` is
    :data:`EXPIRED` (transient), ``batch_cancelled`` :data:`CANCELLED`, ``request_timeout`` a
    timeout; any other code a server error (transient)."""
    code = str(error.get("code") or "")
    detail = llm.redact(f"{code or 'error'}: {error.get('message') or ''}".rstrip(": "), secrets)[:240]
    if code == "batch_expired":
        return Failure(EXPIRED, True, None, detail)
    if code == "batch_cancelled":
        return Failure(CANCELLED, False, None, detail)
    if code == "request_timeout":
        return Failure(llm.TIMEOUT, True, None, detail)
    return Failure(llm.SERVER_ERROR, True, None, detail)


#: The SDK's exception for each status of a failed call (``openai`` raises these online).
_STATUS_ERRORS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                  404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError",
                  429: "RateLimitError"}


class ReplayClient:
    """Reads batch lines with the online call's own code: a stand-in for the AsyncOpenAI client
    that :func:`kernelbook_lib.llm.call` is given, whose chat completion "call" returns the
    line's response: the body as the SDK builds it (``ChatCompletion.construct``, as the SDK
    does for a reply), or the SDK's own exception for a non-200 status. So a batch reply goes
    through exactly the checks an online reply does (status classification, finish reasons,
    refusals, ``task.parse``), and nothing leaves the process. It answers
    ``chat.completions.create`` and ``chat.completions.with_raw_response.create``. One line at
    a time: ``await`` each :meth:`result`.

    (A real client on an in-memory transport would do the same at 10x the CPU: the SDK
    validates and serialises each request body before sending it; measured ~2.6 ms a line.)"""

    def __init__(self) -> None:
        self._line: Mapping[str, Any] = {}
        replay = self

        class _Raw:
            headers: dict[str, str] = {}

            def __init__(self, parsed: Any) -> None:
                self._parsed = parsed

            def parse(self) -> Any:
                return self._parsed

        class _RawCompletions:
            async def create(self, **_body: Any) -> Any:
                return _Raw(replay._reply())

        class _Completions:
            with_raw_response = _RawCompletions()

            async def create(self, **_body: Any) -> Any:
                return replay._reply()

        class _Chat:
            completions = _Completions()

        self.chat = _Chat()

    def _reply(self) -> Any:
        """The line's response as the SDK gives it: a parsed completion, the text of a body that
        is not JSON, or the SDK's status error (raised)."""
        import httpx2
        import openai
        from openai.types.chat import ChatCompletion

        response = self._line.get("response") or {}
        status = int(response.get("status_code") or 0) or 500
        body = response.get("body")
        if status == 200:
            if isinstance(body, Mapping):
                return ChatCompletion.construct(**body)
            return body if isinstance(body, str) else json.dumps(body)
        http = httpx2.Response(status, json=body, request=httpx2.Request("POST", "https://batch.invalid" + BATCH_ENDPOINT))
        error = body.get("error") if isinstance(body, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else None
        name = _STATUS_ERRORS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
        raise getattr(openai, name)(str(message or f"Error code: {status}"), response=http, body=error or body)

    async def result(self, line: Mapping[str, Any], task: LLMTask, request: LLMRequest, *,
                     secrets: Iterable[str | None] = (), **call_options: Any) -> CallResult:
        """The result of one output or error line. ``call_options`` are the ones the line's
        body was built with (the token budget), so a check that names them reads the same."""
        if not isinstance(line.get("response"), Mapping):
            error = line.get("error")
            return CallResult(None, failure=error_failure(error if isinstance(error, Mapping) else {}, secrets))
        self._line = line
        try:
            return await llm.call(self, task, request, secrets=secrets, **call_options)  # type: ignore[arg-type]
        finally:
            self._line = {}


def missing_failure(batch_status: str, errors: Sequence[Mapping[str, Any]] = ()) -> Failure:
    """A request of a finished batch found in neither file: its batch expired, was cancelled,
    failed its validation (a limit is transient, anything else is recorded), or lost it."""
    if batch_status == "expired":
        return Failure(EXPIRED, True, None, "not run before the batch's 24 h completion window ended")
    if batch_status in ("cancelled", "cancelling"):
        return Failure(CANCELLED, False, None, "the batch was cancelled")
    if batch_status == "failed":
        first = errors[0] if errors else {}
        code, message = str(first.get("code") or ""), str(first.get("message") or "")
        detail = f"batch failed validation: {code}: {message}".rstrip(": ")[:240]
        if "limit" in code or "limit" in message.lower():
            return Failure(llm.RATE_LIMITED, True, None, detail)
        return Failure(llm.BAD_REQUEST, False, None, detail)
    return Failure(llm.SERVER_ERROR, True, None, f"missing from the output of a {batch_status} batch")


# --- the job's state, persisted beside the cache ----------------------------------------------


@dataclass
class BatchPart:
    """One batch of a job: its requests, its input file and batch ids once the provider gave
    them, its last known status, and whether its results were read."""

    keys: list[str]
    bytes: int
    round: int  # 1 for a first submission, 2 for the first resubmission...
    input_file_id: str | None = None
    id: str | None = None
    status: str = "uploading"
    collected: bool = False
    request_counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "input_file_id": self.input_file_id, "status": self.status,
                "collected": self.collected, "round": self.round, "bytes": self.bytes,
                "request_counts": self.request_counts, "keys": self.keys}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchPart:
        return cls(keys=[str(k) for k in data["keys"]], bytes=int(data.get("bytes") or 0), round=int(data.get("round") or 1),
                   input_file_id=data.get("input_file_id"), id=data.get("id"), status=str(data.get("status") or "unknown"),
                   collected=bool(data.get("collected")), request_counts=dict(data.get("request_counts") or {}))


@dataclass
class JobState:
    """What survives the process: the batches submitted for a job, how many times each request
    was submitted, the requests answered (their replies are in the cache) and the last failure
    of each request that failed, so a run started again with the same arguments collects the
    same batches and resubmits only what must be. Written atomically after every change."""

    job: str
    label: str
    task: str
    base_url: str
    created_at: float = field(default_factory=time.time)
    parts: list[BatchPart] = field(default_factory=list)
    submissions: Counter[str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def active(self) -> list[BatchPart]:
        """Parts submitted (or being submitted) whose results were not read yet."""
        return [part for part in self.parts if not part.collected]

    def batch_ids(self) -> list[str]:
        return [part.id for part in self.parts if part.id]

    def note_failure(self, key: str, failure: Failure) -> None:
        self.failures[key] = {"kind": failure.kind, "transient": failure.transient, "detail": failure.detail}

    def to_json(self) -> dict[str, Any]:
        return {"format": JOB_FORMAT, "job": self.job, "label": self.label, "task": self.task,
                "base_url": self.base_url, "created_at": self.created_at,
                "parts": [part.to_json() for part in self.parts],
                "submissions": dict(self.submissions), "answered": sorted(self.answered), "failures": self.failures}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobState:
        if data.get("format") != JOB_FORMAT:
            raise ValueError(f"unknown batch job format {data.get('format')!r}")
        return cls(job=str(data["job"]), label=str(data.get("label") or ""), task=str(data.get("task") or ""),
                   base_url=str(data.get("base_url") or ""), created_at=float(data.get("created_at") or 0),
                   parts=[BatchPart.from_json(p) for p in data.get("parts") or []],
                   submissions=Counter({str(k): int(v) for k, v in (data.get("submissions") or {}).items()}),
                   answered={str(k) for k in data.get("answered") or []},
                   failures={str(k): dict(v) for k, v in (data.get("failures") or {}).items()})


def job_path(cache_dir: Path, job: str) -> Path:
    """Where a job's state lives: ``<KERNELBOOK_CACHE_DIR>/batches/<job>.json``."""
    return Path(cache_dir) / "batches" / f"{job}.json"


def save_state(path: Path, state: JobState) -> None:
    """Write ``state`` atomically (a temporary file in the same folder, then ``os.replace``): a
    run killed at any moment leaves the previous state or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state.to_json(), handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path, job: str) -> JobState | None:
    """The persisted state of ``job`` (None when there is none); raises ``ValueError`` for a file
    that cannot be trusted (the caller warns and starts over rather than guessing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    state = JobState.from_json(json.loads(text))
    if state.job != job:
        raise ValueError("the file belongs to another job")
    return state


def batch_cost(prompt_tokens: int, completion_tokens: int, settings: Any, cached_prompt_tokens: int = 0) -> float | None:
    """The estimated cost at batch prices: LLM_BATCH_PRICE_FACTOR times the online estimate."""
    cost = llm.estimated_cost(prompt_tokens, completion_tokens, settings, cached_prompt_tokens)
    return None if cost is None else round(cost * settings.llm_batch_price_factor, 6)
