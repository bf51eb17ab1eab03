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
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import json
import math
import os
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (Prefect environment defaults, before prefect)

from prefect import get_run_logger, task
from prefect.logging import get_logger
from prefect.artifacts import ProgressArtifact, TableArtifact, aupdate_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency
from prefect.concurrency.context import ConcurrencyContext
from prefect.context import TaskRunContext, get_run_context
from prefect.exceptions import MissingContextError, ObjectNotFound
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer
from prefect.settings import get_current_settings
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import opaque

from kernelbook_lib import llm
from kernelbook_lib.llm import Failure, LLMAuthError, LLMOutcome, LLMRequest, LLMTask
from kernelbook_lib.progress import Progress, format_count
from kernelbook_lib.settings import Settings, load_settings
from tasks import prefect_internals
from tasks.prefect_internals import AtomicLocalFileSystem
from tasks.runtime import on_temporary_server

_module_logger = get_logger("kernelbook.llm")

#: Jitter on Prefect's retry delays (``retry_jitter_factor``).
RETRY_JITTER = 0.5
#: Slots are leased from the Prefect limit in about this many blocks.
LEASE_BLOCKS = 8
#: Lease duration asked of Prefect (its minimum): a crashed run's slots come back within it.
LEASE_DURATION_S = 60.0
#: Attempts to lease a block while none is held before the run stops (Prefect's client has
#: already retried each one; then we wait 0.5, 1, 2, ... 16 s: ~30 s in all).
LEASE_ATTEMPTS = 6
#: A block of slots idle this long (no call waiting) is given back to Prefect.
IDLE_RELEASE_S = 1.0
#: Connections per HTTP client: a call uses the client serving its slot id. httpx's pool does
#: per-connection bookkeeping on every request; small pools keep it constant
#: (docs/design.md, "HTTP clients").
CONNECTIONS_PER_CLIENT = 16
#: Plain progress lines (no terminal) at most this often.
PROGRESS_EVERY_S = 5.0
#: The progress display's numbers are refreshed this often.
PROGRESS_TICK_S = 0.5
#: The Prefect progress artifact is updated at most this often (one API call each).
ARTIFACT_EVERY_S = 10.0
#: Freeze the heap while the calls run (docs/design.md, "Garbage collection"); off only to
#: measure the difference (``benchmarks/judge_throughput.py --no-gc-freeze``).
FREEZE_GC = True


# --- the cache: Prefect's ResultStore on the cache directory ---------------------------------


def llm_cache_dir(settings: Settings) -> Path:
    return Path(settings.kernelbook_cache_dir).expanduser().resolve() / "llm"


def result_store(settings: Settings) -> ResultStore:
    """Prefect's result store for LLM results: JSON records under ``<cache dir>/llm``."""
    return ResultStore(
        result_storage=AtomicLocalFileSystem(basepath=str(llm_cache_dir(settings))),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )


def _storage_key(key: str) -> str:
    return f"{key[:2]}/{key}.json"  # two-level layout: no directory with 20k entries


# --- the concurrency limit --------------------------------------------------------------------


async def ensure_concurrency_limit(name: str, wanted: int, logger: Any) -> int:
    """Make sure the Prefect global concurrency limit ``name`` exists; return the slot count to
    use. Missing: created with ``wanted``. Present with another value: on the ephemeral local
    server (no PREFECT_API_URL) the limit is ours and is updated; on a Prefect server an
    operator set it, so the server's value is used (and the log says so)."""
    ephemeral = on_temporary_server()
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
        if limit is None:
            try:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=wanted))
                logger.info(f"created Prefect global concurrency limit {name!r} with {wanted} slots (LLM_CONCURRENCY)")
                return wanted
            except Exception:  # noqa: BLE001 - another run created it meanwhile: read it back
                limit = await client.read_global_concurrency_limit_by_name(name)
        if not limit.active:
            logger.warning(
                f"Prefect concurrency limit {name!r} is inactive: Prefect does not enforce it; "
                f"this run still keeps at most LLM_CONCURRENCY={wanted} requests in flight"
            )
            return wanted
        if limit.limit == wanted:
            return wanted
        if ephemeral:
            await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=wanted))
            logger.info(f"Prefect concurrency limit {name!r} set from {limit.limit} to LLM_CONCURRENCY={wanted}")
            return wanted
        logger.warning(
            f"Prefect concurrency limit {name!r} on the Prefect server allows {limit.limit} slots; "
            f"using the server's value, not LLM_CONCURRENCY={wanted} "
            f"(change it with `prefect gcl update {name} --limit N`)"
        )
        return max(1, int(limit.limit))


