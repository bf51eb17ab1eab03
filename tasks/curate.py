"""The curate stages as Prefect tasks: orchestration only (names, retries, cache policies).

Cache policy, decided per task: every task here takes or returns polars DataFrames. Hashing
a frame to build a cache key costs as much as the work itself (and a policy over an input
Prefect cannot hash silently disables caching), so these tasks use ``NO_CACHE`` and do not
persist results. The one expensive, paid stage (LLM calls) is cached per call, by content, in
``tasks/llm.py``. Only ``load`` touches the network, so only it retries.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from kernelbook_lib import decontam, export, judging, loading, schema, screening, stages
from kernelbook_lib.errors import RunFailedError, SourceUnavailableError
from kernelbook_lib.ledger import StageResult
from kernelbook_lib.progress import Progress
from kernelbook_lib.llm import LLMOutcome, LLMRequest
from kernelbook_lib.rubric import JUDGE_PROMPT_VERSION, JUDGE_TASK
from kernelbook_lib.settings import load_settings
from kernelbook_lib.static_judge import STATIC_JUDGE_NAME
from kernelbook_lib.summary import RunSummary
from tasks.llm import run_llm_requests

DATA_TASK = dict(cache_policy=NO_CACHE, persist_result=False)
#: Rows per static-judge task run: big enough that orchestration is noise, small enough to
#: spread over Dask workers.
STATIC_CHUNK_ROWS = 5_000


def _retry_if_network(task, task_run, state) -> bool:
    """Retry the load only when the Hub could not be reached; a wrong path or schema is final."""
    try:
        state.result()
    except SourceUnavailableError as exc:
        return exc.transient
    except Exception:
        return False
    return False


def stage_progress(label: str, total: int, unit: str = "rows") -> Progress:
    """The progress of a long stage: a live display on a terminal, plain lines otherwise
    (``kernelbook_lib.progress``; KERNELBOOK_PROGRESS chooses)."""
    return Progress(label, total, unit=unit, emit=get_run_logger().info, mode=load_settings().kernelbook_progress)


def _log_stage(result: StageResult) -> None:
    r = result.report
    dropped = ", ".join(f"{k} {v}" for k, v in r.dropped.items()) or "none"
    get_run_logger().info(f"{r.name}: {r.rows_in} in -> {r.rows_out} out (dropped: {dropped})")


@task(name="load-source", retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_if_network, **DATA_TASK)
def load_source(source: str, split: str) -> loading.LoadedSource:
    get_run_logger().info(f"load: reading {loading.describe_source(source)} (split {split})")
    return loading.read_source(source, split)


@task(name="validate-rows", **DATA_TASK)
def validate_rows(loaded: loading.LoadedSource) -> StageResult:
    with stage_progress("load", loaded.frame.height) as progress:
        result = loading.prepare(loaded, progress)
    _log_stage(result)
    return result


@task(name="load-benchmarks", retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_if_network, **DATA_TASK)
def load_benchmarks(sources: list[str]) -> list[decontam.Benchmark]:
    """The benchmarks of ``--decontaminate``, read before anything else, so a wrong one fails
    the run at once (one clear line) and not after the source is read."""
    benchmarks = []
    for source in sources:
        bench = decontam.read_benchmark(source)
        get_run_logger().info(
            f"decontaminate: {bench.name}: {len(bench.codes)} items (code column {bench.code_column!r}"
            + (f", {bench.rows_without_code} rows without code skipped" if bench.rows_without_code else "") + ")"
        )
        benchmarks.append(bench)
    return benchmarks


@task(name="families", **DATA_TASK)
def group_families(frame: pl.DataFrame, near_dup: bool, threshold: float) -> stages.FamilyStage:
    """Near-duplicate families over every valid row (before the filter, so a problem's family
    never depends on --threshold or --limit). The normalisation uses every core (a process pool
    inside the library), not the task runner: it is one pass over the distinct modules."""
    logger = get_run_logger()
    display = stage_progress("families", frame.get_column("problem_id").n_unique(), unit="modules") if near_dup else nullcontext()
    with display as progress:
        result = stages.assign_families(frame, near_dup, threshold, progress=progress, log=logger.info)
    _log_stage(result.result)
    nd = result.near_dup
    if nd.get("enabled"):
        logger.info(
            f"families: {nd['problems']} problems in {nd['families']} families, {nd['problems_in_shared_families']} "
            f"in a family of more than one (largest {nd['largest_family']}); {nd['pairs_compared']} pairs compared "
            f"in {result.timings['wall_s']} s (threshold {threshold}, {nd['normalization']})"
        )
    else:
        logger.info("families: --no-near-dup, every problem is its own family")
    return result


@task(name="decontaminate", **DATA_TASK)
def decontaminate_rows(
    frame: pl.DataFrame, benchmarks: list[decontam.Benchmark], threshold: float, forms: pl.DataFrame | None
) -> decontam.DecontaminationResult:
    result = decontam.decontaminate(frame, benchmarks, threshold, forms, progress=get_run_logger().info)
    _log_stage(result.result)
    return result


@task(name="screen", **DATA_TASK)
def screen_rows(frame: pl.DataFrame, mode: str, judge: str) -> screening.ScreenStage | None:
    """The kernel screen (before the judge, so no call is paid for a row it rejects); None with
    ``--screen off`` (no stage: the rows carry a null ``kernel_flags``). With the static judge
    next, the screen's parse of each solution also gives the judge its style features."""
    if mode == "off":
        get_run_logger().info("screen: --screen off, solutions are not screened (kernel_flags is null)")
        return None
    distinct = screening.distinct_solutions(frame)
    started = time.perf_counter()
    with stage_progress("screen", distinct, unit="solutions") as progress:
        result = screening.screen_rows(frame, mode, with_style=judge == "static", progress=progress, log=get_run_logger().info)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    _log_stage(result.result)
    get_run_logger().info(
        f"screen: {frame.height} rows, {distinct} distinct solutions in {wall:.1f} s ({frame.height / wall if wall else 0:,.0f} rows/s)"
        + (", style features for the static judge from the same parse" if judge == "static" else "")
    )
    return result


