"""Real OpenAI-compatible servers with a real (tiny) model, for the ``realmodel`` tests.

``scripts/realmodel.py`` builds and caches the model (SmolLM2-135M-Instruct), llama.cpp's
``llama-server`` and llama-cpp-python's server (docs/realmodel.md). These fixtures start a server
from that cache on a free loopback port, wait until it answers, point the settings at it, and
stop it at the end. Nothing is built here (a first build takes about half an hour): when the
cache lacks something, the tests skip saying which command builds it, and under CI (``CI`` set,
where ``.ci/run`` builds first) they fail instead.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "realmodel.py"
BUILD_COMMAND = "uv run python scripts/realmodel.py build"
#: A key the servers ignore (they run without one); long and unique, so a leak is easy to find.
DUMMY_KEY = "sk-realmodel-dummy-7f3a9c1e5b"
#: The model's own context, and the small one the context test serves.
MODEL_CONTEXT = 8192
_limit_names = itertools.count()


def realmodel_info() -> dict:
    """What the script has built (``path --json``)."""
    out = subprocess.run([sys.executable, str(SCRIPT), "path", "--json"], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def require_built(*artifacts: str) -> dict:
    """Skip (fail under CI) unless ``artifacts`` are built."""
    info = realmodel_info()
    missing = [f"{name} ({info[name]['why']})" for name in artifacts if not info[name]["ready"]]
    if missing:
        message = f"realmodel: not built: {'; '.join(missing)}. Build with `{BUILD_COMMAND}` (about 30 min the first time, docs/realmodel.md)"
        if os.environ.get("CI"):
            pytest.fail(message + "; under CI, .ci/run builds before these tests", pytrace=False)
        pytest.skip(message)
    return info


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass
class RealServer:
    """One server started through ``scripts/realmodel.py serve`` (which execs into it)."""

    kind: str
    log: Path
    ctx_size: int = MODEL_CONTEXT
    port: int = 0
    process: subprocess.Popen | None = None
    model: str = ""
    start_s: float = 0.0
    extra: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> RealServer:
        self.port = free_port()
        started = time.monotonic()
        command = [sys.executable, str(SCRIPT), "serve", "--server", self.kind, "--port", str(self.port),
                   "--ctx-size", str(self.ctx_size), "--exit-with-parent", *self.extra]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode} before it answered; its log:\n{self.tail()}")
            ready = self._ready()
            if ready:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not answer within {timeout:.0f} s; its log:\n{self.tail()}")
            time.sleep(0.25)
        self.start_s = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        try:
            if self.kind == "llama-server":
                status, _ = _get(f"http://127.0.0.1:{self.port}/health")  # 503 while the model loads
                if status != 200:
                    return False
            status, body = _get(f"{self.base_url}/models")
        except (OSError, ValueError):
            return False
        if status != 200:
            return False
        self.model = json.loads(body)["data"][0]["id"]  # the name the server reports
        return True

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def realmodel_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("realmodel-logs")


def _server(kind: str, logs: Path, name: str, **kwargs) -> Iterator[RealServer]:
    require_built("model", kind)
    server = RealServer(kind, logs / f"{name}.log", **kwargs).start()
    print(f"\n{name}: {kind} at {server.base_url}, model {server.model!r}, ready in {server.start_s:.1f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(realmodel_logs) -> Iterator[RealServer]:
    """llama.cpp's ``llama-server`` with the model's whole context (8,192 tokens)."""
    yield from _server("llama-server", realmodel_logs, "llama-server")


@pytest.fixture(scope="session")
def python_server(realmodel_logs) -> Iterator[RealServer]:
    """llama-cpp-python's server (``python -m llama_cpp.server``), same model and context."""
    yield from _server("python-server", realmodel_logs, "python-server")


@contextmanager
def realmodel_settings(server: RealServer, cache_dir: Path, **overrides: object) -> Iterator[dict[str, str]]:
    """Point the settings at ``server`` while the block runs: its model name for the judge and
    the generator, a dummy key, one request at a time (the server has one slot), a generous
    timeout (a CPU model), one quick retry, a fresh cache directory."""
    values = {
        "LLM_BASE_URL": server.base_url,
        "PRIME_API_KEY": DUMMY_KEY,
        "JUDGE_MODEL": server.model,
        "GENERATOR_MODEL": server.model,
        "LLM_CONCURRENCY": "1",
        "LLM_TIMEOUT_S": "180",
        "LLM_RETRIES": "1",
        "LLM_RETRY_BACKOFF_S": "0",
        "LLM_CONCURRENCY_LIMIT_NAME": f"realmodel-{os.getpid()}-{next(_limit_names)}",
        "KERNELBOOK_CACHE_DIR": str(cache_dir),
        "KERNELBOOK_PROGRESS": "plain",
    }
    values.update({k.upper(): str(v) for k, v in overrides.items()})
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield values
