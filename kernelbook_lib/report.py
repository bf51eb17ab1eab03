"""The analysis as a Markdown report: tables in plain language, the plots, who judged the data.

:func:`render_report` only formats; the numbers come from
:func:`kernelbook_lib.analysis.compute_analysis` and :func:`kernelbook_lib.analysis.judge_info`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kernelbook_lib.analysis import ALPHA, PAIRS, STRENGTH_BANDS, STRONGEST_BAND

#: How each plot file is introduced in the report (unknown files get their name).
PLOT_CAPTIONS = {
    "correlation_analysis.png": "Correlations: scatter plots, reward by score, mean-reward heatmap",
    "joint_distribution.png": "Joint distribution of difficulty and style, coloured by reward",
    "reward_distribution.png": "Distribution of reward",
    "sft_lengths.png": "SFT sequence lengths (chat-formatted prompt + completion)",
}

COEFFICIENTS = (("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("kendall", "Kendall τ-b"))
PAIR_WORDS = {name: (x, y) for name, x, y in PAIRS}


def _cell(value: Any) -> str:
    """A value as a Markdown table cell: null spelled out, pipes escaped, line breaks flattened."""
    if value is None:
        return "*null*"
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _r(r: float) -> str:
    return f"{r:+.3f}"


def format_p(p: float) -> str:
    """A p-value readable at a glance: scientific below 0.001, 0 (underflow) as a bound."""
    if p == 0.0:
        return "< 1e-300"
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float) -> str:
    """``p = 0.012``, ``p = 3.65e-19``, or ``p < 1e-300`` when the p-value underflowed to 0."""
    return f"p {format_p(p)}" if p == 0.0 else f"p = {format_p(p)}"


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _band_legend() -> str:
    """The strength bands in words, from the same constants the analysis uses."""
    parts, lower = [], "0"
    for edge, inclusive, name in STRENGTH_BANDS:
        parts.append(f"{name} ({lower} ≤ |r| {'≤' if inclusive else '<'} {edge})")
        lower = str(edge)
    parts.append(f"{STRONGEST_BAND} (|r| > {lower})")
    return ", ".join(parts)


def _summary_sentence(name: str, pair: dict[str, Any]) -> str:
    x, y = PAIR_WORDS[name]
    if pair.get("undefined"):
        return f"- **{x.capitalize()} and {y}**: no correlation can be computed: {pair['reason']}."
    pearson = pair["pearson"]
    relation = (
        f"{pearson['strength']} {pearson['direction']} correlation"
        if pearson["direction"] != "none"
        else "no linear correlation"
    )
    verdict = f"{'' if pearson['significant'] else 'not '}statistically significant at α = {ALPHA} ({p_phrase(pearson['p'])})"
    return (
        f"- **{x.capitalize()} and {y}**: {relation} (Pearson r = {_r(pearson['r'])}, "
        f"95 % CI [{_r(pearson['ci95'][0])}, {_r(pearson['ci95'][1])}]), {verdict}; n = {pair['n']:,}."
    )


def _correlation_table(pairs: dict[str, Any]) -> list[str]:
    lines = [
        "| pair | n | coefficient | value | 95 % CI | p | strength | significant |",
        "|---|---:|---|---:|---|---:|---|---|",
    ]
    for name, _x, _y in PAIRS:
        pair = pairs[name]
        if pair.get("undefined"):
            lines.append(f"| {name} | {pair['n']:,} | – | undefined | – | – | {_cell(pair['reason'])} | – |")
            continue
        for key, label in COEFFICIENTS:
            c = pair[key]
            ci = f"[{_r(c['ci95'][0])}, {_r(c['ci95'][1])}]" if "ci95" in c else "–"
            strength = f"{c['strength']} {c['direction']}" if c["direction"] != "none" else c["strength"]
            significant = "yes" if c["significant"] else "no"
            lines.append(
                f"| {name} | {pair['n']:,} | {label} | {_r(c['r'])} | {ci} | {format_p(c['p'])} | {strength} | {significant} |"
            )
    return lines


def _level_table(rows: list[dict[str, Any]], column: str) -> list[str]:
    if not rows:
        return ["*No rows.*"]
    lines = [f"| {column} | n | mean reward | std reward |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['level']} | {r['n']:,} | {_num(r['mean'])} | {_num(r['std'])} |" for r in rows]
    return lines


def _values(entries: list[dict[str, Any]]) -> str:
    """``a (12 rows)``, or several such, comma-separated; null spelled out."""
    return ", ".join(
        f"{'*null*' if e['value'] is None else '`' + _cell(e['value']) + '`'} ({e['n']:,} rows)" for e in entries
    )


def _judge_section(judge_info: dict[str, Any]) -> list[str]:
    lines = ["## Judge", ""]
    labels = (("judge", "judge"), ("judge_model", "model"), ("judge_prompt_version", "prompt version"))
    several = [label for key, label in labels if len(judge_info.get(key, [])) > 1]
    if several:
        lines += [
            f"**The data was judged with more than one {' / '.join(several)}**: the scores below "
            "mix judgements that may not be comparable.",
            "",
        ]
    lines += ["| | value (rows) |", "|---|---|"]
    for key, label in labels:
        lines.append(f"| {label} | {_values(judge_info.get(key, [])) or '–'} |")
    if any(e["value"] is None for e in judge_info.get("judge_model", [])):
        lines += [
            "",
            "A *null* model and prompt version mean the static judge: a heuristic stand-in for an LLM "
            "judge that scores the syntax trees of the code. For those rows, read difficulty and style "
            "as rough structural signals, not as judgements of quality.",
        ]
    return lines


def _sft_section(lengths: dict[str, Any] | None) -> list[str]:
    """The length distribution of the SFT text (``analysis["sft_lengths"]``), if the rows have it."""
    if not lengths:
        return []
    form = lengths.get("completion")
    tokenizer = lengths.get("tokenizer")
    limit = lengths.get("max_tokens")
    lines = [
        "## SFT sequence lengths",
        "",
        f"The length of each row's chat-formatted prompt and completion (every message as `<|role|>\\n{{content}}\\n`), "
        f"with the completion in the form `{_cell(form) if form else 'not recorded'}`; percentiles by nearest rank "
        "(p90 is the smallest length that 90 % of rows do not exceed). "
        + (f"Tokens by `{_cell(tokenizer)}` (sha256 `{_cell(lengths.get('tokenizer_sha256'))}`), without special tokens. " if tokenizer
           else "No tokenizer was given: characters only. ")
        + (f"Rows of more than {limit:,} tokens were rejected as `too_long` ({lengths.get('too_long') or 0:,} rows) and are not counted here."
           if limit else "No length limit was applied."),
        "",
        "| length | n | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("chars", "characters"), ("tokens", "tokens")):
        stats = lengths.get(key)
        if stats:
            lines.append(f"| {label} | {stats['n']:,} | {stats['p50']:,} | {stats['p90']:,} | {stats['p99']:,} | {stats['max']:,} |")
    if not lengths.get("chars"):
        lines.append("| characters | 0 | – | – | – | – |")
    by_form = lengths.get("chars_by_form") or {}
    if by_form:
        lines += ["", "Characters of the judged rows in each completion form (`--completion`; before any `--max-sft-tokens`):", "",
                  "| completion form | n | p50 | p90 | p99 | max |", "|---|---:|---:|---:|---:|---:|"]
        for form, stats in by_form.items():
            if stats:
                lines.append(f"| `{form}`{' (this dataset)' if form == lengths.get('completion') else ''} | {stats['n']:,} | "
                             f"{stats['p50']:,} | {stats['p90']:,} | {stats['p99']:,} | {stats['max']:,} |")
    return [*lines, ""]


def _reliability_section(analysis: dict[str, Any]) -> list[str]:
    """How far the judge agreed with itself and with the other judges, and the correlations with
    reward corrected for it (only when rows had several verdicts)."""
    reliability = analysis.get("reliability")
    if not reliability:
        return []
    from kernelbook_lib.reliability import UNRELIABLE_BELOW, format_reliability

    lines = ["## Judge reliability", "",
             f"Measured on the {reliability['rows_measured']:,} rows with several verdicts (ordinal Krippendorff's alpha, "
             f"bootstrap 95 % interval over rows; a grade with alpha below {UNRELIABLE_BELOW} is marked UNRELIABLE).", "",
             "```", *format_reliability(reliability), "```", "",
             "| pair | Pearson r | corrected for attenuation | reliability used | unreliable grade |", "|---|---:|---:|---|---|"]
    for name, _x, _y in PAIRS:
        pair = analysis["pairs"][name]
        if pair.get("undefined") or "reliability" not in pair:
            continue
        corrected = pair["pearson"].get("r_corrected")
        used = ", ".join(f"{c} {v}" for c, v in pair["reliability"].items() if c != "reward")
        lines.append(f"| {name} | {_r(pair['pearson']['r'])} | {'–' if corrected is None else _r(corrected)} | {used or '–'} | "
                     f"{', '.join(pair['unreliable']) or 'none'} |")
    return [*lines, ""]


def render_report(
    analysis: dict[str, Any],
    plot_paths: list[Path] | list[str],
    judge_info: dict[str, Any],
    *,
    relative_to: Path | None = None,
    embed_images: bool = True,
) -> str:
    """The Markdown report.

    ``plot_paths`` are embedded relative to ``relative_to`` (the report's folder; by default the
    plots are assumed to sit next to the report and are linked by file name). With
    ``embed_images=False`` the plots are listed by path instead (for places that cannot load
    local images, e.g. a Prefect artifact).
    """
    n = analysis["n"]
    splits = judge_info.get("splits") or []
    split_text = " (" + ", ".join(f"{e['value']}: {e['n']:,}" for e in splits) + ")" if splits else ""
    lines = [
        "# Difficulty, style and reward: analysis of the judged dataset",
        "",
        f"**n = {n:,} rows**{split_text}: every row of the judged dataset; none was dropped.",
        "",
        *([
            "**No rows**: the judged dataset is empty, so there is nothing to correlate and no plots. "
            "The run summary (`run_summary.json`) and `rejected.jsonl` say why every row was dropped.",
            "",
        ] if n == 0 else []),
        *_judge_section(judge_info),
        "",
        "## Summary",
        "",
        *(_summary_sentence(name, analysis["pairs"][name]) for name, _x, _y in PAIRS),
        "",
        "## Correlations",
        "",
        f"Strength of |r|: {_band_legend()}. *Significant* means a two-sided p-value below "
        f"{ALPHA}. The 95 % interval of Pearson's r uses Fisher's z transformation (it is [-1, 1] "
        "for n ≤ 3). Kendall's coefficient is tau-b, which accounts for the many tied 0-10 scores. "
        "A pair is *undefined* when it has fewer than 3 rows or a column holds a single value.",
        "",
        *_correlation_table(analysis["pairs"]),
        "",
        *_reliability_section(analysis),
        "## Reward by difficulty",
        "",
        *_level_table(analysis["by_difficulty"], "difficulty"),
        "",
        "## Reward by style",
        "",
        *_level_table(analysis["by_style"], "style"),
        "",
        "Standard deviations are sample standard deviations (– for a level with one row).",
        "",
        *_sft_section(analysis.get("sft_lengths")),
        "## Plots",
        "",
    ]
    for path in map(Path, plot_paths):
        caption = PLOT_CAPTIONS.get(path.name, path.name)
        link = (os.path.relpath(path, relative_to) if relative_to is not None else path.name).replace(os.sep, "/")
        if embed_images:
            lines += [f"### {caption}", "", f"![{caption}]({link})", ""]
        else:
            lines += [f"- {caption}: `{path}`"]
    return "\n".join(lines).rstrip() + "\n"
