"""The judge stage's frame logic, shared by both judges: build verdict rows, join them back,
record failed judgements in the ledger, and add the score.

The static judge (``static_judge.py``) runs here directly; the LLM judge's calls are made by
the orchestrator (``tasks/llm.py``) and their outcomes come back through :func:`apply_verdicts`.
"""

from __future__ import annotations

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.ledger import StageResult, rejections
from kernelbook_lib.llm import ledger_reason, LLMOutcome, LLMRequest
from kernelbook_lib.rubric import JUDGE_PROMPT_VERSION, JUDGE_TASK, JudgeReply
from kernelbook_lib.stages import add_score
from kernelbook_lib.static_judge import (
    STATIC_JUDGE_NAME, analyze_module, analyze_solution, difficulty_of, style_from_features, verdict_rationale,
)

#: Internal columns the kernel screen adds when the static judge follows (kernelbook_lib.screening).
STYLE, STYLE_WHY = "_style", "_style_why"

VERDICT_SCHEMA: dict[str, pl.DataType] = {
    schema.ROW: pl.Int64(),
    **{c: schema.JUDGED_SCHEMA[c] for c in schema.VERDICT_COLUMNS},
    "_failure": pl.String(),  # null when judged; else the ledger reason (e.g. judge_failed:timeout)
    "_failure_detail": pl.String(),
}


def static_verdicts(frame: pl.DataFrame) -> pl.DataFrame:
    """Static-judge verdicts for every row of ``frame`` (deterministic, never executes code).

    The module's difficulty is computed once per problem. Style comes from the kernel screen
    when it ran with the static judge in view (``_style``/``_style_why``: the screen parsed the
    solution already, and its flags cap the score), else it is computed here, once per row."""
    difficulty_by_problem: dict[str, tuple[int, str]] = {}
    rows: dict[str, list] = {c: [] for c in VERDICT_SCHEMA}
    n = frame.height
    styles = frame.get_column(STYLE).to_list() if STYLE in frame.columns else [None] * n
    whys = frame.get_column(STYLE_WHY).to_list() if STYLE_WHY in frame.columns else [None] * n
    flags = frame.get_column("kernel_flags").to_list() if "kernel_flags" in frame.columns else [None] * n
    for (row, problem, code, answer), given, given_why, row_flags in zip(
        frame.select(schema.ROW, "problem_id", schema.PYTHON_CODE, schema.SOLUTION).iter_rows(), styles, whys, flags
    ):
        if problem not in difficulty_by_problem:
            difficulty_by_problem[problem] = difficulty_of(analyze_module(code))
        difficulty, why_difficulty = difficulty_by_problem[problem]
        if given is not None:
            style, why_style = given, given_why
        else:
            style, why_style = style_from_features(analyze_solution(answer), tuple(row_flags or ()))
        rows[schema.ROW].append(row)
        rows["difficulty"].append(difficulty)
        rows["style"].append(style)
        rows["judge"].append(STATIC_JUDGE_NAME)
        rows["judge_model"].append(None)
        rows["judge_prompt_version"].append(None)
        rows["judge_rationale"].append(verdict_rationale(difficulty, why_difficulty, style, why_style))
        rows["judge_prompt_tokens"].append(None)
        rows["judge_completion_tokens"].append(None)
        rows["_failure"].append(None)
        rows["_failure_detail"].append(None)
    return pl.DataFrame(rows, schema=VERDICT_SCHEMA)


def apply_verdicts(frame: pl.DataFrame, verdicts: pl.DataFrame) -> StageResult:
    """Join verdicts to rows; rows whose judging failed go to the ledger with their reason.

    Every input row must have exactly one verdict row: a missing or duplicated verdict is a
    bug in the caller and raises instead of losing or doubling a row."""
    unmatched = frame.join(verdicts, on=schema.ROW, how="anti").height
    if unmatched or verdicts.height != frame.height or verdicts.get_column(schema.ROW).n_unique() != verdicts.height:
        raise RuntimeError(
            f"judge produced {verdicts.height} verdicts for {frame.height} rows ({unmatched} rows without one); "
            "refusing to guess which are missing"
        )
    joined = frame.join(verdicts, on=schema.ROW, how="left", maintain_order="left")
    failed = joined.filter(pl.col("_failure").is_not_null())
    judged = add_score(joined.filter(pl.col("_failure").is_null()).drop("_failure", "_failure_detail"))
    rejected = rejections(failed, "judge", pl.col("_failure"), pl.col("_failure_detail"))
    return StageResult.of("judge", frame.height, judged, rejected)


# --- the LLM judge ----------------------------------------------------------------------

LLM_JUDGE_NAME = "llm"


def llm_judge_requests(frame: pl.DataFrame, model: str) -> list[LLMRequest]:
    """One :data:`~kernelbook_lib.rubric.JUDGE_TASK` request per row: the full PyTorch module and
    the full solution (never truncated). Rows with the same prompt share a cache key, so a
    duplicate is paid for once."""
    return [
        JUDGE_TASK.request(model, module_name=module_name, python_code=code, solution=answer)
        for module_name, code, answer in frame.select(schema.MODULE_NAME, schema.PYTHON_CODE, schema.SOLUTION).iter_rows()
    ]


def failure_reason(kind: str | None) -> str:
    """The ledger reason for a row the LLM judge could not judge."""
    return ledger_reason("judge", kind)


def llm_verdicts(frame: pl.DataFrame, outcomes: list[LLMOutcome], model: str) -> pl.DataFrame:
    """Verdict rows from the LLM outcomes (one per row of ``frame``, in the same order)."""
    if len(outcomes) != frame.height:
        raise RuntimeError(f"{len(outcomes)} LLM outcomes for {frame.height} rows; refusing to guess")
    rows: dict[str, list] = {c: [] for c in VERDICT_SCHEMA}
    for row, outcome in zip(frame.get_column(schema.ROW).to_list(), outcomes):
        reply = JudgeReply.model_validate(outcome.reply) if outcome.ok else None
        rows[schema.ROW].append(row)
        rows["difficulty"].append(reply.difficulty if reply else None)
        rows["style"].append(reply.style if reply else None)
        rows["judge"].append(LLM_JUDGE_NAME)
        rows["judge_model"].append(model)
        rows["judge_prompt_version"].append(JUDGE_PROMPT_VERSION)
        rows["judge_rationale"].append(reply.rationale if reply else None)
        rows["judge_prompt_tokens"].append(outcome.prompt_tokens if outcome.ok else None)
        rows["judge_completion_tokens"].append(outcome.completion_tokens if outcome.ok else None)
        rows["_failure"].append(None if outcome.ok else failure_reason(outcome.failure_kind))
        rows["_failure_detail"].append(None if outcome.ok else outcome.failure_detail)
    return pl.DataFrame(rows, schema=VERDICT_SCHEMA)


def failure_rate(report_dropped: dict[str, int], rows_in: int) -> float:
    return sum(report_dropped.values()) / rows_in if rows_in else 0.0
