"""Batch mode: the requests a run must call go to the provider's Batch API (OpenAI's
``/v1/files`` + ``/v1/batches``) instead of one call each (docs/llm.md, "Batch mode";
docs/design.md, "Batch mode").

:func:`arun_batch` takes over from :func:`tasks.llm.run.arun_llm_requests` once the cache has
answered what it can, so what a stage gets back is the same: one
:class:`~kernelbook_lib.llm.LLMOutcome` per request, in request order, and the accounting.

- **Only what the cache cannot answer is submitted.** Each line's ``custom_id`` is the request's
  cache key and its body is the online call's (``llm.request_body``); every result is read by
  the online call's own code (``llm_batch.ReplayClient`` -> ``llm.call`` -> ``task.parse``) and
  written to the same content-keyed cache, so a batch run and an online run of a job are
  interchangeable and a re-run makes no request.
- **The job survives the process.** Its batches are recorded in
  ``<KERNELBOOK_CACHE_DIR>/batches/<job>.json`` (written atomically after each upload, each
  batch created and each batch read) before the run waits; a run stopped, killed or timed out
  and started again with the same arguments finds the same job and collects the same batches.
  A part uploaded but not known to have become a batch is looked up on the provider by its
  input file before a batch is created for it, so a retry or a restart never submits it twice.
- **Retries.** Uploads, batch creation and result downloads are Prefect task runs
  (``llm-batch-submit``, ``llm-batch-collect``) retried by Prefect on transient failures (429,
  5xx, timeouts, connection errors). Requests that failed transiently inside a batch (expired,
  5xx, 429, invalid replies) are resubmitted in a new batch, at most LLM_RETRIES times; then
  they are failures of their kind (``judge_failed:expired``). 400/404 are recorded at once;
  401/403 stop the run (``LLMAuthError``).
- **A provider without the Batch API** (404 on ``/files`` or ``/batches``) ends the run at
  once, before any upload.
- **Progress** while waiting is the provider's ``request_counts`` in the stage's progress
  display and its ``<label>-progress`` artifact; the cost is at LLM_BATCH_PRICE_FACTOR times
  the online prices; the accounting says ``mode: batch`` and lists the batch ids.
- ``no_wait``: check once on what was submitted, collect what is finished, submit what must
  be, and raise :class:`~kernelbook_lib.errors.BatchesPendingError` (exit code 3) while any
  batch is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from kernelbook_lib import llm, llm_batch
from kernelbook_lib.errors import BatchesPendingError, UserError
from kernelbook_lib.llm import Failure, LLMAuthError, LLMOutcome, LLMRequest, LLMTask
from kernelbook_lib.llm_batch import BatchPart, InputFile, JobState
from kernelbook_lib.progress import Progress
from kernelbook_lib.settings import Settings
from tasks.llm import reporting
from tasks.llm.cache import _read_cached, _write_cached
from tasks.llm.chunk import RETRY_JITTER
from tasks.llm.reporting import Tally, _accounting, _progress_fields, _ProgressArtifact
from tasks.llm.slots import SlotPool
from tasks.llm.state import _RunState

#: Plain progress lines (no terminal) at most this often while waiting for batches.
PROGRESS_EVERY_S = 30.0
#: Batch ids named in the ``--no-wait`` line (the rest are in the job file).
IDS_SHOWN = 3


class _TransientBatchFailure(Exception):
    """An upload, batch creation or download failed transiently: Prefect retries the task run."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail or failure.kind)
        self.failure = failure


async def _retry_if_transient(task_: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.data, _TransientBatchFailure)


