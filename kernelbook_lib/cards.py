"""Dataset cards (``README.md``) for the published datasets, generated from the run summary.

A card is never written by hand: :func:`render_dataset_card` builds it from the run summary
(``run_summary.json`` or ``synthetic_summary.json``), the split counts and, when available, the
correlation analysis. It has two parts:

* metadata built with ``huggingface_hub``'s ``DatasetCardData``: ``configs`` (the exact data
  file of each split, never a glob), ``dataset_info`` (split sizes, only when the byte sizes are
  known, because ``datasets`` ignores a ``splits`` entry without ``num_bytes``), licence, task
  category, size category, ``annotations_creators``, source datasets and tags; a card made from
  the bundled sample says so in its title and tags, a card of statically judged rows says in its
  title that the scores are heuristic;
* a Markdown body saying how the data was made: source, filter, judge, dedupe rule, split
  method, rows per stage, columns, the correlation summary and the analysis plots.

Every card is read back with ``DatasetCard.load`` (and ``datasets``' reader of ``configs``)
before it is returned. :func:`render_combined_card` builds the card of one repo holding
several datasets as configs.

Only named fields of the summary are shown (never the whole summary), and nothing here reads
settings, so no key or token can reach a card.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from huggingface_hub import DatasetCard, DatasetCardData

from kernelbook_lib import __version__, schema
from kernelbook_lib.errors import UserError
from kernelbook_lib.loading import describe_source

Kind = Literal["filtered", "unique", "synthetic"]
KINDS: tuple[str, ...] = ("filtered", "unique", "synthetic")

#: The splits each kind of dataset must have (the curate flow splits 90/10 by problem; the
#: prompt generator writes a single ``train`` split).
EXPECTED_SPLITS: dict[str, tuple[str, ...]] = {
    "filtered": ("train", "validation"),
    "unique": ("train", "validation"),
    "synthetic": ("train",),
}

#: The columns the prompt generator writes (at least these).
SYNTHETIC_SCHEMA: dict[str, pl.DataType] = {
    "prompt": pl.String(),
    "module_name": pl.String(),
    "python_code": pl.String(),
}

#: The declared columns of each kind of dataset, in order.
DECLARED_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "filtered": {**schema.SOURCE_SCHEMA, **schema.JUDGED_SCHEMA},
    "unique": {**schema.SOURCE_SCHEMA, **schema.JUDGED_SCHEMA},
    "synthetic": SYNTHETIC_SCHEMA,
}

#: What each known column holds (the columns table of the card).
COLUMN_DOCS: dict[str, str] = {
    "example_id": "index of the problem in the eval run (several rollouts share it)",
    "prompt": "the chat messages given to the model (the task)",
    "completion": "the model's reply; the Triton solution is inside `<answer>...</answer>` of the assistant message",
    "task": "environment task name",
    "reward": "the eval environment's score for the rollout (correctness and speedup)",
    "generation_ms": "eval timing: generation (ms)",
    "scoring_ms": "eval timing: scoring (ms)",
    "total_ms": "eval timing: total (ms)",
    "info": "`module_name` (PyTorch class name), `python_code` (PyTorch reference module), `triton_code` (reference Triton translation)",
    "answer": "the eval's answer field",
    "speedup_reward": "the speedup part of the reward",
    "num_turns": "turns in the rollout",
    "oai_tools": "unused (null)",
    "problem_id": "first 16 hex digits of SHA-256 of the normalised PyTorch reference code (`info.python_code`)",
    "family_id": "the problem's near-duplicate family: the smallest `problem_id` among the modules that copy one another (its own `problem_id` when it has no near-duplicate); the split is by family",
    "kernel_flags": "the kernel screen's flags for the solution: empty for a clean Triton kernel; `partial:<ops>` (these operations of the reference stay in PyTorch), `fallback:device` / `fallback:input` (some inputs or devices take a PyTorch path), `library:<name>`, `precision:<dtype>`, `timing:<what>`; null when the run used `--screen off`",
    "difficulty": "judged difficulty of the problem, 0-10",
    "style": "judged quality of the Triton solution, 0-10",
    "judge": "which judge produced `difficulty` and `style`",
    "judge_model": "the LLM judge's model (null for the static judge)",
    "judge_prompt_version": "the LLM judge's prompt/rubric version (null for the static judge)",
    "judge_rationale": "the judge's short justification of both grades",
    "judge_prompt_tokens": "prompt tokens of the judge call (null for the static judge)",
    "judge_completion_tokens": "completion tokens of the judge call (null for the static judge)",
    "score": "`reward * difficulty * style` (the ranking used by the dedupe step)",
    "module_name": "the PyTorch class name (from KernelBook)",
    "python_code": "the PyTorch reference module (from KernelBook), unchanged",
}

#: Where a synthetic dataset's column means something else than the judged datasets' one.
SYNTHETIC_COLUMN_DOCS: dict[str, str] = {
    "prompt": "the generated task specification (by the generator named in `generator`)",
    "problem_id": "first 16 hex digits of SHA-256 of the normalised PyTorch reference code (`python_code`)",
    "family_id": "the module's near-duplicate family: the smallest `problem_id` among the modules that copy one another (one prompt per family by default)",
    "generator": "what wrote `prompt`: `llm`, or `template-ast-v2` (deterministic, from the module's syntax tree, no model)",
    "generator_model": "the LLM's model name (null for the template)",
    "generator_prompt_version": "the generator's prompt/template version",
    "generator_prompt_tokens": "prompt tokens of the generator call (null for the template)",
    "generator_completion_tokens": "completion tokens of the generator call (null for the template)",
    "triton_code": "the reference Triton translation from the source (torch inductor)",
    "uuid": "the KernelBook row id (of the first row of the problem)",
    "repo_name": "the GitHub repository the module comes from (KernelBook provenance)",
    "repo_link": "the repository's URL (KernelBook provenance)",
    "licenses": "the repository's licence(s) as KernelBook lists them (unverified)",
    "stars": "the repository's stars (KernelBook provenance)",
    "sha": "the repository commit (KernelBook provenance)",
    "entry_point": "the module's entry point (KernelBook)",
}

# Dedupe ranking as implemented by ``kernelbook_lib.stages.dedupe``; keep the two in step.
DEDUPE_RULE = (
    "the row with the highest `score = reward * difficulty * style`; ties go to the higher "
    "`reward`, then the lower `example_id`, then the earlier row of the source"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PRETTY = {
    "filtered": "KernelBook GLM-4 evals, filtered and judged",
    "unique": "KernelBook GLM-4 evals, one best rollout per problem",
    "synthetic": "KernelBook synthetic task prompts",
}


# --- small formatting helpers --------------------------------------------------------------


def format_dtype(dtype: pl.DataType) -> str:
    """A compact, readable type: ``list<struct<role: string, content: string>>``."""
    if isinstance(dtype, pl.List):
        return f"list<{format_dtype(dtype.inner)}>"
    if isinstance(dtype, pl.Struct):
        return "struct<" + ", ".join(f"{f.name}: {format_dtype(f.dtype)}" for f in dtype.fields) + ">"
    return repr(dtype).lower()


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a local path (the loader reads an existing path first)."""
    return (
        bool(_HUB_ID.match(source))
        and not source.endswith((".parquet", ".jsonl", ".json"))
        and not Path(source).expanduser().exists()
    )


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


