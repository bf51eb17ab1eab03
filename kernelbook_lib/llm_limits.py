"""The provider's rate-limit headers (``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*``),
read so that a run slows down before a 429 (``tasks/llm/slots.py``). Part of
:mod:`kernelbook_lib.llm`, which re-exports every name here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kernelbook_lib.llm_failures import MAX_RETRY_AFTER_S


@dataclass(frozen=True)
class RateLimitInfo:
    """``x-ratelimit-remaining-requests`` / ``-tokens``, ``x-ratelimit-reset-requests`` /
    ``-tokens`` (seconds) and ``x-ratelimit-limit-requests`` / ``-tokens`` of one response;
    ``None`` for a header the provider did not send."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None

    def wait_for(self, what: str, needed: float) -> float:
        """Seconds until ``needed`` requests (``what="requests"``) or tokens are available: 0
        when they are. A provider's limit refills its ``limit`` within the reset time, so
        with the limit known the wait is the time the missing part takes to come back (never
        more than the reset); without it, the reset."""
        remaining = getattr(self, f"remaining_{what}")
        reset = getattr(self, f"reset_{what}_s")
        limit = getattr(self, f"limit_{what}")
        if remaining is None or not reset or remaining >= needed:
            return 0.0
        if limit is not None and limit > remaining:
            return min(reset, (needed - remaining) * reset / (limit - remaining))
        return reset


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a reset header: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or a plain
    number of seconds; ``None`` when unreadable. Capped at MAX_RETRY_AFTER_S."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)


def parse_rate_limit_headers(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """The rate-limit headers of a response, or ``None`` when it has none."""
    if not headers:
        return None

    def integer(name: str) -> int | None:
        raw = headers.get(name)
        try:
            return int(float(raw)) if raw is not None else None
        except ValueError:
            return None

    info = RateLimitInfo(integer("x-ratelimit-remaining-requests"), integer("x-ratelimit-remaining-tokens"),
                         parse_duration(headers.get("x-ratelimit-reset-requests")),
                         parse_duration(headers.get("x-ratelimit-reset-tokens")),
                         integer("x-ratelimit-limit-requests"), integer("x-ratelimit-limit-tokens"))
    return None if info == RateLimitInfo() else info