@dataclass
class _Job:
    """One batch job in this process: the run's state (tally, outcomes, cache), the job's
    persisted state and where it lives, the provider's client."""

    run: _RunState
    state: JobState
    path: Path
    requests: dict[str, LLMRequest]  # the distinct requests this run must have answered
    settings: Settings
    client: Any
    secrets: tuple[str, ...]
    call_options: dict[str, Any]
    logger: Any
    replay: llm_batch.ReplayClient = field(default_factory=llm_batch.ReplayClient)
    contents: dict[int, bytes] = field(default_factory=dict)  # input files not uploaded yet, by part
    uploaded_bytes: int = 0
    collected_now: int = 0

    def save(self) -> None:
        llm_batch.save_state(self.path, self.state)

    def rows(self, part: BatchPart) -> int:
        return sum(self.run.tally.multiplicity[key] for key in part.keys)

    def auth_error(self, failure: Failure) -> LLMAuthError:
        return LLMAuthError(llm.auth_error_message(failure.status, self.settings.llm_base_url,
                                                   bool(self.settings.prime_team_id)))

    def failure_of(self, exc: BaseException) -> Failure:
        failure = llm.classify(exc, secrets=self.secrets)
        if failure.kind == llm.AUTH:
            raise self.auth_error(failure) from None
        return failure

    def record(self, key: str, failure: Failure, *, tokens: llm.CallResult | None = None) -> None:
        """A request that failed for good in this job: its outcome."""
        self.run.resolve(LLMOutcome(
            key=key, ok=False, calls=self.run.calls[key], failure_kind=failure.kind, failure_detail=failure.detail,
            prompt_tokens=tokens.prompt_tokens if tokens else 0, completion_tokens=tokens.completion_tokens if tokens else 0))


_JOBS: dict[str, _Job] = {}


def _job(run_token: str) -> _Job:
    try:
        return _JOBS[run_token]
    except KeyError:
        raise RuntimeError("llm-batch task runs are started by tasks.llm.run_llm_requests (in the same process)") from None


def _attempt() -> tuple[int, bool]:
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    return attempt, attempt > (context.task.retries if context else 0)


# --- the Prefect tasks ------------------------------------------------------------------------


@task(name="llm-batch-submit", cache_policy=NO_CACHE, persist_result=False,
      retry_condition_fn=_retry_if_transient, retry_jitter_factor=RETRY_JITTER)
async def llm_batch_submit(run_token: str, part_no: int) -> str | Failure:
    """Upload part ``part_no``'s input file (unless uploaded already) and create its batch
    (unless the provider already has one for that file); the state is saved after each step.
    Returns the batch id, or the failure that prevented it (recorded by the caller)."""
    job = _job(run_token)
    part = job.state.parts[part_no]
    _, last_attempt = _attempt()
    try:
        if part.input_file_id is None:
            content = job.contents[part_no]
            name = f"kernelbook-{job.run.label}-{job.state.job[:12]}-{part_no}.jsonl"
            uploaded = await job.client.files.create(file=(name, content, "application/jsonl"), purpose="batch")
            part.input_file_id = uploaded.id
            job.uploaded_bytes += len(content)
            job.contents.pop(part_no, None)
            job.save()
        else:  # uploaded by an earlier attempt or process: it may already be a batch
            page = await job.client.batches.list(limit=100)
            existing = next((b for b in page.data if b.input_file_id == part.input_file_id), None)
            if existing is not None:
                job.logger.info(f"{job.run.label}: found batch {existing.id} already created for {part.input_file_id}")
                return _created(job, part, existing)
        batch = await job.client.batches.create(
            input_file_id=part.input_file_id, endpoint=llm_batch.BATCH_ENDPOINT,
            completion_window=llm_batch.COMPLETION_WINDOW,
            metadata={"kernelbook_job": job.state.job[:64], "kernelbook_label": job.run.label[:64]},
        )
        return _created(job, part, batch)
    except LLMAuthError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        failure = job.failure_of(exc)
        if failure.transient and not last_attempt:
            raise _TransientBatchFailure(failure) from None
        return failure


def _created(job: _Job, part: BatchPart, batch: Any) -> str:
    part.id = batch.id
    part.status = batch.status
    job.state.submissions.update(part.keys)
    job.save()
    job.logger.info(f"{job.run.label}: submitted batch {batch.id} ({len(part.keys)} requests, {part.bytes:,} bytes"
                    + (f", resubmission {part.round - 1}" if part.round > 1 else "") + ")")
    return str(batch.id)


@task(name="llm-batch-collect", cache_policy=NO_CACHE, persist_result=False,
      retry_condition_fn=_retry_if_transient, retry_jitter_factor=RETRY_JITTER)
