"""A loopback OpenAI-compatible chat-completions server for tests and benchmarks.

Real HTTP/1.1 (keep-alive) on 127.0.0.1, written on bare ``asyncio`` streams so hundreds of
slow requests in flight cost one coroutine each (no thread per request, no framework).

- ``POST /v1/chat/completions`` (and ``/chat/completions``): after ``latency`` seconds, a
  deterministic reply. A judge request (``response_format`` JSON schema named ``judge_reply``)
  gets ``{"difficulty", "style", "rationale"}`` derived from a hash of the prompt text (see
  :func:`expected_judge_reply`); a prompt-generator request (schema named ``specification``)
  gets ``{"specification": ...}``, a Markdown text that names the class ``{Module name}New``
  (see :func:`expected_specification`); any other request gets a plain text reply. ``usage`` is
  filled.
- Bearer key check (401, optionally echoing the wrong key in the body, as careless providers
  do) and optional ``X-Prime-Team-ID`` check (403).
- Fault injection per request: a marker in the prompt text ``[[fault:KIND]]``,
  ``[[fault:KIND*N]]`` (only the first N calls for that prompt) or ``[[fault:KIND*N@S]]``
  (``Retry-After`` of S seconds), or server-wide :class:`FaultRule` s. Kinds: ``429``, ``500``,
  ``503``, ``400``, ``404``, ``malformed`` (content that is not JSON), ``tags`` (content in
  ``<difficulty>`` tags; ``<specification>`` tags for a specification request), ``empty`` (empty
  content), ``html`` (a 200 whose body is an HTML page, as a misconfigured proxy sends),
  ``hang`` (never answers in time); for specification requests only (others answer
  normally): ``unnamed`` (a specification that does not name the new class) and ``echo`` (a
  specification followed by the whole user message, so it copies the reference code).
- Counters: calls in total, per prompt hash (with arrival times), per status, in flight and
  the maximum in flight. ``GET /_stats`` returns them, ``POST /_reset`` clears them.

In-process: ``with LLMTestServer(latency=0.05) as server: ...`` (a daemon thread runs the loop).
Out of process (benchmarks, so the server does not share the client's GIL):
``LLMTestServer.spawn(latency=1.0)``; manually:
``python -m kernelbook_lib.testing.llm_server --port 8765 --latency 1.0 --api-key test-key``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

DEFAULT_API_KEY = "sk-loopback-test-key-0123456789"
JUDGE_SCHEMA_NAME = "judge_reply"  # kernelbook_lib.rubric.JUDGE_SCHEMA_NAME (no import: standalone)
SPECIFICATION_SCHEMA_NAME = "specification"  # kernelbook_lib.prompt_gen.SPECIFICATION_SCHEMA_NAME
FAULT_KINDS = ("429", "500", "503", "400", "404", "malformed", "tags", "empty", "html", "hang", "unnamed", "echo")
_MODULE_NAME_RE = re.compile(r"Module name: ([A-Za-z_][A-Za-z0-9_]*)")
_MARKER_RE = re.compile(r"\[\[fault:([a-z0-9]+)(?:\*(\d+))?(?:@([0-9.]+))?\]\]")


@dataclass(frozen=True)
class FaultRule:
    """Inject ``kind`` into the calls for prompts containing ``match`` (all prompts when
    ``None``); only the first ``first_n`` calls per prompt when set, else every call."""

    kind: str
    first_n: int | None = None
    match: str | None = None
    retry_after: float | None = None  # seconds, for 429/503

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {FAULT_KINDS}")

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """``KIND``, ``KIND*N`` or ``KIND*N@SECONDS`` (the marker grammar without brackets)."""
        m = re.fullmatch(r"([a-z0-9]+)(?:\*(\d+))?(?:@([0-9.]+))?", spec)
        if not m:
            raise ValueError(f"bad fault spec {spec!r}")
        return cls(m.group(1), int(m.group(2)) if m.group(2) else None, None, float(m.group(3)) if m.group(3) else None)


def fault_marker(kind: str, first_n: int | None = None, retry_after: float | None = None) -> str:
    """The marker to put in a prompt to inject a fault for that prompt."""
    return f"[[fault:{kind}" + (f"*{first_n}" if first_n else "") + (f"@{retry_after}" if retry_after else "") + "]]"


def prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m.get('role', '')}:{m.get('content', '')}" for m in messages)


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    """The server's id for a prompt (the per-prompt counters are keyed by it)."""
    return hashlib.sha256(prompt_text(messages).encode("utf-8")).hexdigest()


