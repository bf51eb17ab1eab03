"""Slot leasing on a Prefect global concurrency limit: the limit itself
(:func:`ensure_concurrency_limit`) and the :class:`SlotPool` that leases its slots in a few
blocks and lends them to calls one at a time (docs/design.md, "Slot leasing"); and the rate
limits, Prefect global concurrency limits with slot decay (:func:`ensure_rate_limits`,
:class:`RateLimiter`; docs/llm.md, "Rate limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.concurrency.context import ConcurrencyContext
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from tasks import prefect_internals
from tasks.runtime import on_temporary_server

if TYPE_CHECKING:
    from tasks.llm.ledger import LeaseLedger

_module_logger = get_logger("kernelbook.llm")

#: Slots are leased from the Prefect limit in about this many blocks.
LEASE_BLOCKS = 8
#: Lease duration asked of Prefect (its minimum): a crashed run's slots come back within it.
LEASE_DURATION_S = 60.0
#: Attempts to lease a block while none is held before the run stops (Prefect's client has
#: already retried each one; then we wait 0.5, 1, 2, ... 16 s: ~30 s in all).
LEASE_ATTEMPTS = 6
#: A block of slots idle this long (no call waiting) is given back to Prefect.
IDLE_RELEASE_S = 1.0


async def ensure_concurrency_limit(name: str, wanted: int, logger: Any) -> int:
    """Make sure the Prefect global concurrency limit ``name`` exists; return the slot count to
    use. Missing: created with ``wanted``. Present with another value: on the ephemeral local
    server (no PREFECT_API_URL) the limit is ours and is updated; on a Prefect server an
    operator set it, so the server's value is used (and the log says so)."""
    return await _ensure_limit(name, wanted, logger, setting="LLM_CONCURRENCY", unit="slots")


async def _ensure_limit(name: str, wanted: int, logger: Any, *, setting: str, unit: str,
                        decay_per_s: float = 0.0) -> int:
    """:func:`ensure_concurrency_limit` for any limit: ``decay_per_s`` > 0 makes it a rate
    limit (slots decay at that rate instead of being released). The same policy: missing, it
    is created; another value on the temporary server is ours to update; on a Prefect server
    an operator's value wins (with a warning)."""
    ephemeral = on_temporary_server()
    async with get_client() as client:
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = None
        if limit is None:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=wanted, slot_decay_per_second=decay_per_s))
                decays = f", decaying {decay_per_s:g} per second" if decay_per_s else ""
                logger.info(f"created Prefect global concurrency limit {name!r} with {wanted} {unit}{decays} ({setting})")
                return wanted
            except Exception:  # noqa: BLE001 - another run created it meanwhile: read it back
                limit = await client.read_global_concurrency_limit_by_name(name)
        if not limit.active:
            logger.warning(
                f"Prefect concurrency limit {name!r} is inactive: Prefect does not enforce it"
                + (f"; this run still keeps at most {setting}={wanted} requests in flight" if not decay_per_s else "")
            )
            return wanted
        if limit.limit == wanted and math.isclose(limit.slot_decay_per_second or 0.0, decay_per_s, abs_tol=1e-9):
            return wanted
        if ephemeral:
            await client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=wanted, slot_decay_per_second=decay_per_s))
            logger.info(f"Prefect concurrency limit {name!r} set from {limit.limit} to {setting}={wanted}")
            return wanted
        if decay_per_s and not limit.slot_decay_per_second:
            raise RuntimeError(
                f"Prefect concurrency limit {name!r} exists without slot decay, so it cannot be a rate limit "
                f"for {setting}; delete it (`prefect gcl delete {name}`) and the next run creates it"
            )
        logger.warning(
            f"Prefect concurrency limit {name!r} on the Prefect server allows {limit.limit} {unit}; "
            f"using the server's value, not {setting}={wanted} "
            f"(change it with `prefect gcl update {name} --limit N`)"
        )
        return max(1, int(limit.limit))


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

    def try_acquire(self) -> int | None:
        """A slot at once if one is leased, idle and wanted by no waiting call, else None (a
        hedged request uses only spare capacity, and never asks Prefect for more)."""
        if self._error is not None or self._waiters or not self._free:
            return None
        self._in_use += 1
        return self._free.pop()

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


# --- rate limits ----------------------------------------------------------------------------------

#: The rate limits are named after the concurrency limit (LLM_CONCURRENCY_LIMIT_NAME) with these
#: suffixes: ``kernelbook-llm-rpm`` and ``kernelbook-llm-tpm`` by default.
RPM_SUFFIX = "-rpm"
TPM_SUFFIX = "-tpm"
#: Output tokens a token-per-minute limit reserves for a call when LLM_MAX_COMPLETION_TOKENS is
#: not set (corrected from the reported usage after the call).
DEFAULT_OUTPUT_RESERVE = 1024
#: ``occupancy_seconds`` Prefect's release endpoint wants (it matters only for limits without
#: decay, which these are not).
_RELEASE_OCCUPANCY_S = 0.001


