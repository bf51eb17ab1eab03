"""The one Prefect adapter: runs any :class:`~kernelbook_lib.pipeline.Pipeline`, each stage as a
task (its name, retries and retry condition as the stage declares them), then its outputs.

What it lends the stages (:class:`~kernelbook_lib.pipeline.Services`): the run logger, progress
(a live display on a terminal, plain lines otherwise), ``map`` (chunks as mapped task runs, so a
Dask task runner spreads them) and the LLM machinery (``tasks/llm/``: Prefect retries, the
content-keyed cache and the global concurrency limit on calls).

Cache policy, decided once for every stage: stages take and return polars frames. Hashing a
frame to build a cache key costs as much as the work itself (and a policy over an input Prefect
cannot hash silently disables caching), so stage tasks use ``NO_CACHE`` and persist nothing. The
one expensive, paid stage (LLM calls) is cached per call, by content, in ``tasks/llm/``. A stage
whose work is tasks of its own (the judge and generate stages: mapped chunks, LLM calls) runs in
the flow, so its tasks go to the flow's task runner.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from kernelbook_lib import outlock, params as params_module
from kernelbook_lib.errors import RunFailedError
from kernelbook_lib.ledger import StageResult
from kernelbook_lib.llm import LLMRequest, LLMTask
from kernelbook_lib.pipeline import LLMCalls, Pipeline, Run, Services, Stage, StageOutput, run_stages
from kernelbook_lib.progress import Progress
from kernelbook_lib.settings import load_settings
from tasks.artifacts import curate_artifacts, generate_artifacts
from tasks.llm import run_llm_requests

DATA_TASK = dict(cache_policy=NO_CACHE, persist_result=False)

#: Stages whose work is tasks of their own: run in the flow (see the module's docstring).
IN_FLOW = frozenset({"judge", "generate"})

#: The artifacts each pipeline publishes once its files are written (``tasks/artifacts.py``).
ARTIFACTS: dict[str, Callable[[str, Any, bool], list[str]]] = {
    "curate": lambda out, summary, analysed: curate_artifacts(out, summary, analysed=analysed),
    "generate-prompts": lambda out, summary, analysed: generate_artifacts(out, summary),
}


def log(message: str) -> None:
    get_run_logger().info(message)


def stage_progress(label: str, total: int, unit: str = "rows") -> Progress:
    """The progress of a long stage: a live display on a terminal, plain lines otherwise
    (``kernelbook_lib.progress``; KERNELBOOK_PROGRESS chooses)."""
    return Progress(label, total, unit=unit, emit=get_run_logger().info, mode=load_settings().kernelbook_progress)


def log_stage(result: StageResult) -> None:
    r = result.report
    dropped = ", ".join(f"{k} {v}" for k, v in r.dropped.items()) or "none"
    log(f"{r.name}: {r.rows_in} in -> {r.rows_out} out (dropped: {dropped})")


_mapped: dict[tuple[str, Callable], Task] = {}


def map_chunks(name: str, fn: Callable[[Any], Any], items: Sequence[Any], advance: Callable[[Any], int] | None = None,
               progress: Progress | None = None) -> list[Any]:
    """``fn`` over ``items`` as mapped task runs named ``name``, results in order."""
    if not items:
        return []
    mapped = _mapped.get((name, fn))
    if mapped is None:
        mapped = _mapped[(name, fn)] = task(fn, name=name, **DATA_TASK)
    futures = mapped.map(list(items))
    if progress is not None and advance is not None:
        size = {id(future): advance(item) for future, item in zip(futures, items, strict=True)}
        for future in as_completed(futures):
            progress.advance(size[id(future)])
    return [future.result() for future in futures]


def call_llm(llm_task: LLMTask, requests: list[LLMRequest], refresh: bool, label: str, *,
             llm_mode: str | None = None, no_wait: bool = False) -> LLMCalls:
    calls = run_llm_requests(llm_task, requests, refresh=refresh, progress_label=label, llm_mode=llm_mode,
                             no_wait=no_wait)
    return LLMCalls(outcomes=calls.outcomes, accounting=calls.accounting)


SERVICES = Services(log=log, progress=stage_progress, map=map_chunks, llm=call_llm)


def services_for(params: BaseModel) -> Services:
    """The services for a run of ``params``: its LLM stage sends in the run's ``llm_mode``
    (None: the LLM_MODE setting) and, in batch mode, honours ``no_wait``."""
    llm_mode, no_wait = getattr(params, "llm_mode", None), bool(getattr(params, "no_wait", False))
    if llm_mode is None and not no_wait:
        return SERVICES
    return dataclasses.replace(SERVICES, llm=functools.partial(call_llm, llm_mode=llm_mode, no_wait=no_wait))


def _run_stage(stage: Stage, frame: pl.DataFrame | None, run: Run) -> StageOutput:
    output = stage.run(frame, run)
    if output.result is not None and stage.counted:
        log_stage(output.result)
    return output


def _retry_condition(stage: Stage) -> Callable | None:
    decide = stage.retry_if
    if decide is None:
        return None

    def retry(task_, task_run, state) -> bool:
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - the stage's retry_if decides about every failure
            return bool(decide(exc))
        return False

    return retry


_stage_tasks: dict[str, Task] = {}


def stage_task(stage: Stage) -> Task:
    """The task that runs ``stage`` (one per stage name)."""
    made = _stage_tasks.get(stage.name)
    if made is None:
        made = _stage_tasks[stage.name] = task(
            _run_stage, name=stage.name, retries=stage.retries, retry_delay_seconds=stage.retry_delay_s,
            retry_condition_fn=_retry_condition(stage), **DATA_TASK,
        )
    return made


def execute(stage: Stage, frame: pl.DataFrame | None, run: Run) -> StageOutput:
    """The Prefect executor: a stage task (the run is passed as is: nothing in it is a future)."""
    if stage.name in IN_FLOW:
        return _run_stage(stage, frame, run)
    return stage_task(stage)(stage, frame, quote(run))


@task(name="export", **DATA_TASK)
def write_outputs(pipeline: Pipeline, run: Run) -> Any:
    return pipeline.outputs.write(run)


@task(name="write-summary", **DATA_TASK)
def finish_outputs(pipeline: Pipeline, out: str, summary: Any) -> Any:
    """The pipeline's summary file, its last (a folder with it holds a finished run)."""
    summary = pipeline.outputs.finish(out, summary)
    log(f"export: wrote {out}/{pipeline.outputs.summary_file}")
    return summary


