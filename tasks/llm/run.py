"""The run: :func:`run_llm_requests` / :func:`arun_llm_requests` answer what the cache can,
then schedule the rest as chunk task runs on one event loop and one slot pool, starting the next
chunk while the previous one still has calls queued (docs/design.md, "Chunk task runs").
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import opaque

from kernelbook_lib import llm
from kernelbook_lib.llm import LLMOutcome, LLMRequest, LLMTask
from kernelbook_lib.progress import Progress
from kernelbook_lib.settings import load_settings
from tasks.llm.cache import _read_cached, result_store
from tasks.llm.chunk import llm_requests_chunk
from tasks.llm.ledger import LeaseLedger, reclaim_dead_runs_slots
from tasks.llm.reporting import Tally, _accounting, _progress_fields, _ProgressArtifact, _report_progress
from tasks.llm.slots import SlotPool, ensure_concurrency_limit, ensure_rate_limits
from tasks.llm.state import _RUNS, _RunState

_module_logger = get_logger("kernelbook.llm")

#: Plain progress lines (no terminal) at most this often.
PROGRESS_EVERY_S = 5.0
#: Freeze the heap while the calls run (docs/design.md, "Garbage collection"); off only to
#: measure the difference (``benchmarks/judge_throughput.py --no-gc-freeze``).
FREEZE_GC = True


@dataclass(frozen=True)
class LLMRunResult:
    """``outcomes``: one per request, in request order. ``accounting``: see :func:`~tasks.llm.reporting._accounting`."""

    outcomes: list[LLMOutcome]
    accounting: dict[str, Any]


def default_chunk_size(concurrency_cap: int) -> int:
    """Requests per task run: enough that orchestration is noise next to the calls, small enough
    that a retry or the Prefect UI stays fine-grained (docs/design.md, "Chunk task runs")."""
    return max(256, 4 * concurrency_cap)


def run_llm_requests(
    task: LLMTask, requests: Sequence[LLMRequest], *, refresh: bool = False, progress_label: str | None = None,
    chunk_size: int | None = None, llm_mode: str | None = None, no_wait: bool = False,
) -> LLMRunResult:
    """Resolve every request through Prefect (see :mod:`tasks.llm`). Call it inside a flow.

    Args:
        task: the :class:`~kernelbook_lib.llm.LLMTask` that built the requests: its reply
            format is sent and its ``parse(reply, request)`` checks every reply.
        requests: built with ``task.request(...)``; identical prompts are called once.
        refresh: ignore the cache (every request is called again; the new answers overwrite).
        progress_label: names the stage in the progress lines, task-run names and artifact keys
            (default: the task's name, "judge" or "generate").
        chunk_size: requests per task run; default :func:`default_chunk_size`.
        llm_mode: ``online`` or ``batch`` (the provider's Batch API, :mod:`tasks.llm.batch`);
            None: the LLM_MODE setting.
        no_wait: batch mode only: raise ``BatchesPendingError`` (exit code 3) instead of
            waiting while batches are pending.

    Returns one outcome per request, in request order, and the run's accounting. Raises only
    for the whole run: ``LLMAuthError`` (401/403), ``UserError`` (no key while calls are
    needed), ``RuntimeError`` (Prefect's concurrency API unusable), ``ValueError`` (a request
    built by another task).

    The asyncio machinery runs on a fresh event loop: in this thread when no loop runs here
    (a sync flow), else in a helper thread; the flow's run context is carried over."""
    def run() -> LLMRunResult:
        return asyncio.run(arun_llm_requests(task, requests, refresh=refresh, progress_label=progress_label,
                                             chunk_size=chunk_size, llm_mode=llm_mode, no_wait=no_wait))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="llm-requests") as executor:
        return executor.submit(context.run, run).result()


async def arun_llm_requests(
    task: LLMTask, requests: Sequence[LLMRequest], *, refresh: bool = False, progress_label: str | None = None,
    chunk_size: int | None = None, llm_mode: str | None = None, no_wait: bool = False,
) -> LLMRunResult:
    """The async form of :func:`run_llm_requests` (for async flows)."""
    try:
        logger = get_run_logger()
    except MissingContextError:  # called outside a flow: log to the plain logger
        logger = _module_logger
    settings = load_settings()
    wall_start = time.monotonic()
    label = progress_label or task.name
    requests = list(requests)
    llm.check_requests(task, requests)
    # The reply-changing parameters (temperature, effort) are part of each key: the caller's
    # requests get them here, and the outcomes are handed back under the caller's keys.
    caller_keys = [request.key for request in requests]
    requests = llm.with_reply_params(requests, settings)
    unique: dict[str, LLMRequest] = {}
    for request in requests:
        unique.setdefault(request.key, request)

    # Requests that need no call: prompts too long (never sent) and cache hits.
    token = uuid.uuid4().hex
    store = result_store(settings)
    final: dict[str, LLMOutcome] = {}
    cache_warnings = 0
    to_call: list[LLMRequest] = []
    for request in unique.values():
        too_long = llm.prompt_too_long(request, settings.llm_max_prompt_chars)
        if too_long is not None:
            final[request.key] = LLMOutcome(key=request.key, ok=False, failure_kind=too_long.kind,
                                            failure_detail=too_long.detail)
            continue
        cached, damaged = (None, False) if refresh else _read_cached(store, task, request, token, label, logger)
        cache_warnings += damaged
        if cached is not None:
            final[request.key] = cached
            continue
        to_call.append(request)

    if (llm_mode or settings.llm_mode) == "batch":  # the provider's Batch API (docs/llm.md, "Batch mode")
        from tasks.llm.batch import arun_batch

        batch = await arun_batch(task, requests, unique, final, to_call, token=token, store=store, label=label,
                                 refresh=refresh, no_wait=no_wait, cache_warnings=cache_warnings, settings=settings,
                                 logger=logger, wall_start=wall_start)
        outcomes = [o if o.key == key else o.model_copy(update={"key": key})
                    for o, key in zip(batch.outcomes, caller_keys, strict=True)]
        return LLMRunResult(outcomes=outcomes, accounting=batch.accounting)
    if to_call:
        llm.require_api_key(settings)  # a missing key is one clear error, before any call
        # The OpenAI SDK (slow to import) is imported here, before the chunk task runs start, so
        # a run that needs no call never pays for it and the first chunk's calls are not
        # delayed by it (docs/design.md, "Imports").
        import openai  # noqa: F401  (imported here, once calls are due: seconds of import kept out of runs without calls)
    limit_name = settings.llm_concurrency_limit_name
    cap = await ensure_concurrency_limit(limit_name, settings.llm_concurrency, logger) if to_call else settings.llm_concurrency
    if to_call:
        await reclaim_dead_runs_slots(limit_name, logger)
    limiter = await ensure_rate_limits(limit_name, settings.llm_max_requests_per_minute,
                                       settings.llm_max_tokens_per_minute, logger) if to_call else None
    pool = SlotPool(limit_name, cap, ledger=LeaseLedger(limit_name, LeaseLedger.directory_for(limit_name)))
    run = _RunState(token=token, label=label, task=task, pool=pool, store=store, retries=settings.llm_retries,
                    options=llm.CallOptions.from_settings(settings), limiter=limiter,
                    hedge_quantile=settings.llm_hedge_after_quantile,
                    tally=Tally.of(requests), cache_warnings=cache_warnings)
    for outcome in final.values():
        run.resolve(outcome)

    size = chunk_size or default_chunk_size(cap)
    chunks = [to_call[i : i + size] for i in range(0, len(to_call), size)]
    tally = run.tally
    logger.info(
        f"{label}: {tally.requests} requests ({tally.distinct} distinct prompts): {tally.cache_hits} answered "
        f"from the cache, {tally.failures_by_kind.get(llm.PROMPT_TOO_LONG, 0)} not sendable (prompt too long), "
        f"{len(to_call)} prompts to call in {len(chunks)} task runs, at most {cap} in flight "
        f"(Prefect limit {pool.limit_name!r})" + (f", rate limits {limiter.describe()}" if limiter else "")
        + (" [refresh: cache ignored]" if refresh else "")
    )
    chunk_task = llm_requests_chunk.with_options(
        retries=settings.llm_retries,
        retry_delay_seconds=exponential_backoff(settings.llm_retry_backoff_s)(settings.llm_retries)
        if settings.llm_retry_backoff_s > 0 else 0,
        task_run_name=f"{label}-{{chunk_no}}",
    )
    _RUNS[run.token] = run
    reporter = Progress(label, tally.requests, unit="requests", rate_unit="calls", done=tally.done,
                        emit=logger.info, mode=settings.kernelbook_progress, interval_s=PROGRESS_EVERY_S)
    artifact = await _ProgressArtifact.create(label, tally, logger)
    # Everything alive now (Prefect, the SDK, the requests) lives until the end: freeze it so
    # the collector's full passes skip it (docs/design.md, "Garbage collection").
    frozen = FREEZE_GC
    if frozen:
        gc.freeze()
    reporter.start()
    progress = asyncio.ensure_future(_report_progress(run, reporter, artifact, settings))
    running: list[asyncio.Task[list[LLMOutcome]]] = []
    finished = gathered = False
    try:
        for chunk_no, chunk in enumerate(chunks):
            # Start the next chunk when fewer calls than the limit are queued, so a freed slot
            # always finds a waiting call (and a chunk in retry backoff blocks nobody).
            while run.backlog >= cap and run.auth_error is None and not run.broken:
                run.backlog_changed.clear()
                await run.backlog_changed.wait()
            if run.auth_error is not None or run.broken:
                break
            run.note_backlog(chunk_no, len(chunk))
            chunk_run = asyncio.ensure_future(chunk_task(opaque(chunk), run.token, chunk_no))
            chunk_run.add_done_callback(lambda future, n=chunk_no: run.chunk_finished(n, future))
            running.append(chunk_run)
        results = await asyncio.gather(*running, return_exceptions=True)
        gathered = True
        finished = run.auth_error is None and not any(isinstance(r, BaseException) for r in results)
    finally:
        progress.cancel()
        reporter.update(tally.done, rate_count=run.calls_made, fields=_progress_fields(run, settings))
        reporter.close(note="finished" if finished else "stopped")
        await pool.close()
        if limiter is not None:
            await limiter.close()
        await run.close_clients()
        _RUNS.pop(run.token, None)
        if frozen:
            gc.unfreeze()
        if artifact is not None and not gathered:  # cancelled or broken: no more API calls
            await artifact.close()
    if artifact is not None:
        await artifact.finish(run)
    if run.auth_error is not None:
        logger.error(f"{label}: {run.auth_error}")
        raise run.auth_error
    for result in results:
        if isinstance(result, BaseException):
            raise result
    outcomes = [run.final[request.key] for request in requests]
    accounting = {**_accounting(run, outcomes, settings, time.monotonic() - wall_start, cap), "mode": "online"}
    outcomes = [o if o.key == key else o.model_copy(update={"key": key}) for o, key in zip(outcomes, caller_keys, strict=True)]
    logger.info(f"{label}: accounting {accounting}")
    return LLMRunResult(outcomes=outcomes, accounting=accounting)