def expected_judge_reply(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict the server gives a judge prompt: a pure function of the prompt text."""
    digest = hashlib.sha256(prompt_text(messages).encode("utf-8")).digest()
    return {
        "difficulty": digest[0] % 11,
        "style": digest[1] % 11,
        "rationale": f"synthetic verdict {digest[:4].hex()}",
    }


def expected_specification(messages: list[dict[str, Any]], *, name_the_class: bool = True) -> str:
    """The specification the server writes for a prompt-generator prompt: a pure function of
    the prompt text that names ``{X}New`` for the ``Module name: X`` line of the prompt."""
    text = prompt_text(messages)
    match = _MODULE_NAME_RE.search(text)
    new = f"`{match.group(1)}New`" if match and name_the_class else "the new module"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return (
        f"# Task: implement {new}\n\n"
        f"Synthetic specification {digest}: build {new}, a torch.nn.Module whose forward pass computes what "
        "the reference computes, with Triton kernels.\n"
    )


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.calls_total = 0
        self.by_status: Counter[int] = Counter()
        self.calls_by_hash: Counter[str] = Counter()
        self.times_by_hash: defaultdict[str, list[float]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls_total": self.calls_total,
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "calls_by_hash": dict(self.calls_by_hash),
            "times_by_hash": dict(self.times_by_hash),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


class _App:
    """The protocol handler; runs on one asyncio loop."""

    def __init__(
        self,
        *,
        latency: float,
        api_key: str | None,
        team_id: str | None,
        faults: tuple[FaultRule, ...],
        hang_s: float,
        echo_key_in_errors: bool,
    ) -> None:
        self.latency = latency
        self.api_key = api_key
        self.team_id = team_id
        self.faults = faults
        self.hang_s = hang_s
        self.echo_key_in_errors = echo_key_in_errors
        self.stats = _Stats()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- HTTP plumbing ---------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                try:
                    body = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                response = await self.dispatch(method, target.split("?", 1)[0], headers, body, reader)
                if response is None:  # the client went away (e.g. during a hang)
                    return
                status, extra_headers, payload = response
                reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                          429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Status")
                content_type = extra_headers.pop("X-Content-Type", "application/json")
                out = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                       f"Content-Length: {len(payload)}"]
                out += [f"{k}: {v}" for k, v in extra_headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
                try:
                    await writer.drain()
                except ConnectionError:
                    return
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def close_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return status, headers or {}, json.dumps(obj).encode("utf-8")

    @staticmethod
    def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        return _App._json(status, {"error": {"message": message, "type": kind, "code": str(status)}}, headers)

    # -- endpoints -------------------------------------------------------------------------

    async def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader):
        if method == "GET" and path == "/_stats":
            return self._json(200, self.stats.as_dict())
        if method == "POST" and path == "/_reset":
            self.stats.reset()
            return self._json(200, {"reset": True})
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            stats = self.stats
            stats.calls_total += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                response = await self.chat(headers, body, reader)
            finally:
                stats.in_flight -= 1
            if response is not None:
                stats.by_status[response[0]] += 1
            return response
        return self._error(404, f"no route for {method} {path}", "not_found")

    def _pick_fault(self, text: str, n: int) -> FaultRule | None:
        for m in _MARKER_RE.finditer(text):
            rule = FaultRule(m.group(1), int(m.group(2)) if m.group(2) else None, None,
                             float(m.group(3)) if m.group(3) else None)
            if rule.first_n is None or n <= rule.first_n:
                return rule
        for rule in self.faults:
            if (rule.match is None or rule.match in text) and (rule.first_n is None or n <= rule.first_n):
                return rule
        return None

    async def _wait_or_disconnect(self, seconds: float, reader: asyncio.StreamReader) -> bool:
        """Sleep ``seconds``; False if the client closed the connection meanwhile."""
        if seconds <= 0:
            return True
        eof = asyncio.ensure_future(reader.read(1))
        try:
            done, _ = await asyncio.wait({eof}, timeout=seconds)
            return not done  # any read result while waiting means EOF/garbage: the client left
        finally:
            if not eof.done():
                eof.cancel()
                with contextlib.suppress(BaseException):
                    await eof

    async def chat(self, headers: dict[str, str], body: bytes, reader: asyncio.StreamReader):
        auth = headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if self.api_key is not None and given != self.api_key:
            message = "Incorrect API key provided" + (f": {given}" if self.echo_key_in_errors else "")
            return self._error(401, message, "invalid_request_error")
        if self.team_id is not None and headers.get("x-prime-team-id") != self.team_id:
            return self._error(403, "this key is not a member of the requested team", "permission_denied")
        try:
            payload = json.loads(body)
            messages = payload["messages"]
            model = payload["model"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, "request body must be JSON with model and messages", "invalid_request_error")

        text = prompt_text(messages)
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        stats = self.stats
        stats.calls_by_hash[key] += 1
        stats.times_by_hash[key].append(round(time.monotonic() - stats.started, 4))
        fault = self._pick_fault(text, stats.calls_by_hash[key])

        if fault is not None and fault.kind == "hang":
            await self._wait_or_disconnect(self.hang_s, reader)
            return None
        if not await self._wait_or_disconnect(self.latency, reader):
            return None

        if fault is not None and fault.kind in ("429", "503"):
            retry_after = fault.retry_after if fault.retry_after is not None else 1.0
            extra = {"retry-after-ms": str(int(retry_after * 1000)), "Retry-After": str(max(1, round(retry_after)))}
            return self._error(int(fault.kind), "slow down" if fault.kind == "429" else "overloaded", "rate_limit", extra)
        if fault is not None and fault.kind in ("500", "400", "404"):
            return self._error(int(fault.kind), f"injected {fault.kind}", "injected")
        if fault is not None and fault.kind == "html":
            return 200, {"X-Content-Type": "text/html"}, b"<html><body>Gateway says hello</body></html>"

        schema = ((payload.get("response_format") or {}).get("json_schema") or {}).get("name")
        verdict = expected_judge_reply(messages)
        if fault is not None and fault.kind == "malformed":
            content = '{"difficulty": 5, "style": '  # truncated JSON
        elif fault is not None and fault.kind == "tags" and schema == SPECIFICATION_SCHEMA_NAME:
            content = f"<specification>\n{expected_specification(messages)}</specification>"
        elif fault is not None and fault.kind == "tags":
            content = f"<difficulty>{verdict['difficulty']}</difficulty><style>{verdict['style']}</style>"
        elif fault is not None and fault.kind == "empty":
            content = ""
        elif schema == SPECIFICATION_SCHEMA_NAME:
            spec = expected_specification(messages, name_the_class=not (fault is not None and fault.kind == "unnamed"))
            if fault is not None and fault.kind == "echo":
                spec += "\n" + "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
            content = json.dumps({"specification": spec})
        elif schema == JUDGE_SCHEMA_NAME:
            content = json.dumps(verdict)
        else:
            content = f"synthetic reply {key[:16]}"
        prompt_tokens = max(1, len(text) // 4)
        completion_tokens = max(1, len(content) // 4)
        return self._json(200, {
            "id": f"chatcmpl-{key[:12]}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


class _ServerHandle:
    """What tests and benchmarks use, whichever process the server runs in."""

    host = "127.0.0.1"
    port: int
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _request(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://{self.host}:{self.port}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """Counters: calls_total, by_status, calls_by_hash, times_by_hash, in_flight, max_in_flight."""
        return self._request("GET", "/_stats")

    def reset(self) -> None:
        self._request("POST", "/_reset")


class LLMTestServer(_ServerHandle):
    """The server on a daemon thread of this process (see the module doc)."""

    def __init__(
        self,
        *,
        latency: float = 0.05,
        api_key: str | None = DEFAULT_API_KEY,
        team_id: str | None = None,
        faults: tuple[FaultRule, ...] | list[FaultRule] = (),
        hang_s: float = 60.0,
        echo_key_in_errors: bool = False,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.app = _App(latency=latency, api_key=api_key, team_id=team_id, faults=tuple(faults),
                        hang_s=hang_s, echo_key_in_errors=echo_key_in_errors)
        self._requested_port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> LLMTestServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self.app.handle, self.host, self._requested_port, backlog=2048)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="llm-test-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            self.app.close_all()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def spawn(cls, **kwargs: Any) -> SpawnedLLMTestServer:
        """The same server in a child process (for benchmarks: no shared GIL)."""
        return SpawnedLLMTestServer(**kwargs)


class SpawnedLLMTestServer(_ServerHandle):
    """The server in a child process; use as a context manager or call :meth:`stop`."""

    def __init__(
        self,
        *,
        latency: float = 0.05,
        api_key: str | None = DEFAULT_API_KEY,
        team_id: str | None = None,
        faults: tuple[FaultRule, ...] | list[FaultRule] = (),
        hang_s: float = 60.0,
    ) -> None:
        self.api_key = api_key
        args = [sys.executable, "-m", "kernelbook_lib.testing.llm_server", "--port", "0",
                "--latency", str(latency), "--hang", str(hang_s)]
        for rule in faults:
            if rule.match is not None:
                raise ValueError("a spawned server takes fault rules without `match`")
            args += ["--fault", rule.kind + (f"*{rule.first_n}" if rule.first_n else "")
                     + (f"@{rule.retry_after}" if rule.retry_after is not None else "")]
        env = dict(os.environ)
        env["LLM_TEST_SERVER_KEY"] = api_key or ""  # not on the command line
        if team_id:
            env["LLM_TEST_SERVER_TEAM"] = team_id
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        if not m:
            self.process.kill()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.port = int(m.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> SpawnedLLMTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per reply")
    parser.add_argument("--api-key", default=None, help="bearer key to require (default: $LLM_TEST_SERVER_KEY or the test key)")
    parser.add_argument("--team-id", default=None, help="X-Prime-Team-ID to require")
    parser.add_argument("--fault", action="append", default=[], help="KIND[*N][@SECONDS], repeatable")
    parser.add_argument("--hang", type=float, default=60.0, help="seconds a 'hang' fault holds a call")
    args = parser.parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get("LLM_TEST_SERVER_KEY", DEFAULT_API_KEY)
    team_id = args.team_id if args.team_id is not None else os.environ.get("LLM_TEST_SERVER_TEAM")
    app = _App(latency=args.latency, api_key=api_key or None, team_id=team_id,
               faults=tuple(FaultRule.parse(spec) for spec in args.fault), hang_s=args.hang, echo_key_in_errors=False)

    async def serve() -> None:
        server = await asyncio.start_server(app.handle, "127.0.0.1", args.port, backlog=2048)
        port = server.sockets[0].getsockname()[1]
        print(f"LLM test server listening on http://127.0.0.1:{port}/v1 (latency {args.latency}s)", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
