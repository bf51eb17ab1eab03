"""Operations: the deployments in ``prefect.yaml`` on a real Prefect server, and the
``re-evaluate`` flow.

The integration test does what README "Operations" tells an operator to do, with the venv's
``prefect`` command: start a Prefect server on a free loopback port with a temporary
PREFECT_HOME (``kernelbook server start``, which runs ``prefect server start`` in the
background), create the process work pool, ``prefect deploy --all`` from a copy of the
repository at another path (a stand-in for a fresh clone, so nothing may depend on where the
repository lives), trigger the curate deployment on the bundled sample with the static judge,
and run a process worker until the run finishes. The same server shows that a `kernelbook` run
uses a running local server by itself. Server and worker are always stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml

from kernelbook_lib import export
from tests.fixtures import fake_data
from kernelbook_lib.params import ReevaluateParams

ROOT = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).parent / "prefect"
POOL = "kernelbook"
CURATE = "curate/on-demand"
GENERATE = "generate-prompts/on-demand"
WEEKLY = "re-evaluate/weekly"
# What a fresh clone does not have (git-ignored or machine-local); everything else is copied.
NOT_IN_A_CLONE_ANYWHERE = {".git", ".venv", "__pycache__", ".pytest_cache", ".prefect", ".kernelbook-cache", ".env"}
NOT_IN_A_CLONE_AT = {ROOT / "outputs", ROOT / "benchmarks" / "data", ROOT / "benchmarks" / "out", ROOT / "dist", ROOT / "build"}


def not_in_a_clone(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` ignore function: skip what ``.gitignore`` keeps out of a clone."""
    return {
        name for name in names
        if name in NOT_IN_A_CLONE_ANYWHERE or name.endswith(".egg-info") or Path(folder) / name in NOT_IN_A_CLONE_AT
    }


# --- the prefect.yaml itself ------------------------------------------------------------------


def test_prefect_yaml_declares_the_three_deployments_on_one_process_pool():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_entry = {d["entrypoint"]: d for d in spec["deployments"]}
    assert set(by_entry) == {
        "flows/curate.py:curate",
        "flows/generate_prompts.py:generate_prompts",
        "flows/reevaluate.py:reevaluate",
    }
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {POOL}
    for entrypoint in by_entry:
        assert (ROOT / entrypoint.split(":")[0]).is_file(), f"prefect.yaml deploys {entrypoint}, which does not exist"
    [schedule] = by_entry["flows/reevaluate.py:reevaluate"]["schedules"]
    assert schedule["timezone"], "the schedule's timezone must be explicit"
    # Flow code is found through the pull step, never through a path written in the file.
    assert str(ROOT) not in (ROOT / "prefect.yaml").read_text()