@task(name="mark-unscreened", **DATA_TASK)
def mark_unscreened(frame: pl.DataFrame) -> pl.DataFrame:
    return screening.mark_unscreened(frame)


@task(name="filter-rewards", **DATA_TASK)
def filter_rewards(frame: pl.DataFrame, threshold: float, limit: int | None) -> StageResult:
    result = stages.filter_rewards(frame, threshold, limit)
    _log_stage(result)
    return result


@task(name="resolve-judge", **DATA_TASK)
def resolve_judge(judge: str) -> str:
    """``auto`` is ``llm`` when an API key is configured, else ``static`` (with a notice)."""
    if judge != "auto":
        return judge
    if load_settings().has_llm_key:
        return "llm"
    get_run_logger().info("judge: no PRIME_API_KEY configured, using the offline static judge (--judge static)")
    return "static"


@task(name="judge-static-chunk", **DATA_TASK)
def judge_static_chunk(frame: pl.DataFrame) -> pl.DataFrame:
    return judging.static_verdicts(frame)


@task(name="apply-verdicts", **DATA_TASK)
def apply_verdicts(frame: pl.DataFrame, verdicts: pl.DataFrame) -> StageResult:
    result = judging.apply_verdicts(frame, verdicts)
    _log_stage(result)
    return result


def judge_static(frame: pl.DataFrame) -> StageResult:
    """Static-judge the rows in chunks (mapped, so a Dask task runner spreads them); progress
    advances as chunks finish."""
    # Only the columns the judge reads travel to the task runs (to other processes under a
    # process or Dask task runner), not the prompts and completions.
    wanted = (schema.ROW, "problem_id", schema.PYTHON_CODE, schema.SOLUTION, "kernel_flags", judging.STYLE, judging.STYLE_WHY)
    needed = frame.select(c for c in wanted if c in frame.columns)
    chunks = [needed.slice(i, STATIC_CHUNK_ROWS) for i in range(0, needed.height, STATIC_CHUNK_ROWS)]
    futures = judge_static_chunk.map(chunks)
    rows_of = {id(future): chunk.height for future, chunk in zip(futures, chunks, strict=True)}
    with stage_progress("judge", needed.height) as progress:
        for future in as_completed(futures):
            progress.advance(rows_of[id(future)])
    verdicts = pl.concat([f.result() for f in futures]) if chunks else judging.static_verdicts(frame)
    return apply_verdicts(frame, verdicts)


@task(name="judge-requests", **DATA_TASK)
def build_judge_requests(frame: pl.DataFrame) -> tuple[list[LLMRequest], str]:
    """The LLM judge's requests (full prompts, content-keyed) and the model they go to."""
    model = load_settings().judge_model
    return judging.llm_judge_requests(frame, model), model


@task(name="llm-verdicts", **DATA_TASK)
def llm_verdicts(frame: pl.DataFrame, outcomes: list[LLMOutcome], model: str) -> pl.DataFrame:
    return judging.llm_verdicts(frame, outcomes, model)


