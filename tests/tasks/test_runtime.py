"""Prefect's local mode as a new user meets it: a fresh PREFECT_HOME, no PREFECT_API_URL.

The subprocess test starts a real temporary Prefect server (~20-40 s on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from tasks import runtime

ROOT = Path(__file__).resolve().parents[2]
N_MAPPED = 100

FLOW_SCRIPT = textwrap.dedent(
    f"""
    import json

    import tasks  # first: the Prefect environment defaults

    from prefect import flow, task
    from prefect.analytics import is_telemetry_enabled
    from prefect.settings import get_current_settings


    @task
    def add(a: int, b: int) -> int:
        return a + b


    @task
    def square(x: int) -> int:
        return x * x


    @flow
    def trivial() -> int:
        total = add(2, 3)
        return total + sum(f.result() for f in square.map(range({N_MAPPED})))


    result = trivial()
    settings = get_current_settings()
    print("RESULT " + json.dumps({{
        "result": result,
        "api_url": settings.api.url,
        "server_analytics_enabled": settings.server.analytics_enabled,
        "sdk_telemetry_enabled": is_telemetry_enabled(),
    }}), flush=True)
    """
)


@pytest.mark.slow
def test_first_local_run_on_a_fresh_prefect_home_is_clean_and_loses_nothing(tmp_path):
    home = tmp_path / "prefect-home"
    # A new user: no Prefect settings, no server, no opt-out of tracking of their own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env["PREFECT_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280, check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output, output
    assert "Traceback" not in output, output

    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    assert seen["result"] == 5 + sum(x * x for x in range(N_MAPPED))
    assert seen["api_url"] is None  # really the ephemeral server
    assert seen["server_analytics_enabled"] is False
    assert seen["sdk_telemetry_enabled"] is False
    # Quiet: flow-run lines yes, one line per task run no.
    assert "Beginning flow run" in output
    assert "Task run" not in output, output

    with sqlite3.connect(home / "prefect.db") as db:
        states = dict(db.execute("SELECT state_type, count(*) FROM task_run GROUP BY state_type").fetchall())
        telemetry_rows = db.execute("SELECT count(*) FROM configuration WHERE key = 'TELEMETRY_SESSION'").fetchone()[0]
    # Orderly shutdown: every task run reached the database before the server stopped. (The
    # recorder writes one event at a time and is seconds behind when the flow returns; without
    # the wait, only ~10-20% of these task runs get recorded, with ERROR tracebacks.)
    assert states == {"COMPLETED": N_MAPPED + 1}
    # Nothing phoned home: the heartbeat never ran, the SDK never made a device id.
    assert telemetry_rows == 0
    assert not (home / ".sdk_telemetry").exists()

    # The temporary server is gone with the process.
    port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_users_own_settings_win_and_defaults_fill_the_rest(monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # prefect may already be imported here
        runtime.configure_prefect_env()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"
    assert os.environ["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"


def test_configuring_after_prefect_was_imported_says_which_defaults_prefect_missed(monkeypatch):
    import prefect  # noqa: F401

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    with pytest.warns(RuntimeWarning, match="PREFECT_SERVER_ANALYTICS_ENABLED"):
        runtime.configure_prefect_env()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"

