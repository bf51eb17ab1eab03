"""Whether a process recorded by pid (and start time) still runs: the one rule for the LLM crash
ledger's dead runs and the local server's record (the output lock needs none: ``flock`` ends
with its holder).

A pid alone is not trusted: ids are recycled, so a record also keeps the process's start time,
and a process with that pid but another start time is a different one. A zombie (exited, not yet
collected by its parent) is not running.
"""

from __future__ import annotations


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (None if there is no such live process)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` runs and, given its start time, is still the same process."""
    now_started = process_started(pid)
    return now_started is not None and (started is None or abs(now_started - started) < 1.0)
