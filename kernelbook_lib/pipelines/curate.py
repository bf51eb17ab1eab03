"""The ``curate`` pipeline: prepare-out -> load-benchmarks -> read-source -> load -> families ->
filter -> decontaminate -> resolve-judge -> screen -> judge -> sft -> dedupe -> split, then its outputs
(``filtered/``, ``unique/``, the JSONL files, ``rejected.jsonl`` and, last, ``run_summary.json``).

Each stage is a small class; :data:`CURATE` declares the parameter model, the stages (built from
the parameters: ``--screen off`` has no screen) and the outputs. Nothing here knows about Prefect:
``tasks/pipeline.py`` runs it as tasks, :func:`kernelbook_lib.pipeline.run_stages` in-process.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import polars as pl

from kernelbook_lib import export, judge_panel, judging, loading, schema, screening, sft, stages
from kernelbook_lib.ledger import StageResult, empty_rejections
from kernelbook_lib.params import CurateParams, reliability_rows
from kernelbook_lib.reliability import format_reliability, reliability_report
from kernelbook_lib.pipeline import Outputs, Pipeline, Run, Stage, StageOutput, chunks
from kernelbook_lib.pipelines.common import Decontaminate, Families, LoadBenchmarks, PrepareOut, ReadSource
from kernelbook_lib.rubric import JUDGE_PROMPT_VERSION, JUDGE_TASK
from kernelbook_lib.settings import load_settings
from kernelbook_lib.static_judge import STATIC_JUDGE_NAME
from kernelbook_lib.summary import RunSummary, empty_result_warnings

#: Rows per static-judge task run: big enough that orchestration is noise, small enough to
#: spread over Dask workers.
STATIC_CHUNK_ROWS = 5_000
#: The name of the static judge's mapped task runs.
STATIC_CHUNK_TASK = "judge-static-chunk"
#: The columns the static judge reads: only these travel to its task runs (to other processes
#: under a process or Dask task runner), not the prompts and completions.
STATIC_JUDGE_COLUMNS = (schema.ROW, "problem_id", schema.PYTHON_CODE, schema.SOLUTION, "kernel_flags", judging.STYLE, judging.STYLE_WHY)


class Load(Stage):
    """Validate the rows at entry: a schema error ends the run; an unusable row is rejected with
    its reason (``reward_null``, ``missing_answer``, ...)."""

    name = "load"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        loaded: loading.LoadedSource = run.facts["loaded"]
        with run.progress("load", loaded.frame.height) as progress:
            return StageOutput(loading.prepare(loaded, progress))


class Filter(Stage):
    """Keep ``reward > --threshold``; with ``--limit``, the first N passing rows."""

    name = "filter"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        return StageOutput(stages.filter_rewards(frame, run.params.threshold, run.params.limit))  # type: ignore[attr-defined]


class ResolveJudge(Stage):
    """``--judge auto`` is ``llm`` when an API key is configured, else ``static`` (with a notice)."""

    name = "resolve-judge"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        judge = run.params.judge  # type: ignore[attr-defined]
        if judge == "auto":
            if load_settings().has_llm_key:
                judge = "llm"
            else:
                run.log("judge: no PRIME_API_KEY configured, using the offline static judge (--judge static)")
                judge = "static"
        return StageOutput(facts={"judge": judge})


class Screen(Stage):
    """The kernel screen, before the judge (so no call is paid for a row it rejects). With the
    static judge next, the screen's parse of each solution also gives the judge its style."""

    name = "screen"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        with_style = run.facts["judge"] == "static"
        distinct = screening.distinct_solutions(frame)
        started = time.perf_counter()
        with run.progress("screen", distinct, "solutions") as progress:
            result = screening.screen_rows(frame, run.params.screen, with_style=with_style, progress=progress, log=run.log)  # type: ignore[attr-defined]
        wall = time.perf_counter() - started
        run.log(
            f"screen: {frame.height} rows, {distinct} distinct solutions in {wall:.1f} s ({frame.height / wall if wall else 0:,.0f} rows/s)"
            + (", style features for the static judge from the same parse" if with_style else "")
        )
        return StageOutput(result.result, summary={"screen": result.report})


class MarkUnscreened(Stage):
    """``--screen off``: no screen; the rows carry a null ``kernel_flags`` (not one of the
    summary's stages)."""

    name = "mark-unscreened"
    counted = False
    in_ledger = False

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        run.log("screen: --screen off, solutions are not screened (kernel_flags is null)")
        marked = screening.mark_unscreened(frame)
        return StageOutput(StageResult.of(self.name, frame.height, marked, empty_rejections()), summary={"screen": None})