@task(name="gate", **DATA_TASK)
def gate(pipeline: Pipeline, run: Run, summary: Any) -> str | None:
    return pipeline.outputs.gate(run, summary)


def check_and_lock(pipeline: str, values: dict[str, Any]) -> outlock.LockInfo | None:
    """The preflight (parameters, settings, ``.env``, the API key for an LLM choice), then the
    lock on ``values["out"]`` (the caller releases it)."""
    checked = params_module.preflight(pipeline, values)
    for warning in checked.warnings:
        get_run_logger().warning(warning)
    stale = outlock.acquire(values["out"], pipeline)
    if stale is not None:
        get_run_logger().warning(f"{values['out']}: took over the lock left by {stale.describe()}, which is no longer running")
    return stale


def run_pipeline(pipeline: Pipeline, params: BaseModel, after_write: Callable[[str, Any], None] | None = None) -> dict:
    """Run ``pipeline`` inside the current flow: check and lock, every stage, the outputs, the
    gate, ``after_write(out, summary)`` (curate's analysis; only when the gate passes), the summary
    file, the artifacts. Fails the run (exit code 1) with the gate's reason after all of it."""
    values = params.model_dump()
    check_and_lock(pipeline.name, values)
    try:
        run = run_stages(pipeline, params, services_for(params), execute)
        summary = write_outputs(quote(pipeline), quote(run))
        failure = gate(quote(pipeline), quote(run), quote(summary))
        out = run.facts["out"]
        analysed = after_write is not None and failure is None
        if analysed:
            after_write(out, summary)
        summary = finish_outputs(quote(pipeline), out, quote(summary))
        ARTIFACTS[pipeline.name](out, summary, analysed)  # not files: after the summary
        if failure is not None:
            raise RunFailedError(failure)
        return summary.model_dump(mode="json")
    finally:
        outlock.release(values["out"], pipeline.name)
