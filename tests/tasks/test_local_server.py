"""The temporary server's answer to Prefect's retryable errors (``tasks/local_server.py``):
a 503 is run again on the server before Prefect's client sees it and sleeps 2 s."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from tasks.local_server import RetryUnavailable


class Flaky:
    """An ASGI application that answers 503 to its first ``failures`` requests, then 201 with
    the request's body; with ``raise_after_503`` it raises after each 503, as Starlette does once
    its error handler has answered."""

    def __init__(self, failures: int, *, raise_after_503: bool = False) -> None:
        self.failures = failures
        self.raise_after_503 = raise_after_503
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        scope.setdefault("state", {})["seen"] = True  # applications write into the scope
        if len(self.bodies) <= self.failures:
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"exception_message": "Service Unavailable"}'})
            if self.raise_after_503:
                raise RuntimeError("database is locked")
            return
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"got " + body[:5], "more_body": True})
        await send({"type": "http.response.body", "body": b" and the rest"})


def post(app, body: bytes) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
            return await client.post("/api/flow_runs/", content=body)

    return asyncio.run(go())


def test_a_503_is_run_again_with_the_same_body_before_the_client_sees_it():
    app = Flaky(failures=2)
    response = post(RetryUnavailable(app, delays_s=(0, 0, 0)), b"flow run 1")
    assert (response.status_code, response.text) == (201, "got flow  and the rest")
    assert app.bodies == [b"flow run 1"] * 3


def test_a_503_that_lasts_reaches_the_client_after_the_last_retry():
    app = Flaky(failures=10)
    response = post(RetryUnavailable(app, delays_s=(0, 0)), b"x")
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}
    assert len(app.bodies) == 3  # the request, then one more per pause


def test_the_error_raised_after_a_503_is_retried_not_turned_into_a_500():
    app = Flaky(failures=1, raise_after_503=True)
    response = post(RetryUnavailable(app, delays_s=(0,)), b"slot")
    assert response.status_code == 201
    assert len(app.bodies) == 2


def test_an_error_without_a_503_is_left_to_the_server():
    async def broken(scope, receive, send):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        post(RetryUnavailable(broken, delays_s=(0,)), b"")


def test_other_scopes_pass_through_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["type"], receive, send))

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        pass

    asyncio.run(RetryUnavailable(app)({"type": "lifespan"}, receive, send))
    asyncio.run(RetryUnavailable(app)({"type": "websocket"}, receive, send))
    assert seen == [("lifespan", receive, send), ("websocket", receive, send)]


def test_flow_runs_started_back_to_back_never_wait_for_the_clients_retry(prefect_harness):
    """Before, 20 of 21 trivial flow runs started back to back got "database is locked" (503)
    when they were created, and Prefect's client slept about 2 s before trying again."""
    from prefect import flow, task

    @task
    def one(x: int) -> int:
        return x + 1

    @flow
    def back_to_back() -> int:
        return sum(one(i) for i in range(3))

    retries: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retryable" in record.getMessage():
                retries.append(record.getMessage())

    client_logger = logging.getLogger("prefect.client")
    handler, level = Record(level=logging.DEBUG), client_logger.level
    client_logger.addHandler(handler)
    client_logger.setLevel(logging.DEBUG)
    try:
        results = [back_to_back() for _ in range(8)]
    finally:
        client_logger.removeHandler(handler)
        client_logger.setLevel(level)
    assert results == [6] * 8
    assert retries == []