class Judge(Stage):
    """Difficulty and style 0-10 per row, by the static judge (mapped over chunks) or the LLM
    judge (calls through the executor's LLM machinery); a row that could not be judged goes to
    the ledger as ``judge_failed:<kind>``."""

    name = "judge"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        judge = run.facts["judge"]
        if judge == "static":
            needed = frame.select(c for c in STATIC_JUDGE_COLUMNS if c in frame.columns)
            parts = list(chunks(needed, STATIC_CHUNK_ROWS))
            with run.progress("judge", needed.height) as progress:
                verdicts = run.services.map(STATIC_CHUNK_TASK, judging.static_verdicts, parts, lambda part: part.height, progress)
            verdicts = pl.concat(verdicts) if parts else judging.static_verdicts(frame)
            identity = {"judge": STATIC_JUDGE_NAME, "judge_model": None, "judge_prompt_version": None, "judge_reliability": None}
            p = run.params
            if p.judge_samples > 1 or p.judge_model or p.reliability_sample:  # type: ignore[attr-defined]
                notice = ("the static judge is deterministic and judges alone: --judge-samples, --judge-model and "
                          "--reliability-sample apply to the LLM judge (--judge llm) and were not used")
                run.log(f"judge: {notice}")
                identity["judge_warnings"] = [notice]
            return StageOutput(judging.apply_verdicts(frame, judge_panel.single_verdicts(verdicts, STATIC_JUDGE_NAME)), summary=identity)
        if judge == "llm":
            panel = judge_panel_of(run.params)  # type: ignore[arg-type]
            refresh = run.params.refresh_judge  # type: ignore[attr-defined]
            if panel.single:
                model = panel.judges[0]
                requests = judging.llm_judge_requests(frame, model)
                calls = run.services.llm(JUDGE_TASK, requests, refresh, "judge")
                verdicts = judge_panel.single_verdicts(judging.llm_verdicts(frame, calls.outcomes, model))
                result, reliability = judging.apply_verdicts(frame, verdicts), None
            else:
                slots, requests = judge_panel.plan(frame, panel)
                run.log(f"judge: {len(requests)} verdicts asked for {frame.height} rows (judges {', '.join(panel.judges)}, "
                        f"{panel.samples} sample(s) each, on {len(panel.sampled_rows(frame.get_column(schema.ROW).to_list()))} rows)")
                calls = run.services.llm(JUDGE_TASK, requests, refresh, "judge")
                verdicts, missing = judge_panel.panel_verdicts(frame, panel, slots, calls.outcomes)
                result = judging.apply_verdicts(frame, verdicts)
                reliability = reliability_of(result.frame, panel, missing)
                for line in format_reliability(reliability):
                    run.log(line)
            identity = {"judge": judging.LLM_JUDGE_NAME if panel.single else judge_panel.PANEL_JUDGE_NAME,
                        "judge_model": ", ".join(panel.judges), "judge_prompt_version": JUDGE_PROMPT_VERSION}
            return StageOutput(result, summary={**identity, "llm": calls.accounting, "judge_reliability": reliability})
        raise ValueError(f"unknown judge {judge!r}")


def judge_panel_of(params: CurateParams) -> judge_panel.Panel:
    """The judges, samples and reliability sample of a run (``--judge-model`` wins over
    JUDGE_MODELS, which wins over JUDGE_MODEL)."""
    settings = load_settings()
    judges = params.judge_model or [m.strip() for m in (settings.judge_models or "").split(",") if m.strip()] or [settings.judge_model]
    return judge_panel.Panel(tuple(judges), params.judge_samples, reliability_rows(params.reliability_sample), params.seed)


def reliability_of(judged: pl.DataFrame, panel: judge_panel.Panel, missing: int) -> dict | None:
    """The summary's ``judge_reliability``: the agreement of the judged rows' verdicts, what was
    asked for, and the verdicts that could not be had."""
    rows = [row or [] for row in judged.get_column(judge_panel.VERDICTS).to_list()]
    report = reliability_report(rows)
    if report is None:
        return None
    return {**report, "judges_asked": list(panel.judges), "samples": panel.samples,
            "reliability_sample": panel.reliability_sample, "verdicts_missing": missing}


