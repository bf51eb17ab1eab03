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
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.curate import curate
from flows.publish import publish as publish_flow
from kernelbook_lib import outlock
from kernelbook_lib.params import as_params, CurateParams, PublishParams, ReevaluateParams
from tasks.analysis import DEFAULT_SUBDIR, REPORT_MD
from tasks.pipeline import check_and_lock
from tasks.runners import task_runner_session


@flow(name="re-evaluate", log_prints=False, validate_parameters=False)  # params: checked by as_params
def reevaluate(params: ReevaluateParams = ReevaluateParams()) -> dict:
    """Re-curate ``params.source`` into ``params.out`` (re-judging only what changed) with its
    analysis in ``out``/analysis, and publish ``out`` to the Hub when ``params.publish`` is true
    (repos from HF_FILTERED_REPO / HF_UNIQUE_REPO, or as configs of ``single_repo``; token from
    HF_TOKEN or a saved ``hf auth login``). ``max_judge_failure_rate`` None keeps curate's
    default; a run over it stops before the analysis and the publish."""
    params = as_params("re-evaluate", params)
    logger = get_run_logger()
    out = params.out
    check_and_lock("re-evaluate", params.model_dump())  # before any work; curate takes it again
    try:
        shared = {name: getattr(params, name) for name in CurateParams.model_fields if name in ReevaluateParams.model_fields}
        if params.max_judge_failure_rate is None:
            del shared["max_judge_failure_rate"]
        curate_params = CurateParams(**shared, analysis=True)
        # A Dask runner applies to the curate subflow, where the static judge is mapped over chunks.
        with task_runner_session(params.task_runner, params.dask_address) as runner:
            summary = curate.with_options(task_runner=runner)(curate_params)
        if summary.get("llm"):
            logger.info(f"re-evaluate: judge calls {summary['llm']}")
        published = (
            publish_flow(PublishParams(input=out, push=True, private=params.private, single_repo=params.single_repo))
            if params.publish else None
        )
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
    finally:
        outlock.release(out, "re-evaluate")
