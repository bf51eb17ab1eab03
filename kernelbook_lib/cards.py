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
  method, rows per stage, columns, the correlation summary and the analysis plots (the
  paragraphs of how the data was made are written by :mod:`kernelbook_lib.card_sections`).

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
from kernelbook_lib.card_sections import (
    _cell,
    _is_hub_id,
    _judged_body,
    _synthetic_body,
    _table,
    public_source,  # noqa: F401  (re-exported: decontam and hub import it from here)
)
from kernelbook_lib.errors import UserError

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
    "completion": "the model's reply as the SFT target, in the completion form the card names under **SFT format** (`full`: as in the source, `reasoning` in its own field); the Triton solution is inside `<answer>...</answer>` of the assistant message",
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
    "completion_original": "the source's completion, untouched (`{role, content, reasoning}`), when `completion` was rewritten (`--completion answer` or `reasoning-inline`)",
    "sft_chars": "characters of the row's chat-formatted text: every prompt message, then every completion message, as `<|role|>\\n{content}\\n`",
    "sft_tokens": "tokens of the same text by the tokenizer the card names (no special tokens added); null when the run was given no `--tokenizer`",
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


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def _require(summary: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in summary]
    if missing:
        raise UserError(f"the {what} lacks field(s) {missing}; re-run the flow that writes it")


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


# --- the card ------------------------------------------------------------------------------

#: A plot to embed: its path in the repo (``images/...``) and its caption.
Image = tuple[str, str]


def _columns_table(kind: str, columns: Mapping[str, pl.DataType] | None) -> str:
    cols = columns if columns is not None else DECLARED_COLUMNS[kind]
    docs = {**COLUMN_DOCS, **SYNTHETIC_COLUMN_DOCS} if kind == "synthetic" else COLUMN_DOCS
    rows = [[f"`{name}`", f"`{format_dtype(dtype)}`", docs.get(name, "(not documented)")] for name, dtype in cols.items()]
    return _table(["column", "type", "meaning"], rows)


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