class LeaseLedger:
    """This process's leases on one limit, in a small file under PREFECT_HOME, so the next run
    can give back the slots of a run that was killed (``kill -9``) while holding them.

    Why: an ephemeral Prefect server (and the test harness's) runs no lease repossessor, so a
    dead run's slots would stay occupied forever and every later run would wait for them."""

    def __init__(self, limit_name: str, directory: Path) -> None:
        self.directory = directory
        self.limit_name = limit_name
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._leases: dict[str, int] = {}

    @staticmethod
    def directory_for(limit_name: str) -> Path:
        api_url = "ephemeral" if on_temporary_server() else get_current_settings().api.url
        backend = hashlib.sha256(api_url.encode()).hexdigest()[:12]
        return Path(get_current_settings().home) / "kernelbook-llm-leases" / backend / limit_name

    def add(self, lease_id: Any, slots: int) -> None:
        self._leases[str(lease_id)] = slots
        self._save()

    def remove(self, lease_id: Any) -> None:
        if self._leases.pop(str(lease_id), None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._leases:
                self.path.unlink(missing_ok=True)
                return
            record = {"pid": os.getpid(), "started": _process_start_time(os.getpid()), "leases": self._leases}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)
        except OSError as exc:  # bookkeeping only: never fail a run for it
            _module_logger.warning(f"could not record concurrency leases in {self.path}: {exc}")


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no psutil, or no such process
        return None