def _require(summary: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in summary]
    if missing:
        raise UserError(f"the {what} lacks field(s) {missing}; re-run the flow that writes it")


def _fmt_r(value: Any) -> str:
    return f"{value:+.3f}" if isinstance(value, (int, float)) else "-"


def _fmt_p(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


# --- YAML header ---------------------------------------------------------------------------


def is_sample(summary: Mapping[str, Any]) -> bool:
    """Built from the bundled synthetic sample (not real eval data)."""
    return str(summary.get("source", "")) == "sample"


def is_heuristic(kind: str, summary: Mapping[str, Any]) -> bool:
    """Judged rows whose scores come from the static judge, not an LLM."""
    return kind != "synthetic" and not summary.get("judge_model")


def title_notes(kind: str, summary: Mapping[str, Any]) -> list[str]:
    """What a reader must know before anything else (it goes into the title)."""
    notes = []
    if is_sample(summary):
        notes.append("built from the bundled synthetic sample, not real data")
    if is_heuristic(kind, summary):
        notes.append("heuristic scores, no LLM judge")
    return notes


def _with_notes(text: str, notes: list[str]) -> str:
    return f"{text} ({'; '.join(notes)})" if notes else text


def card_tags(kind: str, summary: Mapping[str, Any]) -> list[str]:
    tags = ["triton", "gpu-kernels", "pytorch", "code", "sft"]
    if kind == "synthetic" or is_sample(summary):
        tags.append("synthetic")
    if kind != "synthetic":
        tags.append("heuristic-judged" if is_heuristic(kind, summary) else "llm-judged")
    return tags


def config_entry(config_name: str, data_files: Mapping[str, list[str]], *, default: bool = False) -> dict[str, Any]:
    """One ``configs`` entry listing exactly the given files of each split (never a glob)."""
    entry: dict[str, Any] = {"config_name": config_name}
    if default:
        entry["default"] = True
    entry["data_files"] = [
        {"split": split, "path": paths[0] if len(paths) == 1 else list(paths)} for split, paths in data_files.items()
    ]
    return entry


def _dataset_info(config_name: str, splits: Mapping[str, int], split_bytes: Mapping[str, int]) -> dict[str, Any]:
    return {
        "config_name": config_name,
        "splits": [
            {"name": split, "num_bytes": int(split_bytes[split]), "num_examples": int(count)}
            for split, count in splits.items()
        ],
        "dataset_size": int(sum(split_bytes[s] for s in splits)),
    }


def _check_data_files(splits: Mapping[str, int], data_files: Mapping[str, list[str]]) -> None:
    if set(data_files) != set(splits) or not all(data_files.values()):
        raise ValueError(f"data_files must list files for exactly the splits {sorted(splits)}, got {dict(data_files)}")


def card_metadata(
    kind: str,
    summary: Mapping[str, Any],
    splits: Mapping[str, int],
    data_files: Mapping[str, list[str]],
    split_bytes: Mapping[str, int] | None = None,
) -> DatasetCardData:
    """The card's metadata (``configs`` lists the exact shard of each split)."""
    _check_data_files(splits, data_files)
    data_files = {split: list(data_files[split]) for split in splits}
    source = str(summary.get("source", ""))
    return DatasetCardData(
        pretty_name=_with_notes(_PRETTY[kind], title_notes(kind, summary)),
        # The rows mix code from many public GitHub repositories (each under its own licence) with
        # model output; nobody has verified the terms, so the card says so instead of guessing.
        license="other",
        license_name="unverified-mixed",
        language=["en"],
        annotations_creators=["machine-generated"],
        task_categories=["text-generation"],
        size_categories=[_size_category(sum(splits.values()))],
        source_datasets=[source] if _is_hub_id(source) else None,
        tags=card_tags(kind, summary),
        configs=[config_entry("default", data_files)],
        # ``datasets`` checks num_examples against the data when it loads the folder or repo; it
        # ignores a ``splits`` entry without num_bytes, so without byte sizes there is none.
        dataset_info=_dataset_info("default", splits, split_bytes) if split_bytes is not None else None,
    )


def check_card(text: str, data: DatasetCardData) -> None:
    """Read ``text`` back the way the Hub's own tools do (``DatasetCard.load`` from a file); a
    card that does not round-trip is a bug.

    That ``datasets`` reads the ``configs`` (names, files, splits) as written is checked by the
    tests, which load every kind of folder and repository with ``datasets.load_dataset``; doing
    it here too imported ``datasets`` in every run (0.75 s of CPU, 2.7 s where modules are not
    compiled) for nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "README.md"
        path.write_text(text, encoding="utf-8")
        loaded = DatasetCard.load(path)
    if loaded.data.to_dict() != data.to_dict():
        raise ValueError(f"the card's metadata does not read back the same: {loaded.data.to_dict()} != {data.to_dict()}")


def _build_card(data: DatasetCardData, body: str) -> str:
    text = str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
    check_card(text, data)
    return text



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


def _columns_table(kind: str, columns: Mapping[str, pl.DataType] | None) -> str:
    cols = columns if columns is not None else DECLARED_COLUMNS[kind]
    docs = {**COLUMN_DOCS, **SYNTHETIC_COLUMN_DOCS} if kind == "synthetic" else COLUMN_DOCS
    rows = [[f"`{name}`", f"`{format_dtype(dtype)}`", docs.get(name, "(not documented)")] for name, dtype in cols.items()]
    return _table(["column", "type", "meaning"], rows)


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
    parts.append(
        "**Rows per stage.** The `filtered` dataset is the output of `judge`, split as above; the "
        "`unique` dataset is the output of `dedupe`, split the same way.\n\n" + _stages_table(summary)
    )
    parts += _warnings(summary)
    if analysis is not None:
        parts.append("## Correlations of difficulty, style and reward")
        parts.append(_analysis_section(analysis))
    return parts


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


# --- the card ------------------------------------------------------------------------------

#: A plot to embed: its path in the repo (``images/...``) and its caption.
Image = tuple[str, str]


def _images_section(images: Sequence[Image]) -> list[str]:
    if not images:
        return []
    parts = ["## Plots", "Drawn by the `analyze` flow from the same rows as the table above."]
    for path, caption in images:
        parts.append(f"**{_cell(caption)}**\n\n![{_cell(caption)}]({path})")
    return parts


def _check_summary(kind: str, summary: Mapping[str, Any], splits: Mapping[str, int]) -> dict[str, int]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if set(splits) != set(EXPECTED_SPLITS[kind]):
        raise ValueError(f"{kind} needs splits {list(EXPECTED_SPLITS[kind])}, got {list(splits)}")
    if kind == "synthetic":
        _require(summary, ("source", "split", "stages"), "prompt-generation summary")
    else:
        _require(
            summary,
            ("source", "split", "threshold", "judge", "group_by", "seed", "val_fraction", "stages"),
            "run summary",
        )
    return {split: splits[split] for split in EXPECTED_SPLITS[kind]}  # the published order


def _generated_line(kind: str, summary: Mapping[str, Any]) -> str:
    version = summary.get("version", __version__)
    finished = summary.get("finished_at")
    pipeline = summary.get("pipeline", "generate" if kind == "synthetic" else "curate")
    generated = f"Generated by kernelbook-curator {version} from the `{pipeline}` run"
    return generated + (f" finished at {finished}." if finished else ".")


def _load_snippet(repo_id: str, config: str | None = None) -> str:
    args = f'"{repo_id}"' + (f', "{config}"' if config else "")
    return f"```python\nfrom datasets import load_dataset\n\nds = load_dataset({args})\n```"


def _kind_sections(
    kind: str,
    summary: Mapping[str, Any],
    splits: Mapping[str, int],
    analysis: Mapping[str, Any] | None,
    columns: Mapping[str, pl.DataType] | None,
    images: Sequence[Image],
    snippet: str | None,
) -> list[str]:
    """The body of one dataset: what it is, its splits, how it was made, plots, columns."""
    body = _synthetic_body(summary) if kind == "synthetic" else _judged_body(kind, summary, splits, analysis)
    parts = [body[0], _table(["split", "rows"], [[split, count] for split, count in splits.items()])]
    if snippet:
        parts.append(snippet)
    parts += body[1:]
    if kind != "synthetic" and analysis is not None:
        parts += _images_section(images)
    parts.append("## Columns")
    parts.append(_columns_table(kind, columns))
    return parts


_LICENCE = (
    "Not verified. The PyTorch modules come from public GitHub repositories via KernelBook (each "
    "under its own licence) and the Triton code and prompts are model output. Check the upstream "
    "datasets' terms before you redistribute or train on this data."
)


def render_dataset_card(
    kind: Kind,
    summary: dict,
    splits: dict[str, int],
    analysis: dict | None = None,
    repo_id: str | None = None,
    *,
    data_files: Mapping[str, list[str]],
    split_bytes: Mapping[str, int] | None = None,
    columns: Mapping[str, pl.DataType] | None = None,
    images: Sequence[Image] = (),
) -> str:
    """The dataset card (``README.md`` text) of one output dataset, checked by a round trip.

    ``kind``: ``filtered``, ``unique`` or ``synthetic``. ``summary``: the run summary as a dict
    (``run_summary.json``; ``synthetic_summary.json`` for ``synthetic``). ``splits``: rows per
    split, e.g. ``{"train": 80, "validation": 9}``. ``data_files``: the exact files of each split,
    relative to the dataset folder (the card lists them, never a glob). ``analysis``:
    ``analysis.json`` of the analyze flow (adds the correlation table) and ``images`` its plots
    as ``(path in the repo, caption)``; the caller checks they belong to this run. ``repo_id``:
    the Hub repository (in the title, and a loading snippet). ``split_bytes``: Arrow bytes per
    split; with it the metadata carries ``dataset_info``, which ``datasets`` checks the row
    counts against. ``columns``: the actual column names and types (default: the declared
    schema of ``kind``).
    """
    splits = _check_summary(kind, summary, splits)
    if split_bytes is not None and set(split_bytes) != set(splits):
        raise ValueError(f"split_bytes covers {sorted(split_bytes)}, splits are {sorted(splits)}")
    data = card_metadata(kind, summary, splits, data_files, split_bytes)
    parts = [
        f"# {_with_notes(repo_id or _PRETTY[kind], title_notes(kind, summary))}",
        f"> {_generated_line(kind, summary)} This card is written by the pipeline; edit the pipeline, not the card.",
    ]
    snippet = _load_snippet(repo_id) if repo_id else None
    parts += _kind_sections(kind, summary, splits, analysis, columns, images, snippet)
    parts += ["## Licence", _LICENCE]
    return _build_card(data, "\n\n".join(parts) + "\n")


@dataclass(frozen=True)
class CardPart:
    """One dataset of a single-repo card: its config is named after ``kind`` and its files sit
    under ``kind/`` in the repo (``data_files`` are relative to the repo root)."""

    kind: str
    summary: Mapping[str, Any]
    splits: Mapping[str, int]
    data_files: Mapping[str, list[str]]
    split_bytes: Mapping[str, int] | None = None
    columns: Mapping[str, pl.DataType] | None = None
    analysis: Mapping[str, Any] | None = None
    images: Sequence[Image] = field(default_factory=tuple)


def _demote(text: str) -> str:
    """Headings one level down (a dataset's sections inside its config's section)."""
    return re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)


def render_combined_card(repo_id: str, parts: Sequence[CardPart]) -> str:
    """The card of one dataset repo holding several datasets as configs (``--single-repo``):
    ``filtered`` (the default config), ``unique`` and ``synthetic``, each with its own splits,
    files and account of how it was made; checked by a round trip like every card."""
    if not parts or len({p.kind for p in parts}) != len(parts):
        raise ValueError(f"one part per kind is needed, got {[p.kind for p in parts]}")
    checked = [(p, _check_summary(p.kind, p.summary, p.splits)) for p in parts]
    for part, splits in checked:
        _check_data_files(splits, part.data_files)
    notes = list(dict.fromkeys(n for p, _ in checked for n in title_notes(p.kind, p.summary)))
    tags = list(dict.fromkeys(t for p, _ in checked for t in card_tags(p.kind, p.summary)))
    sources = list(dict.fromkeys(str(p.summary.get("source", "")) for p, _ in checked))
    infos = [_dataset_info(p.kind, s, p.split_bytes) for p, s in checked if p.split_bytes is not None]
    data = DatasetCardData(
        pretty_name=_with_notes("KernelBook GLM-4 evals: " + ", ".join(p.kind for p in parts), notes),
        license="other",
        license_name="unverified-mixed",
        language=["en"],
        annotations_creators=["machine-generated"],
        task_categories=["text-generation"],
        size_categories=[_size_category(max(sum(s.values()) for _, s in checked))],
        source_datasets=[s for s in sources if _is_hub_id(s)] or None,
        tags=tags,
        configs=[
            config_entry(p.kind, {split: list(p.data_files[split]) for split in s}, default=i == 0)
            for i, (p, s) in enumerate(checked)
        ],
        dataset_info=infos if len(infos) == len(parts) else None,
    )
    overview = _table(
        ["config", "rows", "what"],
        [[f"`{p.kind}`", ", ".join(f"{split} {n}" for split, n in s.items()), _PRETTY[p.kind]] for p, s in checked],
    )
    body = [
        f"# {_with_notes(repo_id, notes)}",
        "> " + " ".join(_generated_line(p.kind, p.summary) for p, _ in checked)
        + " This card is written by the pipeline; edit the pipeline, not the card.",
        f"One dataset repo, {len(parts)} configs (the first is the default):",
        overview,
        _load_snippet(repo_id, parts[0].kind),
    ]
    for part, splits in checked:
        body.append(f"## Config `{part.kind}`")
        sections = _kind_sections(
            part.kind, part.summary, splits, part.analysis, part.columns, part.images, _load_snippet(repo_id, part.kind)
        )
        body += [_demote(section) for section in sections]
    body += ["## Licence", _LICENCE]
    return _build_card(data, "\n\n".join(body) + "\n")