async def llm_batch_collect(run_token: str, part_no: int, batch: dict[str, Any]) -> int | Failure:
    """Read a finished batch's output and error files and resolve its requests: replies are
    checked by the online code and cached; failures are recorded or left for resubmission.
    Returns the number of requests answered, or the failure that kept the files unread."""
    job = _job(run_token)
    part = job.state.parts[part_no]
    _, last_attempt = _attempt()
    try:
        texts = []
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if file_id:
                content = await job.client.files.content(file_id)
                texts.append(content.text)
    except LLMAuthError:
        raise
    except Exception as exc:  # noqa: BLE001
        failure = job.failure_of(exc)
        if failure.transient and not last_attempt:
            raise _TransientBatchFailure(failure) from None
        return failure
    lines: dict[str, dict[str, Any]] = {}
    for text in texts:
        lines.update(llm_batch.read_jsonl(text))
    errors = list(((batch.get("errors") or {}).get("data")) or [])
    answered = resubmit = 0
    for key in part.keys:
        request = job.requests.get(key)
        line = lines.get(key)
        if line is not None and request is not None:
            result = await job.replay.result(line, job.run.task, request, secrets=job.secrets, **job.call_options)
        else:
            result = llm.CallResult(None, failure=llm_batch.missing_failure(str(batch.get("status")), errors))
        if line is not None:
            job.run.calls[key] += 1
        job.run.note_usage(result)
        answered += _apply(job, key, request, result)
        resubmit += key in job.run.retrying
    part.collected = True
    part.status = str(batch.get("status"))
    part.request_counts = dict(batch.get("request_counts") or {})
    job.collected_now += 1
    job.save()
    job.logger.info(f"{job.run.label}: batch {part.id} {part.status}: {answered} of {len(part.keys)} answered"
                    + (f", {resubmit} to resubmit" if resubmit else ""))
    return answered


def _apply(job: _Job, key: str, request: LLMRequest | None, result: llm.CallResult) -> int:
    """One request's result from a batch: cache and resolve a reply; record a failure, or
    leave it for resubmission (transient, submissions left). Returns 1 for a reply."""
    run, state = job.run, job.state
    done = run.final.get(key)
    if request is None or (done is not None and done.ok):  # answered meanwhile (by the cache): keep that
        return 0
    if result.failure is None:
        _write_cached(run, request, result, job.logger)
        state.answered.add(key)
        state.failures.pop(key, None)
        run.resolve(LLMOutcome(key=key, ok=True, reply=result.reply, calls=run.calls[key],
                               prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                               cached_prompt_tokens=result.cached_prompt_tokens))
        return 1
    state.note_failure(key, result.failure)
    if result.failure.transient and state.submissions[key] <= job.settings.llm_retries:
        run.retrying.add(key)
    else:
        job.record(key, result.failure, tokens=result)
    return 0


# --- the run ------------------------------------------------------------------------------------


async def _probe(client: Any, settings: Settings, label: str, secrets: tuple[str, ...], logger: Any) -> None:
    """Before any upload: the provider must have the Batch API (a 404 on ``/batches`` or
    ``/files`` ends the run with one line) and accept the key (401/403 stop the run)."""
    import openai

    for what, probe in (("/batches", lambda: client.batches.list(limit=1)),
                        ("/files", lambda: client.files.list(purpose="batch", limit=1))):
        for attempt in range(settings.llm_retries + 1):
            try:
                await probe()
                break
            except openai.APIStatusError as exc:
                if exc.status_code == 404:
                    raise UserError(
                        f"{label}: the LLM endpoint {settings.llm_base_url} has no Batch API (HTTP 404 on {what}); "
                        "batch mode needs /files and /batches: use --llm-mode online (or LLM_MODE=online)"
                    ) from None
                failure = llm.classify(exc, secrets=secrets)
                if failure.kind == llm.AUTH:
                    raise LLMAuthError(llm.auth_error_message(failure.status, settings.llm_base_url,
                                                              bool(settings.prime_team_id))) from None
                if not failure.transient:
                    break  # the route exists (a provider may refuse the list's parameters)
                last = failure
            except Exception as exc:  # noqa: BLE001 - connection errors, timeouts
                last = llm.classify(exc, secrets=secrets)
            if attempt == settings.llm_retries:
                raise UserError(f"{label}: could not reach the Batch API of {settings.llm_base_url}: {last.detail}")
            logger.warning(f"{label}: the Batch API did not answer ({last.detail}); trying again")
            await asyncio.sleep(settings.llm_retry_backoff_s * 2**attempt)


def _load_state(path: Path, job_key: str, label: str, logger: Any) -> JobState | None:
    try:
        return llm_batch.load_state(path, job_key)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning(f"{label}: ignoring unreadable batch job file {path} ({exc}); submitting again")
        return None