def _process_alive(pid: int, started: float | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_started = _process_start_time(pid)
    return started is None or now_started is None or abs(now_started - started) < 1.0


async def reclaim_dead_runs_slots(limit_name: str, logger: Any) -> None:
    """Give back the slots that runs which died holding them left on ``limit_name``.

    Each dead run's leases are released by id (a server that still knows a lease frees its
    slots; otherwise nothing happens). On the ephemeral server, which never knows another
    process's leases, the slots that are still counted are decremented directly."""
    directory = LeaseLedger.directory_for(limit_name)
    if not directory.is_dir():
        return
    dead: list[tuple[Path, dict[str, Any]]] = []
    for path in directory.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid() or _process_alive(pid, record.get("started")):
            continue
        claimed = path.with_suffix(".reclaiming")
        try:
            os.replace(path, claimed)  # only one starting run reclaims a given dead run
        except OSError:
            continue
        dead.append((claimed, record))
    if not dead:
        return
    stale = sum(int(n) for _, record in dead for n in record.get("leases", {}).values())
    async with get_client() as client:
        before = (await client.read_global_concurrency_limit_by_name(limit_name)).active_slots
        for _, record in dead:
            for lease_id in record.get("leases", {}):
                with contextlib.suppress(Exception):
                    await client.release_concurrency_slots_with_lease(uuid.UUID(lease_id))
        after = (await client.read_global_concurrency_limit_by_name(limit_name)).active_slots
        leaked = min(stale - max(0, before - after), after)
        if leaked > 0 and on_temporary_server():
            await client.release_concurrency_slots(names=[limit_name], slots=leaked, occupancy_seconds=1.0)
    pids = ", ".join(str(record["pid"]) for _, record in dead)
    logger.warning(
        f"gave back {stale} slot(s) of Prefect concurrency limit {limit_name!r} held by run(s) that "
        f"ended without releasing them (pid {pids})"
    )
    for path, _ in dead:
        path.unlink(missing_ok=True)


class SlotPool:
    """Lends Prefect concurrency slots to calls, one at a time, without per-call API traffic.

    The pool leases slots from the global limit in blocks (``concurrency(name, occupy=n)``,
    each block one Prefect lease) as demand appears, and hands them to waiting calls in FIFO
    order; a finished call passes its slot straight to the next waiting one. A call holds a
    slot only while it talks to the endpoint, so requests in flight never exceed the slots this
    pool holds, which never exceed what Prefect granted. Blocks idle for ``IDLE_RELEASE_S`` go
    back to Prefect, all of them on :meth:`close`. Lives on one event loop.

    Slots have ids ``0..cap-1`` (a call uses the HTTP client that serves its slot id, so no
    client ever has more requests in flight than connections); idle ids are reused last-in
    first-out, which keeps the warmest connections busy."""

    def __init__(self, limit_name: str, cap: int, *, block: int | None = None,
                 ledger: LeaseLedger | None = None) -> None:
        self.limit_name = limit_name
        self.cap = cap
        self.ledger = ledger
        # Leases are held in the creator's context (the flow's), never in a task run's: a
        # task run's ConcurrencyContext releases the leases it saw when the task run ends,
        # while these outlive the task run that first needed them.
        self._context = contextvars.copy_context()
        self.block = block or max(1, math.ceil(cap / LEASE_BLOCKS))
        self._unheld: list[int] = list(range(cap - 1, -1, -1))  # ids no lease backs
        self._free: list[int] = []  # ids leased and idle
        self._acquiring = 0
        self._in_use = 0
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._leases: list[tuple[int, asyncio.Event]] = []
        self._lease_tasks: set[asyncio.Task[None]] = set()
        self._granted: set[asyncio.Task[None]] = set()
        self._shrink_handle: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._lease_failures = 0
        self.leases_taken = 0

    @property
    def held(self) -> int:
        return self.cap - len(self._unheld)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self) -> int:
        """Wait for a slot; returns its id."""
        if self._error is not None:
            raise self._error
        if self._free and not self._waiters:
            self._in_use += 1
            return self._free.pop()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._grow()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # granted just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, slot: int) -> None:
        self._in_use -= 1
        self._free.append(slot)
        self._dispatch()
        if not self._waiters and self._shrink_handle is None and not self._closed:
            self._shrink_handle = asyncio.get_running_loop().call_later(IDLE_RELEASE_S, self._shrink)

    def _dispatch(self) -> None:
        while self._free and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while waiting
                continue
            self._in_use += 1
            waiter.set_result(self._free.pop())

    def _grow(self) -> None:
        if self._closed:
            return
        target = min(self.cap, self._in_use + len(self._waiters))
        while self.held + self._acquiring < target:
            n = min(self.block, self.cap - self.held - self._acquiring)
            self._acquiring += n
            lease_task = asyncio.get_running_loop().create_task(self._hold(n), context=self._context.copy())
            self._lease_tasks.add(lease_task)
            lease_task.add_done_callback(self._lease_tasks.discard)
            lease_task.add_done_callback(self._granted.discard)

    def _shrink(self) -> None:
        """Give back blocks whose slots are all idle while no call waits."""
        self._shrink_handle = None
        for lease in list(self._leases):
            n, done = lease
            if self._waiters or len(self._free) < n:
                break
            for _ in range(n):
                self._unheld.append(self._free.pop(0))  # the coldest ids go back first
            self._leases.remove(lease)
            done.set()

    async def _hold(self, n: int) -> None:
        """Hold one block of ``n`` slots until the pool gives it back."""
        done = asyncio.Event()
        granted = False
        lease_id = None
        try:
            # A ConcurrencyContext of our own: Prefect records the lease id there on acquisition.
            with ConcurrencyContext() as leases:
                async with concurrency(self.limit_name, occupy=n, strict=True, lease_duration=LEASE_DURATION_S):
                    granted = True
                    self._lease_failures = 0
                    current = asyncio.current_task()
                    if current is not None:
                        self._granted.add(current)
                    lease_id = prefect_internals.last_lease_id(leases)
                    if self.ledger is not None and lease_id is not None:
                        self.ledger.add(lease_id, n)
                    self.leases_taken += 1
                    self._acquiring -= n
                    for _ in range(n):
                        self._free.append(self._unheld.pop())
                    self._leases.append((n, done))
                    self._dispatch()
                    await done.wait()
            if self.ledger is not None and lease_id is not None:
                self.ledger.remove(lease_id)
        except Exception as exc:  # noqa: BLE001
            if granted:  # the release failed: the lease lapses on its own after LEASE_DURATION_S
                _module_logger.warning(f"could not release a lease of {n} slots on {self.limit_name!r}: {exc}")
                return
            self._acquiring -= n
            await self._lease_failed(n, exc)

    async def _lease_failed(self, n: int, exc: Exception) -> None:
        """A block could not be leased. A busy Prefect API (503s under load) is retried with
        backoff while the calls go on with the slots already held; a limit that no longer
        exists, or an API that stays down while no slot is held, stops the run loudly."""
        self._lease_failures += 1
        problem = f"could not lease slots from Prefect concurrency limit {self.limit_name!r}: {exc}"
        if "must be created" in str(exc) or (self._lease_failures > LEASE_ATTEMPTS and not self.held):
            self.abort(RuntimeError(problem))
            return
        delay = min(30.0, 0.25 * 2.0 ** self._lease_failures)
        _module_logger.warning(f"{problem}; trying again in {delay:.0f} s")
        await asyncio.sleep(delay)
        self._grow()

    def abort(self, exc: BaseException) -> None:
        """Wake every waiting call with ``exc`` (the run is being stopped)."""
        self._error = exc
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    async def close(self) -> None:
        """Give every block back to Prefect and wait for the releases. Blocks still waiting
        for Prefect are cancelled (Prefect releases a lease granted to a cancelled caller)."""
        self._closed = True
        if self._shrink_handle is not None:
            self._shrink_handle.cancel()
        for _, done in self._leases:
            done.set()
        self._leases.clear()
        pending = list(self._lease_tasks)
        for lease_task in pending:
            if lease_task not in self._granted:
                lease_task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# --- one run's in-process state, shared by its chunk task runs -------------------------------


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


