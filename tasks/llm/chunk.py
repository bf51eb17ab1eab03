"""The ``llm-requests`` task: one chunk of requests per task run, one coroutine per call, and
Prefect's retries of the calls that failed transiently (docs/design.md, "Retries").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from kernelbook_lib import llm
from kernelbook_lib.llm import Failure, LLMAuthError, LLMOutcome, LLMRequest
from kernelbook_lib.settings import load_settings
from tasks import prefect_internals
from tasks.llm.cache import _write_cached
from tasks.llm.state import _run_state

if TYPE_CHECKING:
    from tasks.llm.state import _RunState

#: Jitter on Prefect's retry delays (``retry_jitter_factor``).
RETRY_JITTER = 0.5


class TransientLLMFailures(Exception):
    """A chunk attempt ended with calls that failed transiently: Prefect retries the chunk.

    ``not_before`` (epoch seconds) is the earliest moment a Retry-After allows the retry."""

    def __init__(self, counts: Counter[str], total: int, not_before: float | None) -> None:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))
        super().__init__(f"{sum(counts.values())} of {total} calls failed transiently ({kinds}); retrying those")
        self.counts = counts
        self.not_before = not_before


@dataclass
class _Transient:
    """A call that failed transiently in this attempt (retried, or recorded on the last one)."""

    failure: Failure
    prompt_tokens: int
    completion_tokens: int


async def _one_call(run: _RunState, request: LLMRequest, secrets: tuple[str, ...],
                    base_url: str, team_id_set: bool, chunk_no: int | None, logger: Any) -> LLMOutcome | _Transient:
    """Resolve one request in one attempt: a result already made in this run, or one call.
    ``chunk_no`` is set on a chunk's first attempt (its requests count in the backlog until
    they get a slot)."""
    try:
        done = run.final.get(request.key)
        if done is not None:
            return done
        slot = await run.pool.acquire()
    finally:
        if chunk_no is not None:
            run.note_backlog(chunk_no, -1)
    try:
        if run.cooldown_until > time.monotonic():  # a 429 asked everybody to slow down
            await asyncio.sleep(run.cooldown_until - time.monotonic())
        run.calls[request.key] += 1
        result = await llm.call(run.client_for(slot), run.task, request, secrets=secrets)
    finally:
        run.pool.release(slot)
    run.note_usage(result)
    calls = run.calls[request.key]
    if result.failure is None:
        if run.persist_calls:
            _write_cached(run, request, result, logger)  # at once: a killed run keeps this answer
        return run.resolve(LLMOutcome(key=request.key, ok=True, reply=result.reply, calls=calls,
                                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                      cached_prompt_tokens=result.cached_prompt_tokens))
    failure = result.failure
    if failure.kind == llm.AUTH:
        run.stop_for_auth(LLMAuthError(llm.auth_error_message(failure.status, base_url, team_id_set)))
        raise asyncio.CancelledError
    if not failure.transient:
        return run.resolve(LLMOutcome(key=request.key, ok=False, calls=calls, failure_kind=failure.kind,
                                      failure_detail=failure.detail, prompt_tokens=result.prompt_tokens,
                                      completion_tokens=result.completion_tokens))
    if failure.retry_after:
        run.cooldown_until = max(run.cooldown_until, time.monotonic() + failure.retry_after)
    run.retrying.add(request.key)
    return _Transient(failure, result.prompt_tokens, result.completion_tokens)


async def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only transient call failures, and not before a
    Retry-After allows (sleeping out the part Prefect's own delay may not cover)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if not isinstance(exc, TransientLLMFailures):
        return False
    if exc.not_before is not None:
        delays = task.retry_delay_seconds or [0.0]
        delay = delays[min(task_run.run_count - 1, len(delays) - 1)] if isinstance(delays, list) else float(delays)
        shortest = delay * prefect_internals.lower_clamp_multiple(1 + task.retry_jitter_factor) if task.retry_jitter_factor else delay
        extra = exc.not_before - time.time() - shortest
        if extra > 0:
            await asyncio.sleep(extra)
    return True


@task(
    name="llm-requests",
    cache_policy=NO_CACHE,  # each call is cached on its own, in the result store
    persist_result=False,
    retry_condition_fn=_retry_if_transient,
    retry_jitter_factor=RETRY_JITTER,
)
async def llm_requests_chunk(requests: list[LLMRequest], run_token: str, chunk_no: int) -> list[LLMOutcome]:
    """Resolve a chunk of requests: one attempt makes every call still needed, concurrently
    (at most the pool's slots in flight). Transient failures raise for Prefect to retry the
    chunk; on the last attempt they are returned as failed outcomes."""
    run = _run_state(run_token)
    logger = get_run_logger()
    settings = load_settings()
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    last_attempt = attempt > (context.task.retries if context else 0)
    secrets = (llm.require_api_key(settings),)
    run.ensure_clients(settings)
    workers = [
        asyncio.ensure_future(_one_call(run, request, secrets, settings.llm_base_url,
                                        bool(settings.prime_team_id), chunk_no if attempt == 1 else None, logger))
        for request in requests
    ]
    run.workers.update(workers)
    try:
        results = await asyncio.gather(*workers, return_exceptions=True)
    finally:
        run.workers.difference_update(workers)
    if run.auth_error is not None:
        raise run.auth_error
    for result in results:
        if isinstance(result, BaseException):
            raise result  # a bug, not an API failure: fail loudly
    transient = {req.key: res for req, res in zip(requests, results, strict=True) if isinstance(res, _Transient)}
    if transient and not last_attempt:
        hints = [t.failure.retry_after for t in transient.values() if t.failure.retry_after]
        not_before = time.time() + max(hints) if hints else None
        raise TransientLLMFailures(Counter(t.failure.kind for t in transient.values()), len(requests), not_before)
    if transient:
        logger.warning(
            f"{run.label}: {len(transient)} of {len(requests)} calls still failing after {attempt} attempts; "
            "recorded as failures"
        )
    outcomes: list[LLMOutcome] = []
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, _Transient):
            result = run.resolve(LLMOutcome(
                key=request.key, ok=False, calls=run.calls[request.key], failure_kind=result.failure.kind,
                failure_detail=result.failure.detail, prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens))
        outcomes.append(result)
    return outcomes
