"""The ``curate`` flow: load -> families -> filter -> decontaminate -> screen -> judge -> dedupe
-> split -> export.

Run it with ``kernelbook curate`` (the CLI), ``python -m flows.curate``, or as a deployment
(``prefect.yaml``). Parameters are flat and typed so every entry point passes the same ones.
"""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults, before prefect is imported)

from typing import Literal

from prefect import flow

from flows.analyze import analyze
from kernelbook_lib.defaults import DEFAULT_SCREEN, ScreenMode
from kernelbook_lib.loading import DEFAULT_SOURCE
from kernelbook_lib.neardup import DEFAULT_NEAR_DUP_THRESHOLD
from kernelbook_lib.stages import DEFAULT_SEED, DEFAULT_THRESHOLD, DEFAULT_VAL_FRACTION
from kernelbook_lib.summary import empty_result_warnings, now_iso
from tasks.curate import (
    check_judge_failures,
    decontaminate_rows,
    dedupe,
    export_outputs,
    filter_rewards,
    group_families,
    judge_gate,
    judge_rows,
    load_benchmarks,
    load_source,
    mark_unscreened,
    prepare_out,
    resolve_judge,
    screen_rows,
    split_by_family,
    validate_rows,
    write_run_summary,
)
from tasks.artifacts import curate_artifacts
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
    group_by: Literal["problem_id", "module_name", "family_id"] = "problem_id",
    out: str = "outputs",
    analysis: bool = True,
    refresh_judge: bool = False,
    max_judge_failure_rate: float = 0.01,
    near_dup: bool = True,
    near_dup_threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    decontaminate: list[str] | None = None,
    screen: ScreenMode = DEFAULT_SCREEN,
) -> dict:
    """Curate eval rollouts into the ``filtered`` and ``unique`` SFT datasets in ``out``."""
    started_at = now_iso()
    out_dir = prepare_out(out)
    benchmarks = load_benchmarks(list(decontaminate or []))
    loaded = validate_rows(load_source(source, split))
    families = group_families(loaded.frame, near_dup, near_dup_threshold)
    kept = filter_rewards(families.result.frame, threshold, limit)
    clean = decontaminate_rows(kept.frame, benchmarks, near_dup_threshold, families.forms)
    judge_kind = resolve_judge(judge)
    screened = screen_rows(clean.result.frame, screen, judge_kind)  # None with --screen off
    screen_stage = [screened.result] if screened else []
    to_judge = screened.result.frame if screened else mark_unscreened(clean.result.frame)
    judged, judge_info = judge_rows(to_judge, judge_kind, refresh_judge)
    unique = dedupe(judged.frame, group_by)
    filtered_split, splitted, by_dataset = split_by_family(judged.frame, unique.frame, seed, val_fraction)
    stages = [r.report for r in (loaded, families.result, kept, clean.result, *screen_stage, judged, unique, splitted)]
    summary = export_outputs(
        out_dir,
        dict(
            source=source, split=split, threshold=threshold, limit=limit, **judge_info,
            group_by=group_by, seed=seed, val_fraction=val_fraction, started_at=started_at,
            stages=stages, warnings=empty_result_warnings(stages),
            near_dup={**families.near_dup, "by_dataset": by_dataset},
            decontamination=clean.report or None,
            screen=screened.report if screened else None,
        ),
        filtered_split,
        splitted.frame,
        [loaded, kept, clean.result, *screen_stage, judged],
    )
    judge_failure = judge_gate(judged, max_judge_failure_rate)  # before the analysis: says why
    if analysis and judge_failure is None:
        analyze(input=out_dir, run=summary.model_dump(mode="json"))
    summary = write_run_summary(out_dir, summary)  # the last file: its presence means finished
    curate_artifacts(out_dir, summary, analysed=analysis and judge_failure is None)  # not files: after the summary
    check_judge_failures(judge_failure)
    return summary.model_dump(mode="json")


if __name__ == "__main__":
    from kernelbook_cli import main

    main(["curate", *__import__("sys").argv[1:]])
