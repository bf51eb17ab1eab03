"""Test-session setup: hermetic Prefect and settings, and one shared Prefect server.

Environment first, before anything imports prefect: a temporary PREFECT_HOME, no API URL (the
session's server is set once it runs), no real keys from a developer's ``.env``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

_SESSION_HOME = tempfile.mkdtemp(prefix="kernelbook-tests-")
# Gone when the process ends (registered first, so it runs after every other exit handler, the
# session's server long stopped): each session and xdist worker made one, about 13 MB, that stayed.
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = os.path.join(_SESSION_HOME, "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ["KERNELBOOK_CACHE_DIR"] = os.path.join(_SESSION_HOME, "llm-cache")
# No test may ever use a real key or token: ignore a developer's .env and environment.
os.environ["KERNELBOOK_ENV_FILE"] = os.path.join(_SESSION_HOME, "no.env")
for _name in list(os.environ):
    if _name in ("PRIME_API_KEY", "PRIME_TEAM_ID", "HF_TOKEN", "LLM_BASE_URL") or _name.startswith(("HF_", "LLM_", "JUDGE_", "GENERATOR_")):
        del os.environ[_name]
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing reaches the Hub at test time
os.environ["HF_DATASETS_OFFLINE"] = "1"
# A cache of our own: ``datasets`` keys a local folder's cache by its name and file pattern, so a
# dataset another run (or another checkout) loaded from a folder called ``filtered`` comes back
# with that run's columns.
os.environ["HF_DATASETS_CACHE"] = os.path.join(_SESSION_HOME, "hf-datasets")

# Prefect's console log handler binds ``sys.stderr`` when logging is configured; under pytest
# and CliRunner that is a capture stream closed after each test or invoke. It gets a duplicate
# of file descriptor 2 that nobody closes (tests read logs through caplog).
_CONSOLE = os.fdopen(os.dup(2), "w", buffering=1)
atexit.register(_CONSOLE.close)


def _console_to_own_stream() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setStream(_CONSOLE)
            handler.console.file = _CONSOLE  # it prints through a rich Console

import tasks  # noqa: E402,F401  (Prefect environment defaults)
import prefect  # noqa: E402,F401  (Prefect configures its logging at import)

_console_to_own_stream()
import pytest  # noqa: E402  (after the environment above is set)

from tasks.local_server import TemporaryServer  # noqa: E402  (after the environment above is set)
from tests.fixtures.llm import *  # noqa: E402, F403  (loopback LLM fixtures for every test)

#: The session's Prefect server: the project's own temporary server (tasks/local_server.py), on
#: the session's new PREFECT_HOME, whose database comes from the template as a CLI run's does
#: (tests/tasks/test_runtime.py checks the template against Prefect's own migrations: those cost
#: each worker's server about 10 s of CPU at its start). It is started as soon as the tests are
#: collected, so its start (Prefect's imports, about 6 s) overlaps the first tests.
_SERVER = TemporaryServer()


def _spawn_server() -> None:
    from pathlib import Path

    from tasks.prefect_internals import seed_prefect_database

    seed_prefect_database(Path(os.environ["PREFECT_HOME"]))
    _SERVER.spawn()


@pytest.fixture(scope="session")
def prefect_harness():
    """The session's Prefect server and database, for every test that runs flows."""
    from prefect.context import refresh_global_settings_context

    from prefect import flow

    if _SERVER.process is None:
        _spawn_server()
    _SERVER.wait_ready(timeout=300)
    # The process-wide settings (not a context): threads Prefect starts see the server too.
    os.environ["PREFECT_API_URL"] = _SERVER.api_url
    refresh_global_settings_context()
    from tasks.runtime import _drain_client_workers, without_flow_heartbeats

    @flow(name="harness-warm-up")
    def warm_up() -> int:
        return 1

    # What the CLI does on its temporary server (tasks/runtime.py): no flow heartbeats. Each flow
    # run's end otherwise waits up to a second for its heartbeat thread (a trivial flow run took
    # 1.2 s with them, 0.34 s without, on this server).
    with without_flow_heartbeats():
        # The first flow run of a process completes Prefect's logging setup, which replaces the
        # root logger's handlers (caplog's among them): get it done before any test.
        warm_up()
        _console_to_own_stream()  # that setup made a new console handler
        yield _SERVER
    _drain_client_workers(timeout=30)


def pytest_sessionfinish(session, exitstatus):
    """No test may skip: a missing command, server or file must fail, not vanish from the run."""
    if _skipped and exitstatus == 0:
        session.exitstatus = 1
    if _SERVER.process is not None and os.environ.get("PREFECT_API_URL") == _SERVER.api_url:
        from tasks.runtime import _settle_records

        _settle_records(max_wait_s=30)  # the server records what the last tests sent before it stops
    _SERVER.stop()


# --- markers, order and the skip rule ---------------------------------------------------------

_TESTS = os.path.dirname(os.path.abspath(__file__))


def _uses_server(item) -> bool:
    return "prefect_harness" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """``slow`` names every test that starts a server or a subprocess: the ones marked by hand
    (subprocesses), every test that runs flows against the session's Prefect server, and all of
    ``tests/e2e``. ``uv run pytest -m "not slow"`` is the quick library-level loop.

    In one process (``-n 0``), modules none of whose tests need the session's server run first
    (in their usual order), so that the server starts while they run. (With workers, the default,
    pytest-xdist hands out whole modules, those with the most tests first; longest first, by
    measured times, came out about 11 s shorter of 284 s in a simulation of one profiled run:
    not worth a file of times to keep up to date, so the order is left to it.)"""
    e2e = os.path.join(_TESTS, "e2e") + os.sep
    for item in items:
        if _uses_server(item) or str(item.path).startswith(e2e):
            item.add_marker(pytest.mark.slow)
    needs_server = {item.path for item in items if _uses_server(item)}
    items.sort(key=lambda item: item.path in needs_server)  # stable: the usual order otherwise


def pytest_collection_finish(session):
    if any(_uses_server(item) for item in session.items) and _SERVER.process is None:
        _spawn_server()


_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped, and no test may skip: {', '.join(_skipped[:10])}", red=True
        )