def judge_llm(frame: pl.DataFrame, refresh: bool) -> tuple[StageResult, dict, dict]:
    """The LLM judge: calls go through ``tasks/llm.py`` (Prefect retries, content-keyed cache,
    global concurrency limit); failures come back as outcomes and go to the ledger."""
    requests, model = build_judge_requests(frame)
    calls = run_llm_requests(JUDGE_TASK, requests, refresh=refresh, progress_label="judge")
    judged = apply_verdicts(frame, llm_verdicts(frame, calls.outcomes, model))
    identity = {"judge": judging.LLM_JUDGE_NAME, "judge_model": model, "judge_prompt_version": JUDGE_PROMPT_VERSION}
    return judged, identity, calls.accounting


def judge_rows(frame: pl.DataFrame, judge: str, refresh: bool = False) -> tuple[StageResult, dict]:
    """The judge stage: the judged rows, and for the summary the judge's identity (plus the
    LLM accounting under ``llm``)."""
    if judge == "static":
        return judge_static(frame), {"judge": STATIC_JUDGE_NAME, "judge_model": None, "judge_prompt_version": None}
    if judge == "llm":
        judged, identity, accounting = judge_llm(frame, refresh)
        return judged, {**identity, "llm": accounting}
    raise ValueError(f"unknown judge {judge!r}")


@task(name="judge-gate", **DATA_TASK)
def judge_gate(judged: StageResult, max_rate: float) -> str | None:
    """Why the run must fail because too many rows could not be judged (None when it need not).
    Checked before the analysis, so a run whose judge failed says so instead of analysing nothing."""
    report = judged.report
    rate = judging.failure_rate(report.dropped, report.rows_in)
    if rate <= max_rate:
        return None
    kinds = ", ".join(f"{kind} {count}" for kind, count in report.dropped.items())
    return (
        f"{sum(report.dropped.values())} of {report.rows_in} rows ({rate:.1%}) could not be judged "
        f"({kinds}), more than --max-judge-failure-rate {max_rate:.1%}; the analysis was not run. The "
        "datasets, rejected.jsonl and run_summary.json are written; fix the cause and run again "
        "(judged rows are cached, so only the failed ones are called again)."
    )


@task(name="check-judge-failures", **DATA_TASK)
def check_judge_failures(failure: str | None) -> None:
    """Fail the run (exit code 1), after everything is written, with the judge gate's reason."""
    if failure is not None:
        raise RunFailedError(failure)


@task(name="dedupe", **DATA_TASK)
def dedupe(frame: pl.DataFrame, group_by: str) -> StageResult:
    result = stages.dedupe(frame, group_by)  # type: ignore[arg-type]
    _log_stage(result)
    return result


@task(name="split", **DATA_TASK)
def split_by_family(
    filtered: pl.DataFrame, unique: pl.DataFrame, seed: int, val_fraction: float
) -> tuple[pl.DataFrame, StageResult, dict[str, dict[str, int]]]:
    """Assign splits by family to both datasets (the same family, the same split; a family of
    one is its problem), refuse a leak, and count each dataset's problems and families."""
    result = stages.split_stage(unique, seed, val_fraction)
    _log_stage(result)
    filtered_split = stages.assign_splits(filtered, seed, val_fraction)
    stages.check_splits(filtered=filtered_split, unique=result.frame)
    by_dataset = {"filtered": stages.family_counts(filtered_split), "unique": stages.family_counts(result.frame)}
    return filtered_split, result, by_dataset


@task(name="prepare-out", **DATA_TASK)
def prepare_out(out: str) -> str:
    return str(export.prepare_out_dir(out))


@task(name="export", **DATA_TASK)
def export_outputs(
    out: str, summary_fields: dict, filtered: pl.DataFrame, unique: pl.DataFrame, rejected: list[StageResult]
) -> RunSummary:
    """Write both datasets, the JSONL files and the ledger (``rejected`` stages' dropped rows);
    return the run summary, which :func:`write_run_summary` writes at the very end."""
    ledger = pl.concat([r.rejected for r in rejected])
    summary = export.write_all(out, summary_fields, filtered, unique, ledger)
    get_run_logger().info(f"export: wrote {out}/filtered, {out}/unique and rejected.jsonl")
    return summary


@task(name="write-run-summary", **DATA_TASK)
def write_run_summary(out: str, summary: RunSummary) -> RunSummary:
    """``run_summary.json``, the last file of the run (after the analysis): a folder with it is
    a finished run."""
    summary = export.finish_run(out, summary)
    get_run_logger().info(f"export: wrote {out}/{export.SUMMARY_FILE}")
    return summary
