"""The ``curate`` flow: load -> filter -> judge -> dedupe -> split -> export.

Run it with ``kernelbook curate`` (the CLI), ``python -m flows.curate``, or as a deployment
(``prefect.yaml``). Parameters are flat and typed so every entry point passes the same ones.
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

from typing import Literal

from prefect import flow

from flows.analyze import analyze
from kernelbook_lib.loading import DEFAULT_SOURCE
from kernelbook_lib.stages import DEFAULT_SEED, DEFAULT_THRESHOLD, DEFAULT_VAL_FRACTION
from kernelbook_lib.summary import empty_result_warnings, now_iso
from tasks.curate import (
    check_judge_failures,
    dedupe,
    export_outputs,
    filter_rewards,
    judge_gate,
    judge_rows,
    load_source,
    prepare_out,
    resolve_judge,
    split_by_problem,
    validate_rows,
    write_run_summary,
)
from tasks.preflight import guarded


@flow(name="curate", log_prints=False)
@guarded("curate")  # parameters, settings and .env checked, then `out` locked, before any work
def curate(
    source: str = DEFAULT_SOURCE,
    split: Literal["train", "validation", "all"] = "train",
    threshold: float = DEFAULT_THRESHOLD,
    judge: Literal["auto", "static", "llm"] = "auto",
    limit: int | None = None,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    group_by: Literal["problem_id", "module_name"] = "problem_id",
    out: str = "outputs",
    analysis: bool = True,
    refresh_judge: bool = False,
    max_judge_failure_rate: float = 0.01,
) -> dict:
    """Curate eval rollouts into the ``filtered`` and ``unique`` SFT datasets in ``out``."""
    started_at = now_iso()
    out_dir = prepare_out(out)
    loaded = validate_rows(load_source(source, split))
    kept = filter_rewards(loaded.frame, threshold, limit)
    judged, judge_info = judge_rows(kept.frame, resolve_judge(judge), refresh_judge)
    unique = dedupe(judged.frame, group_by)
    filtered_split, splitted = split_by_problem(judged.frame, unique.frame, seed, val_fraction)
    stages = [r.report for r in (loaded, kept, judged, unique, splitted)]
    summary = export_outputs(
        out_dir,
        dict(
            source=source, split=split, threshold=threshold, limit=limit, **judge_info,
            group_by=group_by, seed=seed, val_fraction=val_fraction, started_at=started_at,
            stages=stages, warnings=empty_result_warnings(stages),
        ),
        filtered_split,
        splitted.frame,
        [loaded, kept, judged],
    )
    judge_failure = judge_gate(judged, max_judge_failure_rate)  # before the analysis: says why
    if analysis and judge_failure is None:
        analyze(input=out_dir, run=summary.model_dump(mode="json"))
    summary = write_run_summary(out_dir, summary)  # the last file: its presence means finished
    check_judge_failures(judge_failure)
    return summary.model_dump(mode="json")


if __name__ == "__main__":
    from kernelbook_cli import main

    main(["curate", *__import__("sys").argv[1:]])
