"""Several verdicts per row: repeated samples from one judge (``--judge-samples K``) and a panel
of judges (``--judge-model A --judge-model B``), on every row or on a seeded random
``--reliability-sample N`` of them.

The first judge of the panel is the *primary*: its first sample is asked for every row, and a row
whose primary verdict failed is a failed row (``judge_failed:<kind>``, as with one judge). The
other verdicts (more samples, other judges) are asked for the sampled rows only; one that fails is
a missing verdict, counted in ``judge_reliability.verdicts_missing``, not a failed row. A row's
grades are the lower median of its verdicts (an observed grade, never a half point); its
``judge_verdicts`` keep every one (``{judge, sample, difficulty, style}``), its rationale is the
primary's, its tokens the sum over its LLM verdicts.

``static`` as a panel member is the offline static judge (labelled ``static-ast-v1 (heuristic)``;
deterministic, so one sample), so its agreement with the LLM is measured, not assumed. Each
sample has its own cache key (:meth:`~kernelbook_lib.llm.LLMRequest.as_sample`): a re-run pays
nothing, and sample 0 is the cache entry a one-verdict run wrote. Requests are separate calls (the
``n`` parameter is not used: few OpenAI-compatible servers honour it, and separate calls cache
and retry per sample).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.errors import UserError
from kernelbook_lib.judging import VERDICT_SCHEMA, failure_reason, llm_judge_requests, static_verdicts
from kernelbook_lib.llm import LLMOutcome, LLMRequest
from kernelbook_lib.reliability import lower_median
from kernelbook_lib.rubric import JUDGE_PROMPT_VERSION, JudgeReply
from kernelbook_lib.static_judge import STATIC_JUDGE_NAME

STATIC_MEMBER = "static"
STATIC_LABEL = f"{STATIC_JUDGE_NAME} (heuristic)"
PANEL_JUDGE_NAME = "llm-panel"
VERDICTS = "judge_verdicts"


@dataclass(frozen=True)
class Panel:
    """Who judges what: ``judges`` (model names; ``static`` for the static judge; the first is
    the primary), ``samples`` per LLM judge, and ``reliability_sample`` (None: every row gets
    them all; else the number of rows that do, drawn with ``seed``)."""

    judges: tuple[str, ...]
    samples: int = 1
    reliability_sample: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.judges:
            raise UserError("--judge-model: the panel needs at least one judge")
        if self.judges[0] == STATIC_MEMBER:
            raise UserError("--judge-model static can be a panel member, not its first (primary) judge: put an LLM first")
        if len(set(self.judges)) != len(self.judges):
            raise UserError(f"--judge-model: a judge is named twice ({', '.join(self.judges)})")
        if self.samples < 1:
            raise UserError(f"--judge-samples must be at least 1, not {self.samples}")

    @property
    def single(self) -> bool:
        """One verdict per row: today's judge."""
        return len(self.judges) == 1 and self.samples == 1

    def sampled_rows(self, rows: Sequence[int]) -> set[int]:
        """The rows (``_row`` ids) that get every judge and every sample: all of them, or a seeded
        random ``reliability_sample`` of them (the same rows for the same data and seed)."""
        if self.reliability_sample is None or self.reliability_sample >= len(rows):
            return set(rows)
        ranked = sorted(rows, key=lambda r: hashlib.sha256(f"{self.seed}:{r}".encode()).digest())
        return set(ranked[: self.reliability_sample])


@dataclass(frozen=True)
class Slot:
    """One verdict asked for: of row ``index`` (its position in the frame), by ``judge``."""

    index: int
    judge: str
    sample: int


def plan(frame: pl.DataFrame, panel: Panel) -> tuple[list[Slot], list[LLMRequest]]:
    """Every LLM verdict to ask for, in order (the primary's for every row first, so its failures
    are the row's), with its request."""
    rows = frame.get_column(schema.ROW).to_list()
    sampled = panel.sampled_rows(rows)
    base = {judge: llm_judge_requests(frame, judge) for judge in panel.judges if judge != STATIC_MEMBER}
    slots = [Slot(i, panel.judges[0], 0) for i in range(len(rows))]
    for i, row in enumerate(rows):
        if row not in sampled:
            continue
        for judge in panel.judges:
            if judge == STATIC_MEMBER:
                continue
            for k in range(panel.samples):
                if (judge, k) != (panel.judges[0], 0):
                    slots.append(Slot(i, judge, k))
    requests = [base[s.judge][s.index].as_sample(s.sample) for s in slots]
    return slots, requests


