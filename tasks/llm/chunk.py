"""The ``llm-requests`` task: one chunk of requests per task run, one coroutine per call, and
Prefect's retries of the calls that failed transiently (docs/design.md, "Retries").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from kernelbook_lib import llm
from kernelbook_lib.llm import Failure, LLMAuthError, LLMOutcome, LLMParameterError, LLMRequest
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


async def _send(run: _RunState, slot: int, request: LLMRequest, secrets: tuple[str, ...], mode: str,
                budget: int | None) -> tuple[llm.CallResult, int]:
    """One API call on ``slot``: after any cooldown (a 429's Retry-After, a rate-limit reset)
    and the admission of the rate limits, in ``mode`` with ``budget``. Returns the result and
    the tokens the token limit charged for it (see :func:`_settle`)."""
    await run.wait_cooldown()
    charged = 0
    tokens = 0
    if run.limiter is not None:
        tokens = run.limiter.reserve(llm.estimated_input_tokens(run.task, request, mode), budget)
        charged = await run.limiter.admit(tokens)
    run.calls[request.key] += 1
    run.in_flight += 1
    try:
        if run.hedge_quantile is None:
            result = await llm.call(run.client_for(slot), run.task, request, secrets=secrets, mode=mode,
                                    budget=budget, token_parameter=run.options.token_parameter)
        else:
            result = await _hedged_call(run, slot, request, secrets, mode, budget)
    finally:
        run.in_flight -= 1
    run.note_rate_limits(result.rate_limits, tokens or llm.estimated_input_tokens(run.task, request, mode))
    run.note_usage(result)
    return result, charged


#: Answered calls a run must have seen before it hedges (the quantile of fewer is noise).
HEDGE_MIN_SAMPLES = 20


async def _timed_call(run: _RunState, slot: int, request: LLMRequest, secrets: tuple[str, ...], mode: str,
                      budget: int | None) -> tuple[llm.CallResult, float]:
    start = time.monotonic()
    result = await llm.call(run.client_for(slot), run.task, request, secrets=secrets, mode=mode, budget=budget,
                            token_parameter=run.options.token_parameter)
    return result, time.monotonic() - start


async def _hedged_call(run: _RunState, slot: int, request: LLMRequest, secrets: tuple[str, ...], mode: str,
                       budget: int | None) -> llm.CallResult:
    """The call, with a hedge (docs/llm.md, "Hedged requests"): when it is still unanswered
    after the LLM_HEDGE_AFTER_QUANTILE quantile of this run's latencies and a leased slot is
    idle with no call waiting for it, a second copy goes out on that slot (admitted by the rate
    limits like any call). The first good answer wins (the caller caches it); the other copy is
    cancelled. Both are counted as calls; the loser's tokens are its usage when it answered,
    else the winner's (a cancelled call reports none; the provider may still bill it)."""
    primary = asyncio.ensure_future(_timed_call(run, slot, request, secrets, mode, budget))
    hedge: asyncio.Future[tuple[llm.CallResult, float, int]] | None = None
    spare: int | None = None
    try:
        delay = run.hedge_delay(HEDGE_MIN_SAMPLES)
        if delay is not None:
            await asyncio.wait({primary}, timeout=delay)
            if not primary.done():
                spare = run.pool.try_acquire()
        if spare is None:
            result, latency = await primary
            if result.failure is None:
                run.note_latency(latency)
            return result

        sent = False

        async def second(hedge_slot: int) -> tuple[llm.CallResult, float, int]:
            nonlocal sent
            charged = 0
            if run.limiter is not None:
                charged = await run.limiter.admit(run.limiter.reserve(
                    llm.estimated_input_tokens(run.task, request, mode), budget))
            sent = True
            run.hedges_sent += 1
            run.calls[request.key] += 1
            result, latency = await _timed_call(run, hedge_slot, request, secrets, mode, budget)
            return result, latency, charged

        hedge = asyncio.ensure_future(second(spare))
        pending: set[asyncio.Future[Any]] = {primary, hedge}
        winner: asyncio.Future[Any] | None = None
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in (primary, hedge):  # the primary first when both are done
                if future in done and _answered(future):
                    winner = future
                    break
        if winner is None:  # neither answered well: the primary's failure stands
            winner = primary
        loser = hedge if winner is primary else primary
        if not loser.done():
            loser.cancel()
            with contextlib.suppress(BaseException):
                await loser
        won: llm.CallResult = winner.result()[0]
        if won.failure is None:
            run.note_latency(winner.result()[1])
        if winner is hedge:
            run.hedges_won += 1
        # The caller notes the winner's usage; the loser's is noted here: its own when it
        # answered, the winner's when it was cancelled in flight (never sent: none).
        lost = loser.result()[0] if loser.done() and not loser.cancelled() and loser.exception() is None else None
        if lost is not None:
            run.note_usage(lost)
        elif loser is primary or sent:
            run.note_usage(won)
        if hedge.done() and not hedge.cancelled() and hedge.exception() is None:
            await _settle(run, hedge.result()[0], hedge.result()[2], budget)  # the hedge's own token charge
        return won
    finally:
        for future in (primary, hedge):
            if future is not None and not future.done():
                future.cancel()
        if spare is not None:
            run.pool.release(spare)


def _answered(future: asyncio.Future[Any]) -> bool:
    """A finished copy of a hedged call that got a good answer."""
    return not future.cancelled() and future.exception() is None and future.result()[0].failure is None


async def _settle(run: _RunState, result: llm.CallResult, charged: int, budget: int | None) -> None:
    """Correct a call's token charge from its reported usage (after its slot is free): what a
    provider counts, the prompt tokens plus the budget sent (OpenAI counts ``max_tokens`` up
    front), or plus the completion tokens when no budget was sent."""
    if run.limiter is not None and charged:
        used = None
        if result.usage_reported:
            output = max(result.completion_tokens, budget) if budget is not None else result.completion_tokens
            used = result.prompt_tokens + output
        await run.limiter.settle(charged, used)


async def _one_call(run: _RunState, request: LLMRequest, secrets: tuple[str, ...],
                    base_url: str, team_id_set: bool, chunk_no: int | None, logger: Any) -> LLMOutcome | _Transient:
    """Resolve one request in one attempt: a result already made in this run, or one call (a
    few when the endpoint refuses the structured-output mode, which moves the run to the next
    one, or cuts the reply at a budget that may still grow). ``chunk_no`` is set on a chunk's
    first attempt (its requests count in the backlog until they get a slot)."""
    try:
        done = run.final.get(request.key)
        if done is not None:
            return done
        slot = await run.pool.acquire()
    finally:
        if chunk_no is not None:
            run.note_backlog(chunk_no, -1)
    budget = run.options.budget
    cuts = 0
    while True:
        mode = run.structured_mode
        try:
            result, charged = await _send(run, slot, request, secrets, mode, budget)
        finally:
            run.pool.release(slot)
        await _settle(run, result, charged, budget)
        failure = result.failure
        if failure is not None and failure.kind == llm.FORMAT_REJECTED and run.fall_back(mode, failure.detail, logger):
            slot = await run.pool.acquire()  # again, in the run's new mode: not a failure
            continue
        if failure is not None and failure.kind == llm.LENGTH:
            cuts += 1
            larger = run.options.larger_budget(budget, cuts)
            if larger is not None:
                budget = larger
                slot = await run.pool.acquire()
                continue
        break
    calls = run.calls[request.key]
    if failure is None:
        if run.persist_calls:
            _write_cached(run, request, result, logger)  # at once: a killed run keeps this answer
        return run.resolve(LLMOutcome(key=request.key, ok=True, reply=result.reply, calls=calls,
                                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                                      cached_prompt_tokens=result.cached_prompt_tokens,
                                      reasoning_tokens=result.reasoning_tokens))
    if failure.kind == llm.AUTH:
        run.stop_for_auth(LLMAuthError(llm.auth_error_message(failure.status, base_url, team_id_set)))
        raise asyncio.CancelledError
    if failure.kind == llm.UNSUPPORTED_PARAMETER:
        run.stop_for_auth(LLMParameterError(llm.unsupported_parameter_message(failure.param or "?", base_url,
                                                                              failure.detail)))
        raise asyncio.CancelledError
    if failure.kind == llm.FORMAT_REJECTED:  # no mode left (cannot happen: text sends no response_format)
        failure = dataclasses.replace(failure, kind=llm.BAD_REQUEST)
    if not failure.transient:
        return run.resolve(LLMOutcome(key=request.key, ok=False, calls=calls, failure_kind=failure.kind,
                                      failure_detail=failure.detail, prompt_tokens=result.prompt_tokens,
                                      completion_tokens=result.completion_tokens,
                                      reasoning_tokens=result.reasoning_tokens))
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