async def arun_batch(
    task_: LLMTask, requests: list[LLMRequest], unique: dict[str, LLMRequest], final: dict[str, LLMOutcome],
    to_call: list[LLMRequest], *, token: str, store: Any, label: str, refresh: bool, no_wait: bool,
    cache_warnings: int, settings: Settings, logger: Any, wall_start: float,
) -> Any:
    """Batch mode for :func:`tasks.llm.run.arun_llm_requests`, after the cache was read:
    ``final`` holds the cache hits and the prompts too long to send, ``to_call`` the rest.
    Returns an :class:`~tasks.llm.run.LLMRunResult`."""
    from tasks.llm.run import LLMRunResult

    sendable = [key for key in unique if key not in final or final[key].ok]
    job_key = llm_batch.job_key(base_url=settings.llm_base_url, task=task_.name, keys=sendable, refresh=refresh)
    path = llm_batch.job_path(Path(settings.kernelbook_cache_dir).expanduser().resolve(), job_key)
    state = _load_state(path, job_key, label, logger) if to_call else None
    resumed = state is not None
    if state is None:
        state = JobState(job=job_key, label=label, task=task_.name, base_url=settings.llm_base_url)
    pool = SlotPool(settings.llm_concurrency_limit_name, 1)  # never leased: batch mode makes no online call
    run = _RunState(token=token, label=label, task=task_, pool=pool, store=store, retries=settings.llm_retries,
                    tally=Tally.of(requests), cache_warnings=cache_warnings)
    for outcome in final.values():
        run.resolve(outcome)
    # Answers an earlier process of this job collected (a --refresh job ignores older cache entries).
    for request in to_call:
        if request.key in state.answered and request.key not in run.final:
            cached, _ = _read_cached(store, task_, request, token, label, logger)
            if cached is not None:
                run.resolve(cached)
    requests_by_key = {r.key: r for r in to_call}
    tally = run.tally
    logger.info(
        f"{label}: {tally.requests} requests ({tally.distinct} distinct prompts): {tally.cache_hits} answered "
        f"from the cache, {tally.failures_by_kind.get(llm.PROMPT_TOO_LONG, 0)} not sendable (prompt too long), "
        f"{sum(1 for r in to_call if r.key not in run.final)} prompts for the Batch API of {settings.llm_base_url}"
        + (f"; resuming job {job_key[:12]} ({len(state.batch_ids())} batches submitted before)" if resumed else "")
        + (" [refresh: cache ignored]" if refresh else "")
    )
    if not any(r.key not in run.final for r in to_call):
        outcomes = [run.final[r.key] for r in requests]
        path.unlink(missing_ok=True)
        return LLMRunResult(outcomes, _batch_accounting(run, outcomes, settings, wall_start, state, 0))

    secrets = (llm.require_api_key(settings),)
    import openai  # noqa: F401  (slow to import: only once requests are due, docs/design.md, "Imports")

    client = llm.make_async_client(settings, max_connections=4)
    try:
        await _probe(client, settings, label, secrets, logger)
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise
    options = llm.CallOptions.from_settings(settings)
    job = _Job(run=run, state=state, path=path, requests=requests_by_key, settings=settings, client=client,
               secrets=secrets, call_options={"budget": options.budget, "token_parameter": options.token_parameter},
               logger=logger)
    reporter = Progress(label, tally.requests, unit="requests", rate_unit="answers", done=tally.done,
                        emit=logger.info, mode=settings.kernelbook_progress, interval_s=PROGRESS_EVERY_S)
    artifact: _ProgressArtifact | None = None
    progress: asyncio.Future[None] | None = None
    finished = False
    _JOBS[token] = job
    try:
        artifact = await _ProgressArtifact.create(label, tally, logger)
        reporter.start()
        progress = asyncio.ensure_future(_report(job, reporter, artifact))
        await _drive(job, no_wait=no_wait)
        finished = True
    finally:
        if progress is not None:
            progress.cancel()
        reporter.update(tally.done, rate_count=run.calls_made, fields=_fields(job))
        reporter.close(note="finished" if finished else "stopped")
        _JOBS.pop(token, None)
        with contextlib.suppress(Exception):
            await client.close()
        if artifact is not None and not finished:
            await artifact.close()
    if artifact is not None:
        await artifact.finish(run)
    path.unlink(missing_ok=True)  # the job is done: a later run of the same arguments is a new job
    outcomes = [run.final[r.key] for r in requests]
    accounting = _batch_accounting(run, outcomes, settings, wall_start, state, job.uploaded_bytes)
    logger.info(f"{label}: accounting {accounting}")
    return LLMRunResult(outcomes, accounting)


