"""Many LLM requests through Prefect: retries, caching and the concurrency limit are Prefect's.

Call :func:`run_llm_requests` (or ``await`` :func:`arun_llm_requests`) from inside a flow, with
the task object that built the requests (``kernelbook_lib.rubric.JUDGE_TASK``,
``kernelbook_lib.prompt_gen.SPECIFICATION_TASK``)::

    result = run_llm_requests(JUDGE_TASK, requests, refresh=False, progress_label="judge")
    result.outcomes    # one LLMOutcome per request, in request order
    result.accounting  # succeeded, cache hits, failures by kind, calls, tokens, cost, wall time

How it maps onto Prefect; the measurements behind each choice are in docs/design.md (printed by
``benchmarks/llm_granularity.py`` and ``benchmarks/judge_throughput.py``):

- **Task runs are chunks** (design: "Chunk task runs"). Each ``llm-requests`` task run resolves
  a chunk of requests (``default_chunk_size``) with one coroutine per request. All chunk runs of
  one call share ONE event loop, one slot pool and a few AsyncOpenAI clients; the next chunk
  starts while the previous one still has calls queued, so slots never idle.
- **Retries are Prefect's** (design: "Retries"). A chunk attempt makes every call it still
  needs; calls that failed transiently (429, 5xx, timeouts, connection errors, invalid replies)
  make the attempt raise :class:`TransientLLMFailures`, and Prefect retries the task run
  (``retries`` = LLM_RETRIES, exponential backoff from LLM_RETRY_BACKOFF_S, jitter).
  ``retry_condition_fn`` retries only that exception and first sleeps out a Retry-After longer
  than Prefect's delay. A retry re-runs only the calls without a result; on the last attempt the
  remaining failures are returned as outcomes (never raised, never dropped). 400/404 are
  recorded at once; 401/403 stop the whole run with :class:`LLMAuthError` (a ``UserError``).
- **Concurrency is Prefect's global concurrency limit** LLM_CONCURRENCY_LIMIT_NAME (design:
  "Slot leasing"), created automatically (a value an operator set on a Prefect server wins). A
  :class:`SlotPool` leases its slots in a few blocks (``prefect.concurrency.asyncio.concurrency(occupy=n)``)
  and lends them to calls one at a time, so no call polls the Prefect API for a slot. A
  :class:`LeaseLedger` lets the next run give back the slots of a run killed while holding them.
- **Caching is Prefect's result store** (design: "The cache"): a ``ResultStore`` (JSON
  serializer) on ``<KERNELBOOK_CACHE_DIR>/llm``, one record per request key (model + prompt
  version + full prompt), written atomically the moment its call succeeds, so a run killed with
  ``kill -9`` resumes where it stopped. A record that is unreadable, truncated or fails its
  checksum is a cache miss with a warning. Failures are never cached.
- **Progress** (design: "Progress and counts"): a live display on a terminal, plain lines
  otherwise (``kernelbook_lib.progress``); a Prefect progress artifact ``<label>-progress``
  updated while the calls run and a table artifact ``<label>-failures`` at the end. Every count
  (log lines, display, accounting) comes from one tally, :class:`Tally`, kept as outcomes resolve.

The package, one job per module:

- :mod:`tasks.llm.run`: the entry points, and the scheduling of a run's chunk task runs.
- :mod:`tasks.llm.chunk`: the ``llm-requests`` task: one chunk's calls and Prefect's retries.
- :mod:`tasks.llm.state`: one run's in-process state, shared by its chunk task runs.
- :mod:`tasks.llm.slots`: the Prefect global concurrency limit and the :class:`SlotPool`; the
  rate limits (:class:`RateLimiter`, Prefect limits with slot decay; docs/llm.md, "Rate limits").
- :mod:`tasks.llm.ledger`: the crash ledger (:class:`LeaseLedger`) and the reclaiming of a dead run's slots.
- :mod:`tasks.llm.cache`: the content-keyed reply cache.
- :mod:`tasks.llm.reporting`: the tally, the accounting, the progress display and the artifacts.
- :mod:`tasks.llm.batch`: batch mode (``llm_mode="batch"``): the provider's Batch API instead of calls.

Every name is importable from here. A module-level setting is read by the module that defines it,
so set or monkeypatch it there (``tasks.llm.run.FREEZE_GC``, ``tasks.llm.reporting.PROGRESS_TICK_S``,
``tasks.llm.run.ensure_concurrency_limit``), not on this package.
"""

from __future__ import annotations

from tasks.llm.cache import llm_cache_dir, llm_cache_dir_path, result_store
from tasks.llm.chunk import RETRY_JITTER, TransientLLMFailures, _one_call, _retry_if_transient, _Transient, llm_requests_chunk
from tasks.llm.ledger import LeaseLedger, reclaim_dead_runs_slots
from tasks.llm.reporting import ARTIFACT_EVERY_S, PROGRESS_TICK_S, Tally, artifact_keys
from tasks.llm.run import FREEZE_GC, PROGRESS_EVERY_S, LLMRunResult, arun_llm_requests, default_chunk_size, run_llm_requests
from tasks.llm.slots import (IDLE_RELEASE_S, LEASE_ATTEMPTS, LEASE_BLOCKS, LEASE_DURATION_S, RateLimiter, SlotPool,
                             ensure_concurrency_limit, ensure_rate_limits)
from tasks.llm.state import _RUNS, CONNECTIONS_PER_CLIENT, _RunState

__all__ = [
    "ARTIFACT_EVERY_S",
    "CONNECTIONS_PER_CLIENT",
    "FREEZE_GC",
    "IDLE_RELEASE_S",
    "LEASE_ATTEMPTS",
    "LEASE_BLOCKS",
    "LEASE_DURATION_S",
    "PROGRESS_EVERY_S",
    "PROGRESS_TICK_S",
    "RETRY_JITTER",
    "LLMRunResult",
    "LeaseLedger",
    "RateLimiter",
    "SlotPool",
    "Tally",
    "TransientLLMFailures",
    "arun_llm_requests",
    "artifact_keys",
    "default_chunk_size",
    "ensure_concurrency_limit",
    "ensure_rate_limits",
    "llm_cache_dir",
    "llm_cache_dir_path",
    "llm_requests_chunk",
    "reclaim_dead_runs_slots",
    "result_store",
    "run_llm_requests",
    # internals, used by benchmarks/llm_granularity.py
    "_RUNS",
    "_RunState",
    "_Transient",
    "_one_call",
    "_retry_if_transient",
]