@dataclass
class Tally:
    """The counts of one run, kept as outcomes resolve: the ONE source of every count in the
    log lines, the progress display and the accounting.

    Counts are per request (a row): a prompt that several rows share is one call, but its
    outcome counts once per row, so ``succeeded + failed == requests`` and a cache hit on a
    shared prompt is a cache hit for each of its rows."""

    multiplicity: Counter[str]  # requests per key
    done: int = 0
    succeeded: int = 0
    cache_hits: int = 0
    failed: int = 0
    failures_by_kind: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, requests: Sequence[LLMRequest]) -> Tally:
        return cls(multiplicity=Counter(request.key for request in requests))

    @property
    def requests(self) -> int:
        return sum(self.multiplicity.values())

    @property
    def distinct(self) -> int:
        return len(self.multiplicity)

    def count(self, outcome: LLMOutcome, sign: int = 1) -> None:
        n = sign * self.multiplicity[outcome.key]
        self.done += n
        if outcome.ok:
            self.succeeded += n
            self.cache_hits += n if outcome.cached else 0
        else:
            self.failed += n
            self.failures_by_kind[outcome.failure_kind or "unknown"] += n


@dataclass
class _RunState:
    """What the chunk task runs of one :func:`arun_llm_requests` call share (same process, same
    event loop). Found by ``run_token``, which is the only thing passed to a task besides
    the requests: never the settings, the client or the key."""

    token: str
    label: str
    task: LLMTask
    pool: SlotPool
    store: ResultStore
    retries: int
    tally: Tally
    started: float = field(default_factory=time.monotonic)
    final: dict[str, LLMOutcome] = field(default_factory=dict)  # resolved in this run
    calls: Counter[str] = field(default_factory=Counter)  # API calls per key in this run
    retrying: set[str] = field(default_factory=set)  # keys whose last call failed transiently
    prompt_tokens: int = 0  # paid by this run's calls
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    cache_warnings: int = 0
    backlog: int = 0  # requests of started chunks still waiting for their first slot
    chunk_backlog: Counter[int] = field(default_factory=Counter)  # the same, per chunk
    backlog_changed: asyncio.Event = field(default_factory=asyncio.Event)
    cooldown_until: float = 0.0  # no new call before this (monotonic): a 429's Retry-After
    auth_error: LLMAuthError | None = None
    broken: bool = False  # a chunk task run failed: start no more
    workers: set[asyncio.Task[Any]] = field(default_factory=set)
    clients: list[Any] = field(default_factory=list)  # HTTP clients, made in a task run's body
    persist_calls: bool = True  # write each result to the store (off only in a benchmark variant)
    per_client: int = 1

    @property
    def calls_made(self) -> int:
        return sum(self.calls.values())

    def resolve(self, outcome: LLMOutcome) -> LLMOutcome:
        """Record the final outcome of a key (and count it, once)."""
        previous = self.final.get(outcome.key)
        if previous is not None:
            self.tally.count(previous, -1)
        self.final[outcome.key] = outcome
        self.tally.count(outcome)
        self.retrying.discard(outcome.key)
        return outcome

    def note_usage(self, result: llm.CallResult) -> None:
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.cached_prompt_tokens += result.cached_prompt_tokens

    def note_backlog(self, chunk_no: int, delta: int) -> None:
        self.backlog += delta
        self.chunk_backlog[chunk_no] += delta
        self.backlog_changed.set()

    def chunk_finished(self, chunk_no: int, chunk_run: asyncio.Future[Any]) -> None:
        """Whatever way a chunk task run ended, its requests no longer wait for a slot; one
        that failed (not an auth failure: a bug) stops the start of further chunks."""
        left = self.chunk_backlog.pop(chunk_no, 0)
        self.backlog -= left
        if chunk_run.cancelled() or chunk_run.exception() is not None:
            self.broken = True
        self.backlog_changed.set()

    def ensure_clients(self, settings: Settings) -> None:
        """The run's AsyncOpenAI clients (one per CONNECTIONS_PER_CLIENT slots), made once from
        the settings inside a task run and shared by the run's task runs (warm connections)."""
        if not self.clients:
            count = math.ceil(self.pool.cap / CONNECTIONS_PER_CLIENT)
            per_client = math.ceil(self.pool.cap / count)
            self.clients = [llm.make_async_client(settings, max_connections=per_client) for _ in range(count)]
            self.per_client = per_client

    def client_for(self, slot: int) -> Any:
        return self.clients[slot // self.per_client]

    async def close_clients(self) -> None:
        clients, self.clients = self.clients, []
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)

    def stop_for_auth(self, error: LLMAuthError) -> None:
        """401/403: stop every chunk at once (waiting calls wake up, calls in flight end)."""
        if self.auth_error is not None:
            return
        self.auth_error = error
        self.pool.abort(error)
        for worker in list(self.workers):
            worker.cancel()
        self.backlog_changed.set()


