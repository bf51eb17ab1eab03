"""Interrupting a run, as a user does: the real `kernelbook` command in a subprocess of its own
(its own process group, like a terminal's foreground job), with its real temporary Prefect
server, on a new PREFECT_HOME; the LLM judge talks to the loopback server."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tasks.local_server import healthy
from tasks.runtime import INTERRUPTED_LINE
from tests.fixtures.llm_server import DEFAULT_API_KEY, LLMTestServer

ROOT = Path(__file__).resolve().parents[2]
SERVER_LINE = re.compile(r"Starting a temporary Prefect server on (http://127\.0\.0\.1:(\d+))")
#: Only a hang fails these tests: an interrupted run normally ends in a few seconds.
HANG_S = 120


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no Prefect settings of the test session's, a new PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home / "prefect"), KERNELBOOK_CACHE_DIR=str(home / "cache"),
               KERNELBOOK_ENV_FILE=str(home / "no.env"), PYTHONPATH=str(ROOT), **extra)
    return env


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kernelbook_cli", *args], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,  # a terminal's job
        )


def wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.1)


def temporary_server(process: subprocess.Popen, log: Path) -> tuple[psutil.Process, str]:
    """The run's temporary Prefect server, once it answers: its process and its address."""
    wait_for(lambda: SERVER_LINE.search(log.read_text()), "temporary server", process, log)
    address = SERVER_LINE.search(log.read_text()).group(1)
    wait_for(lambda: healthy(f"{address}/api"), "answer from the temporary server", process, log)
    [server] = psutil.Process(process.pid).children()
    return server, address


def port_is_closed(address: str) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", int(address.rsplit(":", 1)[1]))) != 0


def test_ctrl_c_during_the_judge_stage_stops_the_run_at_once_and_keeps_every_finished_call(tmp_path):
    latency = 6.0  # long, so no call is half-answered when the interrupt lands
    with LLMTestServer(latency=latency) as llm:
        env = user_env(tmp_path, PRIME_API_KEY=DEFAULT_API_KEY, LLM_BASE_URL=llm.base_url, LLM_CONCURRENCY="4")
        log = tmp_path / "run.log"
        out = tmp_path / "out"
        run = start_cli(["curate", "--source", "sample", "--judge", "llm", "--out", str(out)], env, log)
        try:
            server, address = temporary_server(run, log)
            # The first 4 calls answered and were cached; the next 4 are in flight.
            wait_for(lambda: llm.stats()["calls_total"] >= 8, "second round of judge calls", run, log)
            time.sleep(1.0)
            before = len(log.read_text())
            os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            run.wait(timeout=HANG_S)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        stats = llm.stats()
    output = log.read_text()
    assert run.returncode == 130, output
    after = [line for line in output[before:].splitlines() if line.strip() and not re.search(r"judge: \d+/\d+ done", line)]
    assert after == [INTERRUPTED_LINE], output  # one line: no traceback, no retries, no crash report
    # The run stopped: it never reached the export, so the folder is recognisably unfinished.
    assert not (out / "run_summary.json").exists()
    # Every call that was answered is in the cache (and nothing else is).
    answered = stats["by_status"].get("200", 0)
    cached = [p for p in (tmp_path / "cache" / "llm").rglob("*.json")]
    assert answered >= 4 and len(cached) == answered, (answered, cached)
    # The temporary server recorded the run as crashed, and was stopped with the run.
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert port_is_closed(address)
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        [(state,)] = db.execute("SELECT state_type FROM flow_run WHERE name IS NOT NULL").fetchall()
    assert state == "CRASHED"


def test_kill_9_of_the_run_takes_its_temporary_server_with_it(tmp_path):
    log = tmp_path / "run.log"
    run = start_cli(["curate", "--source", "sample", "--judge", "static", "--out", str(tmp_path / "out")], user_env(tmp_path), log)
    try:
        server, address = temporary_server(run, log)
    finally:
        os.kill(run.pid, signal.SIGKILL)  # no chance to clean up
        run.wait()
    gone, alive = psutil.wait_procs([server], timeout=HANG_S)
    assert not alive, f"the temporary server {server.pid} outlived its run:\n{log.read_text()}"
    assert port_is_closed(address)
