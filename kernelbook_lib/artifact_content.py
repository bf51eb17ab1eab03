"""What the Prefect artifacts of a run show: stage tables, the run summary in Markdown, folder
and commit links, the correlation table. Pure formatting (no Prefect): ``tasks/artifacts.py``
publishes these under the keys below.

Keys are stable across runs (the UI's artifact history of a key is the trend of a deployment)
and hold only lowercase letters, digits and dashes, as Prefect requires.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from kernelbook_lib.analysis import PAIRS
from kernelbook_lib.ledger import StageReport
from kernelbook_lib.prompt_dataset import SyntheticSummary
from kernelbook_lib.summary import RunSummary, format_decontamination, format_families, format_screen, format_sft

#: ``curate``: the stages table, the summary and a link per output folder.
CURATE_STAGES_KEY = "curate-stages"
CURATE_SUMMARY_KEY = "curate-summary"
CURATE_FOLDER_KEYS = {"filtered": "curate-filtered", "unique": "curate-unique", "analysis": "curate-analysis"}
#: ``curate``: the kernel screen by reward band (the signature of reward hacking), when it ran.
CURATE_SCREEN_KEY = "curate-screen"
#: ``generate-prompts``: the same three kinds.
GENERATE_STAGES_KEY = "generate-stages"
GENERATE_SUMMARY_KEY = "generate-summary"
GENERATE_FOLDER_KEY = "generate-synthetic"
#: ``analyze``: the correlations as a table (the report itself is ``analysis-report``).
CORRELATIONS_KEY = "analysis-correlations"

_KEY = re.compile(r"[a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """``parts`` joined by dashes and reduced to what a Prefect key may hold (``publish-filtered``,
    ``publish-filtered-unique`` for a single repo holding both)."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not key or not _KEY.fullmatch(key):
        raise ValueError(f"no artifact key can be made of {parts!r}")
    return key


def publish_key(kind: str) -> str:
    return artifact_key("publish", kind)


# --- stages ------------------------------------------------------------------------------------


def stage_rows(stages: list[StageReport]) -> list[dict[str, Any]]:
    """One table row per stage: rows in, rows out, rows dropped and why (``reason n, ...``)."""
    return [
        {
            "stage": s.name,
            "rows in": s.rows_in,
            "rows out": s.rows_out,
            "dropped": sum(s.dropped.values()),
            "dropped by reason": ", ".join(f"{reason} {n}" for reason, n in s.dropped.items()) or "-",
        }
        for s in stages
    ]


