"""The ``screen`` stage: keep only solutions that really are Triton kernels.

A rollout's reward says its outputs matched in the eval harness, not that the solution is a
Triton kernel. The stage runs after ``decontaminate`` and before the judge, so no judge call is
paid for a row it rejects. The decision per solution is :func:`kernelbook_lib.screen.screen`
(static analysis of the solution and its reference, never executed); this module applies it
to a frame:

* each distinct solution is parsed once (grouped by reference, so each reference is parsed once
  too and only one reference tree is alive at a time); when the static judge follows, the same
  tree also gives the judge its style features (``_style``, ``_style_why``), so the solution is
  not parsed again; from :data:`MIN_SOLUTIONS_FOR_POOL` distinct solutions on, the work is spread
  over a process pool (one worker per core), with the same decisions;
* a rejected row goes to the ledger as ``not_a_kernel:<kind>`` with the evidence in ``detail``;
  with ``--screen strict`` a row flagged ``partial``, ``fallback`` or ``library`` goes to the
  ledger as ``strict:<flag>``;
* every kept row carries ``kernel_flags`` (empty for a clean kernel);
* the report counts rejections per kind, kept rows per flag, and both rates per reward band
  (a rate that rises with the reward is the signature of reward hacking).

``--screen off`` is no stage at all (the run's stages are then those of earlier versions and
``kernel_flags`` is null).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.defaults import ScreenMode
from kernelbook_lib.judging import STYLE, STYLE_WHY
from kernelbook_lib.ledger import StageResult, rejections
from kernelbook_lib.module_parse import parse_code
from kernelbook_lib.neardup import default_workers
from kernelbook_lib.screen import SCREEN_VERSION, ScreenVerdict, screen
from kernelbook_lib.static_judge import analyze_solution, style_from_features
from kernelbook_lib.summary import format_screen
from kernelbook_lib.text import solution_code

STAGE = "screen"
#: Flags that ``--screen strict`` rejects (a flag ``partial:conv2d`` has the family ``partial``).
STRICT_FAMILIES: tuple[str, ...] = ("partial", "fallback", "library")
#: Reward bands of the report: (low, high] with None for open ends.
REWARD_BANDS: tuple[tuple[float | None, float | None], ...] = ((None, 0.85), (0.85, 1.0), (1.0, 1.5), (1.5, None))


def band_name(low: float | None, high: float | None) -> str:
    if low is None:
        return f"<= {high}"
    if high is None:
        return f"> {low}"
    return f"({low}, {high}]"


def flag_family(flag: str) -> str:
    """``partial:conv2d,relu`` -> ``partial``; ``fallback:device`` -> ``fallback``."""
    return flag.split(":", 1)[0]


def flag_key(flag: str) -> str:
    """How a flag is counted in the report: ``partial`` for every partial conversion (the ops
    are counted apart), the whole flag otherwise (``library:extern_kernels``)."""
    return "partial" if flag_family(flag) == "partial" else flag


@dataclass(frozen=True)
class _Decision:
    verdict: ScreenVerdict
    style: int | None = None
    style_why: str | None = None


@dataclass(frozen=True)
class ScreenStage:
    """The stage's result (kept rows with ``kernel_flags``; rejected rows in the ledger) and the
    report for the run summary."""

    result: StageResult
    report: dict = field(default_factory=dict)


#: Below this many distinct solutions the screen runs in the calling process: a pool's start (a
#: fresh process importing the screen) costs more than it saves.
MIN_SOLUTIONS_FOR_POOL = 4000
#: Solutions per task sent to a worker (whole references: a reference's solutions stay together).
_POOL_CHUNK = 1000


def _decide_group(ref_code: str, answers: list[str], with_style: bool) -> list[_Decision]:
    """The decisions for the solutions of one reference, in order; each solution is parsed once
    (its tree shared with the static judge's style features), the reference once, by the screen,
    which keeps what it reads of a reference by its text."""
    out = []
    for answer in answers:
        code = solution_code(answer or "")
        tree, _ = parse_code(code) if code.strip() else (None, "")
        verdict = screen(code, ref_code, solution_tree=tree)
        style = why = None
        if with_style and verdict.reject is None:
            style, why = style_from_features(analyze_solution(answer or "", tree=tree), verdict.flags)
        out.append(_Decision(verdict, style, why))
    return out


def _decide_chunk(task: tuple[list[tuple[str, list[str]]], bool]) -> list[list[_Decision]]:
    """A worker's share: several references with their solutions."""
    groups, with_style = task
    return [_decide_group(ref_code, answers, with_style) for ref_code, answers in groups]


def _chunks(groups: list[tuple[str, list[str]]]) -> list[list[tuple[str, list[str]]]]:
    chunks: list[list[tuple[str, list[str]]]] = [[]]
    size = 0
    for group in groups:
        if size >= _POOL_CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(group)
        size += len(group[1])
    return [c for c in chunks if c]


def _decide_all(frame: pl.DataFrame, with_style: bool, progress=None, workers: int | None = None) -> dict[tuple[str, str], _Decision]:
    """One decision per distinct (reference, solution) pair, each solution parsed once, grouped
    by reference so each reference is parsed once. Many solutions are screened in a process pool
    (``workers``: default the cores this process may use); the decisions do not depend on it."""
    pairs = frame.select(schema.PYTHON_CODE, schema.SOLUTION).unique(maintain_order=True)
    groups = [
        (reference[0] or "", group.get_column(schema.SOLUTION).to_list())
        for reference, group in pairs.group_by(schema.PYTHON_CODE, maintain_order=True)
    ]
    workers = default_workers() if workers is None else max(1, workers)
    decisions: dict[tuple[str, str], _Decision] = {}
    if workers == 1 or pairs.height < MIN_SOLUTIONS_FOR_POOL:
        for ref_code, answers in groups:
            for answer, decision in zip(answers, _decide_group(ref_code, answers, with_style), strict=True):
                decisions[ref_code, answer] = decision
            if progress is not None:
                progress.advance(len(answers))
        return decisions
    chunks = _chunks(groups)
    # forkserver, not fork: the caller holds threads (polars, Prefect) that a fork would copy in a
    # locked state (as the families stage's pool, kernelbook_lib.neardup.normalize_many).
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
        for chunk, results in zip(chunks, pool.map(_decide_chunk, [(c, with_style) for c in chunks]), strict=True):
            for (ref_code, answers), group_decisions in zip(chunk, results, strict=True):
                for answer, decision in zip(answers, group_decisions, strict=True):
                    decisions[ref_code, answer] = decision
                if progress is not None:
                    progress.advance(len(answers))
    return decisions


def distinct_solutions(frame: pl.DataFrame) -> int:
    return frame.select(schema.PYTHON_CODE, schema.SOLUTION).unique().height


def screen_rows(
    frame: pl.DataFrame, mode: ScreenMode = "standard", *, with_style: bool = False, progress=None,
    log: Callable[[str], None] | None = None, workers: int | None = None,
) -> ScreenStage:
    """The ``screen`` stage over ``frame`` (rows that passed the filter and decontamination).

    ``with_style``: also compute the static judge's style verdict from the same parse (only when
    the static judge follows). ``mode`` is ``standard`` or ``strict`` (``off`` has no stage)."""
    if mode not in ("standard", "strict"):
        raise ValueError(f"screen_rows runs the standard or strict screen, not {mode!r}")
    decisions = _decide_all(frame, with_style, progress, workers)
    keys = list(zip(frame.get_column(schema.PYTHON_CODE).fill_null("").to_list(), frame.get_column(schema.SOLUTION).to_list()))
    reasons: list[str | None] = []
    details: list[str | None] = []
    flags: list[list[str]] = []
    styles: list[int | None] = []
    whys: list[str | None] = []
    for key in keys:
        decision = decisions[key]
        verdict = decision.verdict
        reason = verdict.reason
        if reason is None and mode == "strict":
            strict = sorted({flag_family(f) for f in verdict.flags} & set(STRICT_FAMILIES))
            if strict:
                reason = f"strict:{strict[0]}"
        reasons.append(reason)
        shown = ", ".join(verdict.flags)
        detail = verdict.detail if reason is None or reason.startswith("not_a_kernel:") else f"flags {shown}; {verdict.detail}"
        details.append(detail or None)
        flags.append(list(verdict.flags))
        styles.append(decision.style)
        whys.append(decision.style_why)
    marked = frame.with_columns(
        pl.Series("_screen_reason", reasons, dtype=pl.String),
        pl.Series("_screen_detail", details, dtype=pl.String),
        pl.Series("kernel_flags", flags, dtype=pl.List(pl.String)),
        *(
            (pl.Series(STYLE, styles, dtype=pl.Int64), pl.Series(STYLE_WHY, whys, dtype=pl.String))
            if with_style else ()
        ),
    )
    rejected_rows = marked.filter(pl.col("_screen_reason").is_not_null())
    kept = marked.filter(pl.col("_screen_reason").is_null()).drop("_screen_reason", "_screen_detail")
    ledger = rejections(rejected_rows, STAGE, pl.col("_screen_reason"), pl.col("_screen_detail"))
    result = StageResult.of(STAGE, frame.height, kept, ledger)
    report = screen_report(marked, mode, len(decisions))
    if log:
        log(format_screen(report))
    return ScreenStage(result, report)


def screen_report(marked: pl.DataFrame, mode: str, distinct: int) -> dict:
    """What the summary, the end table, the artifact and the cards say about the screen."""
    reasons = marked.get_column("_screen_reason").to_list()
    flag_lists = marked.get_column("kernel_flags").to_list()
    rewards = marked.get_column("reward").to_list()
    rejected = Counter(r for r in reasons if r is not None)
    flagged: Counter[str] = Counter()
    partial_ops: Counter[str] = Counter()
    clean = 0
    for reason, row_flags in zip(reasons, flag_lists):
        if reason is not None:
            continue
        if not row_flags:
            clean += 1
        for flag in row_flags:
            flagged[flag_key(flag)] += 1
            if flag_family(flag) == "partial" and ":" in flag:
                partial_ops.update(op for op in flag.split(":", 1)[1].split(",") if op)
    bands = []
    for low, high in REWARD_BANDS:
        members = [
            i for i, r in enumerate(rewards)
            if r is not None and (low is None or r > low) and (high is None or r <= high)
        ]
        if not members:
            continue
        n_rejected = sum(1 for i in members if reasons[i] is not None)
        n_flagged = sum(1 for i in members if reasons[i] is None and flag_lists[i])
        bands.append({
            "band": band_name(low, high), "rows": len(members), "rejected": n_rejected, "flagged": n_flagged,
            "rejected_rate": round(n_rejected / len(members), 4), "flagged_rate": round(n_flagged / len(members), 4),
        })
    return {
        "mode": mode,
        "version": SCREEN_VERSION,
        "rows": marked.height,
        "distinct_solutions": distinct,
        "kept_clean": clean,
        "kept_flagged": marked.height - len([r for r in reasons if r is not None]) - clean,
        "rejected": dict(sorted(rejected.items())),
        "flagged": dict(sorted(flagged.items())),
        "partial_ops": dict(sorted(partial_ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_reward_band": bands,
    }


def mark_unscreened(frame: pl.DataFrame) -> pl.DataFrame:
    """``--screen off``: the rows carry a null ``kernel_flags`` (not screened)."""
    return frame.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("kernel_flags"))
