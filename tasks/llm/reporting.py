"""What a run reports: the counts (:class:`Tally`, the one source of every count), the
accounting, the progress display and lines, and the Prefect artifacts ``<label>-progress`` and
``<label>-failures`` (docs/design.md, "Progress and counts").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect.artifacts import ProgressArtifact, TableArtifact, aupdate_progress_artifact
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from kernelbook_lib import llm
from kernelbook_lib.llm import LLMOutcome, LLMRequest
from kernelbook_lib.progress import Progress, format_count
from kernelbook_lib.settings import Settings

if TYPE_CHECKING:
    from tasks.llm.state import _RunState

#: The progress display's numbers are refreshed this often.
PROGRESS_TICK_S = 0.5
#: The Prefect progress artifact is updated at most this often (one API call each).
ARTIFACT_EVERY_S = 10.0


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


def artifact_keys(label: str) -> tuple[str, str]:
    """The keys of the stage's Prefect artifacts: ``<label>-progress`` and ``<label>-failures``
    (``judge-progress``, ``generate-failures``), the label reduced to what a key may hold."""
    slug = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-") or "llm"
    return f"{slug}-progress", f"{slug}-failures"


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
        "reasoning_tokens": run.reasoning_tokens,
        "estimated_cost_usd": llm.estimated_cost(run.prompt_tokens, run.completion_tokens, settings,
                                                 run.cached_prompt_tokens),
        "wall_s": round(wall_s, 3),
        "calls_per_s": round(run.calls_made / wall_s, 2) if wall_s > 0 else None,
        "concurrency": cap,
        "prefect_leases": run.pool.leases_taken,
        "cache_warnings": run.cache_warnings,
        # docs/llm.md, "Structured-output fallback": the mode the run ended in, and its changes.
        "structured_output": run.structured_mode,
        "structured_output_fallbacks": list(run.structured_fallbacks),
        # docs/llm.md, "Rate limits".
        "rate_limits": _rate_limits(run),
        # docs/llm.md, "Hedged requests": None when off.
        "hedging": {"after_quantile": run.hedge_quantile, "sent": run.hedges_sent, "won": run.hedges_won}
        if run.hedge_quantile is not None else None,
    }


def _rate_limits(run: _RunState) -> dict[str, Any] | None:
    """The run's rate limits and what they did; None when none applied."""
    limiter = run.limiter
    if limiter is None and not run.rate_limit_waits:
        return None
    return {
        "requests_per_minute": limiter.requests_per_minute if limiter and limiter.requests_name else None,
        "tokens_per_minute": limiter.tokens_per_minute if limiter and limiter.tokens_name else None,
        "tokens_reserved": limiter.tokens_charged if limiter else 0,
        "tokens_given_back": limiter.tokens_returned if limiter else 0,
        "header_waits": run.rate_limit_waits,  # x-ratelimit-* said to wait for a reset
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