def panel_verdicts(frame: pl.DataFrame, panel: Panel, slots: list[Slot], outcomes: list[LLMOutcome]) -> tuple[pl.DataFrame, int]:
    """Verdict rows (the judge stage's ``VERDICT_SCHEMA`` plus ``judge_verdicts``) from the
    outcomes of :func:`plan`'s requests, and the number of non-primary verdicts that failed."""
    if len(outcomes) != len(slots):
        raise RuntimeError(f"{len(outcomes)} LLM outcomes for {len(slots)} verdicts asked for; refusing to guess")
    rows = frame.get_column(schema.ROW).to_list()
    sampled = panel.sampled_rows(rows)
    per_row: list[list[dict]] = [[] for _ in rows]
    tokens: list[list[tuple[int | None, int | None]]] = [[] for _ in rows]
    primary: list[tuple[JudgeReply | None, LLMOutcome]] = [None] * len(rows)  # type: ignore[list-item]
    missing = 0
    for slot, outcome in zip(slots, outcomes):
        reply = JudgeReply.model_validate(outcome.reply) if outcome.ok else None
        if (slot.judge, slot.sample) == (panel.judges[0], 0):
            primary[slot.index] = (reply, outcome)
        elif reply is None:
            missing += 1
        if reply is not None:
            per_row[slot.index].append({"judge": slot.judge, "sample": slot.sample, "difficulty": reply.difficulty, "style": reply.style})
            tokens[slot.index].append((outcome.prompt_tokens, outcome.completion_tokens))
    if STATIC_MEMBER in panel.judges:
        static = static_verdicts(frame)
        for i, (d, s) in enumerate(static.select("difficulty", "style").iter_rows()):
            if rows[i] in sampled:
                per_row[i].append({"judge": STATIC_LABEL, "sample": 0, "difficulty": d, "style": s})
    out: dict[str, list] = {c: [] for c in VERDICT_SCHEMA}
    out[VERDICTS] = []
    for i, row in enumerate(rows):
        reply, outcome = primary[i]
        ok = reply is not None
        verdicts = per_row[i] if ok else []
        judges = list(dict.fromkeys(v["judge"] for v in verdicts)) or [panel.judges[0]]
        out[schema.ROW].append(row)
        out["difficulty"].append(lower_median([v["difficulty"] for v in verdicts]) if ok else None)
        out["style"].append(lower_median([v["style"] for v in verdicts]) if ok else None)
        out["judge"].append(PANEL_JUDGE_NAME if len(judges) > 1 else "llm")
        out["judge_model"].append(", ".join(judges))
        out["judge_prompt_version"].append(JUDGE_PROMPT_VERSION)
        out["judge_rationale"].append(reply.rationale if ok else None)
        out["judge_prompt_tokens"].append(sum(t[0] or 0 for t in tokens[i]) if ok else None)
        out["judge_completion_tokens"].append(sum(t[1] or 0 for t in tokens[i]) if ok else None)
        out["_failure"].append(None if ok else failure_reason(outcome.failure_kind))
        out["_failure_detail"].append(None if ok else outcome.failure_detail)
        out[VERDICTS].append(verdicts or None)
    return pl.DataFrame(out, schema={**VERDICT_SCHEMA, VERDICTS: schema.JUDGED_SCHEMA[VERDICTS]}), missing


def single_verdicts(verdicts: pl.DataFrame, judge_label: str | None = None) -> pl.DataFrame:
    """``judge_verdicts`` for a one-verdict judge: the row's one verdict (null when it failed)."""
    label = pl.lit(judge_label) if judge_label else pl.col("judge_model").fill_null(pl.col("judge"))
    entry = pl.struct(label.alias("judge"), pl.lit(0, dtype=pl.Int64).alias("sample"), pl.col("difficulty"), pl.col("style"))
    return verdicts.with_columns(
        pl.when(pl.col("difficulty").is_not_null()).then(pl.concat_list(entry)).otherwise(None).cast(schema.JUDGED_SCHEMA[VERDICTS]).alias(VERDICTS)
    )
