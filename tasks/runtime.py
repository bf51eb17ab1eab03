"""How a run starts, stops and is interrupted: Prefect's local mode, made fast, quiet and safe.

Without a Prefect API (no ``PREFECT_API_URL``), Prefect starts a temporary API server in a
subprocess on the first API call and stops it at interpreter exit. Out of the box, on a 2-core
machine, that:

* was slow: the server (about 9 s of CPU: its imports and start) only starts when the flow does,
  after the CLI's own imports (about 8 s of CPU), and the client also imports the server's
  module (about 5 s of CPU) just to start it;
* failed a new user's first run: the first start migrates a fresh database (115 Alembic
  migrations, about 12 s of CPU) and, under load, ran past the default 20 s
  ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``;
* tried to phone home (the server's telemetry heartbeat, the SDK's Amplitude events), logging
  ``ERROR ... Failed to send telemetry`` without internet;
* lost task-run records and printed ``ERROR ... Error flushing events`` at exit: the server's
  TaskRunRecorder writes one SQLite transaction per event and falls seconds behind, and the
  exit stop cancelled it mid-write;
* was in the terminal's process group, so Ctrl-C killed the server under the running flow (which
  then spent minutes retrying it), and ``kill -9`` of the run left the server running forever;
* printed one INFO line per task run, burying the pipeline's own progress.

What this module does about it:

* :func:`configure_prefect_env` sets Prefect settings (no telemetry, no services a local run
  does not need, a startup timeout that covers a first start under load) and drops the
  per-task line with a logger filter. It must run BEFORE prefect is imported (Prefect reads its
  settings at import); ``tasks/__init__.py`` does that.
* :class:`CliSession` (one per ``kernelbook`` command that runs flows) chooses the Prefect API:
  the one configured (``PREFECT_API_URL`` or a Prefect profile), else the local server of
  ``kernelbook server start`` when it runs, else a :class:`~tasks.local_server.TemporaryServer`
  started before the flows are imported (the start overlaps the imports), in its own session
  and watching its parent. At the end it waits until the server has recorded every task run,
  then stops it. It turns Ctrl-C into a prompt stop with exit code 130 and one line.
* :func:`shutdown_ephemeral_server` gives Prefect's own temporary server (flows run from Python
  without the CLI) the same orderly stop at interpreter exit.

``docs/local-mode.md`` and ``docs/failures.md`` describe this; ``docs/measurements.md`` gives the
measurements (``benchmarks/prefect_overhead.py``). This module imports prefect only inside functions.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kernelbook_lib.errors import UserError
from tasks import prefect_internals
from tasks.local_server import LocalServer, TemporaryServer, healthy, prefect_home

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
    # Both Prefect's temporary server and ours fail with a clear error if the server never
    # answers. 90 s covers the slowest first start measured (docs/local-mode.md).
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
#: Set (with the server's API URL) while a CLI run uses a temporary server of its own.
TEMPORARY_API_ENV = "KERNELBOOK_TEMPORARY_PREFECT_API"
#: ``KERNELBOOK_TIMINGS=1`` prints where a CLI run's time went (benchmarks/prefect_overhead.py).
TIMINGS_ENV = "KERNELBOOK_TIMINGS"
#: After Ctrl-C, the run stops in order within this long, or is ended regardless.
INTERRUPT_GRACE_S = 10.0
#: What a Ctrl-C prints (and the only thing it prints).
INTERRUPTED_LINE = (
    "interrupted: the run stopped before it finished (outputs without run_summary.json are unfinished); "
    "finished LLM calls are cached, so running the same command again resumes"
)


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
    the orderly shutdown of Prefect's temporary server at interpreter exit. Idempotent.

    The ``kernelbook`` CLI calls it (through ``import tasks``) before it imports prefect, which
    reads its settings at import. Elsewhere (deployments, workers, the tests) Prefect reads the
    same defaults from ``prefect.toml`` in the repository root, so no module depends on being
    imported before prefect.
    """
    global _configured, _process_started_at
    with _lock:
        for key, value in PREFECT_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if not _configured:
            _configured = True
            _process_started_at = datetime.now(UTC)
            # Registered before Prefect starts its event and log workers, so it runs after
            # their drains and before Prefect's own atexit stop of its temporary server.
            prefect_internals.register_before_atexit(_shutdown_at_exit)
            # A logger filter survives Prefect's dictConfig (which only adds filters), so it
            # can be attached before prefect is imported.
            logging.getLogger(TASK_RUN_LOGGER).addFilter(TaskRunCompletedFilter())


