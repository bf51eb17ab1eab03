"""Test-session setup: hermetic Prefect and settings, and one shared Prefect test harness.

Environment first, before anything imports prefect: a temporary PREFECT_HOME, no API URL (the
harness starts its own server), no real keys from a developer's ``.env``.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile

_SESSION_HOME = tempfile.mkdtemp(prefix="kernelbook-tests-")
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
import pytest  # noqa: E402

from tests.fixtures.llm import *  # noqa: E402,F401,F403  (loopback LLM fixtures for every test)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server + database for every test that runs flows."""
    from prefect.testing.utilities import prefect_test_harness

    from prefect import flow

    @flow(name="harness-warm-up")
    def warm_up() -> int:
        return 1

    with prefect_test_harness(server_startup_timeout=180):
        # The first flow run of a process completes Prefect's logging setup, which replaces
        # the root logger's handlers (caplog's among them): get it done before any test.
        warm_up()
        _console_to_own_stream()  # that setup made a new console handler
        yield


# --- markers and the skip rule ------------------------------------------------------------------

_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    """``slow`` names every test that starts a server or a subprocess: the ones marked by hand
    (subprocesses), every test that runs flows against the shared Prefect test server, and all of
    ``tests/e2e``. ``uv run pytest -m "not slow"`` is the quick library-level loop."""
    e2e = os.path.join(_TESTS, "e2e") + os.sep
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()) or str(item.path).startswith(e2e):
            item.add_marker(pytest.mark.slow)


_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """No test may skip: a missing command, server or file must fail, not vanish from the run."""
    if _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped, and no test may skip: {', '.join(_skipped[:10])}", red=True
        )
