"""Load the eval rollouts (bundled sample, local file or folder, or a Hub dataset) and
validate them once, at entry.

Validation has two levels, like patito: the *frame* must have the declared columns with
compatible types (otherwise a :class:`SchemaError` ends the run naming what is missing and the
columns found), and each *row* must be usable (otherwise it is rejected with a counted reason,
never silently dropped). Dataset code is only read as text here, never executed.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.errors import SchemaError, SourceUnavailableError, UserError
from kernelbook_lib.ledger import StageResult, rejections
from kernelbook_lib.progress import Progress
from kernelbook_lib.text import extract_answer, problem_id

from kernelbook_lib.defaults import DEFAULT_SOURCE, SplitName  # noqa: F401  (re-exported: loading.DEFAULT_SOURCE, loading.SplitName)

SAMPLE_PATH = Path(__file__).parent / "data" / "evals_sample.parquet"
SPLITS: tuple[str, ...] = ("train", "validation")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
#: Endings that make a source a file name, never a Hub id (a Hub repo is not named like a file).
_FILE_SUFFIXES = (*_DATA_SUFFIXES, ".ndjson", ".csv", ".tsv", ".arrow", ".feather", ".txt", ".gz", ".zst")
SourceKind = Literal["sample", "local", "hub"]

# The reasons a row is rejected at entry, checked in this order (a row gets the first).
REJECT_REWARD_NULL = "reward_null"
REJECT_REWARD_NAN = "reward_nan"
REJECT_EMPTY_PYTHON_CODE = "empty_python_code"
REJECT_EMPTY_MODULE_NAME = "empty_module_name"
REJECT_EXAMPLE_ID_NULL = "example_id_null"
REJECT_EMPTY_COMPLETION = "empty_completion"
REJECT_MISSING_ANSWER = "missing_answer"
#: A line of a JSONL source that is not a JSON object (rejected before every other reason).
REJECT_MALFORMED_LINE = "malformed_line"


@dataclass(frozen=True)
class LoadedSource:
    """The raw rows of the chosen split(s), with ``_row`` and ``_source_split`` added."""

    frame: pl.DataFrame
    description: str  # where the rows came from, for the summary and the dataset card


# --- reading ---------------------------------------------------------------------------


def describe_source(source: str) -> str:
    return "bundled synthetic sample" if source == "sample" else source


def path_like_reason(source: str) -> str | None:
    """Why ``source`` names a local path rather than a Hub dataset id, or None if it does not.

    The rule: a Hub id is exactly ``owner/name`` (one ``/``, no leading ``.``, ``/`` or ``~``, not
    named like a file). So ``./x``, ``../x``, ``~/x``, ``/x``, ``data/sub/x`` (two or more
    ``/``), ``x/`` (a trailing ``/``), anything with a ``\\``, and anything ending in a
    data-file extension (``mydata/evals.parquet``, ``evals.jsonl``) are paths, while
    ``siro1/kernelbook-glm4-evals`` and ``ScalingIntelligence/KernelBench`` are Hub ids."""
    if source.startswith((".", "/", "~")):
        return f"it starts with {source[0]!r}"
    if "\\" in source:
        return "it contains a path separator"
    if source.endswith("/"):
        return "it ends with '/'"
    if source.count("/") >= 2:
        return "it has more than one '/' (a Hub id is owner/name)"
    suffix = next((s for s in _FILE_SUFFIXES if source.lower().endswith(s)), None)
    if suffix:
        return f"it ends with {suffix}"
    return None


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is read as a Hub dataset id: ``owner/name``, not ``sample``, not an
    existing path and not path-like (:func:`classify_source`'s rule, without raising)."""
    return (
        source != "sample" and bool(source.strip()) and not Path(source).expanduser().exists()
        and path_like_reason(source) is None and bool(_HUB_ID.match(source))
    )


def classify_source(source: str, option: str = "--source") -> SourceKind:
    """``sample``, ``local`` (an existing file or folder) or ``hub`` (an ``owner/name`` id).

    Cheap and offline: it is checked before any work. A source that looks like a path (see
    :func:`path_like_reason`) and does not exist is a :class:`SourceUnavailableError` ("no such
    file or folder", exit code 2), never a trip to the Hub."""
    if source == "sample":
        return "sample"
    if not source.strip():
        raise UserError(f"{option} is empty; use sample, a local .parquet/.jsonl path, or a Hub id (owner/name)")
    if Path(source).expanduser().exists():
        return "local"
    reason = path_like_reason(source)
    if reason is not None:
        raise SourceUnavailableError(
            f"{option} {source}: no such file or folder (read as a local path because {reason}; "
            "a Hub dataset id is owner/name)"
        )
    if _HUB_ID.match(source):
        return "hub"
    raise SourceUnavailableError(
        f"source {source!r} is neither an existing file or folder nor a Hub dataset id "
        "(owner/name); use --source sample, a local .parquet/.jsonl path, or a Hub id"
    )