_RUNS: dict[str, _RunState] = {}


def _run_state(run_token: str) -> _RunState:
    try:
        return _RUNS[run_token]
    except KeyError:
        raise RuntimeError(
            "llm-requests task runs are started by tasks.llm.run_llm_requests (in the same process)"
        ) from None


def _read_cached(store: ResultStore, task: LLMTask, request: LLMRequest, run_token: str, label: str,
                 logger: Any) -> tuple[LLMOutcome | None, bool]:
    """The cached outcome for ``request`` (or ``None``), and whether the entry was damaged.
    A damaged entry (unreadable, truncated, failing its checksum) is a miss with a warning."""
    path = llm_cache_dir_path(store) / _storage_key(request.key)
    if not path.exists():
        return None, False
    try:
        record = store.read(_storage_key(request.key)).result
        return llm.outcome_from_cache_record(record, task, request, run_token), False
    except Exception as exc:  # noqa: BLE001 - a damaged entry must never crash or mislead
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        logger.warning(f"{label}: ignoring damaged cache entry {path.name} ({reason}); calling again")
        return None, True


def llm_cache_dir_path(store: ResultStore) -> Path:
    storage = store.result_storage
    assert isinstance(storage, LocalFileSystem) and storage.basepath
    return Path(storage.basepath)


def _write_cached(run: _RunState, request: LLMRequest, result: llm.CallResult, logger: Any) -> None:
    try:
        run.store.write(obj=llm.cache_record(request, result, run.token), key=_storage_key(request.key))
    except Exception as exc:  # noqa: BLE001 - the outcome is still returned; only resuming loses it
        run.cache_warnings += 1
        logger.warning(f"{run.label}: could not write cache entry for {request.key[:12]}: {type(exc).__name__}: {exc}")


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


# --- the entry point --------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMRunResult:
    """``outcomes``: one per request, in request order. ``accounting``: see :func:`_accounting`."""

    outcomes: list[LLMOutcome]
    accounting: dict[str, Any]


def default_chunk_size(concurrency_cap: int) -> int:
    """Requests per task run: enough that orchestration is noise next to the calls, small enough
    that a retry or the Prefect UI stays fine-grained (docs/design.md, "Chunk task runs")."""
    return max(256, 4 * concurrency_cap)


def artifact_keys(label: str) -> tuple[str, str]:
    """The keys of the stage's Prefect artifacts: ``<label>-progress`` and ``<label>-failures``
    (``judge-progress``, ``generate-failures``), the label reduced to what a key may hold."""
    slug = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-") or "llm"
    return f"{slug}-progress", f"{slug}-failures"


