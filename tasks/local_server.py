"""The Prefect servers this project starts on 127.0.0.1.

* :class:`TemporaryServer`: the server one CLI run uses when no Prefect API is configured (it
  replaces Prefect's own temporary server, see ``tasks/runtime.py`` for why). It is started
  before the CLI imports the flows, so its start overlaps the imports; it runs in its own
  session, so a terminal's Ctrl-C reaches only the CLI, which then stops it in order; and it
  watches its parent, so it exits when the CLI dies, even by ``kill -9``.
  :func:`main` (``--fd N --parent PID``) is its process.
* :class:`LocalServer`: ``kernelbook server start|stop|status``, a ``prefect server start`` that
  outlives runs (with the UI), recorded in ``PREFECT_HOME/kernelbook-server.json``; CLI runs use
  it when it is running.

Both serve Prefect's own application (``prefect.server.api.server.create_app``) on the
database under ``PREFECT_HOME``. This module imports prefect only in the server process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from kernelbook_lib.processes import process_alive, process_started

#: How often the temporary server checks that its parent is alive.
PARENT_POLL_S = 0.5
#: After its parent died, the temporary server's orderly stop may take this long; then it exits.
ORPHAN_EXIT_S = 10.0


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether a Prefect API answers ``GET /health`` with 200 at ``api_url``."""
    import urllib.request  # here: this module is imported at every CLI start

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it when only the environment sets it (the default
    otherwise), without importing prefect."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


# --- the temporary server ---------------------------------------------------------------------


class _LoopbackAddress:
    """``address`` and ``api_url`` of a server on 127.0.0.1 at ``self.port``."""

    port: int | None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.address}/api"


#: Settings of the temporary server only (a value in the environment wins). At each start,
#: Prefect's block auto-registration imports every installed Prefect collection (here
#: prefect-dask, which imports dask and distributed) to hash the block types, and registers
#: them when the hash changed: about 0.7 s of the server's start on these machines, for block
#: types nobody looks at on a server that lives for one run (this project saves no block).
TEMPORARY_SERVER_ENV_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
}
#: The temporary server sends itself this request as soon as it serves (see :func:`_warm_up`).
WARM_UP_PATH = "/api/admin/version"


#: The temporary server's command: this file loaded as a module of its own (no package import).
_RUN_THIS_FILE = (
    "import importlib.util, sys; path = sys.argv.pop(1); "
    "spec = importlib.util.spec_from_file_location('kernelbook_temporary_server', path); "
    "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec); "
    "spec.loader.exec_module(module); module.main()"
)


class TemporaryServer(_LoopbackAddress):
    """A Prefect server for the lifetime of this process, on a free loopback port.

    :meth:`spawn` returns at once (the port is bound here and handed to the server process, so
    it is known, and nobody else can take it, before the server has even imported Prefect);
    :meth:`wait_ready` waits until it answers; :meth:`stop` stops it.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.spawned_at: float | None = None
        self.ready_at: float | None = None


    def spawn(self, env: dict[str, str] | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            server_env = dict(os.environ if env is None else env)
            # No UI on a server that lives for one run (what Prefect's temporary server does too).
            server_env["PREFECT_UI_ENABLED"] = "false"
            for key, value in TEMPORARY_SERVER_ENV_DEFAULTS.items():
                server_env.setdefault(key, value)
            self.process = subprocess.Popen(
                # This file alone, not `-m tasks.local_server`: the `tasks` package (its Prefect
                # settings, this project's settings; 0.4 s of the server's start) is the CLI's
                # business, and the server inherits the environment it set.
                [sys.executable, "-c", _RUN_THIS_FILE, __file__,
                 "--fd", str(sock.fileno()), "--parent", str(os.getpid())],
                pass_fds=(sock.fileno(),),
                env=server_env,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C (SIGINT to the foreground process group)
                # reaches the CLI only, which then stops the server after the run has ended.
                start_new_session=True,
            )
            self.spawned_at = time.monotonic()
        finally:
            sock.close()  # the server process has its own copy

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server answers; RuntimeError if it exits or ``timeout`` passes."""
        if self.ready_at is not None:
            return
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"the temporary Prefect server exited with code {code} before it answered "
                    "(its own messages are above)"
                )
            if healthy(self.api_url, timeout=2.0):
                self.ready_at = time.monotonic()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the temporary Prefect server did not answer on {self.address} within {timeout:.0f} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                )
            time.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (its services stop in order), then SIGKILL after ``grace_s``."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.terminate()
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass


