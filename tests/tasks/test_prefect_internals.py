"""The Prefect (and CPython) internals this project relies on still work as ``tasks/prefect_internals.py``
assumes. A Prefect upgrade that removes or changes one fails here, naming the symbol."""

from __future__ import annotations

import asyncio
import inspect
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import prefect
import pytest

from tasks import prefect_internals

ROOT = Path(__file__).resolve().parents[2]


def test_installed_prefect_is_a_minor_version_these_tests_passed_and_pyproject_bounds_it():
    minor = ".".join(prefect.__version__.split(".")[:2])
    assert minor in prefect_internals.TESTED_PREFECT_MINORS, (
        f"prefect {prefect.__version__} is not in TESTED_PREFECT_MINORS {prefect_internals.TESTED_PREFECT_MINORS}: "
        "run this file against it, then add it there and widen the bound in pyproject.toml"
    )
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in dependencies if re.match(r"prefect\s*[<>=!~]", d)]
    lowest, highest = prefect_internals.TESTED_PREFECT_MINORS[0], prefect_internals.TESTED_PREFECT_MINORS[-1]
    major, last_minor = (int(part) for part in highest.split("."))
    assert f">={lowest}" in spec.replace(" ", "") and f"<{major}.{last_minor + 1}" in spec.replace(" ", ""), (
        f"pyproject.toml's {spec!r} must allow exactly the tested minors {prefect_internals.TESTED_PREFECT_MINORS}"
    )


def test_threading_register_atexit_runs_before_atexit_hooks():
    """Symbol: threading._register_atexit (CPython), used by register_before_atexit."""
    script = textwrap.dedent(
        """
        import atexit
        from tasks.prefect_internals import register_before_atexit

        atexit.register(lambda: print("atexit", flush=True))
        register_before_atexit(lambda: print("before-atexit", flush=True))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"threading._register_atexit failed: {done.stderr}"
    assert done.stdout.split() == ["before-atexit", "atexit"], (
        f"threading._register_atexit no longer runs hooks before atexit hooks: {done.stdout!r}"
    )


@pytest.mark.usefixtures("prefect_harness")
def test_task_runs_count_route_counts_task_runs():
    """Symbol: the REST route POST /task_runs/count, used by count_task_runs."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName
    from prefect.context import get_run_context

    @task(name="counted")
    def counted(i: int) -> int:
        return i

    @flow
    def three() -> str:
        for i in range(3):
            counted(i)
        return str(get_run_context().flow_run.id)

    flow_run_id = three()
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])).model_dump(mode="json", exclude_unset=True)
    named = TaskRunFilter(name=TaskRunFilterName(like_="counted")).model_dump(mode="json", exclude_unset=True)
    with get_client(sync_client=True) as client:
        for _ in range(100):  # the server records task runs asynchronously
            if prefect_internals.count_task_runs(client, flow_runs) == 3:
                break
            import time

            time.sleep(0.1)
        assert prefect_internals.count_task_runs(client, flow_runs) == 3, "POST /task_runs/count miscounts task runs"
        assert prefect_internals.count_task_runs(client, flow_runs, named) == 3, "POST /task_runs/count ignores task_runs"


def test_result_store_writes_through_the_atomic_file_system_sync_and_async(tmp_path, monkeypatch):
    """Symbols: ResultStore's calls into a storage block (write_path(..., _sync=True) from sync
    code, awrite_path from async code; prefect/_internal/compatibility/blocks.py) and
    LocalFileSystem.read_path/aread_path, used by AtomicLocalFileSystem."""
    import os

    from prefect.results import ResultStore
    from prefect.serializers import JSONSerializer

    replaced: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append(str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    store = ResultStore(
        result_storage=prefect_internals.AtomicLocalFileSystem(basepath=str(tmp_path)),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )
    store.write(obj={"answer": 1}, key="ab/sync.json")
    assert store.read("ab/sync.json").result == {"answer": 1}

    async def async_round_trip():
        await store.awrite(obj={"answer": 2}, key="ab/async.json")
        return (await store.aread("ab/async.json")).result

    assert asyncio.run(async_round_trip()) == {"answer": 2}
    written = {Path(p).name for p in replaced}
    assert {"sync.json", "async.json"} <= written, (
        f"ResultStore no longer writes through AtomicLocalFileSystem.write_path/awrite_path (atomic writes seen: {written})"
    )
    assert not list(tmp_path.rglob("*.tmp")), "AtomicLocalFileSystem left a temporary file behind"
    with pytest.raises(ValueError, match="outside of the base path"):
        store.result_storage.write_path("../escape.json", b"{}")


def test_the_public_prefect_interfaces_the_runtime_relies_on_are_there():
    """Not private, but what tasks/runtime.py builds on beyond what the end-to-end tests run
    (the temporary server itself, create_app(ephemeral=, final=), is exercised by every run)."""
    from prefect.context import refresh_global_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    assert callable(refresh_global_settings_context), "prefect.context.refresh_global_settings_context"
    assert "timeout" in inspect.signature(EventsWorker.drain_all).parameters, "EventsWorker.drain_all(timeout=)"
    assert "timeout" in inspect.signature(APILogWorker.drain_all).parameters, "APILogWorker.drain_all(timeout=)"


def test_concurrency_context_records_lease_ids_in_cleanup_lease_ids():
    """Symbol: prefect.concurrency.context.ConcurrencyContext.cleanup_lease_ids (appended to on
    acquisition by prefect.concurrency's asyncio implementation), used by last_lease_id in
    tasks/llm.py."""
    from types import SimpleNamespace

    from prefect.concurrency import _asyncio as acquiring
    from prefect.concurrency.context import ConcurrencyContext

    assert ConcurrencyContext().cleanup_lease_ids == []
    assert "cleanup_lease_ids.append(" in inspect.getsource(acquiring)
    assert prefect_internals.last_lease_id(SimpleNamespace(cleanup_lease_ids=[])) is None
    assert prefect_internals.last_lease_id(SimpleNamespace(cleanup_lease_ids=["a", "b"])) == "b"


def test_lower_clamp_multiple_bounds_a_jittered_delay():
    """Symbol: prefect.utilities.math.lower_clamp_multiple, used by tasks/llm.py's retry wait."""
    from prefect.utilities.math import lower_clamp_multiple

    assert prefect_internals.lower_clamp_multiple(1.5) == lower_clamp_multiple(1.5)
    assert 0 < prefect_internals.lower_clamp_multiple(1.5) <= 1


def test_subprocess_asgi_server_is_an_unkeyed_singleton_with_what_we_read():
    """Symbol: prefect.server.api.server.SubprocessASGIServer (the temporary server's singleton),
    used by tasks/runtime.py and tasks/runners.py."""
    first = prefect_internals.temporary_server()
    assert first is prefect_internals.temporary_server() is prefect_internals.temporary_server(only_if_imported=True)
    for name in ("running", "server_process", "api_url", "start"):
        assert hasattr(first, name), f"SubprocessASGIServer has no {name}"


def test_create_app_takes_ephemeral_and_final():
    """Symbol: prefect.server.api.server.create_app, used by tasks/local_server.py."""
    from prefect.server.api.server import create_app

    parameters = inspect.signature(create_app).parameters
    assert "ephemeral" in parameters and "final" in parameters