def screen_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The kernel screen's table: one row per reward band, then all rows; rejections per kind and
    flags are in the description (:func:`kernelbook_lib.summary.format_screen`)."""
    bands = list(report.get("by_reward_band") or [])
    rejected = sum((report.get("rejected") or {}).values())
    rows = report.get("rows", 0)
    total = {"band": "all", "rows": rows, "rejected": rejected, "flagged": report.get("kept_flagged", 0),
             "rejected_rate": round(rejected / rows, 4) if rows else 0.0,
             "flagged_rate": round(report.get("kept_flagged", 0) / rows, 4) if rows else 0.0}
    return [
        {"reward": b["band"], "rows": b["rows"], "rejected": b["rejected"], "flagged": b["flagged"],
         "rejected %": round(100 * b["rejected_rate"], 1), "flagged %": round(100 * b["flagged_rate"], 1)}
        for b in [*bands, total]
    ]


def stages_description(summary: RunSummary | SyntheticSummary) -> str:
    first, last = summary.stages[0], summary.stages[-1]
    return f"{summary.pipeline}: {first.rows_in} rows in, {last.rows_out} out, by stage (run finished {summary.finished_at})"


# --- the run summary -----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _wall_s(started_at: str, finished_at: str) -> float | None:
    try:
        return (datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)).total_seconds()
    except ValueError:
        return None


def llm_line(accounting: Mapping[str, Any] | None, done_word: str) -> str:
    """The LLM accounting in one cell: calls, cache hits, failures, tokens with the cached share,
    cost, wall time; ``none`` without an LLM stage."""
    if not accounting:
        return "none (no LLM stage ran)"
    failures = accounting.get("failures_by_kind") or {}
    prompt, cached = accounting.get("prompt_tokens") or 0, accounting.get("cached_prompt_tokens") or 0
    share = f" ({100 * cached / prompt:.0f}% cached)" if prompt else ""
    cost = accounting.get("estimated_cost_usd")
    failed = sum(failures.values())
    return ", ".join([
        f"{done_word} {accounting.get('succeeded', 0)} of {accounting.get('requests', 0)} rows",
        f"calls {accounting.get('calls_made', 0)}",
        f"cache hits {accounting.get('cache_hits', 0)}",
        f"failures {failed}" + (f" ({', '.join(f'{k} {v}' for k, v in failures.items())})" if failed else ""),
        f"tokens {prompt:,} in{share} / {accounting.get('completion_tokens', 0):,} out",
        f"cost {'$%.2f' % cost if cost is not None else 'n/a (set LLM_PRICE_*_PER_MTOK)'}",
        f"LLM wall {accounting.get('wall_s', 0):.1f} s",
    ])


def _dataset_line(name: str, counts: Mapping[str, int], near_dup: Mapping[str, Any] | None) -> str:
    families = ((near_dup or {}).get("by_dataset") or {}).get(name) or {}
    extra = f" ({families['families']} families)" if "families" in families else ""
    splits = ", ".join(f"{split} {n:,}" for split, n in counts.items()) or "no rows"
    return f"{splits}{extra}"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows)]


def _warnings(warnings: list[str]) -> list[str]:
    if not warnings:
        return ["", "No warnings."]
    return ["", "## Warnings", "", *(f"- {_cell(w)}" for w in warnings)]


def summary_markdown(summary: RunSummary | SyntheticSummary, out_dir: str | Path) -> str:
    """The run summary as Markdown: what ran on what, the counts, families, decontamination,
    LLM use, wall time and warnings (the stage table is its own artifact)."""
    wall = _wall_s(summary.started_at, summary.finished_at)
    common_tail: list[tuple[str, Any]] = [
        ("families", format_families(summary.near_dup).removeprefix("families: ") if summary.near_dup else None),
        ("decontamination", "; ".join(format_decontamination(summary.decontamination)) if summary.decontamination else "off (no benchmark given)"),
    ]
    timing = [
        ("wall time", f"{wall:.1f} s" if wall is not None else None),
        ("started / finished", f"{summary.started_at} / {summary.finished_at}"),
        ("output folder", f"`{Path(out_dir).resolve()}`"),
        ("version", summary.version),
    ]
    if isinstance(summary, RunSummary):
        first, last = summary.stages[0], summary.stages[-1]
        judge = summary.judge + (f" (model `{summary.judge_model}`, prompt {summary.judge_prompt_version})" if summary.judge_model else "")
        rows: list[tuple[str, Any]] = [
            ("source", f"`{summary.source}` (split {summary.split})"),
            ("judge", judge),
            ("rows", f"{first.rows_in:,} loaded, {last.rows_out:,} in the unique dataset"),
            ("settings", f"reward > {summary.threshold}, limit {summary.limit or 'none'}, one per {summary.group_by}, "
                         f"seed {summary.seed}, validation {summary.val_fraction:g}"),
            *[(name, _dataset_line(name, counts, summary.near_dup)) for name, counts in summary.datasets.items()],
            *common_tail,
            ("kernel screen", format_screen(summary.screen).removeprefix("screen ") if summary.screen else "off (--screen off)"),
            ("SFT", format_sft(summary.sft).removeprefix("sft: ") if summary.sft else "not recorded (a run before the sft stage)"),
            ("LLM", llm_line(summary.llm, "judged")),
            *timing,
        ]
        title = f"# curate run `{summary.run_id}`"
    else:
        generator = summary.generator + (f" (model `{summary.generator_model}`, prompt {summary.generator_prompt_version})"
                                         if summary.generator_model else "")
        rows = [
            ("source", f"`{summary.source}` (split {summary.split}, {summary.input_schema} schema)"),
            ("generator", f"{summary.backend}: {generator}"),
            ("problems", f"{summary.distinct_problems:,} distinct; {summary.duplicates_collapsed:,} duplicate rows and "
                         f"{summary.near_duplicates_collapsed:,} near-duplicates collapsed before generation"),
            ("LLM calls saved by dedupe", summary.calls_saved_by_dedupe if summary.backend == "llm" else None),
            *[(name, _dataset_line(name, counts, None)) for name, counts in summary.datasets.items()],
            *common_tail,
            ("LLM", llm_line(summary.llm, "generated")),
            *timing,
        ]
        title = "# generate-prompts run"
    return "\n".join([title, "", *_table(rows), *_warnings(summary.warnings)]) + "\n"


def summary_description(summary: RunSummary | SyntheticSummary) -> str:
    counts = "; ".join(f"{name} {sum(c.values()):,} rows" for name, c in summary.datasets.items())
    warned = f", {len(summary.warnings)} warning(s)" if summary.warnings else ""
    return f"{summary.pipeline} run summary: {counts or 'no datasets'}{warned}"


# --- links ---------------------------------------------------------------------------------------


def folder_link(folder: str | Path) -> tuple[str, str]:
    """``(file:// URI, absolute path)`` of an output folder."""
    path = Path(folder).expanduser().resolve()
    return path.as_uri(), str(path)


def push_link(commit: Mapping[str, Any]) -> dict[str, str]:
    """The link artifact of one pushed repo (a ``PushResult.as_dict()``): the commit URL, the tag
    as its text, and the plots the commit holds linked at that commit."""
    url = str(commit["commit_url"])
    lines = [f"{commit['kind']} published to {'private' if commit.get('private') else 'public'} dataset "
             f"`{commit['repo_id']}` as tag `{commit['tag']}` ({len(commit.get('files') or [])} files)"]
    if "/commit/" in url:
        base = url.replace("/commit/", "/blob/", 1)
        plots = [f for f in commit.get("files") or [] if f.rsplit("/", 1)[-1].endswith(".png")]
        lines += [f"- plot [{f}]({base}/{f})" for f in plots]
    return {"key": publish_key(str(commit["kind"])), "link": url, "link_text": f"{commit['repo_id']} @ {commit['tag']}",
            "description": "\n".join(lines)}


# --- correlations --------------------------------------------------------------------------------


def correlation_rows(analysis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per pair and coefficient of :func:`kernelbook_lib.analysis.compute_analysis`; an
    undefined pair is one row saying why."""
    rows: list[dict[str, Any]] = []
    for name, _x, _y in PAIRS:
        pair = analysis["pairs"][name]
        if pair.get("undefined"):
            rows.append({"pair": name, "n": pair["n"], "coefficient": None, "value": None, "ci95 low": None,
                         "ci95 high": None, "p": None, "strength": None, "direction": None, "significant": None,
                         "corrected for attenuation": None, "note": pair["reason"]})
            continue
        for coefficient in ("pearson", "spearman", "kendall"):
            c = pair[coefficient]
            ci = c.get("ci95") or [None, None]
            rows.append({"pair": name, "n": pair["n"], "coefficient": coefficient, "value": round(c["r"], 4),
                         "ci95 low": None if ci[0] is None else round(ci[0], 4),
                         "ci95 high": None if ci[1] is None else round(ci[1], 4),
                         "p": c["p"], "strength": c["strength"], "direction": c["direction"],
                         "significant": c["significant"],
                         "corrected for attenuation": c.get("r_corrected") if coefficient == "pearson" else None,
                         "note": "unreliable grade: " + ", ".join(pair["unreliable"]) if pair.get("unreliable") else ""})
    return rows
