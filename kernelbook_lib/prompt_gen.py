"""Prompt generation: a task specification for every distinct PyTorch module of the source.

The original ``generate_prompts.py`` asked an LLM to turn each ``GPUMODE/KernelBook`` module into a
task specification and wrote ``(prompt, module_name, python_code)``. Here, in stages that each
account for every row (see :mod:`kernelbook_lib.ledger`):

1. ``load``: detect the input schema from the columns (KernelBook: ``module_name`` and
   ``python_code`` at top level; eval rollouts: ``info.module_name`` / ``info.python_code``),
   reject unusable rows with a reason (empty code or name, a name that is not a class name, code
   that does not parse or lacks the class), and compute ``problem_id`` (as in curate);
2. ``dedupe``: one row per problem, the first in source order; the repeats are recorded as
   ``duplicate_problem`` *before* any call is made (``--limit`` keeps the first N problems);
3. ``generate``: the LLM backend (one request per problem, made by the shared LLM machinery in
   ``tasks/llm.py``) or the offline template backend (:mod:`kernelbook_lib.prompt_template`).
   Every specification is validated (non-empty, names ``{module_name}New``, copies no reference
   code); an LLM reply that fails is an ``invalid_reply``: retried, then recorded.

Outputs (written by :func:`write_outputs`, never into curate's files): ``synthetic_prompts.jsonl``,
``synthetic/`` in Hub layout with its card, ``synthetic_rejected.jsonl`` and, last,
``synthetic_summary.json``. Dataset code is parsed, never executed.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kernelbook_lib import __version__, loading, schema
from kernelbook_lib.cards import render_dataset_card
from kernelbook_lib.errors import SchemaError, SourceUnavailableError, UserError
from kernelbook_lib import export
from kernelbook_lib.export import prepare_out_dir, write_jsonl, write_text
from kernelbook_lib.ledger import StageReport, StageResult, empty_rejections, rejections
from kernelbook_lib.llm import ledger_reason, LLMOutcome, LLMRequest, LLMTask, json_schema_response_format
from kernelbook_lib.prompt_template import (
    TEMPLATE_GENERATOR,
    ModuleNotUsable,
    check_module,
    parse_module,
    template_specification,
)
from kernelbook_lib.summary import check_chain, format_decontamination, format_families, format_llm, now_iso
from kernelbook_lib.text import problem_id

DEFAULT_SOURCE = "GPUMODE/KernelBook"
KERNELBOOK_SAMPLE_PATH = Path(__file__).parent / "data" / "kernelbook_sample.parquet"
SAMPLE_DESCRIPTION = "bundled synthetic KernelBook sample"
BACKENDS: tuple[str, ...] = ("auto", "llm", "template")
InputSchema = Literal["kernelbook", "eval"]

#: Change whenever the generator prompt, the reply format or the reply validation changes: it is
#: part of every cache key, so a reply accepted under other rules is never reused.
#: v2: the class name moved from the system prompt to the user message (a fixed system prompt).
GENERATOR_PROMPT_VERSION = "generate-v2"
#: The ``generator`` label of rows written by the LLM backend (the template's is TEMPLATE_GENERATOR).
LLM_GENERATOR = "llm"
#: The name of the JSON schema sent with every request (the loopback test server keys on it).
SPECIFICATION_SCHEMA_NAME = "specification"

STAGES: tuple[str, ...] = ("load", "families", "decontaminate", "dedupe", "generate")
PROMPTS_FILE = "synthetic_prompts.jsonl"
DATASET_DIR = "synthetic"
DATA_FILE = "data/train-*.parquet"  # a glob: the shard's name carries its content fingerprint
REJECTED_FILE = "synthetic_rejected.jsonl"
SUMMARY_FILE = "synthetic_summary.json"

# Ledger reasons.
REJECT_EMPTY_PYTHON_CODE = "empty_python_code"
REJECT_EMPTY_MODULE_NAME = "empty_module_name"
REJECT_INVALID_MODULE_NAME = "invalid_module_name"  # not a Python class name: `{name}New` would not be one
REJECT_DUPLICATE = "duplicate_problem"
REJECT_NEAR_DUPLICATE = "near_duplicate"  # another problem of the same near-duplicate family was kept
REJECT_BEYOND_LIMIT = "beyond_limit"
REJECT_TEMPLATE_INVALID = "template_invalid"  # the template's text failed validation (a bug)

#: The generated columns every output row carries, in order, before the provenance columns.
PROMPT_SCHEMA: dict[str, pl.DataType] = {
    "prompt": pl.String(),
    "module_name": pl.String(),
    "python_code": pl.String(),
    "problem_id": pl.String(),
    "family_id": pl.String(),
    "generator": pl.String(),
    "generator_model": pl.String(),
    "generator_prompt_version": pl.String(),
    "generator_prompt_tokens": pl.Int64(),
    "generator_completion_tokens": pl.Int64(),
}
_GENERATED = [c for c in PROMPT_SCHEMA if c not in ("module_name", "python_code", "problem_id", "family_id")]
#: One row per problem from a backend: the specification, or the reason it failed.
SPEC_SCHEMA: dict[str, pl.DataType] = {
    schema.ROW: pl.Int64(),
    **{c: PROMPT_SCHEMA[c] for c in _GENERATED},
    "_failure": pl.String(),
    "_failure_detail": pl.String(),
}


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


def _ledger(frame: pl.DataFrame, stage: str, reason: pl.Expr | str, detail: pl.Expr | str | None = None) -> pl.DataFrame:
    """Ledger lines (KernelBook rows have no ``example_id``: it is null for them)."""
    if "example_id" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("example_id"))
    return rejections(frame, stage, reason, detail)


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
    blank = lambda col: pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")  # noqa: E731
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
    result = StageResult.of("load", rows_in, kept, _ledger(bad, "load", pl.col("_reject"), pl.col("_reject_detail")))
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
    rejected = _ledger(
        others, "dedupe",
        pl.when(same_problem).then(pl.lit(REJECT_DUPLICATE)).otherwise(pl.lit(REJECT_NEAR_DUPLICATE)),
        pl.when(same_problem).then(pl.format("same problem as source row {}", pl.col("_first")))
        .otherwise(pl.format("same near-duplicate family as source row {} (problem {})", pl.col("_first"), pl.col("_kept_problem"))),
    )  # fmt: skip
    if limit is not None and kept.height > limit:
        beyond = kept.slice(limit)
        kept = kept.head(limit)
        rejected = pl.concat([rejected, _ledger(beyond, "dedupe", REJECT_BEYOND_LIMIT, f"--limit {limit}")])
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


# --- validation of a specification -----------------------------------------------------------

#: A reference code line this long (after stripping) must not appear verbatim in a specification.
MIN_VERBATIM_CHARS = 40
#: Nor may this many consecutive reference code lines (each at least MIN_WINDOW_LINE_CHARS long).
VERBATIM_WINDOW = 3
MIN_WINDOW_LINE_CHARS = 8
#: Nor this many consecutive lines of the listing (headers and imports included): a copy of
#: the source, even one made of short lines only.
LISTING_WINDOW = 5


class InvalidSpecification(ValueError):
    """A specification that must not be used (the LLM machinery retries it as invalid_reply)."""


def _squash(text: str) -> str:
    """A line with its runs of spaces and tabs collapsed to one space, stripped."""
    return " ".join(text.split())


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in ``body``, nested ones included (expressions are not visited: a
    statement walk is ~10x cheaper than ``ast.walk``)."""
    for node in body:
        yield node
        for name in ("body", "orelse", "finalbody"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                yield from _statements(inner)
        for handler in getattr(node, "handlers", None) or ():
            yield from _statements(handler.body)
        for case in getattr(node, "cases", None) or ():
            yield from _statements(case.body)


@dataclass(frozen=True)
class ReferenceLines:
    """The reference's lines a specification must not copy, squashed, in source order.

    ``code``: the lines that are code proper: not blank, a comment, an import, a docstring or
    other string statement, a decorator, or a ``def``/``class`` header (headers are the
    interface, which a specification states). ``listing``: every line that is not blank, a
    comment or a docstring (a window of these is a copy of the source itself)."""

    code: tuple[str, ...]
    listing: tuple[str, ...]


def reference_lines(python_code: str, tree: ast.Module | None = None) -> ReferenceLines:
    """:class:`ReferenceLines` of ``python_code`` (``tree``: its parse, when already made)."""
    lines = python_code.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    interface: set[int] = set()  # 1-based numbers of import, header and decorator lines
    strings: set[int] = set()  # docstrings and other string statements
    if tree is None:
        try:
            tree = ast.parse(python_code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
    if tree is not None:
        for node in _statements(tree.body):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                strings.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                interface.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                interface.update(range(start, node.body[0].lineno))  # header lines, up to the body
    else:  # unparseable: textual rules only
        for i, line in enumerate(lines, 1):
            if line.lstrip().startswith(("def ", "class ", "import ", "from ", "@", "async def ")):
                interface.add(i)
            elif line.lstrip().startswith(('"', "'")):
                strings.add(i)
    code, listing = [], []
    for i, line in enumerate(lines, 1):
        text = _squash(line)
        if not text or text.startswith("#") or i in strings:
            continue
        listing.append(text)
        if i not in interface:
            code.append(text)
    return ReferenceLines(tuple(code), tuple(listing))


def _names_class(spec: str, class_name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(class_name)}(?![A-Za-z0-9_])", spec) is not None


def _copied_window(lines: tuple[str, ...], size: int, text: str, min_chars: int = 0) -> tuple[str, ...] | None:
    """The first run of ``size`` consecutive ``lines`` (each at least ``min_chars`` long) that
    appears as consecutive lines of ``text`` (squashed, blank lines removed); a shorter
    ``lines`` counts as one run of all of them when it has at least two lines."""
    size = min(size, len(lines))
    if size < 2:
        return None
    for i in range(len(lines) - size + 1):
        window = lines[i : i + size]
        if all(len(line) >= min_chars for line in window) and "\n".join(window) in text:
            return window
    return None


def validate_specification(spec: str, module_name: str, python_code: str,
                           reference: ReferenceLines | None = None) -> None:
    """Raise :class:`InvalidSpecification` unless ``spec`` is non-empty, names
    ``{module_name}New`` and does not copy the reference code: no code line of at least
    :data:`MIN_VERBATIM_CHARS` characters, no :data:`VERBATIM_WINDOW` consecutive code lines,
    no :data:`LISTING_WINDOW` consecutive lines of the source. White space inside a line and
    blank lines do not hide a copy. ``reference``: :func:`reference_lines` of ``python_code``,
    when already computed."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidSpecification("the specification is empty")
    new = f"{module_name}New"
    if not _names_class(spec, new):
        raise InvalidSpecification(f"the specification does not name the class `{new}`")
    ref = reference if reference is not None else reference_lines(python_code)
    text = "\n".join(s for s in (_squash(line) for line in spec.replace("\r\n", "\n").split("\n")) if s)
    for line in ref.code:
        if len(line) >= MIN_VERBATIM_CHARS and line in text:
            raise InvalidSpecification(f"the specification copies a line of the reference code: {line[:80]!r}")
    window = _copied_window(ref.code, VERBATIM_WINDOW, text, MIN_WINDOW_LINE_CHARS)
    if window is not None:
        raise InvalidSpecification(f"the specification copies {len(window)} consecutive lines of the reference "
                                   f"code, starting {window[0][:60]!r}")
    window = _copied_window(ref.listing, LISTING_WINDOW, text)
    if window is not None:
        raise InvalidSpecification(f"the specification copies {len(window)} consecutive lines of the reference "
                                   f"source, starting {window[0][:60]!r}")


# --- the LLM backend: prompt, reply format, task ----------------------------------------------


class SpecificationReply(BaseModel):
    """The generator's reply: the specification as Markdown text."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specification: str = Field(min_length=1, description="The complete task specification, in Markdown.")


#: Built once at import and reused for every request.
SPECIFICATION_RESPONSE_FORMAT: dict[str, Any] = json_schema_response_format(SPECIFICATION_SCHEMA_NAME, SpecificationReply)
SPECIFICATION_JSON_SCHEMA: dict[str, Any] = SPECIFICATION_RESPONSE_FORMAT["json_schema"]["schema"]

# The system prompt is fixed (a provider's prefix cache serves it for every problem); the
# module's name, the new class's name and the code are in the user message.
GENERATOR_SYSTEM_PROMPT = """\
You turn PyTorch modules into programming tasks. Given a reference module, write the task
statement for an engineer who must build a replacement for it whose computation runs in Triton
kernels. The engineer never sees the reference, so the statement alone must be enough to build
a drop-in replacement that gives the same results.

Cover, in this order:
1. Purpose: what the module computes, in plain words (use formulas where they make it clearer).
2. Inputs: every argument of forward, with its meaning, its shape (name the dimensions, and
   give the example sizes when the reference's get_inputs() states them) and its dtype.
3. Outputs: what forward returns, with shape, dtype and meaning.
4. Interface: the new class is a torch.nn.Module with the name the request gives (the module's
   name followed by `New`); name it exactly so. Give its __init__ parameters (names, meaning,
   defaults) and the signature of forward.
5. Behaviour: the numerical results expected, edge cases (for example sizes of one, empty or
   uneven dimensions, extreme values, numerical stability), and any other guarantee the
   reference makes.
6. Implementation language: the work of forward must be done in custom Triton kernels.
7. Learnable parameters: only if the reference has any, list them with their shapes and how
   they are initialised, so the reference's weights can be loaded. If it has none, leave this
   part out.

Do not include:
- implementation choices: block or tile sizes, grid layout, memory access patterns, number of
  warps, or anything else the engineer should decide;
- code or pseudocode taken from the reference (describe what it does instead of quoting it);
- assumptions the reference does not support (do not invent limits on shapes, dtypes, devices
  or value ranges that the reference does not impose).

Reply with a JSON object with exactly one key, "specification", whose value is the complete
task statement in Markdown. If you cannot reply in JSON, put the statement between
<specification> and </specification> tags instead."""

GENERATOR_USER_TEMPLATE = """\
Module name: {module_name}
The new class must be named `{new_name}`.

Reference PyTorch module (complete source):
```python
{python_code}
```"""


def build_specification_messages(module_name: str, python_code: str) -> list[dict[str, str]]:
    """The chat messages of one request; ``python_code`` is sent in full (never truncated)."""
    return SPECIFICATION_TASK.messages(module_name=module_name, python_code=python_code)


# A reply wrapped in one Markdown code fence (some providers do that even in JSON mode).
_FENCED_RE = re.compile(r"\A```[A-Za-z]*\s*\n?(.*?)\n?```\Z", re.DOTALL)
_TAG_RE = re.compile(r"<specification>(.*?)</specification>", re.DOTALL | re.IGNORECASE)


def _from_tags(text: str) -> str | None:
    blocks = _TAG_RE.findall(text)
    if not blocks:
        return None
    if len(blocks) != 1:
        raise InvalidSpecification(f"expected exactly one <specification> block, found {len(blocks)}")
    return blocks[0]


def parse_specification_reply(content: str) -> str:
    """The specification in a reply: the JSON object's ``specification`` (the object may sit in
    one code fence), else the text between ``<specification>`` tags. Stripped; raises
    :class:`InvalidSpecification` for anything else, including an empty specification."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidSpecification("empty reply")
    text = content.strip()
    fenced = _FENCED_RE.match(text)
    candidate = fenced.group(1).strip() if fenced else text
    spec: str | None
    if candidate.startswith("{"):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError as exc:
            spec = _from_tags(text)
            if spec is None:
                raise InvalidSpecification(f"reply is not valid JSON: {exc.msg} at char {exc.pos}") from None
        else:
            try:
                spec = SpecificationReply.model_validate(data).specification
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "reply"
                raise InvalidSpecification(f"{where}: {first['msg']}") from None
    else:
        spec = _from_tags(text)
        if spec is None:
            raise InvalidSpecification("reply is neither a JSON object with a 'specification' nor <specification> tags")
    spec = spec.strip()
    if not spec:
        raise InvalidSpecification("the specification is empty")
    return spec


class SpecificationTask(LLMTask):
    """The prompt generator: one task specification per problem. Whether a reply names
    ``{module_name}New`` and copies no reference code depends on the problem, so its requests
    keep the module's name and code (``request.context``) for :meth:`parse`."""

    name = "generate"
    prompt_version = GENERATOR_PROMPT_VERSION
    system_prompt = GENERATOR_SYSTEM_PROMPT
    user_template = GENERATOR_USER_TEMPLATE
    response_format = SPECIFICATION_RESPONSE_FORMAT
    reply_model = SpecificationReply
    context_fields = ("module_name", "python_code")

    def messages(self, *, module_name: str, python_code: str) -> list[dict[str, str]]:  # type: ignore[override]
        return super().messages(module_name=module_name, new_name=f"{module_name}New", python_code=python_code)

    def request(self, model: str, *, module_name: str, python_code: str) -> LLMRequest:  # type: ignore[override]
        return super().request(model, module_name=module_name, python_code=python_code)

    def parse(self, reply: str, request: LLMRequest) -> dict[str, Any]:
        """The reply's specification, validated against the request's module (a failure is an
        ``invalid_reply``, which is retried)."""
        spec = parse_specification_reply(reply)
        validate_specification(spec, request.context["module_name"], request.context["python_code"])
        return {"specification": spec}


SPECIFICATION_TASK = SpecificationTask()


def specification_requests(frame: pl.DataFrame, model: str) -> list[LLMRequest]:
    """One :data:`SPECIFICATION_TASK` request per row (one row per problem after dedupe), with
    the full module."""
    return [
        SPECIFICATION_TASK.request(model, module_name=name, python_code=code)
        for name, code in frame.select(schema.MODULE_NAME, schema.PYTHON_CODE).iter_rows()
    ]


def failure_reason(kind: str | None) -> str:
    """The ledger reason of a problem whose specification could not be generated."""
    return ledger_reason("generate", kind)


def _spec_frame(rows: dict[str, list]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SPEC_SCHEMA)


def _empty_spec_rows() -> dict[str, list]:
    return {c: [] for c in SPEC_SCHEMA}


def llm_spec_rows(frame: pl.DataFrame, outcomes: list[LLMOutcome], model: str) -> pl.DataFrame:
    """Spec rows from the LLM outcomes (one per row of ``frame``, in order). A cached reply is
    validated again here, so every prompt written passed today's validation."""
    if len(outcomes) != frame.height:
        raise RuntimeError(f"{len(outcomes)} LLM outcomes for {frame.height} rows; refusing to guess")
    rows = _empty_spec_rows()
    columns = frame.select(schema.ROW, schema.MODULE_NAME, schema.PYTHON_CODE).iter_rows()
    for (row, name, code), outcome in zip(columns, outcomes):
        spec = failure = detail = None
        if outcome.ok:
            try:
                spec = SpecificationReply.model_validate(outcome.reply).specification
                validate_specification(spec, name, code)
            except (ValidationError, InvalidSpecification) as exc:
                spec, failure = None, failure_reason("invalid_reply")
                detail = f"cached reply fails validation ({str(exc).splitlines()[0]}); run again with --refresh"
        else:
            failure, detail = failure_reason(outcome.failure_kind), outcome.failure_detail
        ok = spec is not None
        rows[schema.ROW].append(row)
        rows["prompt"].append(spec)
        rows["generator"].append(LLM_GENERATOR)
        rows["generator_model"].append(model)
        rows["generator_prompt_version"].append(GENERATOR_PROMPT_VERSION)
        rows["generator_prompt_tokens"].append(outcome.prompt_tokens if ok else None)
        rows["generator_completion_tokens"].append(outcome.completion_tokens if ok else None)
        rows["_failure"].append(failure)
        rows["_failure_detail"].append(detail)
    return _spec_frame(rows)


# --- the template backend --------------------------------------------------------------------


def template_spec_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Spec rows from the offline template (deterministic; never executes the code). Its text is
    validated like an LLM reply; a failure is recorded (it would be a bug in the template)."""
    rows = _empty_spec_rows()
    for row, name, code in frame.select(schema.ROW, schema.MODULE_NAME, schema.PYTHON_CODE).iter_rows():
        spec = failure = detail = None
        try:
            tree = parse_module(code)  # parsed once for the template and the validation
            spec = template_specification(code, name, tree)
            validate_specification(spec, name, code, reference_lines(code, tree))
        except ModuleNotUsable as exc:
            spec, failure, detail = None, exc.reason, str(exc)
        except InvalidSpecification as exc:
            spec, failure, detail = None, REJECT_TEMPLATE_INVALID, str(exc)
        rows[schema.ROW].append(row)
        rows["prompt"].append(spec)
        rows["generator"].append(TEMPLATE_GENERATOR)
        rows["generator_model"].append(None)
        rows["generator_prompt_version"].append(TEMPLATE_GENERATOR)
        rows["generator_prompt_tokens"].append(None)
        rows["generator_completion_tokens"].append(None)
        rows["_failure"].append(failure)
        rows["_failure_detail"].append(detail)
    return _spec_frame(rows)


def apply_specs(frame: pl.DataFrame, specs: pl.DataFrame) -> StageResult:
    """The ``generate`` stage: join spec rows to problems; failed ones go to the ledger.
    Every problem must have exactly one spec row (anything else is a bug, and raises)."""
    unmatched = frame.join(specs, on=schema.ROW, how="anti").height
    if unmatched or specs.height != frame.height or specs.get_column(schema.ROW).n_unique() != specs.height:
        raise RuntimeError(f"{specs.height} specifications for {frame.height} problems ({unmatched} without one); "
                           "refusing to guess which are missing")
    joined = frame.join(specs, on=schema.ROW, how="left", maintain_order="left")
    failed = joined.filter(pl.col("_failure").is_not_null())
    generated = joined.filter(pl.col("_failure").is_null()).drop("_failure", "_failure_detail")
    return StageResult.of("generate", frame.height, generated,
                          _ledger(failed, "generate", pl.col("_failure"), pl.col("_failure_detail")))


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