def run_llm_requests(
    task: LLMTask, requests: Sequence[LLMRequest], *, refresh: bool = False, progress_label: str | None = None,
    chunk_size: int | None = None,
) -> LLMRunResult:
    """Resolve every request through Prefect (see the module doc). Call it inside a flow.

    Args:
        task: the :class:`~kernelbook_lib.llm.LLMTask` that built the requests: its reply
            format is sent and its ``parse(reply, request)`` checks every reply.
        requests: built with ``task.request(...)``; identical prompts are called once.
        refresh: ignore the cache (every request is called again; the new answers overwrite).
        progress_label: names the stage in the progress lines, task-run names and artifact keys
            (default: the task's name, "judge" or "generate").
        chunk_size: requests per task run; default :func:`default_chunk_size`.

    Returns one outcome per request, in request order, and the run's accounting. Raises only
    for the whole run: ``LLMAuthError`` (401/403), ``UserError`` (no key while calls are
    needed), ``RuntimeError`` (Prefect's concurrency API unusable), ``ValueError`` (a request
    built by another task).

    The asyncio machinery runs on a fresh event loop: in this thread when no loop runs here
    (a sync flow), else in a helper thread; the flow's run context is carried over."""
    def run() -> LLMRunResult:
        return asyncio.run(arun_llm_requests(task, requests, refresh=refresh, progress_label=progress_label,
                                             chunk_size=chunk_size))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="llm-requests") as executor:
        return executor.submit(context.run, run).result()


