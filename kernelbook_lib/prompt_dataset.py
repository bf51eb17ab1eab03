"""The ``generate-prompts`` pipeline's data: reading a KernelBook (or eval) source, the
``load`` and ``dedupe`` stages' frame logic, the summary and the outputs (the file names are
here: ``synthetic_prompts.jsonl``, ``synthetic/``, ``synthetic_rejected.jsonl`` and, last,
``synthetic_summary.json``). What a specification is, how it is written and checked, is
:mod:`kernelbook_lib.prompt_gen`; the stages are :mod:`kernelbook_lib.pipelines.generate`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, model_validator

from kernelbook_lib import __version__, export, loading, schema
from kernelbook_lib.cards import render_dataset_card
from kernelbook_lib.errors import SchemaError, SourceUnavailableError, UserError
from kernelbook_lib.export import prepare_out_dir, write_jsonl, write_text
from kernelbook_lib.ledger import StageReport, StageResult, empty_rejections, rejections
from kernelbook_lib.prompt_gen import LLM_GENERATOR, PROMPT_SCHEMA
from kernelbook_lib.prompt_template import ModuleNotUsable, check_module
from kernelbook_lib.summary import check_chain, format_decontamination, format_families, format_llm, now_iso
from kernelbook_lib.text import problem_id

DEFAULT_SOURCE = "GPUMODE/KernelBook"
KERNELBOOK_SAMPLE_PATH = Path(__file__).parent / "data" / "kernelbook_sample.parquet"
SAMPLE_DESCRIPTION = "bundled synthetic KernelBook sample"
BACKENDS: tuple[str, ...] = ("auto", "llm", "template")
InputSchema = Literal["kernelbook", "eval"]
STAGES: tuple[str, ...] = ("load", "families", "decontaminate", "dedupe", "generate")
PROMPTS_FILE = "synthetic_prompts.jsonl"
DATASET_DIR = "synthetic"
DATA_FILE = "data/train-*.parquet"  # a glob: the shard's name carries its content fingerprint
REJECTED_FILE = "synthetic_rejected.jsonl"
SUMMARY_FILE = "synthetic_summary.json"
REJECT_EMPTY_PYTHON_CODE = "empty_python_code"
REJECT_EMPTY_MODULE_NAME = "empty_module_name"
REJECT_INVALID_MODULE_NAME = "invalid_module_name"  # not a Python class name: `{name}New` would not be one
REJECT_DUPLICATE = "duplicate_problem"
REJECT_NEAR_DUPLICATE = "near_duplicate"  # another problem of the same near-duplicate family was kept
REJECT_BEYOND_LIMIT = "beyond_limit"


# --- reading the source ----------------------------------------------------------------------


def read_prompt_source(source: str, split: str = "train") -> loading.LoadedSource:
    """``sample`` (the bundled KernelBook-schema sample), a local file or folder, or a Hub id."""
    if source == "sample":
        if not KERNELBOOK_SAMPLE_PATH.is_file():
            raise SourceUnavailableError(
                f"the bundled KernelBook sample is missing ({KERNELBOOK_SAMPLE_PATH}); regenerate it with "
                "`uv run python scripts/make_sample.py`"
            )
        loaded = loading.read_source(str(KERNELBOOK_SAMPLE_PATH), split)  # type: ignore[arg-type]
        return loading.LoadedSource(frame=loaded.frame, description=SAMPLE_DESCRIPTION)
    return loading.read_source(source, split)  # type: ignore[arg-type]


def _is_text(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Null)


def detect_schema(frame: pl.DataFrame) -> tuple[InputSchema, list[str]]:
    """Which input schema the frame has, from its columns, and any warning about the choice.

    KernelBook: top-level ``module_name`` and ``python_code`` strings. Eval rollouts: a struct
    column ``info`` with string fields ``module_name`` and ``python_code``. Anything else is a
    :class:`SchemaError` that lists the columns found."""
    found = [c for c in frame.columns if c not in schema.INTERNAL_COLUMNS]
    types = frame.schema

    def fail(problem: str) -> SchemaError:
        columns = ", ".join(f"{c} ({types[c]})" for c in found) or "none"
        return SchemaError(
            f"{problem}. Prompt generation reads the KernelBook schema (top-level columns module_name "
            "and python_code) or the eval schema (a struct column info with fields module_name and "
            f"python_code). Columns found: {columns}"
        )

    info_fields: dict[str, pl.DataType] = {}
    if "info" in types and isinstance(types["info"], pl.Struct):
        info_fields = {f.name: f.dtype for f in types["info"].fields}
    has_info = {"module_name", "python_code"} <= set(info_fields)
    if "module_name" in types and "python_code" in types:
        bad = [f"{c} is {types[c]}" for c in ("module_name", "python_code") if not _is_text(types[c])]
        if bad:
            raise fail("the KernelBook columns must be strings, but " + " and ".join(bad))
        warnings = []
        if has_info:
            warnings.append("the source has both top-level module_name/python_code and info.module_name/"
                            "info.python_code; the top-level columns (KernelBook schema) were used")
        return "kernelbook", warnings
    if has_info:
        bad = [f"info.{c} is {info_fields[c]}" for c in ("module_name", "python_code") if not _is_text(info_fields[c])]
        if bad:
            raise fail("the eval schema's fields must be strings, but " + " and ".join(bad))
        return "eval", []
    missing = [c for c in ("module_name", "python_code") if c not in types]
    if "info" in types:
        missing_info = [f"info.{c}" for c in ("module_name", "python_code") if c not in info_fields]
        raise fail(f"the source lacks {', '.join(missing)} and {', '.join(missing_info)}")
    raise fail(f"the source lacks column(s) {', '.join(missing)} (and has no info struct)")


# --- the load stage --------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedSource:
    """The ``load`` stage's result, plus what later stages and the summary need to know."""

    result: StageResult
    input_schema: InputSchema
    provenance: tuple[str, ...]  # source columns carried into the output after the generated ones
    warnings: tuple[str, ...] = ()


