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