async def arun_llm_requests(
    task: LLMTask, requests: Sequence[LLMRequest], *, refresh: bool = False, progress_label: str | None = None,
    chunk_size: int | None = None,
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

    if to_call:
        llm.require_api_key(settings)  # a missing key is one clear error, before any call
        # The OpenAI SDK (slow to import) is imported here, before the chunk task runs start, so
        # a run that needs no call never pays for it and the first chunk's calls are not
        # delayed by it (docs/design.md, "Imports").
        import openai  # noqa: F401
    limit_name = settings.llm_concurrency_limit_name
    cap = await ensure_concurrency_limit(limit_name, settings.llm_concurrency, logger) if to_call else settings.llm_concurrency
    if to_call:
        await reclaim_dead_runs_slots(limit_name, logger)
    pool = SlotPool(limit_name, cap, ledger=LeaseLedger(limit_name, LeaseLedger.directory_for(limit_name)))
    run = _RunState(token=token, label=label, task=task, pool=pool, store=store, retries=settings.llm_retries,
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
        f"(Prefect limit {pool.limit_name!r})" + (" [refresh: cache ignored]" if refresh else "")
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
    accounting = _accounting(run, outcomes, settings, time.monotonic() - wall_start, cap)
    logger.info(f"{label}: accounting {accounting}")
    return LLMRunResult(outcomes=outcomes, accounting=accounting)


def _accounting(run: _RunState, outcomes: list[LLMOutcome], settings: Settings, wall_s: float,
                cap: int) -> dict[str, Any]:
    """The run's accounting, from its tally (checked against the outcomes: a mismatch is a bug)."""
    tally = run.tally
    succeeded = sum(1 for o in outcomes if o.ok)
    expected = (len(outcomes), succeeded, len(outcomes) - succeeded, sum(1 for o in outcomes if o.cached),
                Counter(o.failure_kind or "unknown" for o in outcomes if not o.ok))
    if (tally.done, tally.succeeded, tally.failed, tally.cache_hits, +tally.failures_by_kind) != expected:
        raise AssertionError(f"LLM counts do not reconcile with the outcomes: {tally} vs {expected}")
    return {
        "label": run.label,
        "task": run.task.name,
        "requests": tally.requests,
        "distinct_requests": tally.distinct,
        "succeeded": tally.succeeded,
        "cache_hits": tally.cache_hits,
        "failed": tally.failed,
        "failures_by_kind": dict(sorted((+tally.failures_by_kind).items())),
        "calls_made": run.calls_made,
        "prompt_tokens": run.prompt_tokens,
        "cached_prompt_tokens": run.cached_prompt_tokens,
        "cached_prompt_share": round(run.cached_prompt_tokens / run.prompt_tokens, 4) if run.prompt_tokens else None,
        "completion_tokens": run.completion_tokens,
        "estimated_cost_usd": llm.estimated_cost(run.prompt_tokens, run.completion_tokens, settings,
                                                 run.cached_prompt_tokens),
        "wall_s": round(wall_s, 3),
        "calls_per_s": round(run.calls_made / wall_s, 2) if wall_s > 0 else None,
        "concurrency": cap,
        "prefect_leases": run.pool.leases_taken,
        "cache_warnings": run.cache_warnings,
    }


def _progress_fields(run: _RunState, settings: Settings) -> dict[str, str]:
    """The LLM stage's fields in the progress display and lines (all from the run's tally)."""
    tally = run.tally
    failed = str(tally.failed) + (f" (+{len(run.retrying)} retrying)" if run.retrying else "")
    share = f" ({100 * run.cached_prompt_tokens / run.prompt_tokens:.0f}% cached)" if run.cached_prompt_tokens else ""
    cost = llm.estimated_cost(run.prompt_tokens, run.completion_tokens, settings, run.cached_prompt_tokens)
    return {
        "cache hits": str(tally.cache_hits),
        "failed": failed,
        "calls": str(run.calls_made),
        "tokens": f"{format_count(run.prompt_tokens)} in{share} / {format_count(run.completion_tokens)} out",
        "cost": f"${cost:.2f}" if cost is not None else "n/a",
    }


async def _report_progress(run: _RunState, reporter: Progress, artifact: _ProgressArtifact | None,
                           settings: Settings) -> None:
    last_artifact = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_TICK_S)
        reporter.update(run.tally.done, rate_count=run.calls_made, fields=_progress_fields(run, settings))
        if artifact is not None and time.monotonic() - last_artifact >= ARTIFACT_EVERY_S:
            last_artifact = time.monotonic()
            await artifact.update(run.tally)


class _ProgressArtifact:
    """The stage's Prefect artifacts: ``<label>-progress`` (done/total in percent, updated while
    the calls run) and, at the end, ``<label>-failures`` (a table of the failures by kind).
    Created only inside a flow or task run, through one API client for the stage; an API error
    is a warning, never a failed run."""

    def __init__(self, label: str, client: Any, artifact_id: Any, logger: Any) -> None:
        self.label = label
        self.progress_key, self.failures_key = artifact_keys(label)
        self.client = client
        self.artifact_id = artifact_id
        self.logger = logger
        self.last_percent: float | None = None
        self.warned = False

    @classmethod
    async def create(cls, label: str, tally: Tally, logger: Any) -> _ProgressArtifact | None:
        try:
            get_run_context()
        except MissingContextError:
            return None
        progress_key, _ = artifact_keys(label)
        client = get_client()
        try:
            await client.__aenter__()
            created = await ProgressArtifact(
                key=progress_key, progress=_percent(tally),
                description=f"{label}: LLM requests answered, of {tally.requests} ({tally.distinct} distinct prompts)",
            ).acreate(client)
        except Exception as exc:  # noqa: BLE001
            logger.warning(f"{label}: could not create the Prefect progress artifact {progress_key!r}: {exc}")
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            return None
        artifact = cls(label, client, created.id, logger)
        artifact.last_percent = _percent(tally)
        return artifact

    async def update(self, tally: Tally) -> None:
        percent = _percent(tally)
        if percent == self.last_percent:
            return
        try:
            await aupdate_progress_artifact(self.artifact_id, progress=percent, client=self.client)
            self.last_percent = percent
        except Exception as exc:  # noqa: BLE001
            if not self.warned:
                self.warned = True
                self.logger.warning(f"{self.label}: could not update the Prefect progress artifact: {exc}")

    async def finish(self, run: _RunState) -> None:
        """The last progress value and the failures table, then the client is closed."""
        try:
            await self.update(run.tally)
            examples: dict[str, str] = {}
            for outcome in run.final.values():
                if not outcome.ok and (outcome.failure_kind or "unknown") not in examples:
                    examples[outcome.failure_kind or "unknown"] = outcome.failure_detail or ""
            table = [
                {"failure": kind, "requests": count, "ledger reason": llm.ledger_reason(run.task.name, kind),
                 "example": examples.get(kind, "")}
                for kind, count in sorted((+run.tally.failures_by_kind).items())
            ]
            description = (f"{self.label}: {run.tally.failed} of {run.tally.requests} requests failed, by kind"
                           if table else f"{self.label}: no failures among {run.tally.requests} requests")
            await TableArtifact(key=self.failures_key, table=table, description=description).acreate(self.client)
        except Exception as exc:  # noqa: BLE001
            self.logger.warning(f"{self.label}: could not create the Prefect artifact {self.failures_key!r}: {exc}")
        finally:
            await self.close()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)


def _percent(tally: Tally) -> float:
    return round(100.0 * tally.done / tally.requests, 1) if tally.requests else 100.0
