"""The Markdown sections of a dataset card's body, written from the run summary.

How the data was made (source, filter, kernel screen, judge, SFT format, dedupe rule, the split by
near-duplicate family or by problem, decontamination, the prompt generator), the rows per stage,
the correlation table of the analysis and the run's warnings, as paragraphs that
:mod:`kernelbook_lib.cards` puts together with the metadata into whole cards.
:func:`public_source` is the source as it may be published.

Only named fields of the summary are shown (never the whole summary), and nothing here reads
settings, so no key or token can reach a card.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelbook_lib.errors import UserError
from kernelbook_lib.loading import describe_source

# Dedupe ranking as implemented by ``kernelbook_lib.stages.dedupe``; keep the two in step.
DEDUPE_RULE = (
    "the row with the highest `score = reward * difficulty * style`; ties go to the higher "
    "`reward`, then the lower `example_id`, then the earlier row of the source"
)



# --- small formatting helpers --------------------------------------------------------------


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a local path (the loader's rule: :func:`loading.is_hub_id`)."""
    from kernelbook_lib.loading import is_hub_id

    return is_hub_id(source)


def public_source(source: str) -> str:
    """The source as it may be published: a Hub id, ``sample``, or a local file's name only
    (a local absolute path says nothing to a reader and may expose the machine's user name)."""
    if source == "sample" or _is_hub_id(source):
        return source
    return source.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or source


def _source_text(source: str) -> str:
    """The source sentence of a card."""
    if source == "sample":
        return f"the {describe_source(source)} of kernelbook-curator (not real eval data)"
    if _is_hub_id(source):
        return f"[`{source}`](https://huggingface.co/datasets/{source})"
    return f"a local copy (`{public_source(source)}`)"


def _fmt_r(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) else "-"


