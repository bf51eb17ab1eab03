"""The ``re-evaluate`` flow: the scheduled refresh (``prefect.yaml``, weekly by default).

Re-loads the source and runs the whole ``curate`` flow again (with its analysis), and publishes
when ``publish`` is true: curate (-> analyze) -> publish, as subflows, so each shows as its own
run (with its logs and artifacts) under the re-evaluate run in the UI. The analysis runs inside
curate so that ``run_summary.json`` stays the last file written: a folder with it is finished.

Like ``curate`` it checks its parameters and settings and locks ``out`` before any work, so a
scheduled run into a folder someone is writing with ``kernelbook curate`` stops at once (exit
code 2, naming that process) instead of mixing two runs' files.

"Re-judge only what changed" needs nothing special here: the LLM judge caches every verdict
under a key made of the judge model, the prompt version and the exact messages (rubric, module,
solution), so a re-run pays only for new rows, a new model or a new prompt version, and reuses
every other verdict. The static judge is deterministic and cheap, so it simply runs again. The
filtered/unique datasets, the split and the analysis are recomputed from all rows each time,
which keeps them consistent (a problem never changes split when the source grows).

    kernelbook re-evaluate --source sample --judge static --out outputs [--publish]
    python -m flows.reevaluate ...   (the same command)
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

import sys
import typing
from pathlib import Path

from prefect import flow, get_run_logger

from flows.curate import curate
from flows.publish import publish as publish_flow
from kernelbook_lib.defaults import DEFAULT_SCREEN, ScreenMode
from kernelbook_lib.loading import DEFAULT_SOURCE, SplitName
from kernelbook_lib.neardup import DEFAULT_NEAR_DUP_THRESHOLD
from kernelbook_lib.stages import DEFAULT_SEED, DEFAULT_THRESHOLD, DEFAULT_VAL_FRACTION, GroupBy
from tasks.analysis import DEFAULT_SUBDIR, REPORT_MD
from tasks.preflight import guarded
from tasks.runners import TaskRunnerKind, task_runner_session

#: The judges ``curate`` accepts, taken from its signature so the two flows never disagree.
CurateJudge = typing.get_type_hints(curate.fn)["judge"]


@flow(name="re-evaluate", log_prints=False)
@guarded("re-evaluate")  # parameters, settings and .env checked, then `out` locked, before any work
def reevaluate(
    source: str = DEFAULT_SOURCE,
    split: SplitName = "train",
    judge: CurateJudge = "auto",  # type: ignore[valid-type]
    out: str = "outputs",
    publish: bool = False,
    private: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    group_by: GroupBy = "problem_id",
    max_judge_failure_rate: float | None = None,
    near_dup: bool = True,
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    decontaminate: list[str] | None = None,
    screen: ScreenMode = DEFAULT_SCREEN,
    single_repo: str | None = None,
    task_runner: TaskRunnerKind = "default",
    dask_address: str | None = None,
) -> dict:
    """Re-curate ``source`` into ``out`` (re-judging only what changed) with its analysis in
    ``out``/analysis, and publish ``out`` to the Hub when ``publish`` is true (repos from
    HF_FILTERED_REPO / HF_UNIQUE_REPO, or as configs of ``single_repo``; token from HF_TOKEN or
    a saved ``hf auth login``). ``max_judge_failure_rate``
    None keeps curate's default; a run over it stops before the analysis and the publish."""
    logger = get_run_logger()
    options = {} if max_judge_failure_rate is None else {"max_judge_failure_rate": max_judge_failure_rate}
    # A Dask runner applies to the curate subflow, where the static judge is mapped over chunks.
    with task_runner_session(task_runner, dask_address) as runner:
        summary = curate.with_options(task_runner=runner)(
            source=source, split=split, threshold=threshold, judge=judge, limit=limit, seed=seed,
            val_fraction=val_fraction, group_by=group_by, out=out, analysis=True,
            near_dup=near_dup, near_dup_threshold=near_dup_threshold, decontaminate=decontaminate, screen=screen, **options,
        )
    if summary.get("llm"):
        logger.info(f"re-evaluate: judge calls {summary['llm']}")
    published = publish_flow(input=out, push=True, private=private, single_repo=single_repo) if publish else None
    logger.info(
        f"re-evaluate: {out} refreshed (datasets {summary['datasets']}); "
        + ("published" if published else "not published (publish=false)")
    )
    return {
        "out": out,
        "summary": summary,
        "analysis_report": str(Path(out) / DEFAULT_SUBDIR / REPORT_MD),
        "published": published,
    }


if __name__ == "__main__":
    # `python -m flows.reevaluate ...` is `kernelbook re-evaluate ...`: the same options, checks,
    # lock and summary. The CLI is imported here only; the flow never depends on it.
    from kernelbook_cli import main

    main(["re-evaluate", *sys.argv[1:]])
