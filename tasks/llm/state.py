"""One run's in-process state, shared by its chunk task runs: :class:`_RunState` (the slot pool,
the store, the HTTP clients, the outcomes resolved so far, the backlog), found by run token.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect.results import ResultStore

from kernelbook_lib import llm
from kernelbook_lib.errors import UserError
from kernelbook_lib.llm import LLMOutcome, LLMTask
from kernelbook_lib.settings import Settings

if TYPE_CHECKING:
    from tasks.llm.reporting import Tally
    from tasks.llm.slots import RateLimiter, SlotPool

#: Connections per HTTP client: a call uses the client serving its slot id. httpx's pool does
#: per-connection bookkeeping on every request; small pools keep it constant
#: (docs/design.md, "HTTP clients").
CONNECTIONS_PER_CLIENT = 16


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
    reasoning_tokens: int = 0  # of completion_tokens, spent reasoning
    cache_warnings: int = 0
    backlog: int = 0  # requests of started chunks still waiting for their first slot
    chunk_backlog: Counter[int] = field(default_factory=Counter)  # the same, per chunk
    backlog_changed: asyncio.Event = field(default_factory=asyncio.Event)
    cooldown_until: float = 0.0  # no new call before this (monotonic): a 429's Retry-After, a reset
    #: Stops the whole run: an LLMAuthError (401/403) or an LLMParameterError (a parameter refused).
    auth_error: UserError | None = None
    #: The token budget and its parameter name (docs/llm.md, "Request parameters").
    options: llm.CallOptions = field(default_factory=llm.CallOptions)
    #: Requests/tokens per minute (Prefect rate limits), or None (docs/llm.md, "Rate limits").
    limiter: RateLimiter | None = None
    #: The structured-output mode new calls are sent in (docs/llm.md, "Structured-output fallback").
    structured_mode: str = ""
    structured_fallbacks: list[str] = field(default_factory=list)  # "json_schema->json_object", ...
    in_flight: int = 0  # calls sent and not answered yet
    #: Hedged requests (docs/llm.md, "Hedged requests"): the quantile (None: off), the latencies
    #: of this run's answered calls (sorted), and the hedges sent and won.
    hedge_quantile: float | None = None
    latencies: list[float] = field(default_factory=list)
    hedges_sent: int = 0
    hedges_won: int = 0
    rate_limit_waits: int = 0  # times the x-ratelimit-* headers made new calls wait for a reset
    broken: bool = False  # a chunk task run failed: start no more
    workers: set[asyncio.Task[Any]] = field(default_factory=set)
    clients: list[Any] = field(default_factory=list)  # HTTP clients, made in a task run's body
    persist_calls: bool = True  # write each result to the store (off only in a benchmark variant)
    per_client: int = 1

    def __post_init__(self) -> None:
        if not self.structured_mode:
            self.structured_mode = llm.initial_mode(self.task)

    @property
    def calls_made(self) -> int:
        return sum(self.calls.values())

    def fall_back(self, rejected: str, detail: str, logger: Any) -> bool:
        """The endpoint refused ``response_format`` in mode ``rejected``: the first such reply
        moves the run to the next mode, with one warning; a call sent before that (in flight
        in the old mode) just goes again in the new one. False when there is no mode left."""
        if self.structured_mode != rejected:
            return True
        following = llm.next_mode(rejected)
        if following is None:
            return False
        self.structured_mode = following
        self.structured_fallbacks.append(f"{rejected}->{following}")
        how = {llm.JSON_OBJECT: "JSON mode (response_format json_object, the schema in the system prompt)",
               llm.TEXT: "plain text (no response_format, the schema in the system prompt)"}[following]
        logger.warning(f"{self.label}: the endpoint rejected response_format {rejected} ({detail}); "
                       f"every request of this run is sent in {how} from now on")
        return True

    def note_rate_limits(self, info: llm.RateLimitInfo | None, tokens: int) -> None:
        """Slow down before a 429: when a response says fewer requests (or tokens, ``tokens``
        per call) remain than a full set of calls could use (the pool's slots, LLM_CONCURRENCY:
        that many may go out before the next response tells more), no new call is sent until
        that many are back: the reset the response names, or with the limit known, the part of
        it the missing requests or tokens take to come back."""
        if info is None:
            return
        now = time.monotonic()
        slots = max(1, self.pool.cap)
        wait = max(info.wait_for("requests", slots), info.wait_for("tokens", slots * tokens) if tokens else 0.0)
        if wait > 0 and now + wait > self.cooldown_until:
            self.cooldown_until = now + wait
            self.rate_limit_waits += 1

    def note_latency(self, seconds: float) -> None:
        bisect.insort(self.latencies, seconds)

    def hedge_delay(self, min_samples: int) -> float | None:
        """How long a call may go unanswered before it is hedged: the quantile of the latencies
        seen so far; None when hedging is off or fewer than ``min_samples`` were seen."""
        if self.hedge_quantile is None or len(self.latencies) < min_samples:
            return None
        return self.latencies[min(len(self.latencies) - 1, int(self.hedge_quantile * len(self.latencies)))]

    async def wait_cooldown(self) -> None:
        while (left := self.cooldown_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

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
        self.reasoning_tokens += result.reasoning_tokens

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

    def stop_for_auth(self, error: UserError) -> None:
        """401/403, or a request parameter refused: stop every chunk at once (waiting calls wake
        up, calls in flight end)."""
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