def read_source(source: str, split: SplitName = "train") -> LoadedSource:
    """Read ``source``: ``"sample"``, a local ``.parquet``/``.jsonl`` file or a folder of them, or
    a Hub dataset id. Raises :class:`UserError` subclasses with a clear message on failure."""
    if split not in ("train", "validation", "all"):
        raise UserError(f"--split must be train, validation or all, not {split!r}")
    kind = classify_source(source)
    if kind == "sample":
        if not SAMPLE_PATH.is_file():
            raise SourceUnavailableError(
                f"the bundled sample is missing ({SAMPLE_PATH}); regenerate it with "
                "`uv run python scripts/make_sample.py`"
            )
        splits = {"train": [SAMPLE_PATH]}
        frames = _read_local_splits(splits, split, source_label="the bundled sample")
        return LoadedSource(frame=frames, description=describe_source(source))
    if kind == "local":
        path = Path(source).expanduser()
        splits = _local_split_files(path)
        return LoadedSource(frame=_read_local_splits(splits, split, source_label=str(path)), description=str(path))
    return LoadedSource(frame=_read_hub(source, split), description=source)


def _local_split_files(path: Path) -> dict[str, list[Path]]:
    """Files per split. A single file is the ``train`` split; in a folder, files are assigned to
    splits by name (``*train*``, ``*valid*``/``*val*``), like the Hub's default layout
    (``data/train-00000-of-00001.parquet``). Files that name no split are ``train``."""
    if path.is_file():
        if path.suffix not in _DATA_SUFFIXES:
            raise SourceUnavailableError(f"{path} is not a .parquet, .jsonl or .json file")
        return {"train": [path]}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _DATA_SUFFIXES)
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not files:
        raise SourceUnavailableError(f"folder {path} holds no .parquet, .jsonl or .json files")
    splits: dict[str, list[Path]] = {}
    for file in files:
        name = file.name.lower()
        if re.search(r"(^|[-_.])(validation|valid|val|dev)([-_.]|$)", name):
            key = "validation"
        elif re.search(r"(^|[-_.])test([-_.]|$)", name):
            key = "test"
        else:
            key = "train"
        splits.setdefault(key, []).append(file)
    return splits


def _read_local_splits(splits: dict[str, list[Path]], split: SplitName, source_label: str) -> pl.DataFrame:
    wanted = list(SPLITS) if split == "all" else [split]
    present = [s for s in wanted if s in splits]
    if not present:
        raise UserError(
            f"{source_label} has no {split!r} split; splits found: {', '.join(sorted(splits))}"
        )
    frames = []
    for name in present:
        for file in splits[name]:
            frames.append(_read_file(file).with_columns(pl.lit(name).alias(schema.SOURCE_SPLIT)))
    return _concat(frames, source_label)


def _read_file(path: Path) -> pl.DataFrame:
    if path.stat().st_size == 0:
        raise SourceUnavailableError(f"{path} is empty (0 bytes)")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".jsonl":
            try:
                return pl.read_ndjson(path, infer_schema_length=None)
            except (pl.exceptions.PolarsError, UnicodeDecodeError, ValueError):
                return _read_jsonl_by_line(path)  # find the bad lines; reject them, keep the rest
        return pl.read_json(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceUnavailableError(f"cannot read {path}: {first_line}") from None


def _line_problem(line: bytes) -> str | None:
    """Why one JSONL line is not a JSON object (None when it is one)."""
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object"
    return None


def _read_jsonl_by_line(path: Path) -> pl.DataFrame:
    """A JSONL file that polars refused as a whole, read line by line.

    The rule that tells a damaged JSONL file from a file that is not JSONL at all: the first
    non-blank line must be a JSON object. If it is not (CSV, a pretty-printed JSON document,
    binary data, another encoding), the file is refused with one error naming that line. If it
    is, every later line that is not a JSON object becomes a placeholder row carrying where and
    why in :data:`schema.MALFORMED_LINE`; :func:`prepare` rejects it as ``malformed_line`` and
    the rest is curated. Blank lines are not rows."""
    good: list[bytes] = []
    good_lines: list[int] = []
    bad_lines: list[int] = []
    details: list[str] = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        problem = _line_problem(line)
        if problem is None:
            good.append(line)
            good_lines.append(number)
            continue
        if not good and not bad_lines:
            raise SourceUnavailableError(
                f"cannot read {path}: it is not JSON lines (line {number} is {problem}; "
                "every line of a .jsonl file must be one JSON object)"
            )
        bad_lines.append(number)
        details.append(f"{path.name} line {number}: {problem}")
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(good)), infer_schema_length=None)
    placeholders = pl.DataFrame(
        {"_line": bad_lines, schema.MALFORMED_LINE: details}, schema={"_line": pl.Int64, schema.MALFORMED_LINE: pl.String}
    )
    frame = frame.with_columns(pl.Series("_line", good_lines, dtype=pl.Int64))
    return pl.concat([frame, placeholders], how="diagonal_relaxed").sort("_line").drop("_line")


