"""Fixed overhead of a local Prefect run (what a trivial flow costs before any real work).

Prints, in seconds:
  * ``import prefect`` in a fresh interpreter (median of 3);
  * the first run on a fresh PREFECT_HOME (temporary server start incl. database migrations,
    flow run, orderly shutdown) and a warm run on the same PREFECT_HOME;
  * the same flow against an already running ``prefect server start`` on a free 127.0.0.1
    port (its own temp PREFECT_HOME; started here, stopped at the end);
and whether any ERROR line or Traceback appeared in each output.

Every run uses the environment defaults of ``tasks.runtime`` (as ``import tasks`` does);
``--baseline`` adds a first run without them (Prefect's own defaults) for comparison.

    uv run python benchmarks/prefect_overhead.py [--baseline]

Timings depend on machine load: the 1-minute load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: Every temporary PREFECT_HOME made here; removed at the end.
_TEMP_DIRS: list[Path] = []

from tasks.runtime import PREFECT_ENV_DEFAULTS  # (does not import prefect)

# The child: import, start the temporary server explicitly (counting the import of its module) (exactly what Prefect's get_client
# does when no PREFECT_API_URL is set), run a 3-task flow, and report wall-clock marks; the
# parent measures the shutdown as the time from the flow's end to the process's exit.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    t0 = time.time()
    if os.environ.get("BENCH_CONFIGURE") == "1":
        import tasks  # the project's Prefect defaults and orderly shutdown
    from prefect import flow, task
    from prefect.settings import get_current_settings
    t1 = time.time()

    @task
    def add(a, b):
        return a + b

    @task
    def double(x):
        return 2 * x

    @flow
    def trivial(x: int) -> int:
        return add(double(x), double(x + 1))

    t2 = t3 = None
    if not get_current_settings().api.url:
        t2 = time.time()  # the server module's import is part of the cost (get_client does it)
        from prefect.server.api.server import SubprocessASGIServer
        SubprocessASGIServer().start()
        t3 = time.time()
    t4 = time.time()
    result = trivial(1)
    t5 = time.time()
    print("BENCH " + json.dumps({
        "result": result,
        "import": t1 - t0,
        "server_start": None if t2 is None else t3 - t2,
        "flow_run": t5 - t4,
        "flow_end_wall": t5,
    }), flush=True)
    """
)


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(path)
    return path


def _has_error(output: str) -> bool:
    return "ERROR" in output or "Traceback" in output


def _base_env(home: Path, configure: bool) -> dict[str, str]:
    """The user's environment minus Prefect settings, plus (optionally) the project's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    env["PREFECT_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    if configure:
        env.update(PREFECT_ENV_DEFAULTS)  # what configure_prefect_env() would set
    return env


def measure_import(repeats: int = 3) -> list[float]:
    code = "import time; t = time.perf_counter(); import prefect; print(time.perf_counter() - t)"
    env = _base_env(_temp_dir("bench-prefect-import-"), configure=True)
    return [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout) for _ in range(repeats)]


def run_flow(home: Path, configure: bool, api_url: str | None = None) -> dict:
    env = _base_env(home, configure)
    env["BENCH_CONFIGURE"] = "1" if configure else "0"
    if api_url:
        env["PREFECT_API_URL"] = api_url
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600, check=False)
    end = time.time()
    output = proc.stdout + proc.stderr
    row: dict = {"exit_code": proc.returncode, "total": end - start, "error_or_traceback": _has_error(output)}
    marks = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if marks:
        data = json.loads(marks[-1].removeprefix("BENCH "))
        row.update({k: data[k] for k in ("result", "import", "server_start", "flow_run")})
        row["shutdown"] = end - data["flow_end_wall"]
    else:
        row["tail"] = output.strip().splitlines()[-1:] if output.strip() else []
    return row


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect_cli() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else shutil.which("prefect") or "prefect"


def dedicated_server_runs() -> dict:
    """Start `prefect server start` (temp home, free port), run the flow twice, stop it."""
    server_home = _temp_dir("bench-prefect-server-")
    port = _free_port()
    log_path = server_home / "server.log"
    env = _base_env(server_home, configure=True)
    start = time.time()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    result: dict = {}
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"prefect server start exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() - start > 300:
                raise RuntimeError("prefect server start did not answer within 300 s")
            time.sleep(0.2)
        result["server_start"] = time.time() - start
        client_home = _temp_dir("bench-prefect-client-")
        result["first_run"] = run_flow(client_home, configure=True, api_url=api_url)
        result["warm_run"] = run_flow(client_home, configure=True, api_url=api_url)
    finally:
        stop = time.time()
        server.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        result["server_stop"] = time.time() - stop
        result["server_error_or_traceback"] = _has_error(log_path.read_text())
    return result


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:6.1f}"


def _print_run(label: str, row: dict) -> None:
    print(
        f"{label:<44} total {_fmt(row['total'])}  import {_fmt(row.get('import'))}  "
        f"server start {_fmt(row.get('server_start'))}  flow {_fmt(row.get('flow_run'))}  "
        f"shutdown {_fmt(row.get('shutdown'))}  exit {row['exit_code']}  "
        f"ERROR/Traceback: {'YES' if row['error_or_traceback'] else 'no'}"
        + (f"  last line: {row['tail']}" if row.get("tail") else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", action="store_true", help="also run once with Prefect's own defaults")
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    imports = measure_import()
    print(f"import prefect (fresh interpreter): median {statistics.median(imports):.1f} s  (runs: {', '.join(f'{t:.1f}' for t in imports)})")

    home = _temp_dir("bench-prefect-home-")
    _print_run("first run, fresh PREFECT_HOME (ephemeral)", run_flow(home, configure=True))
    _print_run("warm run, same PREFECT_HOME (ephemeral)", run_flow(home, configure=True))
    if args.baseline:
        baseline_home = _temp_dir("bench-prefect-baseline-")
        _print_run("first run, fresh home, Prefect defaults", run_flow(baseline_home, configure=False))

    dedicated = dedicated_server_runs()
    print(f"prefect server start (temp home) answered /health after {dedicated['server_start']:.1f} s")
    _print_run("first run against the running server", dedicated["first_run"])
    _print_run("warm run against the running server", dedicated["warm_run"])
    print(
        f"prefect server stop (SIGINT) took {dedicated['server_stop']:.1f} s; "
        f"ERROR/Traceback in its log: {'YES' if dedicated['server_error_or_traceback'] else 'no'}"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for path in _TEMP_DIRS:
            shutil.rmtree(path, ignore_errors=True)
