"""The run summary (``run_summary.json``) and its short table for the terminal."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field, model_validator

from kernelbook_lib import __version__, schema
from kernelbook_lib.ledger import StageReport


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_chain(stages: list[StageReport], expected: tuple[str, ...]) -> None:
    """Stages are the expected ones, in order, and each one's input is the previous one's output."""
    names = [s.name for s in stages]
    if names != list(expected):
        raise ValueError(f"stages must be {list(expected)}, got {names}")
    for before, after in zip(stages, stages[1:]):
        if after.rows_in != before.rows_out:
            raise ValueError(f"stage {after.name} got {after.rows_in} rows but {before.name} passed on {before.rows_out}")


def empty_result_warnings(stages: list[StageReport]) -> list[str]:
    """A warning naming the cause when no row is left at the end (empty datasets are written and
    the run still finishes), else nothing: the first stage that dropped every row it got, and why."""
    if not stages or stages[-1].rows_out:
        return []
    emptied = next(s for s in stages if s.rows_out == 0)
    if emptied.rows_in == 0:
        return [f"no rows kept: the {emptied.name} stage got no rows; the datasets are empty"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in emptied.dropped.items())
    return [
        f"no rows kept: the {emptied.name} stage dropped all {emptied.rows_in} rows it got ({reasons}); "
        "the datasets are empty and rejected.jsonl lists every row with its reason"
    ]


class RunSummary(BaseModel):
    pipeline: str = "curate"
    version: str = __version__
    #: New for every run: names the run its analysis belongs to (see ``hub.run_identity``).
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str
    split: str
    threshold: float
    limit: int | None = None
    judge: str
    judge_model: str | None = None
    judge_prompt_version: str | None = None
    group_by: str
    seed: int
    val_fraction: float
    started_at: str
    finished_at: str
    stages: list[StageReport]
    datasets: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: The families stage: enabled, normalisation version, threshold, problems, families,
    #: problems in a family of more than one, the largest family, pairs compared, and per
    #: dataset (``by_dataset``) its problems and families.
    near_dup: dict[str, Any] | None = None
    #: The decontaminate stage: threshold, normalisation and per benchmark its items and the
    #: rows and problems it removed (None when no benchmark was given).
    decontamination: dict[str, Any] | None = None
    #: The screen stage (kernelbook_lib.screening.screen_report): mode, version, rows rejected
    #: per kind, kept per flag, rates per reward band; None with --screen off (no stage).
    screen: dict[str, Any] | None = None
    #: The sft stage (kernelbook_lib.sft.sft_stage): the completion form, the chat format the
    #: lengths are measured on, the tokenizer file's name and sha256 (None without), the
    #: --max-sft-tokens limit and the rows rejected as too_long. None only in a summary written
    #: before the stage existed (whose stages then have no sft).
    sft: dict[str, Any] | None = None
    #: The judge's agreement (kernelbook_lib.reliability.reliability_report) when rows had several
    #: verdicts (--judge-samples, a --judge-model panel); None with one verdict per row.
    judge_reliability: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _chain(self) -> RunSummary:
        if self.sft is not None:
            expected = schema.STAGES if self.screen is not None else schema.STAGES_UNSCREENED
        else:  # an older run's summary (no sft stage): still readable, e.g. to publish its folder
            expected = schema.STAGES_BEFORE_SFT if self.screen is not None else schema.STAGES_UNSCREENED_BEFORE_SFT
        check_chain(self.stages, expected)
        return self


def format_table(summary: RunSummary) -> str:
    """The stages as a short aligned table, the families and decontamination lines, then the
    dataset split counts."""
    lines = [f"{'stage':<13} {'in':>8} {'out':>8} {'dropped':>8}  reasons"]
    for stage in summary.stages:
        lost = sum(stage.dropped.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count in stage.dropped.items()) or "-"
        lines.append(f"{stage.name:<13} {stage.rows_in:>8} {stage.rows_out:>8} {lost:>8}  {reasons}")
    if summary.near_dup:
        lines.append(format_families(summary.near_dup))
    if summary.decontamination:
        lines += format_decontamination(summary.decontamination)
    if summary.screen:
        lines.append(format_screen(summary.screen))
    if summary.sft:
        lines.append(format_sft(summary.sft))
    if summary.judge_reliability:
        from kernelbook_lib.reliability import format_reliability

        lines += format_reliability(summary.judge_reliability)
    for name, counts in summary.datasets.items():
        families = ((summary.near_dup or {}).get("by_dataset") or {}).get(name) or {}
        extra = f" ({families['families']} families)" if "families" in families else ""
        lines.append(f"{name}: train {counts.get('train', 0)}, validation {counts.get('validation', 0)}{extra}")
    return "\n".join(lines)


def format_sft(report: dict[str, Any]) -> str:
    """One line: the completion form, the tokenizer (name, start of its sha256) and the limit."""
    tokenizer = report.get("tokenizer")
    counted = (f"tokens by {tokenizer} (sha256 {str(report.get('tokenizer_sha256'))[:12]})" if tokenizer
               else "characters only (no --tokenizer)")
    limit = report.get("max_tokens")
    limited = f"max {limit} tokens, {report.get('too_long', 0)} rows too long" if limit else "no length limit"
    return f"sft: completion {report.get('completion')}, {counted}, {limited}"


def format_families(near_dup: dict[str, Any]) -> str:
    """One line about the near-duplicate families."""
    if not near_dup.get("enabled"):
        return f"families: off (--no-near-dup): {near_dup.get('problems', 0)} problems, each its own family"
    return (
        f"families: {near_dup.get('problems', 0)} problems in {near_dup.get('families', 0)} families; "
        f"{near_dup.get('problems_in_shared_families', 0)} problems in a family of more than one, the largest "
        f"has {near_dup.get('largest_family', 0)} (threshold {near_dup.get('threshold')}, "
        f"{near_dup.get('normalization')}, {near_dup.get('pairs_compared', 0)} pairs compared)"
    )


def format_decontamination(report: dict[str, Any]) -> list[str]:
    """One line per benchmark: its items and what it removed."""
    return [
        f"decontaminate: {b['source']}: {b['items']} items, removed {b['rows_removed']} rows "
        f"({b['problems_removed']} problems)"
        for b in report.get("benchmarks", [])
    ]


def format_screen(report: dict[str, Any]) -> str:
    """One line for the terminal and the logs."""
    rejected = ", ".join(f"{k.removeprefix('not_a_kernel:')} {v}" for k, v in report.get("rejected", {}).items()) or "none"
    flagged = ", ".join(f"{k} {v}" for k, v in report.get("flagged", {}).items()) or "none"
    bands = "; ".join(
        f"{b['band']}: {b['rejected_rate']:.0%} rejected, {b['flagged_rate']:.0%} flagged" for b in report.get("by_reward_band", [])
    )
    return (
        f"screen ({report.get('mode')}, {report.get('version')}): {report.get('rows', 0)} rows, "
        f"{report.get('kept_clean', 0)} clean kernels, {report.get('kept_flagged', 0)} kept with flags ({flagged}), "
        f"rejected: {rejected}" + (f"; by reward {bands}" if bands else "")
    )


def format_llm(accounting: dict[str, Any]) -> str:
    """One line of LLM accounting: what was judged, cached, failed, paid for, and how fast."""
    failures = accounting.get("failures_by_kind") or {}
    cost = accounting.get("estimated_cost_usd")
    parts = [
        f"judged {accounting.get('succeeded', 0)}",
        f"cache hits {accounting.get('cache_hits', 0)}",
        f"failures {sum(failures.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in failures.items())})" if failures else ""),
        f"calls {accounting.get('calls_made', 0)}",
        f"tokens {accounting.get('prompt_tokens', 0)} in{_cached_share(accounting)} / {accounting.get('completion_tokens', 0)} out"
        + (f" ({accounting['reasoning_tokens']} reasoning)" if accounting.get("reasoning_tokens") else ""),
        f"cost {'$%.2f' % cost if cost is not None else 'n/a (set LLM_PRICE_*_PER_MTOK)'}",
        f"wall {accounting.get('wall_s', 0):.1f} s",
        f"{accounting.get('calls_per_s') or 0:.1f} calls/s",
    ]
    if accounting.get("structured_output"):  # docs/llm.md, "Structured-output fallback"
        parts.append(f"structured output {accounting['structured_output']}")
    if accounting.get("mode") == "batch":  # docs/llm.md, "Batch mode"
        batches = accounting.get("batches", 0)
        parts.append(f"batch mode: {batches} batch{'' if batches == 1 else 'es'}, {accounting.get('bytes_uploaded', 0):,} bytes "
                     f"uploaded, cost at {accounting.get('batch_price_factor')} x the online prices")
    return "llm: " + ", ".join(parts)


def _cached_share(accounting: dict[str, Any]) -> str:
    """`` (40% cached)``: the share of prompt tokens the provider served from its prompt cache."""
    prompt, cached = accounting.get("prompt_tokens") or 0, accounting.get("cached_prompt_tokens") or 0
    return f" ({100 * cached / prompt:.0f}% cached)" if prompt else ""