async def _drive(job: _Job, *, no_wait: bool) -> None:
    """Until every request has its outcome: check the batches, read the finished ones, submit
    what must be (new requests, resubmissions); with ``no_wait``, one pass."""
    import openai

    run, state, settings = job.run, job.state, job.settings
    chunk_task_options = dict(
        retries=settings.llm_retries,
        retry_delay_seconds=exponential_backoff(settings.llm_retry_backoff_s)(settings.llm_retries)
        if settings.llm_retry_backoff_s > 0 else 0,
    )
    submit = llm_batch_submit.with_options(**chunk_task_options)
    collect = llm_batch_collect.with_options(**chunk_task_options)
    while True:
        # 1. What the provider did with the batches submitted (this run or an earlier one).
        for part_no, part in enumerate(state.parts):
            if part.collected or part.id is None:
                continue
            try:
                batch = await job.client.batches.retrieve(part.id)
            except openai.APIError as exc:  # the API's failures; anything else is a bug, or a stop
                failure = job.failure_of(exc)
                if failure.kind == llm.NOT_FOUND:  # unknown to the provider: its requests go again
                    _lost(job, part, Failure(llm.NOT_FOUND, True, None, f"batch {part.id} is unknown to the provider"))
                    continue
                job.logger.warning(f"{run.label}: could not check batch {part.id} ({failure.detail}); checking again later")
                continue
            if batch.status != part.status:
                counts = batch.request_counts
                job.logger.info(f"{run.label}: batch {part.id} {batch.status}"
                                + (f" ({counts.completed + counts.failed}/{counts.total} done, {counts.failed} failed)" if counts else ""))
            part.status = batch.status
            if batch.request_counts is not None:
                part.request_counts = batch.request_counts.model_dump()
            if batch.status in llm_batch.TERMINAL:
                got = await collect.with_options(task_run_name=f"{run.label}-batch-collect-{part_no}")(
                    run.token, part_no, batch.model_dump())
                if isinstance(got, Failure):
                    job.save()
                    raise UserError(
                        f"{run.label}: could not read the results of batch {part.id} ({got.detail}); they stay with "
                        f"the provider and the job in {job.path}: run the same command again to collect them",
                        exit_code=1)
        # 2. Parts uploaded by an earlier process that may not have become batches yet.
        for part_no, part in enumerate(state.parts):
            if not part.collected and part.id is None:
                if part.input_file_id is None and part_no not in job.contents:  # killed mid-upload: start it again
                    part.collected, part.status = True, "not_submitted"
                    continue
                await _submit(job, submit, part_no)
        # 3. Requests to submit: new ones, and those whose last batch failed them transiently.
        covered = {key for part in state.active() for key in part.keys}
        pending: list[LLMRequest] = []
        for key, request in job.requests.items():
            if key in run.final or key in covered:
                continue
            last = state.failures.get(key)
            if last is not None and (not last["transient"] or state.submissions[key] > settings.llm_retries):
                job.record(key, Failure(last["kind"], bool(last["transient"]), None, str(last.get("detail") or "")))
                continue
            pending.append(request)
        if pending:
            await _submit_requests(job, submit, pending)
        active = state.active()
        if not active:
            return
        if no_wait:
            ids = [part.id for part in active if part.id]
            shown = ", ".join(ids[:IDS_SHOWN]) + (f" and {len(ids) - IDS_SHOWN} more" if len(ids) > IDS_SHOWN else "")
            rows = sum(job.rows(part) for part in active)
            message = (
                f"{run.label}: {len(active)} batch{'es' if len(active) != 1 else ''} ({rows} requests) pending with "
                f"the provider's Batch API ({shown}; saved in {job.path}); run the same command again without "
                "--no-wait to wait for them and finish (with --no-wait again to only check on them); nothing is "
                "submitted twice"
            )
            raise BatchesPendingError(message)  # the CLI prints it (one line, exit code 3)
        await asyncio.sleep(settings.llm_batch_poll_s)