def prepare(loaded: loading.LoadedSource) -> PreparedSource:
    """The ``load`` stage: detect the schema, derive ``_row``/``_module_name``/``_python_code``
    and ``problem_id``, and reject unusable rows with a reason. Raises :class:`SchemaError`."""
    frame = loaded.frame
    if frame.height == 0:
        raise UserError(f"the source ({loaded.description}) has no rows")
    input_schema, warnings = detect_schema(frame)
    if input_schema == "kernelbook":
        name_expr, code_expr = pl.col("module_name"), pl.col("python_code")
        taken = set(PROMPT_SCHEMA)
        provenance = [c for c in frame.columns if c not in schema.INTERNAL_COLUMNS and c not in taken]
        replaced = [c for c in frame.columns if c in taken and c not in ("module_name", "python_code")]
        if replaced:
            warnings.append(f"source column(s) {replaced} are not carried into the output: generated columns "
                            "of the same name replace them")
    else:
        name_expr = pl.col("info").struct.field("module_name")
        code_expr = pl.col("info").struct.field("python_code")
        provenance = [c for c in ("example_id",) if c in frame.columns]
        info_fields = {f.name for f in frame.schema["info"].fields}  # type: ignore[union-attr]
        if "triton_code" in info_fields and "triton_code" not in frame.columns:
            frame = frame.with_columns(pl.col("info").struct.field("triton_code").cast(pl.String).alias("triton_code"))
            provenance.append("triton_code")
    rows_in = frame.height
    frame = frame.with_row_index(schema.ROW).with_columns(
        pl.col(schema.ROW).cast(pl.Int64),
        name_expr.cast(pl.String).alias(schema.MODULE_NAME),
        code_expr.cast(pl.String).alias(schema.PYTHON_CODE),
    )
    def blank(col: str) -> pl.Expr:
        return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")

    malformed = pl.col(schema.MALFORMED_LINE) if schema.MALFORMED_LINE in frame.columns else pl.lit(None, dtype=pl.String)
    reason = (
        pl.when(malformed.is_not_null()).then(pl.lit(loading.REJECT_MALFORMED_LINE))
        .when(blank(schema.PYTHON_CODE)).then(pl.lit(REJECT_EMPTY_PYTHON_CODE))
        .when(blank(schema.MODULE_NAME)).then(pl.lit(REJECT_EMPTY_MODULE_NAME))
        .when(~pl.col(schema.MODULE_NAME).str.contains(r"^[A-Za-z_][A-Za-z0-9_]*$"))
        .then(pl.lit(REJECT_INVALID_MODULE_NAME))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    frame = frame.with_columns(reason.alias("_reject"), malformed.alias("_reject_detail"))
    # Parse each distinct (name, code) once: it must parse and define the class it names.
    pairs = frame.filter(pl.col("_reject").is_null()).select(schema.MODULE_NAME, schema.PYTHON_CODE).unique(maintain_order=True)
    checks: dict[str, list] = {schema.MODULE_NAME: [], schema.PYTHON_CODE: [], "_check": [], "_check_detail": [], "problem_id": []}
    for name, code in pairs.iter_rows():
        try:
            check_module(code, name)
            failure, detail = None, None
        except ModuleNotUsable as exc:
            failure, detail = exc.reason, str(exc)
        checks[schema.MODULE_NAME].append(name)
        checks[schema.PYTHON_CODE].append(code)
        checks["_check"].append(failure)
        checks["_check_detail"].append(detail)
        checks["problem_id"].append(problem_id(code))
    checked = pl.DataFrame(checks, schema={schema.MODULE_NAME: pl.String, schema.PYTHON_CODE: pl.String,
                                           "_check": pl.String, "_check_detail": pl.String, "problem_id": pl.String})
    frame = frame.join(checked, on=[schema.MODULE_NAME, schema.PYTHON_CODE], how="left", maintain_order="left",
                       nulls_equal=False)
    frame = frame.with_columns(
        pl.coalesce("_reject", "_check").alias("_reject"),
        pl.when(pl.col("_reject").is_null()).then(pl.col("_check_detail")).otherwise(pl.col("_reject_detail")).alias("_reject_detail"),
    ).drop("_check", "_check_detail")
    bad = frame.filter(pl.col("_reject").is_not_null())
    # Later stages need the internal columns and the provenance only (for the eval schema this
    # leaves out the rollouts' chat messages, whose ``prompt`` column would clash with ours).
    kept = frame.filter(pl.col("_reject").is_null()).select(
        schema.ROW, schema.MODULE_NAME, schema.PYTHON_CODE, "problem_id", *provenance
    )
    result = StageResult.of("load", rows_in, kept, rejections(bad, "load", pl.col("_reject"), pl.col("_reject_detail")))
    return PreparedSource(result, input_schema, tuple(provenance), tuple(warnings))


# --- the dedupe stage ------------------------------------------------------------------------


def dedupe_problems(frame: pl.DataFrame, limit: int | None = None, key: str = "problem_id") -> StageResult:
    """One row per ``key`` (``problem_id``, or ``family_id`` for one specification per
    near-duplicate family): the first in source order. A later row of the same problem is
    recorded as ``duplicate_problem``, one of another problem of the same family as
    ``near_duplicate`` (detail: the kept row). With ``limit``, only the first ``limit`` are kept;
    the others are recorded as ``beyond_limit``."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of problems, not {limit}")
    if key not in ("problem_id", "family_id"):
        raise ValueError(f"key must be problem_id or family_id, not {key!r}")
    frame = frame.sort(schema.ROW).with_columns(pl.col(schema.ROW).min().over(key).alias("_first"))
    kept = frame.filter(pl.col(schema.ROW) == pl.col("_first")).drop("_first")
    others = frame.filter(pl.col(schema.ROW) != pl.col("_first")).join(
        kept.select(pl.col(schema.ROW).alias("_first"), pl.col("problem_id").alias("_kept_problem")), on="_first", how="left"
    )
    same_problem = pl.col("problem_id") == pl.col("_kept_problem")
    rejected = rejections(
        others, "dedupe",
        pl.when(same_problem).then(pl.lit(REJECT_DUPLICATE)).otherwise(pl.lit(REJECT_NEAR_DUPLICATE)),
        pl.when(same_problem).then(pl.format("same problem as source row {}", pl.col("_first")))
        .otherwise(pl.format("same near-duplicate family as source row {} (problem {})", pl.col("_first"), pl.col("_kept_problem"))),
    )  # fmt: skip
    if limit is not None and kept.height > limit:
        beyond = kept.slice(limit)
        kept = kept.head(limit)
        rejected = pl.concat([rejected, rejections(beyond, "dedupe", REJECT_BEYOND_LIMIT, f"--limit {limit}")])
    return StageResult.of("dedupe", frame.height, kept, rejected.sort("source_index"))


def calls_saved(dedupe: StageResult) -> int:
    """Repeated rows (same problem, or same family) whose kept row is generated (not cut by
    ``--limit``): each would have cost a call of its own. The detail names the kept row."""
    repeats = dedupe.rejected.filter(pl.col("reason").is_in([REJECT_DUPLICATE, REJECT_NEAR_DUPLICATE]))
    kept_row = repeats.get_column("detail").str.extract(r"source row (\d+)", 1).cast(pl.Int64)
    return int(kept_row.is_in(dedupe.frame.get_column(schema.ROW).implode()).sum())


def dedupe_summary(dedupe: StageResult, backend: str) -> dict[str, int]:
    """The summary's dedupe figures: distinct problems among the valid rows (before --limit),
    rows collapsed as repeats of a problem and as near-duplicates, and the LLM calls that saved
    (0 for the template backend)."""
    reasons = dedupe.report.dropped
    problems = pl.concat([dedupe.frame.select("problem_id"), dedupe.rejected.select("problem_id")])
    return {
        "distinct_problems": int(problems.get_column("problem_id").n_unique()),
        "duplicates_collapsed": reasons.get(REJECT_DUPLICATE, 0),
        "near_duplicates_collapsed": reasons.get(REJECT_NEAR_DUPLICATE, 0),
        "calls_saved_by_dedupe": calls_saved(dedupe) if backend == LLM_GENERATOR else 0,
    }



def generation_warnings(report: StageReport) -> list[str]:
    """A warning when some problems got no specification (they are in the ledger)."""
    failed = sum(report.dropped.values())
    if not failed:
        return []
    reasons = ", ".join(f"{reason} {count}" for reason, count in report.dropped.items())
    return [f"{failed} of {report.rows_in} problems got no specification ({reasons}); see {REJECTED_FILE}"]



# --- summary and outputs -----------------------------------------------------------------------


class SyntheticSummary(BaseModel):
    """``synthetic_summary.json``: what the prompt-generation run did (fields the dataset card,
    the publisher and the CLI read)."""

    pipeline: str = "generate-prompts"
    version: str = __version__
    source: str
    split: str
    limit: int | None = None
    input_schema: str
    backend: str  # the backend that ran: llm or template
    generator: str  # the row label: llm or template-ast-v2
    generator_model: str | None = None
    generator_prompt_version: str | None = None
    distinct_problems: int = Field(ge=0)
    duplicates_collapsed: int = Field(ge=0)
    near_duplicates_collapsed: int = Field(default=0, ge=0)
    calls_saved_by_dedupe: int = Field(ge=0)
    #: The families stage (as in curate's run summary) and the decontaminate stage (None when
    #: no benchmark was given).
    near_dup: dict[str, Any] | None = None
    decontamination: dict[str, Any] | None = None
    provenance_columns: list[str] = Field(default_factory=list)
    started_at: str
    finished_at: str
    stages: list[StageReport]
    datasets: dict[str, dict[str, int]] = Field(default_factory=dict)
    llm: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _chain(self) -> SyntheticSummary:
        check_chain(self.stages, STAGES)
        return self


def prepare_out(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and mark the prompt-generation outputs unfinished (remove an
    older ``synthetic_summary.json``). curate's files in the same folder are not touched."""
    return prepare_out_dir(out, SUMMARY_FILE)


def to_output(frame: pl.DataFrame, provenance: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """The published columns, in order: the generated ones, then the provenance columns."""
    ordered = frame.sort(schema.ROW)
    out = ordered.select(
        pl.col("prompt"),
        pl.col(schema.MODULE_NAME).alias("module_name"),
        pl.col(schema.PYTHON_CODE).alias("python_code"),  # unchanged from the source
        *[pl.col(c) for c in PROMPT_SCHEMA if c not in ("prompt", "module_name", "python_code")],
        *[pl.col(c) for c in provenance],
    )
    return out.cast({c: t for c, t in PROMPT_SCHEMA.items()})  # type: ignore[arg-type]


def write_dataset_folder(folder: Path, frame: pl.DataFrame, render_card) -> export.DataFiles:
    """``folder`` in Hub layout (a fingerprinted ``data/train-...parquet`` and the card
    ``render_card(data_files)``), swapped into place whole (:func:`export.write_dataset_folder`)."""
    return export.write_dataset_folder(folder, {"train": frame}, render_card)


def write_outputs(out: str | os.PathLike, summary_fields: dict, frame: pl.DataFrame, rejected: pl.DataFrame) -> SyntheticSummary:
    """Write every output of a run and return the final summary (written last).

    ``frame``: the generate stage's rows. ``summary_fields``: the SyntheticSummary fields except
    ``datasets`` and ``finished_at``."""
    out_path = Path(out)
    fields = dict(summary_fields)
    output = to_output(frame, fields.get("provenance_columns") or [])
    summary = SyntheticSummary(**fields, datasets={"synthetic": {"train": output.height}}, finished_at=now_iso())
    fields_json, columns = summary.model_dump(mode="json"), dict(output.schema)
    write_dataset_folder(out_path / DATASET_DIR, output, lambda files: render_dataset_card(
        "synthetic", fields_json, {"train": output.height}, data_files=files, columns=columns))
    write_jsonl(output, out_path / PROMPTS_FILE)
    write_jsonl(rejected.sort("source_index") if rejected.height else empty_rejections(), out_path / REJECTED_FILE)
    summary = summary.model_copy(update={"finished_at": now_iso()})
    write_text(out_path / SUMMARY_FILE, json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    return summary


def format_summary(summary: SyntheticSummary) -> str:
    """The stages as a short table, then the dedupe saving and the dataset size (for the CLI)."""
    lines = [f"{'stage':<9} {'in':>8} {'out':>8} {'dropped':>8}  reasons"]
    for stage in summary.stages:
        reasons = ", ".join(f"{reason} {count}" for reason, count in stage.dropped.items()) or "-"
        lines.append(f"{stage.name:<9} {stage.rows_in:>8} {stage.rows_out:>8} {sum(stage.dropped.values()):>8}  {reasons}")
    saved = f", {summary.calls_saved_by_dedupe} LLM calls saved" if summary.backend == LLM_GENERATOR else ""
    near = (f" (and {summary.near_duplicates_collapsed} near-duplicates: one prompt per family)"
            if summary.near_duplicates_collapsed else "")
    lines.append(f"dedupe: {summary.distinct_problems} distinct problems, {summary.duplicates_collapsed} duplicate rows "
                 f"collapsed{near} before generation{saved}")
    if summary.near_dup:
        lines.append(format_families(summary.near_dup))
    if summary.decontamination:
        lines += format_decontamination(summary.decontamination)
    lines.append(f"synthetic: train {summary.datasets.get('synthetic', {}).get('train', 0)} "
                 f"(generator {summary.generator_model or summary.generator})")
    if summary.llm:
        # format_llm words the count as "judged"; here the successes are generated prompts.
        lines.append(format_llm(summary.llm).replace("llm: judged", "llm: generated", 1))
    return "\n".join(lines)
