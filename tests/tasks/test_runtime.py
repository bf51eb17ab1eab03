"""Prefect's local mode: settings, the orderly stop of Prefect's own temporary server (flows run
from Python), and the database template a new PREFECT_HOME starts from.

The CLI's own handling (its temporary server, Ctrl-C, ``kill -9``, ``kernelbook server``) is
tested through the real command in ``tests/e2e``.
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
from pathlib import Path

import pytest

from tasks import prefect_internals, runtime

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
def test_a_flow_run_from_python_on_prefects_own_temporary_server_is_clean_and_loses_nothing(tmp_path):
    home = tmp_path / "prefect-home"
    # A new user: no Prefect settings, no server, no opt-out of tracking of their own. (The
    # database comes from the template: the test below checks it against Prefect's migrations.)
    assert prefect_internals.seed_prefect_database(home)
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
    assert seen["api_url"] is None  # really Prefect's own temporary server
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


def _normalized_schema(db: Path) -> dict[tuple[str, str], object]:
    """Every table, index, trigger and view, with a table's columns and constraints as a set
    (Alembic's table rebuilds on SQLite emit constraints in no fixed order), and the migration
    revision."""

    def parts(body: str) -> frozenset[str]:
        items, depth, current = [], 0, ""
        for char in body:
            depth += (char == "(") - (char == ")")
            if char == "," and depth == 0:
                items.append(current.strip())
                current = ""
            else:
                current += char
        items.append(current.strip())
        return frozenset(" ".join(item.split()) for item in items)

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    schema: dict[tuple[str, str], object] = {}
    for kind, name, sql in rows:
        if kind == "table" and sql:
            schema[(kind, name)] = parts(sql[sql.index("(") + 1 : sql.rindex(")")])
        else:
            schema[(kind, name)] = " ".join((sql or "").split())
    schema[("revision", "alembic")] = revision
    return schema


@pytest.mark.slow
def test_the_database_template_is_what_prefects_own_migrations_make(tmp_path):
    """A database made from the template of the installed Prefect version must have exactly
    the schema Prefect's own migrations make (run here, in a process of their own, as
    `scripts/prefect_db_template.py` runs them). Fails after a Prefect upgrade until
    `uv run python scripts/prefect_db_template.py` is run."""
    from scripts.prefect_db_template import migrate

    assert prefect_internals.template_path().is_file(), (
        f"no database template for the installed Prefect ({prefect_internals.template_path().name}): "
        "run `uv run python scripts/prefect_db_template.py`"
    )
    migrated = migrate(tmp_path / "migrated")
    assert prefect_internals.seed_prefect_database(tmp_path)
    assert _normalized_schema(tmp_path / "prefect.db") == _normalized_schema(migrated), (
        "the database template differs from what Prefect's migrations make: run `uv run python scripts/prefect_db_template.py`"
    )
    # Seeding never touches an existing database.
    before = (tmp_path / "prefect.db").stat().st_mtime_ns
    assert not prefect_internals.seed_prefect_database(tmp_path)
    assert (tmp_path / "prefect.db").stat().st_mtime_ns == before


def test_seeding_leaves_a_database_moved_elsewhere_to_prefect(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/other.db")
    assert not prefect_internals.seed_prefect_database(tmp_path)
    assert not (tmp_path / "prefect.db").exists()


def test_a_users_own_settings_win_and_defaults_fill_the_rest(monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    monkeypatch.delenv("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", raising=False)
    runtime.configure_prefect_env()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "300"
    assert os.environ["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"


def test_prefect_reads_the_same_defaults_from_prefect_toml_in_the_root():
    """Deployments, workers and the tests import prefect before anything of ours: Prefect reads
    the project's defaults from prefect.toml there, so no module must be imported first."""
    script = (
        "from prefect.settings import get_current_settings as g; s = g().server; "
        "print(s.analytics_enabled, s.ephemeral.startup_timeout_seconds, "
        "s.services.event_persister.enabled, s.services.triggers.enabled)"
    )
    env = {k: v for k, v in os.environ.items() if k not in runtime.PREFECT_ENV_DEFAULTS}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wanted = ["PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
              "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"]
    assert [v.lower() for v in done.stdout.split()] == [runtime.PREFECT_ENV_DEFAULTS[k] for k in wanted]


@pytest.mark.slow
def test_importing_the_flows_does_not_import_the_openai_sdk():
    """The OpenAI SDK costs seconds to import on these machines: importing the flows (what every
    run does first) must not pay for it; tasks/llm.py imports it once calls are due."""
    script = "import sys, flows.curate, flows.generate_prompts, flows.reevaluate; print('openai' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_temporary_server_registers_no_block_types_at_start(prefect_harness):
    """Block auto-registration imports every Prefect collection (dask, here) at each start of
    the server; the temporary server, which lives for one run, skips it (its own settings,
    read back from the running server)."""
    import urllib.request

    with urllib.request.urlopen(f"{prefect_harness.api_url}/admin/settings", timeout=30) as response:
        server_settings = json.load(response)["server"]
    assert server_settings["register_blocks_on_start"] is False
    assert server_settings["memoize_block_auto_registration"] is False


def test_flow_runs_on_the_temporary_server_send_no_heartbeats():
    from prefect.settings import Settings, get_current_settings

    assert Settings().flows.heartbeat_frequency is not None  # Prefect's default: on
    before = get_current_settings().flows.heartbeat_frequency  # (the session's server: off)
    with runtime.without_flow_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before