def _lost(job: _Job, part: BatchPart, failure: Failure) -> None:
    part.collected, part.status = True, "lost"
    for key in part.keys:
        if key not in job.run.final:
            _apply(job, key, job.requests.get(key), llm.CallResult(None, failure=failure))
    job.save()


async def _submit_requests(job: _Job, submit: Any, pending: list[LLMRequest]) -> None:
    """Split ``pending`` into batches within the provider's limits and submit each."""
    settings, state = job.settings, job.state
    lines = ((r.key, llm_batch.batch_line(job.run.task, r, **job.call_options)) for r in pending)
    for file in llm_batch.iter_files(lines, max_requests=settings.llm_batch_max_requests,
                                     max_bytes=settings.llm_batch_max_bytes):  # built and uploaded one at a time
        if not isinstance(file, InputFile):
            key, size = file
            job.record(key, Failure(llm.BAD_REQUEST, False, None,
                                    f"request is {size} bytes, over LLM_BATCH_MAX_BYTES={settings.llm_batch_max_bytes}; not sent"))
            continue
        round_ = 1 + max((state.submissions[key] for key in file.keys), default=0)
        part = BatchPart(keys=list(file.keys), bytes=len(file.content), round=round_)
        state.parts.append(part)
        part_no = len(state.parts) - 1
        job.contents[part_no] = file.content
        for key in file.keys:
            job.run.retrying.discard(key)
        await _submit(job, submit, part_no)


async def _submit(job: _Job, submit: Any, part_no: int) -> None:
    part = job.state.parts[part_no]
    got = await submit.with_options(task_run_name=f"{job.run.label}-batch-submit-{part_no}")(job.run.token, part_no)
    if isinstance(got, Failure):  # the provider took no batch for these requests
        job.logger.warning(f"{job.run.label}: could not submit {len(part.keys)} requests as a batch: {got.detail}")
        part.collected, part.status = True, "not_submitted"
        job.contents.pop(part_no, None)
        for key in part.keys:
            job.state.note_failure(key, got)
            job.record(key, got)
        job.save()


# --- progress and accounting ------------------------------------------------------------------


def _estimated_done(job: _Job) -> int:
    """Requests done: resolved, plus the share the provider reports done of each pending batch."""
    done = job.run.tally.done
    for part in job.state.active():
        counts = part.request_counts or {}
        total = int(counts.get("total") or 0)
        if total:
            done += round(job.rows(part) * min(1.0, (int(counts.get("completed") or 0) + int(counts.get("failed") or 0)) / total))
    return min(done, job.run.tally.requests)


def _fields(job: _Job) -> dict[str, str]:
    run, settings = job.run, job.settings
    fields = _progress_fields(run, settings)
    active = job.state.active()
    statuses = Counter(part.status for part in active)
    fields["batches"] = (", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) or "none pending") + (
        f"; {len(job.state.parts) - len(active)} read" if len(job.state.parts) > len(active) else "")
    cost = llm_batch.batch_cost(run.prompt_tokens, run.completion_tokens, settings, run.cached_prompt_tokens)
    fields["cost"] = f"${cost:.2f} (batch)" if cost is not None else "n/a"
    return fields


async def _report(job: _Job, reporter: Progress, artifact: _ProgressArtifact | None) -> None:
    last_artifact = time.monotonic()
    while True:
        await asyncio.sleep(reporting.PROGRESS_TICK_S)
        done = _estimated_done(job)
        reporter.update(done, rate_count=job.run.calls_made, fields=_fields(job))
        if artifact is not None and time.monotonic() - last_artifact >= reporting.ARTIFACT_EVERY_S:
            last_artifact = time.monotonic()
            await artifact.update(SimpleNamespace(done=done, requests=job.run.tally.requests))


def _batch_accounting(run: _RunState, outcomes: list[LLMOutcome], settings: Settings, wall_start: float,
                      state: JobState, uploaded_bytes: int) -> dict[str, Any]:
    accounting = _accounting(run, outcomes, settings, time.monotonic() - wall_start, 0)
    accounting.update(
        mode="batch",
        batch_ids=state.batch_ids(),
        batches=len(state.batch_ids()),
        bytes_uploaded=uploaded_bytes,
        batch_price_factor=settings.llm_batch_price_factor,
        estimated_cost_usd=llm_batch.batch_cost(run.prompt_tokens, run.completion_tokens, settings,
                                                run.cached_prompt_tokens),
        concurrency=None,
    )
    return accounting
