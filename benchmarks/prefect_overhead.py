"""Where the time of `kernelbook curate --source sample` goes: imports, Prefect server, flow, shutdown.

Runs the real command (``python -m kernelbook_cli curate --source sample --judge static``) in a
subprocess and prints, for each case, the wall time and the CPU time of the command and every
process it started, split into phases:

* ``imports``: process start until the first flow is about to run;
* ``server``: the Prefect server's start: from its start to when it answered, and how much of
  that the run waited for (a server started before the imports overlaps them);
* ``flow``: the flows themselves (curate, then its analysis subflow);
* ``shutdown``: from the end of the flows to the end of the process (waiting for the server to
  record every task run, stopping it).

Cases: the first run on a new PREFECT_HOME, a warm run on the same home, and (when the code has
it) a run while ``kernelbook server start`` runs. Phases come from the command's own report
(``KERNELBOOK_TIMINGS=1``) or, for code without it, from the timestamps of Prefect's log lines.
``--fresh-clone REF`` instead measures what a new user does: ``git clone`` (of this repository,
at REF), then ``uv run kernelbook curate --source sample`` twice; the first run includes making
the clone's virtual environment, without compiled modules (``uv``'s default); then once more
after ``uv sync --compile-bytecode``.

    uv run python benchmarks/prefect_overhead.py                   # this checkout
    uv run python benchmarks/prefect_overhead.py --root OLD_CHECKOUT  # another checkout, same venv
    uv run python benchmarks/prefect_overhead.py --python OTHER_VENV/bin/python
    uv run python benchmarks/prefect_overhead.py --fresh-clone HEAD   # or any commit

Wall times depend on the machine's load (printed before and after each case); CPU times much
less so. Nothing is asserted; ERROR lines and tracebacks in the output are reported.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TEMP_DIRS: list[Path] = []
_TIMINGS = re.compile(
    r"timings \(s\): imports (?P<imports>[\d.-]+); server spawn->ready (?P<server>[\d.-]+)"
    r"(?: \(spawned at (?P<spawned>[\d.-]+)\))?, waited (?P<waited>[\d.-]+); "
    r"flow (?P<flow>[\d.-]+); shutdown (?P<shutdown>[\d.-]+) \(records (?P<records>[\d.-]+)\); "
    r"cpu: cli (?P<cpu_cli>[\d.]+)(?:, server (?P<cpu_server>[\d.]+))?"
)
_STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+\s*\| (.*)$")


def _temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(path)
    return path


def _env(root: Path, home: Path) -> dict[str, str]:
    """A new user's environment: no Prefect settings of the caller's, no keys, this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PRIME_", "LLM_")) and k != "DO_NOT_TRACK"}
    env["PREFECT_HOME"] = str(home)
    env["PYTHONPATH"] = str(root)
    env["KERNELBOOK_ENV_FILE"] = str(home / "no.env")
    env["KERNELBOOK_TIMINGS"] = "1"
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stamp_seconds(stamp: str, day: datetime) -> float:
    return datetime.strptime(f"{day:%Y-%m-%d} {stamp}", "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _phases_from_log(output: str, started: float, ended: float) -> dict[str, float]:
    """Phases of code without KERNELBOOK_TIMINGS: Prefect's own temporary server starts on the
    first API call (when the flow starts), so imports end at its "Starting temporary server" line."""
    day = datetime.fromtimestamp(started)
    marks: dict[str, float] = {}
    for line in output.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        at, text = _stamp_seconds(m.group(1), day), m.group(2)
        if "Starting temporary server" in text:
            marks.setdefault("server_start", at)
        elif "Beginning flow run" in text:
            marks.setdefault("flow_start", at)
        elif "Finished in state" in text and text.startswith("Flow run"):
            marks["flow_end"] = at  # the last one is the top flow's
    if not {"server_start", "flow_start", "flow_end"} <= set(marks):
        return {}
    return {
        "imports": marks["server_start"] - started,
        "server": marks["flow_start"] - marks["server_start"],
        "waited": marks["flow_start"] - marks["server_start"],
        "flow": marks["flow_end"] - marks["flow_start"],
        "shutdown": ended - marks["flow_end"],
    }


def run_curate(python: str, root: Path, home: Path, out: Path, *, uv: bool = False) -> dict:
    env = _env(root, home)
    command = ["uv", "run", "kernelbook"] if uv else [python, "-m", "kernelbook_cli"]
    if uv:
        env.pop("PYTHONPATH")
        env.pop("VIRTUAL_ENV", None)  # the clone's own environment
    cpu_before, started = _children_cpu(), time.time()
    proc = subprocess.run(
        [*command, "curate", "--source", "sample", "--judge", "static", "--out", str(out)],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    ended = time.time()
    output = proc.stdout + proc.stderr
    row: dict = {
        "exit": proc.returncode,
        "wall": ended - started,
        "cpu": _children_cpu() - cpu_before,
        "error_lines": sum(1 for line in output.splitlines() if "ERROR" in line or "Traceback" in line),
    }
    m = _TIMINGS.search(output)
    if m:
        row.update({k: (float(v) if v not in (None, "-") else None) for k, v in m.groupdict().items()})
    else:
        row.update(_phases_from_log(output, started, ended))
    if proc.returncode != 0:
        row["tail"] = output.strip().splitlines()[-3:]
    return row


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.1f}"


def _print_row(label: str, row: dict) -> None:
    cpu_split = (
        f" (cli {_fmt(row.get('cpu_cli'), 4)}, server {_fmt(row.get('cpu_server'), 4)})" if row.get("cpu_cli") is not None else ""
    )
    print(
        f"{label:<34} wall {_fmt(row['wall'])}  cpu {_fmt(row['cpu'])}{cpu_split} | imports {_fmt(row.get('imports'))}  "
        f"server {_fmt(row.get('server'))} (waited {_fmt(row.get('waited'), 4)})  flow {_fmt(row.get('flow'))}  "
        f"shutdown {_fmt(row.get('shutdown'))} | exit {row['exit']}  ERROR/Traceback lines: {row['error_lines']}"
        + (f"  last lines: {row['tail']}" if row.get("tail") else "")
    )


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _has_server_command(python: str, root: Path) -> bool:
    done = subprocess.run([python, "-m", "kernelbook_cli", "server", "--help"], cwd=root, env=_env(root, root),
                          capture_output=True, text=True, check=False)
    return done.returncode == 0


def with_local_server(python: str, root: Path) -> tuple[float, dict]:
    """`kernelbook server start` on a free port, one run, `kernelbook server stop`."""
    import socket

    home = _temp_dir("bench-prefect-server-")
    env = _env(root, home)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.time()
    subprocess.run([python, "-m", "kernelbook_cli", "server", "start", "--port", str(port)], cwd=root, env=env,
                   check=True, capture_output=True, text=True, timeout=600)
    server_start = time.time() - started
    try:
        return server_start, run_curate(python, root, home, _temp_dir("bench-out-") / "out")
    finally:
        subprocess.run([python, "-m", "kernelbook_cli", "server", "stop"], cwd=root, env=env, check=False,
                       capture_output=True, timeout=120)


def fresh_clone(ref: str) -> None:
    """`git clone` at ``ref``, then `uv run kernelbook curate --source sample` twice."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
    clone = _temp_dir("bench-clone-") / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    print(f"fresh clone of {ref} ({commit[:7]}) in {clone}")
    print("command: uv run kernelbook curate --source sample --judge static (seconds; cpu = every process, uv's included)")
    home, out = _temp_dir("bench-prefect-home-"), _temp_dir("bench-out-") / "out"
    print(f"[load {_load()}]")
    _print_row("first run: new .venv, new PREFECT_HOME", run_curate("", clone, home, out, uv=True))
    print(f"[load {_load()}]")
    _print_row("warm run, same PREFECT_HOME", run_curate("", clone, home, out, uv=True))
    # Python caches compiled modules (.pyc) on first import unless PYTHONDONTWRITEBYTECODE is
    # set, as it is on these machines: then every run compiles what it imports again, unless
    # the environment was compiled once.
    print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '(unset)')}")
    started = time.monotonic()
    subprocess.run(["uv", "sync", "-q", "--compile-bytecode"], cwd=clone, check=True)
    print(f"`uv sync --compile-bytecode` took {time.monotonic() - started:.1f} s")
    print(f"[load {_load()}]")
    _print_row("warm run, compiled environment", run_curate("", clone, home, out, uv=True))
    print(f"[load {_load()}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (venv) to run it with")
    parser.add_argument("--warm-runs", type=int, default=2, help="warm runs after the first")
    parser.add_argument("--no-server", action="store_true", help="skip the `kernelbook server` case")
    parser.add_argument("--fresh-clone", metavar="REF", help="measure a new clone of this repository at REF instead")
    args = parser.parse_args()
    if args.fresh_clone:
        fresh_clone(args.fresh_clone)
        return
    root = args.root.resolve()

    print(f"checkout {root}, python {args.python}, {os.cpu_count()} cores")
    print("command: python -m kernelbook_cli curate --source sample --judge static (seconds; cpu = every process of the run)")
    home = _temp_dir("bench-prefect-home-")
    out = _temp_dir("bench-out-") / "out"
    print(f"[load {_load()}]")
    _print_row("first run, new PREFECT_HOME", run_curate(args.python, root, home, out))
    for i in range(args.warm_runs):
        print(f"[load {_load()}]")
        _print_row(f"warm run {i + 1}, same PREFECT_HOME", run_curate(args.python, root, home, out))
    if not args.no_server and _has_server_command(args.python, root):
        print(f"[load {_load()}]")
        server_start, row = with_local_server(args.python, root)
        print(f"`kernelbook server start` (new home) took {server_start:.1f} s")
        _print_row("run while `kernelbook server` runs", row)
    print(f"[load {_load()}]")


if __name__ == "__main__":
    try:
        main()
    finally:
        for path in _TEMP_DIRS:
            shutil.rmtree(path, ignore_errors=True)