class RateLimiter:
    """Requests and tokens per minute, enforced by Prefect: ``rate_limit`` on global
    concurrency limits with slot decay. A limit of N per minute has N slots that decay at N/60
    per second, so it holds for every run on the same Prefect server (and a run's budget is
    never more than a minute's worth at once).

    A call is admitted just before it is sent, once it holds its concurrency slot: admitted
    calls are sent at once, so the provider never sees a burst that Prefect's bucket did not.
    It takes one slot of the requests limit and, of the tokens limit, its estimated input
    tokens (characters / 4, see :func:`kernelbook_lib.llm.estimated_input_tokens`) plus the
    reserved output budget (LLM_MAX_COMPLETION_TOKENS, else DEFAULT_OUTPUT_RESERVE), capped at
    the limit. After the call the token charge is corrected from the reported usage: tokens not
    used are given back (the slots released), tokens used beyond the reserve are charged (that
    call waits for them, so the next calls wait behind the debt). A failed call without usage
    keeps its whole reserve.

    Admissions go to Prefect one at a time (a local lock, FIFO): Prefect's acquisition service
    handles one request at a time anyway, and a stopped run leaves at most one pending
    acquisition behind in it."""

    def __init__(self, *, requests_name: str | None = None, requests_per_minute: int | None = None,
                 tokens_name: str | None = None, tokens_per_minute: int | None = None,
                 output_reserve: int = DEFAULT_OUTPUT_RESERVE) -> None:
        self.requests_name = requests_name if requests_per_minute else None
        self.requests_per_minute = requests_per_minute
        self.tokens_name = tokens_name if tokens_per_minute else None
        self.tokens_per_minute = tokens_per_minute
        self.output_reserve = output_reserve
        self._lock = asyncio.Lock()
        self._client: Any = None
        self.admitted = 0
        self.tokens_charged = 0
        self.tokens_returned = 0

    def describe(self) -> str:
        parts = []
        if self.requests_name:
            parts.append(f"{self.requests_per_minute} requests/min ({self.requests_name!r})")
        if self.tokens_name:
            parts.append(f"{self.tokens_per_minute} tokens/min ({self.tokens_name!r})")
        return ", ".join(parts)

    def reserve(self, input_tokens: int, budget: int | None) -> int:
        """The tokens a call reserves: its estimated input plus its output budget, capped at
        the limit (Prefect refuses to grant more slots than a limit has)."""
        if not self.tokens_name or not self.tokens_per_minute:
            return 0
        wanted = input_tokens + (budget if budget is not None else self.output_reserve)
        return max(1, min(int(wanted), self.tokens_per_minute))

    async def admit(self, tokens: int) -> int:
        """Wait until a call of ``tokens`` reserved tokens may be sent; returns the tokens charged."""
        async with self._lock:
            if self.requests_name:
                await rate_limit(self.requests_name, occupy=1, strict=True)
            charged = 0
            if self.tokens_name and tokens > 0:
                await rate_limit(self.tokens_name, occupy=tokens, strict=True)
                charged = tokens
            self.admitted += 1
            self.tokens_charged += charged
            return charged

    async def settle(self, charged: int, used: int | None) -> None:
        """Correct a call's token charge from the tokens it used (``None``: not reported, the
        charge stands)."""
        if not self.tokens_name or used is None or charged <= 0:
            return
        if used < charged:
            await self._give_back(charged - used)
        elif used > charged:
            debt = min(used - charged, self.tokens_per_minute or 0)
            if debt > 0:
                async with self._lock:
                    await rate_limit(self.tokens_name, occupy=debt, strict=True)
                self.tokens_charged += debt

    async def _give_back(self, tokens: int) -> None:
        try:
            if self._client is None:
                client = get_client()
                await client.__aenter__()
                self._client = client
            await self._client.release_concurrency_slots([self.tokens_name], tokens, _RELEASE_OCCUPANCY_S)
            self.tokens_returned += tokens
        except Exception as exc:  # noqa: BLE001 - the charge stands: slower, never faster
            _module_logger.warning(f"could not give back {tokens} unused tokens to {self.tokens_name!r}: {exc}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


async def ensure_rate_limits(base_name: str, requests_per_minute: int | None, tokens_per_minute: int | None,
                             logger: Any, *, output_reserve: int | None = None) -> RateLimiter | None:
    """The run's :class:`RateLimiter` (``None`` when neither limit is set), its Prefect limits
    created if missing: ``<base_name>-rpm`` with LLM_MAX_REQUESTS_PER_MINUTE slots decaying at
    a sixtieth of that per second, ``<base_name>-tpm`` likewise for LLM_MAX_TOKENS_PER_MINUTE.
    On a Prefect server a value an operator set wins, as for the concurrency limit."""
    if not requests_per_minute and not tokens_per_minute:
        return None
    rpm_name, tpm_name = base_name + RPM_SUFFIX, base_name + TPM_SUFFIX
    rpm = tpm = None
    if requests_per_minute:
        rpm = await _ensure_limit(rpm_name, requests_per_minute, logger, setting="LLM_MAX_REQUESTS_PER_MINUTE",
                                  unit="requests per minute", decay_per_s=requests_per_minute / 60.0)
    if tokens_per_minute:
        tpm = await _ensure_limit(tpm_name, tokens_per_minute, logger, setting="LLM_MAX_TOKENS_PER_MINUTE",
                                  unit="tokens per minute", decay_per_s=tokens_per_minute / 60.0)
    return RateLimiter(requests_name=rpm_name, requests_per_minute=rpm, tokens_name=tpm_name, tokens_per_minute=tpm,
                       output_reserve=DEFAULT_OUTPUT_RESERVE if output_reserve is None else output_reserve)