# --- a real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop a process started in its own session, and its children: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class Ops:
    """A running server, the environment the `prefect` commands use, and the clone."""

    api_url: str
    env: dict[str, str]
    clone: Path
    logs: Path

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `prefect ARGS...` in the clone, as an operator would; fail with its output."""
        done = subprocess.run(
            [str(PREFECT), *args], cwd=self.clone, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)


def kernelbook(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelbook_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """`kernelbook server start` on a free loopback port, a process work pool, and
    `prefect deploy --all` run from a copy of the repository (a stand-in for a fresh clone)."""
    base = tmp_path_factory.mktemp("ops")
    logs = base / "logs"
    logs.mkdir()
    clone = base / "clone"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # The test session's Prefect settings (a console stream that only exists in this process,
    # its temporary home) are not the operator's: the commands get only these.
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")},
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_CLI_PROMPT": "false",
        # Not needed by this test: the UI, and the scheduler (the schedule is checked as
        # registered; runs it would create for next Monday are not this test's business).
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    }
    shutil.copytree(ROOT, clone, ignore=not_in_a_clone)
    started = kernelbook("server", "start", "--port", str(port), env=env, cwd=clone)
    try:
        assert started.returncode == 0, f"kernelbook server start exited {started.returncode}:\n{started.stdout}{started.stderr}"
        assert f"http://127.0.0.1:{port}" in started.stdout
        status = kernelbook("server", "status", env=env, cwd=clone)
        assert status.returncode == 0 and f"http://127.0.0.1:{port}" in status.stdout, status.stdout + status.stderr
        context = Ops(api_url=api_url, env=env, clone=clone, logs=logs)
        context.prefect("work-pool", "create", POOL, "--type", "process")
        deployed = context.prefect("--no-prompt", "deploy", "--all", timeout=240)
        (logs / "deploy.log").write_text(deployed.stdout + deployed.stderr)
        yield context
    finally:
        kernelbook("server", "stop", env=env, cwd=clone)


def test_deploy_registers_every_deployment_with_a_pull_step_into_the_clone(ops: Ops):
    with ops.client() as client:
        for name in (CURATE, GENERATE, WEEKLY):
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == POOL
            # The worker will chdir into the clone the deployment was made from.
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ops.clone.resolve())}}
            ]
        weekly = client.read_deployment_by_name(WEEKLY)
    [schedule] = weekly.schedules
    assert schedule.active
    assert schedule.schedule.cron == "0 6 * * 1" and schedule.schedule.timezone == "UTC"
    assert weekly.parameters["params"]["publish"] is False
    assert weekly.global_concurrency_limit is not None and weekly.global_concurrency_limit.limit == 1


def test_deployment_parameters_are_typed(ops: Ops):
    """A value the flow does not accept is refused when the run is created, not mid-run."""
    with ops.client() as client:
        deployment = client.read_deployment_by_name(CURATE)
        schema = deployment.parameter_openapi_schema
        assert set(schema["properties"]) == {"params"}  # the model is the one parameter (the UI's form)
        assert schema["definitions"]["CurateParams"]["properties"]["judge"]["enum"][:2] == ["auto", "static"]
        with pytest.raises(Exception, match="judge"):
            client.create_flow_run_from_deployment(deployment.id, parameters={"params": {"judge": "gpt-please"}})


def test_curate_deployment_runs_on_a_process_worker(ops: Ops):
    # Exactly the operator's command; `out` is relative, so it must land in the clone.
    triggered = ops.prefect(
        "deployment", "run", CURATE, "--param", 'params={"source": "sample", "judge": "static", "out": "outputs-deployed"}'
    )
    match = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout)
    assert match, triggered.stdout
    flow_run_id = UUID(match.group(1))

    worker_log = ops.logs / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", POOL, "--run-once"],
            cwd=ops.logs, env=ops.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        worker.wait(timeout=180)  # --run-once: one poll, then it waits for the run it started
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not finish the run in 180 s:\n{tail(worker_log)}")
    finally:
        stop(worker)
    assert worker.returncode == 0, tail(worker_log)

    with ops.client() as client:
        deadline = time.monotonic() + 30
        while not (run := client.read_flow_run(flow_run_id)).state.is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run.state.type.value == "COMPLETED", f"{run.state}\n{tail(worker_log)}"
        assert run.parameters == {"params": {"source": "sample", "judge": "static", "out": "outputs-deployed"}}
        # The analysis subflow published its report as an artifact, where the UI shows it.
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["analysis-report"])))
        assert artifacts, "no analysis-report artifact on the server"

    out = ops.clone / "outputs-deployed"
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["source"] == "sample" and summary["judge"].startswith("static")
    filtered = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    unique = pl.read_parquet(out / "unique" / "data" / "*.parquet")
    assert filtered.height == sum(summary["datasets"]["filtered"].values()) > 0
    assert unique.height == sum(summary["datasets"]["unique"].values()) > 0
    assert (out / "rejected.jsonl").stat().st_size > 0
    assert (out / "analysis" / "report.md").is_file()


def test_a_kernelbook_run_uses_the_running_local_server(ops: Ops, tmp_path: Path):
    """With `kernelbook server start` running and no PREFECT_API_URL, a run reports to that
    server (where the UI shows it) instead of starting a temporary one."""
    env = {key: value for key, value in ops.env.items() if key != "PREFECT_API_URL"}
    out = tmp_path / "out"
    done = kernelbook("curate", "--source", "sample", "--judge", "static", "--no-analysis", "--out", str(out), env=env, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"Using the local Prefect server at {ops.api_url}" in output
    assert "temporary" not in output
    assert "ERROR" not in output and "Traceback" not in output, output
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with ops.client() as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[_flow_run_name(output)])))
    assert [run.parameters["params"]["out"] for run in runs] == [str(out)]
    assert runs[0].state.type.value == "COMPLETED"


def _flow_run_name(output: str) -> str:
    return re.search(r"Beginning flow run '([^']+)' for flow 'curate'", output).group(1)


def test_kernelbook_server_stop_stops_it(ops: Ops):
    """Last of this module's tests on the server: `kernelbook server stop` ends it."""
    env = ops.env
    stopped = kernelbook("server", "stop", env=env, cwd=ops.clone)
    assert stopped.returncode == 0 and "stopped the Prefect server" in stopped.stdout, stopped.stdout + stopped.stderr
    status = kernelbook("server", "status", env=env, cwd=ops.clone)
    assert status.returncode == 1 and "no kernelbook Prefect server is running" in status.stdout
    port = int(ops.api_url.split(":")[-1].split("/")[0])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


