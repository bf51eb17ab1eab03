"""Scale-out: the curate flow on a Dask task runner gives exactly the outputs of the default runner.

The static judge is the one mapped stage (``judge_static_chunk.map`` in ``tasks/curate.py``).
Chunks are made small here so the sample's rows are judged as several tasks spread over the
worker processes of a local Dask cluster, while the baseline is what a user gets without
``--task-runner``: the default thread runner with the default chunking.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest

from kernelbook_lib.errors import UserError

SMALL_CHUNK_ROWS = 12  # the sample's rows to judge make several chunks


def sample_chunks() -> int:
    """How many chunks of SMALL_CHUNK_ROWS the sample's rows that reach the judge make (above the
    threshold and kept by the kernel screen)."""
    from kernelbook_lib import loading, screening, stages

    kept = stages.filter_rewards(loading.prepare(loading.read_source("sample")).frame).frame
    judged = screening.screen_rows(kept, "standard").result.report.rows_out
    return math.ceil(judged / SMALL_CHUNK_ROWS)
CHUNK_TASK = "judge-static-chunk"
VOLATILE_SUMMARY_FIELDS = ("started_at", "finished_at", "run_id")  # wall-clock times and the id of the run
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")  # in the dataset cards


def run_curate(out: Path, task_runner=None):
    """One curate run on the bundled sample with the static judge; returns its final state."""
    from flows.curate import curate
    from kernelbook_lib.params import CurateParams

    flow = curate.with_options(task_runner=task_runner) if task_runner is not None else curate
    state = flow(CurateParams(source="sample", judge="static", out=str(out), analysis=False), return_state=True)
    assert state.is_completed(), state
    return state


def output_files(out: Path) -> dict[str, bytes]:
    """Every file of a run, by relative path, without the run's wall-clock times."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.name == "README.md":
            content = TIMESTAMP.sub(b"<time>", content)
        if path.name == "run_summary.json":
            summary = json.loads(content)
            for field in VOLATILE_SUMMARY_FIELDS:
                summary.pop(field)
            content = json.dumps(summary, sort_keys=True).encode()
        files[str(path.relative_to(out))] = content
    return files


def chunk_task_runs(state) -> list:
    """The static-judge chunk task runs recorded for the flow run that ended in ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=CHUNK_TASK)),
        )
    return runs


@pytest.fixture(scope="module")
def default_outputs(prefect_harness, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("default") / "out"
    run_curate(out)
    files = output_files(out)
    assert any(name.startswith("filtered/data/train-00000-of-00001-") for name in files) and "rejected.jsonl" in files
    return files


def test_dask_local_cluster_gives_exactly_the_default_outputs(default_outputs, tmp_path: Path, monkeypatch, caplog):
    import kernelbook_lib.pipelines.curate as curate_pipeline
    from tasks.runners import task_runner_session

    monkeypatch.setattr(curate_pipeline, "STATIC_CHUNK_ROWS", SMALL_CHUNK_ROWS)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="prefect.task_runner"), task_runner_session("dask", None, n_workers=2) as runner:
        state = run_curate(out, runner)
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in caplog.text
    assert output_files(out) == default_outputs
    # The judge really was split into chunks (each one a task on the cluster), all completed.
    chunks = chunk_task_runs(state)
    assert len(chunks) == sample_chunks() > 1 and all(run.state.is_completed() for run in chunks)


def test_dask_address_runs_the_chunks_on_that_cluster(default_outputs, tmp_path: Path, monkeypatch):
    """``--dask-address``: an existing cluster does the work. Here its workers are threads of
    this process (cheap to start); the runner reaches its scheduler over TCP like any other."""
    import distributed

    import kernelbook_lib.pipelines.curate as curate_pipeline
    from tasks.runners import task_runner_session

    monkeypatch.setattr(curate_pipeline, "STATIC_CHUNK_ROWS", SMALL_CHUNK_ROWS)
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        workers = set(cluster.scheduler_info["workers"])
        with distributed.Client(cluster, set_as_default=False) as client, distributed.get_task_stream(client) as stream:
            with task_runner_session("dask", cluster.scheduler_address) as runner:
                run_curate(out, runner)
        executed = stream.data
    assert output_files(out) == default_outputs
    assert len(executed) == sample_chunks()  # every chunk ran on the cluster's workers
    assert {task["worker"] for task in executed} <= workers


@pytest.mark.parametrize(
    ("kind", "address", "message"),
    [
        ("threads", None, "--task-runner must be one of default, dask"),
        ("default", "tcp://127.0.0.1:8786", "--dask-address needs --task-runner dask"),
        ("dask", "http://scheduler:8786", "is not a Dask scheduler address"),
        ("dask", "tcp://my scheduler:8786", "is not a Dask scheduler address"),
    ],
)
def test_bad_runner_options_are_user_errors(kind, address, message):
    from tasks.runners import make_task_runner

    with pytest.raises(UserError, match=message):
        make_task_runner(kind, address)



def test_a_cluster_on_another_machine_needs_a_reachable_prefect_server():
    """Its workers could not report task runs to a Prefect API on this machine's loopback."""
    from tasks.runners import task_runner_session

    with pytest.raises(UserError, match="set PREFECT_API_URL"):
        with task_runner_session("dask", "tcp://10.0.0.5:8786"):
            pass


def test_local_mode_gives_dask_workers_the_one_temporary_server(prefect_harness):
    """Without PREFECT_API_URL each Dask worker process would start a temporary server of its
    own (on the same database); the session puts this process's server in the settings the
    workers receive with each task."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from tasks.runners import task_runner_session

    running = SubprocessASGIServer()  # the temporary server this process uses (here the harness's)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert get_current_settings().api.url is None  # local mode
        with task_runner_session("dask", None):
            assert get_current_settings().api.url == running.api_url
        assert get_current_settings().api.url is None