def _exit_when_parent_dies(parent: int) -> None:
    """In the server process: when ``parent`` is gone (even killed with SIGKILL, which leaves
    it no chance to stop us), stop in order (SIGTERM to ourselves), and exit regardless after
    :data:`ORPHAN_EXIT_S`."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(ORPHAN_EXIT_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _sibling(name: str) -> Any:
    """A module of this folder loaded by its path (the server process runs this file alone,
    without the ``tasks`` package, whose import configures the CLI's Prefect settings)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"kernelbook_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def serve_temporary(fd: int, parent: int) -> None:
    """The temporary server's process: Prefect's app, as Prefect's own temporary server runs
    it (``ephemeral``: only the services a temporary server needs), on the inherited socket."""
    if os.getppid() != parent:  # the parent died before we got here
        return
    _exit_when_parent_dies(parent)

    import uvicorn

    internals = _sibling("prefect_internals")  # by path: this process never imports the tasks package

    sock = socket.socket(fileno=fd)
    app = RetryUnavailable(internals.server_app(ephemeral=True, final=True))
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    _warm_up(server, sock.getsockname()[1])
    server.run(sockets=[sock])


#: Pauses (seconds) before the temporary server answers a request again itself after a 503.
RETRY_UNAVAILABLE_DELAYS_S: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)


class RetryUnavailable:
    """ASGI middleware: a request the application answers with 503 is run again, here, after
    a short pause, before the client sees it; after :data:`RETRY_UNAVAILABLE_DELAYS_S` the 503
    goes out as it is.

    Prefect's API answers 503 to errors its client may retry, and on SQLite the common one is
    "database is locked": a write transaction that began by reading (creating a flow run, taking
    a concurrency slot) fails at once, without waiting, when another connection committed in
    between, which the task run recorder does whenever it flushes a run's task runs. Prefect's
    client then sleeps 2 s (2, 4, 8 ... s) before it tries again: on these machines 20 of 21
    flow runs started back to back on the temporary server each waited about 2 s so. Run
    again a few milliseconds later, the same request succeeds. A 503 is exactly what Prefect's
    client would send again unchanged, so replaying it here changes no outcome, only the wait.
    Other scopes (lifespan, websockets) and every other response pass through untouched.
    """

    def __init__(self, app: Any, delays_s: tuple[float, ...] = RETRY_UNAVAILABLE_DELAYS_S) -> None:
        self.app = app
        self.delays_s = delays_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import asyncio

        body = bytearray()
        while True:  # the whole request body, to send it again
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        for delay in (*self.delays_s, None):
            if await self._attempt(scope, bytes(body), receive, send, last=delay is None):
                return
            await asyncio.sleep(delay)

    async def _attempt(self, scope: dict, body: bytes, receive: Any, send: Any, *, last: bool) -> bool:
        """Run the request once; False if it was answered with a 503 that was held back."""
        delivered = False
        held_back = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then whatever the client does (a disconnect)

        async def forward(message: dict) -> None:
            nonlocal held_back
            if message["type"] == "http.response.start" and message["status"] == 503 and not last:
                held_back = True
            if not held_back:
                await send(message)

        try:
            # A fresh copy of the scope: the application's routing writes into it.
            await self.app({**scope, "state": dict(scope.get("state", {}))}, replay, forward)
        except Exception:
            # Starlette sends the error handler's response, then raises the error again for
            # the server to log: a held-back 503 is retried, anything else is the server's.
            if not held_back:
                raise
        return not held_back


