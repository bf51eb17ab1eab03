"""Prefect's local (ephemeral) mode, made reliable and quiet for a new user.

Without ``PREFECT_API_URL`` a flow run makes Prefect start a temporary API server in a subprocess
(``prefect/server/api/server.py``, ``SubprocessASGIServer``) with a SQLite database under
``PREFECT_HOME``, and stop it at interpreter exit. Out of the box, on a 2-core machine, that:

* fails a new user's first run: the first start migrates a fresh database (115 Alembic
  migrations: 4.7 s idle, 7.6 s at load 3.5) on top of 4-6 s of imports, which under load
  runs past the default 20 s ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``;
* tries to phone home (the server's telemetry heartbeat to sens-o-matic.prefect.io, the SDK's
  Amplitude events) and logs ``ERROR ... Failed to send telemetry`` when there is no internet,
  or a "database is locked" traceback when the heartbeat's first write races the other writers;
* prints ``ERROR ... task_run_recorder - Error flushing events`` tracebacks at exit, and loses
  task-run records: the server's TaskRunRecorder writes one SQLite transaction per client
  event, falls seconds behind (500 tasks: 9 s behind), and the exit hook SIGTERMs the server,
  whose service shutdown cancels the recorder mid-write and drops its unconsumed backlog;
* prints one INFO line per task run, burying the pipeline's own progress.

:func:`configure_prefect_env` fixes the causes with Prefect settings (and drops the per-task
line with a logger filter); it must run BEFORE prefect is imported (Prefect reads its settings
once, at import), which ``tasks/__init__.py`` does.
:func:`shutdown_ephemeral_server` gives the temporary server an orderly shutdown; it runs by
itself at interpreter exit and may also be called explicitly. The README's section on Prefect's
local mode gives the measurements behind every value (``benchmarks/prefect_overhead.py``).

This module imports prefect only inside functions.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from typing import Any

#: Environment defaults applied with ``os.environ.setdefault``: a value the user set wins.
PREFECT_ENV_DEFAULTS: dict[str, str] = {
    # --- No phoning home (there is no internet; nothing may try). ---
    # Server side: the telemetry heartbeat (prefect/server/services/telemetry.py, a perpetual
    # service that also runs in the ephemeral server). The SDK also asks this setting.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Client side: the SDK's Amplitude events and first-run notice
    # (prefect/_internal/analytics/enabled.py checks the DO_NOT_TRACK convention).
    "DO_NOT_TRACK": "1",
    # --- First start: migrations are an inherent one-time cost; allow for them under load. ---
    # Prefect's own loop (SubprocessASGIServer.start) still fails with a clear RuntimeError if
    # the server never answers. 90 s covers the slowest first start measured (see the README).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # --- Services a local run does not need (they only add SQLite writers and CPU). ---
    # EventPersister copies every event into the `events` table (the UI's event feed and
    # automations); ReactiveTriggers/Actions evaluate automations, and a local run has none.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    # Not changed: the TaskRunRecorder's batch (Prefect's default, one SQLite write per event).
    # A batch of 100 records 500 task runs 0.7 s after the flow ends instead of 9 s, but
    # leaves a partial batch unwritten for up to its 1 s flush interval, so task runs read
    # right after a flow (tests, the UI) could be missing. This pipeline runs tens of task
    # runs; for thousands, set PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE=100 and
    # PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL=1 (shorter exit wait).
}

#: The logger of Prefect's task-run engine messages and of ``get_run_logger()`` inside tasks.
TASK_RUN_LOGGER = "prefect.task_runs"


class TaskRunCompletedFilter(logging.Filter):
    """Drop the engine's one INFO line per successful task run ("Finished in state
    Completed()"): thousands of them bury the pipeline's own progress. Everything else on the
    task-run logger stays: messages a task logs with ``get_run_logger()``, retry notices,
    warnings, and failures (the engine logs a failed task's "Finished in state" at ERROR).
    With ``PREFECT_LOGGING_LEVEL=DEBUG`` nothing is dropped.

    It is a logger filter, so the line is not sent to the API either; the task run's state is
    recorded there anyway. Flow-run start/finish lines are on another logger and untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not str(record.msg).startswith("Finished in state "):
            return True
        return os.environ.get("PREFECT_LOGGING_LEVEL", "").upper() == "DEBUG"


#: Task runs in these state types will not change again.
_FINAL_STATE_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")

_lock = threading.Lock()
_configured = False
#: When this process configured Prefect; flow runs created later are this process's runs.
_process_started_at: datetime | None = None


def configure_prefect_env() -> None:
    """Set the PREFECT_* defaults above (a value already in the environment wins) and register
    the orderly shutdown of the temporary server at interpreter exit. Idempotent.

    Call it before anything imports prefect: Prefect reads its settings at import. If prefect
    was already imported, a RuntimeWarning names the defaults Prefect did not see.
    """
    global _configured, _process_started_at
    with _lock:
        newly_set = [key for key in PREFECT_ENV_DEFAULTS if key not in os.environ]
        for key, value in PREFECT_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if not _configured:
            _configured = True
            _process_started_at = datetime.now(UTC)
            _register_exit_hook()
            # A logger filter survives Prefect's dictConfig (which only adds filters), so it
            # can be attached before prefect is imported.
            logging.getLogger(TASK_RUN_LOGGER).addFilter(TaskRunCompletedFilter())

    prefect_missed = [key for key in newly_set if key.startswith("PREFECT_")]
    # With a real server (a deployment run, `prefect deploy`), the defaults are about the
    # temporary server and do not matter; the worker's engine imports prefect first anyway.
    if prefect_missed and "prefect" in sys.modules and not os.environ.get("PREFECT_API_URL"):
        warnings.warn(
            "prefect was imported before `tasks`, so Prefect did not see these defaults: "
            + ", ".join(prefect_missed)
            + ". Import `tasks` (or call tasks.runtime.configure_prefect_env()) first.",
            RuntimeWarning,
            stacklevel=2,
        )


def _register_exit_hook() -> None:
    """Run :func:`shutdown_ephemeral_server` at interpreter exit, before Prefect's own stop.

    Prefect's own exit hooks (the events and log workers' drains, then the server's atexit
    stop) would stop the server before its recorder has caught up. Threading exit hooks run
    before `atexit` ones, in reverse order of registration, so this one, registered before
    Prefect starts its workers, runs after their drains and before Prefect's atexit stop
    (which then finds the server already stopped). `threading._register_atexit` is what
    Prefect (and concurrent.futures) use for the same purpose.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_shutdown_at_exit)
    else:  # pragma: no cover - every supported CPython has it
        import atexit

        atexit.register(_shutdown_at_exit)


def _running_ephemeral_server() -> Any | None:
    """The temporary server this process started, if one is running; else None.

    Never imports the server module: if it is not imported, no server was started here.
    """
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return None
    # The un-keyed instance is the one Prefect's clients start (SubprocessASGIServer() is a
    # per-port singleton; prefect_test_harness registers and removes its own under this key).
    server = module.SubprocessASGIServer._instances.get(None)
    if server is None or not server.running or server.server_process is None:
        return None
    if server.server_process.poll() is not None:  # already exited
        return None
    return server


def _drain_client_workers(timeout: float) -> None:
    """Send every event and log this process has queued (what Prefect's exit hooks do)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=timeout)
    APILogWorker.drain_all(timeout=timeout)


def _task_run_counts(client: Any, since: datetime) -> tuple[int, int]:
    """(recorded task runs, of which in a final state) for flow runs created since ``since``."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )

    flow_runs = FlowRunFilter(
        expected_start_time=FlowRunFilterExpectedStartTime(after_=since)
    ).model_dump(mode="json", exclude_unset=True)
    final = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=list(_FINAL_STATE_TYPES)))
    ).model_dump(mode="json", exclude_unset=True)
    total = client.request("POST", "/task_runs/count", json={"flow_runs": flow_runs})
    done = client.request("POST", "/task_runs/count", json={"flow_runs": flow_runs, "task_runs": final})
    total.raise_for_status()
    done.raise_for_status()
    return int(total.json()), int(done.json())


def _recorder_settle_s() -> float:
    """How long the recorder's counts must stay unchanged to call it idle.

    With Prefect's default batch of 1 the recorder writes each event as it takes it, so a
    second without change means nothing is left; with a bigger batch, a partial batch waits
    for the next periodic flush, so the window must also cover the flush interval.
    """
    from prefect.settings import get_current_settings

    recorder = get_current_settings().server.services.task_run_recorder
    return 1.0 if recorder.batch_size <= 1 else float(recorder.flush_interval) + 1.0


def wait_for_task_run_records(
    since: datetime,
    *,
    settle_s: float | None = None,
    max_wait_s: float = 60.0,
    poll_s: float = 0.25,
) -> bool:
    """Wait until the Prefect server has recorded the task runs of flow runs created since
    ``since`` (its TaskRunRecorder writes them from client events, asynchronously).

    The recorder offers no "idle" signal, so this watches what it writes: the number of task
    runs recorded and how many are in a final state. It is idle when both counts stop changing
    for ``settle_s`` (default: :func:`_recorder_settle_s`) and every run is final: events are
    consumed in order, so a task run not yet recorded would first raise the total. If some run
    stays non-final (an interrupted run), it waits three times as long before deciding.
    Returns False if ``max_wait_s`` passed first. Uses the API the current Prefect settings
    point to.
    """
    from prefect.client.orchestration import get_client

    if settle_s is None:
        settle_s = _recorder_settle_s()
    deadline = time.monotonic() + max_wait_s
    last: tuple[int, int] | None = None
    stable_since = time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            counts = _task_run_counts(client, since)
            now = time.monotonic()
            if counts != last:
                last, stable_since = counts, now
            else:
                total, done = counts
                needed = settle_s if done == total else 3 * settle_s
                if now - stable_since >= needed:
                    return True
            time.sleep(poll_s)
    return False


def shutdown_ephemeral_server(max_wait_s: float = 60.0) -> None:
    """Orderly stop of the temporary server this process started (no-op if there is none).

    1. drain this process's event and log workers, so the server has received everything;
    2. wait for the server to record those events (:func:`wait_for_task_run_records`);
    3. stop it (SIGTERM; its services then stop with nothing in flight and nothing queued).

    Runs by itself at interpreter exit once :func:`configure_prefect_env` ran. Call it from
    synchronous code only. A Ctrl-C during the wait skips straight to the stop.
    """
    server = _running_ephemeral_server()
    if server is None:
        return
    from prefect.logging import get_logger

    logger = get_logger("kernelbook.runtime")
    try:
        _drain_client_workers(timeout=max_wait_s)
        since = _process_started_at or datetime.now(UTC)
        if not wait_for_task_run_records(since, max_wait_s=max_wait_s):
            logger.warning(
                "The local Prefect server was still recording task runs after %.0f s; "
                "stopping it anyway, so some task runs may be missing from its database.",
                max_wait_s,
            )
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001  (the stop below must still happen)
        logger.warning(
            "Could not confirm that the local Prefect server recorded every task run: %s", exc
        )
    finally:
        server.stop()


def _shutdown_at_exit() -> None:
    try:
        shutdown_ephemeral_server()
    except BaseException:  # noqa: BLE001, S110  (an exit must not become a traceback;
        pass  # Prefect's own atexit stop still runs after this)