def on_temporary_server() -> bool:
    """Whether the Prefect API in use is a temporary server that lives for this run (Prefect's
    own, or the one a :class:`CliSession` started): then its database is PREFECT_HOME's and
    nobody else administers it."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return url is None or url == os.environ.get(TEMPORARY_API_ENV)


def _import_quietly(modules: tuple[str, ...]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001  (the code that needs it imports it again and raises)
            return


def without_flow_heartbeats() -> Any:
    """A Prefect settings context in which flow runs send no heartbeats.

    A flow run sends a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180
    by default, at least 30; the environment cannot turn them off) so that a server's automations
    can tell a crashed run. On a temporary server that lives exactly as long as the run (and
    persists no events) nobody can read them, and each flow run's end waits up to a second for
    its heartbeat thread (it sleeps in 1 s steps): the curate run and its analysis subflow
    waited about 1 s between them on these machines. Used by :class:`CliSession` on its
    temporary server only (and by the test session on its own); a configured server or
    ``kernelbook server`` keeps the heartbeats.
    """
    from prefect.context import SettingsContext, get_settings_context

    current = get_settings_context()
    settings = current.settings.model_copy(
        update={"flows": current.settings.flows.model_copy(update={"heartbeat_frequency": None})}
    )
    return SettingsContext(profile=current.profile, settings=settings)


# --- waiting for the server to record every task run ------------------------------------------


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
    return (
        prefect_internals.count_task_runs(client, flow_runs),
        prefect_internals.count_task_runs(client, flow_runs, final),
    )


def _recorder_settle_s() -> float:
    """How long the recorder's counts must stay unchanged to call it idle.

    With Prefect's default batch of 1 the recorder writes each event as it takes it (a few
    milliseconds each), and this process has sent every event before the wait starts, so half a
    second without change means nothing is left (it was a whole second: the wait was most of a
    run's shutdown); with a bigger batch, a partial batch waits for the next periodic flush, so
    the window must also cover the flush interval.
    """
    from prefect.settings import get_current_settings

    recorder = get_current_settings().server.services.task_run_recorder
    return 0.5 if recorder.batch_size <= 1 else float(recorder.flush_interval) + 1.0


def wait_for_task_run_records(
    since: datetime,
    *,
    settle_s: float | None = None,
    max_wait_s: float = 60.0,
    poll_s: float = 0.1,
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


def _logger() -> Any:
    from prefect.logging import get_logger

    return get_logger("kernelbook.runtime")


def _settle_records(max_wait_s: float) -> None:
    """Drain this process's events and logs, then wait for the server to record them."""
    _drain_client_workers(timeout=max_wait_s)
    since = _process_started_at or datetime.now(UTC)
    if not wait_for_task_run_records(since, max_wait_s=max_wait_s):
        _logger().warning(
            "The local Prefect server was still recording task runs after %.0f s; "
            "stopping it anyway, so some task runs may be missing from its database.",
            max_wait_s,
        )


# --- Prefect's own temporary server (flows run from Python, without the CLI) -----------------


def _running_ephemeral_server() -> Any | None:
    """Prefect's temporary server if this process started one and it runs; else None.

    Never imports the server module: if it is not imported, no server was started here.
    """
    server = prefect_internals.temporary_server(only_if_imported=True)
    if server is None:
        return None
    if not server.running or server.server_process is None or server.server_process.poll() is not None:
        return None
    return server


def shutdown_ephemeral_server(max_wait_s: float = 60.0) -> None:
    """Orderly stop of Prefect's temporary server started by this process (no-op if none):
    drain this process's events and logs, wait until the server has recorded them, then stop
    it (SIGTERM; its services then stop with nothing in flight and nothing queued).

    Runs by itself at interpreter exit once :func:`configure_prefect_env` ran. Call it from
    synchronous code only. A Ctrl-C during the wait skips straight to the stop.
    """
    server = _running_ephemeral_server()
    if server is None:
        return
    try:
        _settle_records(max_wait_s)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001  (the stop below must still happen)
        _logger().warning("Could not confirm that the local Prefect server recorded every task run: %s", exc)
    finally:
        server.stop()


def _shutdown_at_exit() -> None:
    try:
        shutdown_ephemeral_server()
    except BaseException:  # noqa: BLE001  (an exit must not become a traceback;
        pass  # Prefect's own atexit stop still runs after this)


# --- one CLI command: its Prefect API, its end, its interruption ------------------------------


class _Silence(logging.Filter):
    """After Ctrl-C the console shows one line, not Prefect's crash reports (they still reach
    the API, so the run's page in the UI shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _silence_console() -> None:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and not any(isinstance(f, _Silence) for f in handler.filters):
                handler.addFilter(_Silence())


def _configured_api_url() -> str | None:
    """The Prefect API URL from Prefect's settings (environment, .env, prefect.toml, profile)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


_current: CliSession | None = None


class CliSession:
    """The Prefect side of one CLI command that runs flows. Use as a context manager around the
    command; call :func:`attach_prefect_api` right before the first flow runs.

    On entry (before the command imports the flows, so before Prefect is imported): if no API
    URL is in the environment, either the local server of ``kernelbook server start`` answers,
    or a temporary server is started now, so that it boots while the command imports. At
    :meth:`attach`, Prefect's settings (which may also come from a profile or a config file)
    decide: a configured API wins (the temporary server is stopped unused); otherwise the run
    uses the local or temporary server. On exit, a temporary server that was used is stopped
    once it has recorded every task run.

    Ctrl-C: the first one stops the run (KeyboardInterrupt through Prefect, which records the
    runs as crashed), stops the temporary server, prints :data:`INTERRUPTED_LINE` and exits
    with 130; if that takes more than :data:`INTERRUPT_GRACE_S`, or on a second Ctrl-C, the
    process ends at once.
    """

    def __init__(self) -> None:
        self.temporary: TemporaryServer | None = None
        self.local_api: str | None = None
        self.attached = False
        self.interrupted = False
        self._said_interrupted = False
        self._say_lock = threading.Lock()
        self._previous_sigint: Any = None
        self._saved_env: dict[str, str | None] = {}
        self._settings_context: Any = None
        self._server_cpu: float | None = None
        self._marks: dict[str, float] = {"start": _process_start_wall()}

    # -- entry ------------------------------------------------------------------------------

    def __enter__(self) -> CliSession:
        global _current
        _current = self
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._prepare_api()
        except BaseException:
            self._finish(interrupted=False)
            raise
        return self

    def _prepare_api(self) -> None:
        if os.environ.get("PREFECT_API_URL"):
            return
        if "prefect" in sys.modules and _configured_api_url():
            return  # already imported (tests, a long-lived process): its settings decide now
        local = LocalServer().running()
        if local is not None:
            self.local_api = local.api_url
            return
        if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() in ("0", "false"):
            return  # the user asked for no temporary server: Prefect's own error follows
        # A new PREFECT_HOME: its database from the template, not 115 migrations at server start.
        prefect_internals.seed_prefect_database(prefect_home())
        self.temporary = TemporaryServer()
        self.temporary.spawn()
        self._marks["spawned"] = time.time()

    def attach(self, prefetch: tuple[str, ...] = ()) -> None:
        """Point Prefect at the API this run uses and wait until it answers. Idempotent.

        ``prefetch``: modules the run may need later (the plotting libraries, seconds to
        import). While the temporary server is still starting, this process has nothing to do
        but wait: they are imported then, in a background thread (an import error is left for
        the code that needs the module to raise)."""
        if self.attached:
            return
        self.attached = True
        self._marks.setdefault("attached", time.time())
        if _configured_api_url():
            self._stop_temporary()  # a configured API wins over our guess
            return
        from prefect.context import refresh_global_settings_context
        from prefect.settings import get_current_settings

        api_url = self.local_api or (self.temporary.api_url if self.temporary else None)
        if api_url is None:
            return
        self._set_env("PREFECT_API_URL", api_url)
        if self.temporary is not None:
            self._set_env(TEMPORARY_API_ENV, api_url)
            if "PREFECT_UI_URL" not in os.environ:
                self._set_env("PREFECT_UI_URL", "")  # no UI: no "View at" links that lead nowhere
        refresh_global_settings_context()  # Prefect read its settings at import, without it
        if self.temporary is None:
            _logger().info(f"Using the local Prefect server at {api_url} (UI: {api_url.removesuffix('/api')})")
            return
        self._settings_context = without_flow_heartbeats()
        self._settings_context.__enter__()
        _logger().info(
            f"Starting a temporary Prefect server on {self.temporary.address} for this run "
            "(`kernelbook server start` keeps one running, with the UI)"
        )
        if prefetch and not healthy(self.temporary.api_url, timeout=0.5):
            threading.Thread(target=_import_quietly, args=(prefetch,), name="prefetch", daemon=True).start()
        timeout = float(get_current_settings().server.ephemeral.startup_timeout_seconds)
        try:
            self.temporary.wait_ready(timeout)
        except RuntimeError as exc:  # one clear line, not a traceback
            raise UserError(str(exc), exit_code=1) from None
        self._marks["ready"] = time.time()

    def _set_env(self, key: str, value: str) -> None:
        self._saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    # -- exit -------------------------------------------------------------------------------

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        interrupted = self.interrupted or (exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        self._finish(interrupted=interrupted)
        if interrupted:
            self._say_interrupted()
            raise SystemExit(130) from None
        return False

    def _finish(self, *, interrupted: bool) -> None:
        global _current
        self._marks["flow_end"] = time.time()
        try:
            if interrupted:
                _silence_console()
            self._stop_temporary(settle=True, quick=interrupted)
        except KeyboardInterrupt:  # a Ctrl-C during the orderly end: end at once
            self.interrupted = True
            self._stop_temporary(quick=True)
        finally:
            self._marks["end"] = time.time()
            if self._previous_sigint is not None:
                signal.signal(signal.SIGINT, self._previous_sigint)
                self._previous_sigint = None
            _current = None
            if os.environ.get(TIMINGS_ENV) == "1":
                self._print_timings()
            self._restore_env()

    def _stop_temporary(self, *, settle: bool = False, quick: bool = False) -> None:
        server = self.temporary
        if server is None:
            return
        self._server_cpu = _cpu_seconds(server.process.pid) if server.process is not None else None
        if settle and server.running and server.ready_at is not None:
            try:
                # Quick (after Ctrl-C): the crashed states are sent, not waited for at length.
                _settle_records(max_wait_s=2.0 if quick else 60.0)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001  (the stop below must still happen)
                if not quick:
                    _logger().warning("Could not confirm that the Prefect server recorded every task run: %s", exc)
        self._marks["settled"] = time.time()
        self._server_cpu = _cpu_seconds(server.process.pid) if server.process is not None else self._server_cpu
        server.stop(grace_s=3.0 if quick else 10.0)
        self.temporary = None

    def _restore_env(self) -> None:
        if self._settings_context is not None:
            self._settings_context.__exit__(None, None, None)
            self._settings_context = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._saved_env and "prefect.context" in sys.modules:
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
        self._saved_env = {}

    # -- Ctrl-C -----------------------------------------------------------------------------

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            self._end_now()  # a second Ctrl-C
        self.interrupted = True
        _silence_console()
        threading.Thread(target=self._watchdog, name="interrupt-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    def _watchdog(self) -> None:
        time.sleep(INTERRUPT_GRACE_S)
        self._end_now()

    def _end_now(self) -> None:
        """End the process at once (exit code 130), stopping the temporary server first."""
        self._say_interrupted()
        server = self.temporary
        if server is not None:
            server.stop(grace_s=1.0)
        os._exit(130)

    def _say_interrupted(self) -> None:
        with self._say_lock:
            if self._said_interrupted:
                return
            self._said_interrupted = True
        sys.stdout.flush()
        sys.stderr.write(INTERRUPTED_LINE + "\n")
        sys.stderr.flush()

    # -- timings (KERNELBOOK_TIMINGS=1) ---------------------------------------------------------

    def _print_timings(self) -> None:
        m = self._marks

        def span(a: str, b: str) -> str:
            return f"{m[b] - m[a]:.2f}" if a in m and b in m else "-"

        server_cpu = self._server_cpu
        sys.stderr.write(
            "timings (s): "
            f"imports {span('start', 'attached')}; "
            f"server spawn->ready {span('spawned', 'ready')} (spawned at {span('start', 'spawned')}), waited {span('attached', 'ready')}; "
            f"flow {span('ready' if 'ready' in m else 'attached', 'flow_end')}; "
            f"shutdown {span('flow_end', 'end')} (records {span('flow_end', 'settled')}); "
            f"cpu: cli {_cpu_seconds(os.getpid()):.2f}"
            + (f", server {server_cpu:.2f}" if server_cpu is not None else "")
            + "\n"
        )


def attach_prefect_api(prefetch: tuple[str, ...] = ()) -> None:
    """Call right before a CLI command runs its first flow (no-op outside a :class:`CliSession`).
    ``prefetch``: see :meth:`CliSession.attach`."""
    if _current is not None:
        _current.attach(prefetch)


def _process_start_wall() -> float:
    """When this process started (wall clock), for ``KERNELBOOK_TIMINGS``.

    On Linux from ``/proc/self/stat`` (clock ticks since boot) and the time since boot: psutil's
    ``create_time`` adds the boot time in whole seconds (``/proc/stat``'s ``btime``), which put
    every phase measured from the start up to a second off."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, "starttime"
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001
        return time.time()


def _cpu_seconds(pid: int) -> float | None:
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # noqa: BLE001
        return None