def _fmt_p(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


# --- body sections -------------------------------------------------------------------------


def _judge_section(summary: Mapping[str, Any]) -> str:
    judge = summary["judge"]
    model = summary.get("judge_model")
    if model:
        version = summary.get("judge_prompt_version") or "not recorded"
        text = (
            f"`difficulty` (0-10, how hard the problem is as a Triton kernel) and `style` (0-10, the "
            f"quality of the solution as code to learn from) were graded by the LLM judge `{model}` "
            f"with prompt version `{version}`. The judge saw the full PyTorch module and the full "
            "solution (nothing truncated). Rows whose judgement failed are not in the dataset; they "
            "are counted in the judge stage below with their reason."
        )
        usage = summary.get("llm") or {}
        # Only numbers (calls, tokens, cost) are shown; nothing else of the LLM block is public.
        numbers = [[k, v] for k, v in usage.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            text += "\n\n" + _table(["LLM usage", "value"], numbers)
        return text
    return (
        f"`difficulty` and `style` come from `{judge}`, a **heuristic stand-in** for an LLM judge: a "
        "deterministic score computed from the syntax trees of the PyTorch module and of the Triton "
        "solution (the code is parsed, never run). No model graded these rows. Read the two columns "
        "as rough structural signals, not as judgements of quality; `judge_rationale` says what "
        "each score was based on."
    )


def _stages_table(summary: Mapping[str, Any]) -> str:
    rows = []
    for stage in summary["stages"]:
        dropped = stage.get("dropped") or {}
        reasons = ", ".join(f"{reason}: {count}" for reason, count in dropped.items()) or "-"
        rows.append([stage["name"], stage["rows_in"], stage["rows_out"], sum(dropped.values()), reasons])
    return _table(["stage", "rows in", "rows out", "dropped", "reasons"], rows)


def _analysis_section(analysis: Mapping[str, Any]) -> str:
    pairs = analysis.get("pairs")
    if not isinstance(pairs, Mapping):
        raise UserError("the analysis (analysis.json) has no 'pairs' table; re-run the analyze flow")
    rows = []
    for name, pair in pairs.items():
        label = name.replace("~", " ~ ")
        if pair.get("undefined"):
            rows.append([label, pair.get("n", "-"), f"undefined: {pair.get('reason', 'no reason given')}", "", "", ""])
            continue
        pearson, spearman, kendall = (pair.get(m) or {} for m in ("pearson", "spearman", "kendall"))
        ci = pearson.get("ci95")
        ci_text = f" [{_fmt_r(ci[0])}, {_fmt_r(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        strength = f" ({pearson['strength']})" if "strength" in pearson else ""
        rows.append(
            [
                label,
                pair.get("n", "-"),
                f"{_fmt_r(pearson.get('r'))}{ci_text}{strength}",
                _fmt_p(pearson.get("p")),
                f"{_fmt_r(spearman.get('r'))} (p {_fmt_p(spearman.get('p'))})",
                f"{_fmt_r(kendall.get('r'))} (p {_fmt_p(kendall.get('p'))})",
            ]
        )
    return (
        f"Computed by the `analyze` flow over the n = {analysis.get('n', '-')} judged rows of the "
        "`filtered` dataset (both splits). Pearson with its 95 % interval (Fisher z), Spearman and "
        "Kendall tau-b; p-values are two-sided.\n\n"
        + _table(["pair", "n", "Pearson r [95% CI]", "p", "Spearman rho", "Kendall tau"], rows)
    )


def _judged_body(kind: str, summary: Mapping[str, Any], splits: Mapping[str, int], analysis: Mapping[str, Any] | None) -> list[str]:
    threshold = summary["threshold"]
    parts = []
    if kind == "filtered":
        parts.append(
            f"Every rollout whose reward is above {threshold}, judged for difficulty and style. Several "
            "rollouts of the same problem can appear; the `unique` dataset keeps the best one per problem."
        )
    else:
        parts.append(
            f"One rollout per problem: the best judged rollout among those whose reward is above {threshold}."
        )
    parts.append("## How the data was made")
    limit = summary.get("limit")
    source_line = f"**Source.** Split `{summary['split']}` of {_source_text(str(summary['source']))}."
    if limit is not None:
        source_line += f" Test mode: only the first {limit} rows that passed the filter were kept."
    parts.append(source_line)
    parts.append(
        f"**Filter.** Rows with `reward > {threshold}` (strict). Rows that could not be used (for example "
        "a reply without `<answer>` tags) are never dropped silently: each is counted with its reason "
        "in the stage table below."
    )
    parts += screen_paragraphs(summary)
    parts.append("**Judge.** " + _judge_section(summary))
    group_by = summary["group_by"]
    if group_by == "problem_id":
        key = "problem (`problem_id`, a hash of the normalised PyTorch reference code)"
    elif group_by == "family_id":
        key = "near-duplicate family (`family_id`, see below)"
    else:
        key = (
            f"`{group_by}` (the original project's grouping: different problems that share a class "
            "name are merged)"
        )
    dedupe = f"**Dedupe (`unique`).** One row per {key}: {DEDUPE_RULE}."
    if kind == "filtered":
        dedupe += " The `filtered` dataset itself is not deduplicated."
    parts.append(dedupe)
    parts += families_paragraphs(summary)
    parts += sft_paragraphs(summary)
    parts += reliability_paragraphs(summary)
    last = "sft" if summary.get("sft") else "judge"
    parts.append(
        f"**Rows per stage.** The `filtered` dataset is the output of `{last}`, split as above; the "
        "`unique` dataset is the output of `dedupe`, split the same way.\n\n" + _stages_table(summary)
    )
    parts += _warnings(summary)
    if analysis is not None:
        parts.append("## Correlations of difficulty, style and reward")
        parts.append(_analysis_section(analysis))
        if analysis.get("sft_lengths"):
            parts.append("## SFT sequence lengths")
            parts.append(sft_lengths_section(analysis["sft_lengths"]))
    return parts


#: What the assistant message holds in each completion form (kernelbook_lib.sft; keep in step).
COMPLETION_FORMS = {
    "full": (
        "as in the source: each message is `{role, content, reasoning}`, the reasoning in its own field (chat "
        "templates that read only `content` do not train on it; `--completion reasoning-inline` puts it in the content)"
    ),
    "answer": (
        "one assistant message whose content is the answer block only, `<answer>\\n{solution}\\n</answer>` (the "
        "solution as the screen and the judge read it, code fences kept); the reasoning and the text around the block "
        "are dropped, and the source's messages are in `completion_original`"
    ),
    "reasoning-inline": (
        "every message as `{role, content}`; an assistant message with reasoning has it as a `<think>\\n...\\n</think>` "
        "block before its content; the source's messages are in `completion_original`"
    ),
}


def reliability_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    """The judge's reliability, when rows had several verdicts (``--judge-samples``, a panel)."""
    report = summary.get("judge_reliability")
    if not report:
        return []
    from kernelbook_lib.reliability import format_reliability

    sample = report.get("reliability_sample")
    where = f"a seeded random {sample} rows" if sample else "every row"
    text = (
        "## Judge reliability\n\n"
        f"Judges {', '.join(f'`{j}`' for j in report.get('judges_asked') or report['judges'])}, "
        f"{report.get('samples', 1)} sample(s) each, asked on {where}; measured on the {report['rows_measured']} rows with several "
        "verdicts (`judge_verdicts` keeps every verdict; `difficulty` and `style` are their lower median). Ordinal "
        "Krippendorff's alpha with a bootstrap 95 % interval; below 0.4 a grade is UNRELIABLE."
        + (f" {report['verdicts_missing']} extra verdicts could not be had (failed calls)." if report.get("verdicts_missing") else "")
        + "\n\n```\n" + "\n".join(format_reliability(report)) + "\n```"
    )
    return [text]


def sft_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    """The SFT format of a judged dataset: the completion form, how lengths are counted, the limit."""
    report = summary.get("sft")
    if not report:
        return []
    form = report.get("completion")
    text = (
        "**SFT format.** `prompt` and `completion` are lists of `{role, content}` messages, the conversational "
        f"prompt-completion format SFT trainers (TRL's `SFTTrainer`) read. Completion form `{form}`: "
        f"{COMPLETION_FORMS.get(str(form), 'not documented')}. Every row has an answer: a reply without "
        "`<answer>...</answer>` was rejected at load (`missing_answer`)."
    )
    text += (
        f" `sft_chars` counts the characters of each row's chat-formatted text (format `{report.get('chat_format')}`: "
        "every prompt message, then every completion message, as `<|role|>\\n{content}\\n`; a tokenizer file has no "
        "chat template, so the model's own template adds a few tokens per message)."
    )
    tokenizer = report.get("tokenizer")
    if tokenizer:
        text += (
            f" `sft_tokens` counts its tokens by `{_cell(tokenizer)}` (sha256 `{report.get('tokenizer_sha256')}`), "
            "without special tokens."
        )
    else:
        text += " `sft_tokens` is null: the run was given no tokenizer."
    limit = report.get("max_tokens")
    if limit:
        text += f" Rows of more than {limit} tokens were rejected as `too_long` ({report.get('too_long', 0)} rows), before dedupe."
    else:
        text += " No length limit was applied."
    return [text]


def sft_lengths_section(lengths: Mapping[str, Any]) -> str:
    """The analysis' length percentiles (nearest rank) of the dataset's SFT text."""
    rows = []
    for key, label in (("chars", "characters"), ("tokens", "tokens")):
        stats = lengths.get(key)
        if stats:
            rows.append([label, stats["n"], stats["p50"], stats["p90"], stats["p99"], stats["max"]])
    return (
        f"Length of the chat-formatted prompt and completion (completion form `{lengths.get('completion')}`) over the "
        f"n = {lengths.get('n', '-')} rows of the `filtered` dataset; percentiles by nearest rank.\n\n"
        + _table(["length", "n", "p50", "p90", "p99", "max"], rows)
    )


def screen_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    """The kernel screen of a judged dataset's card: what it rejected and flagged, and its rates
    by reward band (a rate that rises with the reward is the signature of reward hacking)."""
    report = summary.get("screen")
    if not report:
        return [
            "**Kernel screen.** Off (`--screen off`): solutions were not checked for being Triton "
            "kernels, and `kernel_flags` is null. A reward only says the outputs matched in the eval "
            "harness; it does not say the work was done by a Triton kernel."
        ]
    rejected = report.get("rejected") or {}
    flagged = report.get("flagged") or {}
    strict = report.get("mode") == "strict"
    text = (
        f"**Kernel screen.** Before the judge, every solution was read (parsed, never run) by the kernel "
        f"screen `{report.get('version')}` in `{report.get('mode')}` mode, which follows what the solution's "
        "`forward` executes by default. Of {rows} rows, {clean} are clean Triton kernels and {kept_flagged} were "
        "kept with flags in `kernel_flags` ({flags}); {n_rejected} were rejected as not a Triton kernel "
        "({kinds}) and are listed with their evidence in `rejected.jsonl`."
    ).format(
        rows=report.get("rows", 0), clean=report.get("kept_clean", 0), kept_flagged=report.get("kept_flagged", 0),
        flags=", ".join(f"`{k}` {v}" for k, v in flagged.items()) or "none",
        n_rejected=sum(rejected.values()), kinds=", ".join(f"`{k}` {v}" for k, v in rejected.items()) or "none",
    )
    text += (
        " In strict mode rows flagged `partial`, `fallback` or `library` were rejected too."
        if strict else
        " A flag `partial:<ops>` means a kernel runs but the named operations of the reference stay in "
        "PyTorch; `fallback:device`, a non-CUDA branch computes with PyTorch; `library:<name>`, a library "
        "does part of the work. Filter on `kernel_flags` for kernels only."
    )
    bands = report.get("by_reward_band") or []
    if bands:
        text += "\n\n" + _table(
            ["reward", "rows", "rejected", "flagged"],
            [[b["band"], b["rows"], f"{b['rejected_rate']:.1%}", f"{b['flagged_rate']:.1%}"] for b in bands],
        )
    text += (
        "\n\nThe screen sees only what the code says: outputs that are wrong but pass, or precision "
        "tricks inside a kernel, show only when the kernel runs."
    )
    return [text]


def _synthetic_body(summary: Mapping[str, Any]) -> list[str]:
    model = summary.get("generator_model")
    version = summary.get("generator_prompt_version") or "not recorded"
    generator = summary.get("generator") or "not recorded"
    limit = summary.get("limit")
    source_line = f"**Source.** Split `{summary['split']}` of {_source_text(str(summary['source']))}."
    if limit is not None:
        source_line += f" Test mode: only the first {limit} problems were used."
    if model:
        made_by = "generated by an LLM. The prompts are **synthetic** (model-written)."
        generator_line = (
            f"**Generator.** `{model}` with prompt version `{version}`. The full module was sent (nothing "
            "truncated); every reply was checked (it names the new class and copies no reference code), "
            "and rows whose generation failed are not in the dataset and are counted in the stage table below."
        )
    else:
        made_by = (f"written **without a model** by `{generator}`, a deterministic template. The prompts are "
                   "**synthetic**.")
        generator_line = (
            f"**Generator.** `{generator}`: the class name, the `__init__` parameters, the `forward` signature, "
            "the input shapes of `get_inputs()` when they are literals, the operations used and the learnable "
            "parameters, read from the module's syntax tree (the code is parsed, never run). What the source "
            "does not state is said to be unknown, not guessed."
        )
    dedupe = summary.get("duplicates_collapsed")
    parts = [
        "Task specifications for SFT: each row pairs a PyTorch module from KernelBook "
        f"(`module_name`, `python_code`, unchanged) with a `prompt` describing the kernel to write, {made_by}",
        "## How the data was made",
        source_line,
        generator_line,
    ]
    if dedupe is not None:
        parts += synthetic_families_paragraphs(summary)
    parts.append("**Rows per stage.**\n\n" + _stages_table(summary))
    return parts + _warnings(summary)


def _near_dup_sentence(near_dup: Mapping[str, Any]) -> str:
    """What the families stage did, in figures, and how it decides (by its normalisation)."""
    figures = (
        f"Near-duplicate modules were grouped into families: {near_dup.get('problems', 0)} problems in "
        f"{near_dup.get('families', 0)} families; {near_dup.get('problems_in_shared_families', 0)} problems are in a "
        f"family of more than one, and the largest family has {near_dup.get('largest_family', 0)}. "
    )
    if near_dup.get("normalization") == "neardup-v1":
        return figures + (
            "Two modules are one family when the Jaccard similarity of their normalised forms (normalisation "
            "`neardup-v1`: imports, docstrings, comments, the `get_inputs` harness and names the module defines "
            f"itself left out or made canonical, numbers made one token) is at least {near_dup.get('threshold')}, "
            "found with MinHash and LSH and confirmed exactly; a family is a connected group of such pairs."
        )
    return figures + (
        f"Two modules are linked when the similarity of what their `forward` computes is at least "
        f"{near_dup.get('threshold')} (normalisation `{near_dup.get('normalization')}`: the operations `forward` runs, "
        "following the module's own layers and helpers, each spelling of an operation made one, names, constants, "
        "shapes, the harness and dead code left out; found with MinHash and LSH and confirmed exactly), and a "
        f"module joins a family only when it is linked to every member ({near_dup.get('linkage', 'complete')} "
        "linkage), so two different modules are never joined through a third."
    )


def families_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    """The split paragraph (by family, or by problem) and, when there were any, the
    decontamination paragraph of a judged dataset's card."""
    near_dup = summary.get("near_dup") or {}
    seed, fraction = summary["seed"], summary["val_fraction"]
    if near_dup.get("enabled"):
        split = (
            f"**Split.** Train/validation by near-duplicate family, not by row or problem. {_near_dup_sentence(near_dup)} "
            "Each family is named by its smallest `problem_id` (`family_id`; a problem without near-duplicates is "
            f"its own family), and goes to validation when SHA-256 of `\"{seed}:<family_id>\"` falls in the first "
            f"{fraction:.0%} of the hash range, otherwise to train (so about that share of families, not exactly). "
            "All rollouts of all problems of a family share one split, so no module has a near-copy on the other "
            "side, and a family's split is the same in `filtered` and `unique`."
        )
    else:
        split = (
            f"**Split.** Train/validation by problem, not by row: each `problem_id` goes to validation when "
            f"SHA-256 of `\"{seed}:<problem_id>\"` falls in the first {fraction:.0%} "
            "of the hash range, otherwise to train (so about that share of problems, not exactly). All "
            "rollouts of a problem share one split, so no problem is in both, and a problem's split is the "
            "same in `filtered` and `unique`. Near-duplicate grouping was off (`--no-near-dup`): two problems "
            "that differ only in names or comments can sit on both sides."
        )
    return [split, *_decontamination_paragraphs(summary)]


def _decontamination_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    report = summary.get("decontamination") or {}
    benchmarks = report.get("benchmarks") or []
    if not benchmarks:
        return []
    rows = [[f"`{b['source']}`", b["items"], b["rows_removed"], b["problems_removed"]] for b in benchmarks]
    return [
        "**Decontamination.** Rows whose PyTorch module is a near-duplicate (same normalisation "
        f"`{report.get('normalization')}`, similarity at least {report.get('threshold')}) of an item of these "
        "evaluation benchmarks were removed before judging (reason `contaminated`); a row matching several "
        "counts for the first.\n\n" + _table(["benchmark", "items", "rows removed", "problems removed"], rows)
    ]


def synthetic_families_paragraphs(summary: Mapping[str, Any]) -> list[str]:
    """The dedupe paragraph of the synthetic dataset's card (per family or per problem)."""
    near_dup = summary.get("near_dup") or {}
    repeats = summary.get("duplicates_collapsed")
    if near_dup.get("enabled"):
        text = (
            f"**Dedupe.** One prompt per near-duplicate family (`family_id`), the first module of the family in "
            f"source order: {repeats} repeated rows and {summary.get('near_duplicates_collapsed', 0)} near-duplicates "
            f"were collapsed before generation. {_near_dup_sentence(near_dup)}"
        )
    else:
        text = (f"**Dedupe.** One prompt per problem (`problem_id`, a hash of the normalised module code): "
                f"{repeats} repeated rows were collapsed before generation.")
    return [text, *_decontamination_paragraphs(summary)]


def _warnings(summary: Mapping[str, Any]) -> list[str]:
    warnings = summary.get("warnings") or []
    if not warnings:
        return []
    return ["**Warnings of the run.**\n\n" + "\n".join(f"- {_cell(w)}" for w in warnings)]