class Sft(Stage):
    """The SFT form of every judged row (``--completion``), its lengths (``sft_chars``; with
    ``--tokenizer`` ``sft_tokens``) and, with ``--max-sft-tokens``, the rows too long rejected as
    ``too_long``. After the judge (so the judge reads the source's completion) and before dedupe
    (so dedupe never picks a row that is then dropped): ``filtered`` is its output."""

    name = "sft"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        p = run.params
        started = time.perf_counter()
        counting = p.tokenizer is not None  # type: ignore[attr-defined]
        with run.progress("sft tokens", frame.height) if counting else nullcontext() as progress:
            result = sft.sft_stage(frame, p.completion, p.tokenizer, p.max_sft_tokens, progress)  # type: ignore[attr-defined]
        wall = time.perf_counter() - started
        if counting:
            run.log(f"sft: counted the tokens of {frame.height} rows in {wall:.1f} s ({frame.height / wall if wall else 0:,.0f} rows/s)")
        return StageOutput(result.result, summary={"sft": result.report})


class Dedupe(Stage):
    """The best rollout per ``--group-by`` key. Its losers stay in ``filtered``: counted, not in
    ``rejected.jsonl``."""

    name = "dedupe"
    in_ledger = False

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        return StageOutput(stages.dedupe(frame, run.params.group_by))  # type: ignore[attr-defined]


class Split(Stage):
    """Train/validation by family for both datasets (the same family, the same split), refusing
    a leak; counts each dataset's problems and families. ``filtered`` is the sft stage's rows,
    ``unique`` dedupe's."""

    name = "split"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        p = run.params
        result = stages.split_stage(frame, p.seed, p.val_fraction)  # type: ignore[attr-defined]
        filtered = stages.assign_splits(run.result("sft").frame, p.seed, p.val_fraction)  # type: ignore[attr-defined]
        stages.check_splits(filtered=filtered, unique=result.frame)
        by_dataset = {"filtered": stages.family_counts(filtered), "unique": stages.family_counts(result.frame)}
        return StageOutput(result, facts={"filtered": filtered, "by_dataset": by_dataset})


def curate_stages(params: CurateParams) -> list[Stage]:
    screen: Stage = MarkUnscreened() if params.screen == "off" else Screen()
    return [
        PrepareOut(export.SUMMARY_FILE), LoadBenchmarks(), ReadSource(), Load(), Families(), Filter(), Decontaminate(),
        ResolveJudge(), screen, Judge(), Sft(), Dedupe(), Split(),
    ]


def write_curate(run: Run) -> RunSummary:
    """Both datasets, the JSONL files and the ledger; the summary (written last by
    :func:`export.finish_run`, after the analysis)."""
    p: CurateParams = run.params  # type: ignore[assignment]
    reports = run.reports
    fields = dict(
        source=p.source, split=p.split, threshold=p.threshold, limit=p.limit,
        judge=run.summary["judge"], judge_model=run.summary["judge_model"], judge_prompt_version=run.summary["judge_prompt_version"],
        group_by=p.group_by, seed=p.seed, val_fraction=p.val_fraction, started_at=run.summary["started_at"],
        stages=reports, warnings=[*empty_result_warnings(reports), *run.summary.get("judge_warnings", [])],
        near_dup={**run.summary["near_dup"], "by_dataset": run.facts["by_dataset"]},
        decontamination=run.summary["decontamination"], screen=run.summary["screen"], sft=run.summary["sft"],
        judge_reliability=run.summary["judge_reliability"],
    )
    if "llm" in run.summary:
        fields["llm"] = run.summary["llm"]
    summary = export.write_all(run.facts["out"], fields, run.facts["filtered"], run.result("split").frame, run.ledger)
    run.log(f"export: wrote {run.facts['out']}/filtered, {run.facts['out']}/unique and rejected.jsonl")
    return summary


def judge_gate(run: Run, summary: RunSummary) -> str | None:
    """Why the run must fail because too many rows could not be judged (None when it need not).
    Checked before the analysis, so a run whose judge failed says so instead of analysing nothing."""
    report = run.result("judge").report
    max_rate = run.params.max_judge_failure_rate  # type: ignore[attr-defined]
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


def finish_curate(out: str, summary: RunSummary) -> RunSummary:
    return export.finish_run(out, summary)


CURATE = Pipeline(
    name="curate",
    params=CurateParams,
    stages=curate_stages,  # type: ignore[arg-type]
    outputs=Outputs(
        summary_file=export.SUMMARY_FILE,
        files=("filtered/", "unique/", "filtered_dataset.jsonl", "unique_dataset.jsonl", export.REJECTED_FILE, export.SUMMARY_FILE),
        write=write_curate,
        finish=finish_curate,
        gate=judge_gate,
    ),
)
