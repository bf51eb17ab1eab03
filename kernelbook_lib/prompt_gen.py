"""Task specifications: what the ``generate-prompts`` pipeline writes for each PyTorch module.

The original ``generate_prompts.py`` asked an LLM to turn each ``GPUMODE/KernelBook`` module into a
task specification. Here a specification is written by the LLM backend (:data:`SPECIFICATION_TASK`:
the prompt, the reply format, the reply's parse; its calls are made by the shared LLM machinery in
``tasks/llm/``) or by the offline template backend (:mod:`kernelbook_lib.prompt_template`), and
every one is validated (non-empty, names ``{module_name}New``, copies no reference code); an LLM
reply that fails is an ``invalid_reply``: retried, then recorded. :func:`apply_specs` is the
``generate`` stage's frame logic. Reading the source, the other stages and the outputs are
:mod:`kernelbook_lib.prompt_dataset`. Dataset code is parsed, never executed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kernelbook_lib import schema
from kernelbook_lib.ledger import StageResult, rejections
from kernelbook_lib.llm import ledger_reason, LLMOutcome, LLMRequest, LLMTask, json_schema_response_format
from kernelbook_lib.prompt_template import (
    TEMPLATE_GENERATOR,
    ModuleNotUsable,
    parse_module,
    template_specification,
)


#: Change whenever the generator prompt, the reply format or the reply validation changes: it is
#: part of every cache key, so a reply accepted under other rules is never reused.
#: v2: the class name moved from the system prompt to the user message (a fixed system prompt).
GENERATOR_PROMPT_VERSION = "generate-v2"
#: The ``generator`` label of rows written by the LLM backend (the template's is TEMPLATE_GENERATOR).
LLM_GENERATOR = "llm"
#: The name of the JSON schema sent with every request (the loopback test server keys on it).
SPECIFICATION_SCHEMA_NAME = "specification"


# Ledger reasons.
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
                          rejections(failed, "generate", pl.col("_failure"), pl.col("_failure_detail")))