def _warm_up(server: object, port: int) -> None:
    """Send the server one API request as soon as it serves, from a thread of its own process.

    FastAPI prepares the routes of the API's routers on the first request that reaches them:
    about 1.2 s here, which the run's first request (the flow run's creation) would otherwise
    wait for. The server is usually up while the CLI still imports the flows, so done here the
    preparation overlaps those imports. A failure only means the first real request pays.
    """
    import urllib.request

    def warm() -> None:
        deadline = time.monotonic() + 120
        while not getattr(server, "started", False):
            if time.monotonic() > deadline or getattr(server, "should_exit", False):
                return
            time.sleep(0.02)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{WARM_UP_PATH}", timeout=30) as response:
                response.read()
        except OSError:
            pass

    threading.Thread(target=warm, name="warm-up", daemon=True).start()


# --- the local server that outlives runs -----------------------------------------------------

STATE_FILE = "kernelbook-server.json"
LOG_FILE = "kernelbook-server.log"
DEFAULT_PORT = 4200


@dataclass(frozen=True)
class ServerRecord(_LoopbackAddress):
    pid: int
    port: int
    started: float | None = None  # the process's start time: a reused pid is not our server


class LocalServer:
    """``prefect server start`` in the background, for this PREFECT_HOME.

    ``prefect server start --background`` exists, but keeps the server's output in pipes nobody
    reads and records no port; this starts the same server with its output in
    ``PREFECT_HOME/kernelbook-server.log`` and records its process and port.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or prefect_home()
        self.state_path = self.home / STATE_FILE
        self.log_path = self.home / LOG_FILE

    def record(self) -> ServerRecord | None:
        """The recorded server if its process is alive (a stale record is removed)."""
        try:
            data = json.loads(self.state_path.read_text())
            record = ServerRecord(pid=int(data["pid"]), port=int(data["port"]), started=data.get("started"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not process_alive(record.pid, record.started):
            self.state_path.unlink(missing_ok=True)
            return None
        return record

    def running(self, timeout: float = 1.0) -> ServerRecord | None:
        """The recorded server if it is alive and answers."""
        record = self.record()
        return record if record is not None and healthy(record.api_url, timeout=timeout) else None

    def start(self, port: int = DEFAULT_PORT, timeout: float = 180.0, env: dict[str, str] | None = None) -> ServerRecord:
        """Start it (a running one is returned as is). ValueError if ``port`` is taken;
        RuntimeError if it exits or does not answer within ``timeout`` (first start migrates
        a new database)."""
        current = self.record()
        if current is not None:
            return current
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise ValueError(f"port {port} on 127.0.0.1 is in use; choose another with --port") from None
        self.home.mkdir(parents=True, exist_ok=True)
        if self.home == prefect_home():
            from tasks.prefect_internals import seed_prefect_database

            seed_prefect_database(self.home)  # a new home: no 115 migrations at the first start
        prefect = Path(sys.executable).with_name("prefect")
        command = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=dict(os.environ if env is None else env),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # not stopped by this terminal's Ctrl-C or its closing
            )
        record = ServerRecord(pid=process.pid, port=port, started=process_started(process.pid))
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": record.pid, "port": record.port, "started": record.started}))
        os.replace(tmp, self.state_path)
        deadline = time.monotonic() + timeout
        while not healthy(record.api_url):
            code = process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f} s"
                raise RuntimeError(f"the Prefect server {why}; its log: {self.log_path}")
            time.sleep(0.2)
        return record

    def stop(self, grace_s: float = 20.0) -> ServerRecord | None:
        """Stop the recorded server (SIGTERM to its process group, SIGKILL after ``grace_s``);
        the record it stopped, or None if none was running."""
        record = self.record()
        if record is not None:
            try:
                os.killpg(record.pid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while process_alive(record.pid, record.started) and time.monotonic() < deadline:
                    _reap(record.pid)
                    time.sleep(0.1)
                if process_alive(record.pid, record.started):
                    os.killpg(record.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.state_path.unlink(missing_ok=True)
        return record


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (else it stays a zombie and looks alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The temporary Prefect server of one kernelbook run.")
    parser.add_argument("--fd", type=int, required=True, help="file descriptor of the bound listening socket")
    parser.add_argument("--parent", type=int, required=True, help="process id to exit with")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    serve_temporary(args.fd, args.parent)


if __name__ == "__main__":
    main()