# --- the re-evaluate flow, in process ----------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """20 problems, two rollouts each, half above the threshold."""
    rows = [fake_data.row(i, name=f"M{i % 20}", k=i % 20, reward=0.9 if i % 2 else 0.5) for i in range(40)]
    return fake_data.write_rows(rows, tmp_path / "evals.parquet")


@pytest.mark.usefixtures("prefect_harness")
def test_reevaluate_curates_refreshes_the_analysis_and_publishes_when_asked(source: Path, tmp_path: Path, monkeypatch):
    import huggingface_hub.constants

    from flows.reevaluate import reevaluate
    from tests.fixtures.hub_server import HubStandIn

    token = "hf_TEST-token-0123456789abcdefghijklmnopqrstu"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the stand-in is on loopback
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the stand-in speaks LFS, not Xet
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_FILTERED_REPO", "me/kb-filtered")
    monkeypatch.setenv("HF_UNIQUE_REPO", "me/kb-unique")
    out = tmp_path / "out"
    (out / "analysis").mkdir(parents=True)
    (out / "analysis" / "report.md").write_text("a stale report from an older run\n")
    with HubStandIn(token) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = reevaluate(ReevaluateParams(source=str(source), judge="static", out=str(out), publish=True))
        assert result["published"]["pushed"] is True
        assert [c["repo_id"] for c in result["published"]["commits"]] == ["me/kb-filtered", "me/kb-unique"]
        pushed = hub.repo("me/kb-unique").commits[-1].added
    # curate ran on the source...
    summary = json.loads((out / "run_summary.json").read_text())
    assert {s["name"]: s for s in summary["stages"]}["filter"]["rows_out"] == 20  # the filter kept the 20 rows above 0.85
    assert result["summary"]["datasets"] == summary["datasets"]
    # ...the analysis was refreshed...
    assert Path(result["analysis_report"]) == out / "analysis" / "report.md"
    assert "stale" not in (out / "analysis" / "report.md").read_text()
    assert (out / "analysis" / "analysis.json").is_file()
    # ...and what was pushed is what curate wrote.
    [train] = export.dataset_files(out / "unique")["train"]
    assert pushed[train] == (out / "unique" / train).read_bytes()
    assert token not in json.dumps(result)


@pytest.mark.usefixtures("prefect_harness")
def test_reevaluate_refuses_a_bad_dask_address_before_curating(source: Path, tmp_path: Path):
    from flows.reevaluate import reevaluate
    from kernelbook_lib.errors import UserError

    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a Dask scheduler address"):
        reevaluate({"source": str(source), "judge": "static", "out": str(out), "task_runner": "dask", "dask_address": "http://x y"})
    assert not out.exists()
