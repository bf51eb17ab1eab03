"""Fixtures for the LLM machinery tests: loopback OpenAI-compatible servers and the settings
that point the library at them. Import with ``from tests.llm_fixtures import *``.

Nothing here reaches the internet: every server listens on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from kernelbook_lib.testing.llm_server import DEFAULT_API_KEY, LLMTestServer

__all__ = ["llm_server", "make_llm_server", "llm_env", "LLM_TEST_KEY"]

#: The key the test servers accept (long and unique, so a leak is easy to find).
LLM_TEST_KEY = DEFAULT_API_KEY
_limit_names = itertools.count()


@pytest.fixture
def make_llm_server() -> Iterator[Callable[..., LLMTestServer]]:
    """A factory: ``make_llm_server(latency=0.05, faults=..., team_id=..., ...)`` starts a
    server on a free loopback port; all are stopped after the test."""
    servers: list[LLMTestServer] = []

    def make(**kwargs) -> LLMTestServer:
        kwargs.setdefault("latency", 0.05)
        server = LLMTestServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def llm_server(make_llm_server) -> LLMTestServer:
    """A well-behaved server: 0.05 s latency, the test key, no faults."""
    return make_llm_server()


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Callable[..., dict[str, str]]:
    """``llm_env(server, **overrides)`` points the settings at ``server`` with fast, small
    values (concurrency 4, timeout 2 s, 2 retries with 0.05 s backoff), a fresh cache directory
    and a Prefect concurrency limit name of its own; returns the variables it set."""

    def configure(server: LLMTestServer, **overrides: object) -> dict[str, str]:
        values = {
            "LLM_BASE_URL": server.base_url,
            "PRIME_API_KEY": LLM_TEST_KEY,
            "LLM_CONCURRENCY": "4",
            "LLM_TIMEOUT_S": "2",
            "LLM_RETRIES": "2",
            "LLM_RETRY_BACKOFF_S": "0.05",
            "LLM_CONCURRENCY_LIMIT_NAME": f"test-llm-{os.getpid()}-{next(_limit_names)}",
            "KERNELBOOK_CACHE_DIR": str(tmp_path / "cache"),
            "JUDGE_MODEL": "test/judge-model",
        }
        values.update({k.upper(): str(v) for k, v in overrides.items() if v is not None})
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        for name, value in overrides.items():
            if value is None:
                monkeypatch.delenv(name.upper(), raising=False)
        return values

    return configure
