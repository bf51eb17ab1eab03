"""Task runners for the flows: the default thread pool, or Dask for more than one core or machine.

Where a Dask runner helps: only work a flow *submits or maps* runs on the runner. In
``curate`` that is the static judge, mapped over chunks of rows (``judge_static_chunk.map``
in ``tasks/curate.py``): parsing modules with ``ast`` is CPU-bound pure Python, so threads
share one core (the GIL) while Dask worker *processes* use every core of every machine. The
other stages run in the flow's own process either way (polars already uses all local cores),
and the LLM judge is bound by its concurrency limit and the endpoint, not by CPU, so Dask does
not speed it up. The outputs are the same with either runner: chunks are concatenated in
submission order, whatever order they finish in.

Use :func:`task_runner_session` around the flow call (it also makes the Prefect API reachable
from the Dask workers, see :func:`api_reachable_by_workers`)::

    with task_runner_session("dask", None) as runner:          # or "tcp://host:8786"
        curate.with_options(task_runner=runner)(source=..., ...)

The workers of an existing cluster must have this project installed (the same version) and
reach the Prefect API the flow uses (``PREFECT_API_URL``), since each task run reports there.
This module imports Dask only when a Dask runner is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from kernelbook_lib.errors import UserError
from kernelbook_lib.params import DASK_ADDRESS

TaskRunnerKind = Literal["default", "dask"]
TASK_RUNNER_KINDS: tuple[str, ...] = ("default", "dask")

_LOOPBACK_HOSTS = ("localhost", "::1")

#: Dask settings, through the environment so the worker processes inherit them; a value the
#: user set wins. Dask's own INFO lines (nannies starting, comms closing, with tracebacks at
#: shutdown) are noise on a user's console; Prefect still logs the cluster it creates and its
#: dashboard link. Each static-judge task carries its chunk of rows (about 60 MB of code and
#: solution text per 20,000 rows, by design), above Dask's 10 MB "large graph" warning; warn
#: only well above that.
DASK_ENV_DEFAULTS = {
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "DASK_DISTRIBUTED__ADMIN__LARGE_GRAPH_WARNING_THRESHOLD": "256MB",
}


def local_dask_workers() -> int:
    """Worker processes of a local cluster: one per core (each runs one task at a time)."""
    return max(1, os.cpu_count() or 1)


def make_task_runner(
    kind: TaskRunnerKind = "default", address: str | None = None, *, n_workers: int | None = None
) -> TaskRunner:
    """The task runner for ``--task-runner KIND [--dask-address ADDRESS]``.

    ``default``: Prefect's ``ThreadPoolTaskRunner``. ``dask``: prefect-dask's
    ``DaskTaskRunner``, on a new local cluster of ``n_workers`` single-threaded worker
    processes (default: one per core), or, with ``address``, on the existing cluster whose
    scheduler is there. Raises :class:`UserError` for an unknown kind, an address given
    without ``dask``, or an address that is not a Dask scheduler address.
    Prefer :func:`task_runner_session`, which also prepares the Prefect API for Dask workers.
    """
    if kind not in TASK_RUNNER_KINDS:
        raise UserError(f"--task-runner must be one of {', '.join(TASK_RUNNER_KINDS)}, not {kind!r}")
    if kind == "default":
        if address is not None:
            raise UserError("--dask-address needs --task-runner dask")
        return ThreadPoolTaskRunner()

    for key, value in DASK_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from prefect_dask import DaskTaskRunner  # imports dask and distributed (about a second)

    if address is not None:
        address = _checked_address(address)
        if n_workers is not None:
            raise UserError("the number of workers of an existing Dask cluster is set on that cluster, not here")
        return DaskTaskRunner(address=address)
    if n_workers is not None and n_workers < 1:
        raise UserError(f"a local Dask cluster needs at least one worker, not {n_workers}")
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers or local_dask_workers(),
            # Processes, one thread each: the static judge is pure-Python CPU work, which
            # threads would serialise on the GIL.
            "processes": True,
            "threads_per_worker": 1,
        }
    )


def _checked_address(address: str) -> str:
    address = address.strip()
    if not DASK_ADDRESS.match(address):  # a typo fails at once, not after a connect timeout
        raise UserError(
            f"--dask-address {address!r} is not a Dask scheduler address "
            "(expected tcp://host:port, e.g. tcp://10.0.0.5:8786)"
        )
    return address


def _is_loopback(host: str | None) -> bool:
    return host is None or host in _LOOPBACK_HOSTS or host.startswith("127.")


def _dask_host(address: str) -> str | None:
    """The scheduler's host."""
    return urlsplit(address if "://" in address else f"tcp://{address}").hostname


@contextmanager
def api_reachable_by_workers(address: str | None = None) -> Iterator[None]:
    """While the block runs, give this process's Prefect settings an API URL Dask workers can use.

    Each Dask task run reports to the Prefect API named in the flow's settings, which travel
    with the task to the worker process. In Prefect's local mode (no ``PREFECT_API_URL``) that
    setting is empty and every process starts its own temporary server when it first needs
    one, so every Dask worker would start another server on the same SQLite database (tens of
    seconds each, and writers racing on one file). This starts (or finds) this process's
    temporary server, the same one Prefect's clients use, and puts its URL in the settings.

    A cluster on another machine cannot reach a server on this machine's loopback: that is a
    :class:`UserError` asking for a Prefect server the workers can reach.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from tasks.runtime import on_temporary_server

    api_url = get_current_settings().api.url
    remote_cluster = address is not None and not _is_loopback(_dask_host(address))
    if remote_cluster and (api_url is None or _is_loopback(urlsplit(api_url).hostname)):
        raise UserError(
            f"the Dask cluster at {address} runs on another machine, so its workers cannot reach "
            f"{'the local temporary Prefect server' if on_temporary_server() else api_url}; start a Prefect server "
            "they can reach (prefect server start --host 0.0.0.0) and set PREFECT_API_URL to its address"
        )
    if api_url is not None or not get_current_settings().server.ephemeral.enabled:
        yield  # a server the workers can use, or no local mode (Prefect's own error follows)
        return
    from tasks import prefect_internals

    server = prefect_internals.temporary_server()
    server.start()  # a no-op when it already runs
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@contextmanager
def task_runner_session(
    kind: TaskRunnerKind = "default", address: str | None = None, *, n_workers: int | None = None
) -> Iterator[TaskRunner]:
    """:func:`make_task_runner`, plus, for Dask, :func:`api_reachable_by_workers` while the
    block runs. Run the flow inside the block."""
    runner = make_task_runner(kind, address, n_workers=n_workers)
    if kind != "dask":
        yield runner
        return
    from tasks.runtime import attach_prefect_api

    attach_prefect_api()  # a CLI run: the workers must use the run's API (no-op otherwise)
    with api_reachable_by_workers(address):
        yield runner