def _concat(frames: list[pl.DataFrame], source_label: str) -> pl.DataFrame:
    if len(frames) == 1:
        return frames[0]
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(f"the files of {source_label} do not share one schema: {exc}") from None


def _read_hub(dataset_id: str, split: SplitName) -> pl.DataFrame:
    """Load a Hub dataset with ``datasets.load_dataset`` (cached by ``datasets`` itself)."""
    import datasets  # heavy import, only when the Hub is used

    wanted = list(SPLITS) if split == "all" else [split]
    frames = []
    for name in wanted:
        try:
            ds = datasets.load_dataset(dataset_id, split=name)
        except ValueError as exc:
            # datasets raises ValueError for an unknown split; the message lists the real ones.
            raise UserError(f"cannot load split {name!r} of {dataset_id}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - network, auth, missing repo (datasets raises many kinds): one clear message
            raise hub_unavailable(
                exc, repr(dataset_id), "use --source sample, or download the dataset and pass its local path "
                "(a .parquet/.jsonl file or a folder) with --source.",
            ) from None
        table = ds.with_format("arrow")[:]  # one Arrow table, no Python objects
        frames.append(pl.from_arrow(table).with_columns(pl.lit(name).alias(schema.SOURCE_SPLIT)))
    return _concat(frames, dataset_id)


def hub_unavailable(exc: BaseException, what: str, remedy: str) -> SourceUnavailableError:
    """The one-line error for a dataset the Hub would not give (network, auth, missing repo):
    what failed, the exception's first line, and what to do if the Hub is unreachable."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SourceUnavailableError(
        f"cannot load {what} from the Hugging Face Hub ({type(exc).__name__}: {reason}). "
        f"If the Hub is unreachable, {remedy}",
        transient=_is_network_error(exc),
    )


def _is_network_error(exc: BaseException) -> bool:
    """True for failures to reach the Hub (worth one retry), false for a missing repo or auth."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"RepositoryNotFoundError", "DatasetNotFoundError", "GatedRepoError", "EntryNotFoundError"}:
        return False
    return bool(names & {"ConnectionError", "TimeoutError", "ConnectError", "ReadTimeout", "ConnectTimeout", "LocalEntryNotFoundError"})


# --- frame-level validation -------------------------------------------------------------


def validate_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Check the frame against the declared schema; coerce only lossless numeric widenings.

    Raises :class:`SchemaError` naming every missing column or wrong type and listing the
    columns found. Returns the frame with numeric columns cast to the declared types.
    """
    found = [c for c in frame.columns if c not in schema.INTERNAL_COLUMNS]
    problems: list[str] = []
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        problems.append("missing column(s): " + ", ".join(missing))
    if "info" in frame.columns:
        info_type = frame.schema["info"]
        if not isinstance(info_type, pl.Struct):
            problems.append(f"column 'info' must be a struct, found {info_type}")
        else:
            fields = {f.name: f.dtype for f in info_type.fields}
            absent = [f"info.{f}" for f in schema.REQUIRED_INFO_FIELDS if f not in fields]
            if absent:
                problems.append("missing field(s): " + ", ".join(absent))
            for name in schema.REQUIRED_INFO_FIELDS:
                if name in fields and fields[name] not in (pl.String, pl.Null):
                    problems.append(f"info.{name} must be a string, found {fields[name]}")
    casts: list[pl.Expr] = []
    for name, expected in (("reward", pl.Float64), ("example_id", pl.Int64)):
        if name not in frame.columns:
            continue
        actual = frame.schema[name]
        if actual == expected:
            continue
        numeric_ok = actual.is_numeric() if expected == pl.Float64 else actual.is_integer()
        if numeric_ok or actual == pl.Null:
            casts.append(pl.col(name).cast(expected))
        else:
            problems.append(f"column {name!r} must be {'numeric' if expected == pl.Float64 else 'an integer'}, found {actual}")
    for name in ("prompt", "completion"):
        if name in frame.columns:
            actual = frame.schema[name]
            inner = getattr(actual, "inner", None)
            if not isinstance(actual, pl.List) or not isinstance(inner, pl.Struct) or not {
                "role",
                "content",
            } <= {f.name for f in inner.fields}:
                if actual != pl.Null and not (isinstance(actual, pl.List) and inner == pl.Null):
                    problems.append(f"column {name!r} must be a list of {{role, content}} messages, found {actual}")
    if problems:
        raise SchemaError(
            "the source does not match the kernelbook-glm4-evals schema: "
            + "; ".join(problems)
            + ". Columns found: "
            + (", ".join(f"{c} ({frame.schema[c]})" for c in found) or "none")
        )
    return frame.with_columns(casts) if casts else frame


# --- row-level validation ---------------------------------------------------------------


def _assistant_content() -> pl.Expr:
    """The content of the last assistant message of the completion (null if none)."""
    return pl.col("completion").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content")
    ).list.last()


def _answers(contents: pl.Series, progress: Progress | None = None) -> pl.Series:
    """``text.extract_answer`` over a column, in slices so the Python strings of only one slice
    are alive at a time (a regex with a capture group was 10x slower at full scale)."""
    parts = []
    for start in range(0, len(contents), 20_000):
        chunk = contents.slice(start, 20_000).to_list()
        parts.append(pl.Series(schema.SOLUTION, [extract_answer(c) for c in chunk], dtype=pl.String))
        if progress is not None:
            progress.advance(len(chunk))
    return pl.concat(parts) if parts else pl.Series(schema.SOLUTION, [], dtype=pl.String)


def prepare(source: LoadedSource, progress: Progress | None = None) -> StageResult:
    """The ``load`` stage: validate the frame, derive the internal columns and ``problem_id``,
    and reject unusable rows with a reason. Raises :class:`SchemaError` on a wrong frame.
    ``progress`` (total: the source's rows) advances as the answers are extracted, the part
    that walks every row in Python."""
    frame = source.frame
    if frame.height == 0:
        raise UserError(f"the source ({source.description}) has no rows")
    try:
        frame = validate_columns(frame)
    except SchemaError as exc:
        raise SchemaError(f"{source.description}: {exc}") from None
    rows_in = frame.height
    completion_ok = isinstance(frame.schema["completion"], pl.List) and isinstance(
        frame.schema["completion"].inner, pl.Struct
    )
    assistant = _assistant_content() if completion_ok else pl.lit(None, dtype=pl.String)
    if schema.MALFORMED_LINE not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(schema.MALFORMED_LINE))
    frame = frame.with_row_index(schema.ROW).with_columns(
        pl.col(schema.ROW).cast(pl.Int64),
        pl.col("info").struct.field("module_name").cast(pl.String).alias(schema.MODULE_NAME),
        pl.col("info").struct.field("python_code").cast(pl.String).alias(schema.PYTHON_CODE),
        assistant.cast(pl.String).alias("_assistant"),
    )
    frame = frame.with_columns(_answers(frame.get_column("_assistant"), progress))
    if schema.SOURCE_SPLIT not in frame.columns:
        frame = frame.with_columns(pl.lit("train").alias(schema.SOURCE_SPLIT))
    def blank(col: str) -> pl.Expr:
        return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")

    reason = (
        pl.when(pl.col(schema.MALFORMED_LINE).is_not_null())
        .then(pl.lit(REJECT_MALFORMED_LINE))
        .when(pl.col("reward").is_null())
        .then(pl.lit(REJECT_REWARD_NULL))
        .when(pl.col("reward").is_nan())
        .then(pl.lit(REJECT_REWARD_NAN))
        .when(blank(schema.PYTHON_CODE))
        .then(pl.lit(REJECT_EMPTY_PYTHON_CODE))
        .when(blank(schema.MODULE_NAME))
        .then(pl.lit(REJECT_EMPTY_MODULE_NAME))
        .when(pl.col("example_id").is_null())
        .then(pl.lit(REJECT_EXAMPLE_ID_NULL))
        .when(blank("_assistant"))
        .then(pl.lit(REJECT_EMPTY_COMPLETION))
        .when(blank(schema.SOLUTION))
        .then(pl.lit(REJECT_MISSING_ANSWER))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("_reject")
    )
    frame = frame.with_columns(reason).drop("_assistant")
    # problem_id: hashed once per distinct module source, not once per rollout.
    codes = frame.get_column(schema.PYTHON_CODE).drop_nulls().unique()
    ids = pl.DataFrame(
        {schema.PYTHON_CODE: codes, "problem_id": [problem_id(c) for c in codes.to_list()]},
        schema={schema.PYTHON_CODE: pl.String, "problem_id": pl.String},
    )
    frame = frame.join(ids, on=schema.PYTHON_CODE, how="left", maintain_order="left")
    frame = frame.with_columns(
        pl.when(blank(schema.PYTHON_CODE)).then(None).otherwise(pl.col("problem_id")).alias("problem_id")
    )
    bad = frame.filter(pl.col("_reject").is_not_null())
    kept = frame.filter(pl.col("_reject").is_null()).drop("_reject", schema.MALFORMED_LINE)
    rejected = rejections(bad, "load", pl.col("_reject"), detail=pl.col(schema.MALFORMED_LINE))
    return StageResult.of("load", rows_in, kept, rejected)
