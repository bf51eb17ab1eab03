"""Decontamination: remove the rows whose PyTorch module copies an item of an evaluation
benchmark (KernelBench-style), exactly or in disguise.

A benchmark source (``--decontaminate SRC``, repeatable) is a local ``.parquet``/``.jsonl`` file
or folder, or a Hub dataset id (every split is read). Its code column is the first of
:data:`CODE_COLUMNS` it has; a source without one is a user error that lists the columns found.
Each item is normalised like the rows (:mod:`kernelbook_lib.neardup`): a row whose module is at
least ``threshold`` similar to an item is rejected with reason ``contaminated`` and a detail
naming the benchmark and the item. Benchmark code is read as text, never executed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kernelbook_lib import loading, neardup, schema
from kernelbook_lib.cards import public_source
from kernelbook_lib.errors import SchemaError, SourceUnavailableError, UserError
from kernelbook_lib.ledger import StageResult, empty_rejections, rejections

STAGE = "decontaminate"
REJECT_CONTAMINATED = "contaminated"
#: Where a benchmark's code is looked for, in this order (``info.python_code``: a struct field).
CODE_COLUMNS: tuple[str, ...] = ("code", "python_code", "pytorch_code", "info.python_code")
#: Columns that name an item (KernelBench: ``level``, ``problem_id``, ``name``), in the order
#: the detail lists them; an item of a source with none of them is named by its row.
LABEL_COLUMNS: tuple[str, ...] = ("level", "problem_id", "name", "module_name", "info.module_name", "task_id", "id")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark source: its items' code and names."""

    source: str  # as the user gave it
    code_column: str
    labels: list[str]  # one per item
    codes: list[str]  # one per item
    rows_without_code: int = 0  # rows whose code is null or blank (not items)

    @property
    def name(self) -> str:
        """The benchmark as it may be published: a Hub id, or a local file's name only."""
        return public_source(self.source)


def _column(frame: pl.DataFrame, name: str) -> pl.Expr | None:
    """``name`` or ``struct.field`` as an expression, when the frame has it."""
    if name in frame.columns:
        return pl.col(name)
    if "." in name:
        struct, fld = name.split(".", 1)
        dtype = frame.schema.get(struct)
        if isinstance(dtype, pl.Struct) and fld in {f.name for f in dtype.fields}:
            return pl.col(struct).struct.field(fld)
    return None


def _columns_found(frame: pl.DataFrame) -> str:
    found = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Struct):
            found += [f"{name}.{f.name}" for f in dtype.fields]
        else:
            found.append(name)
    return ", ".join(found) or "none"


def benchmark_of(frame: pl.DataFrame, source: str) -> Benchmark:
    """The items of a benchmark read into ``frame``. Raises :class:`SchemaError` (one line,
    listing the columns found) when no code column is there or it is not text."""
    label = public_source(source)
    for name in CODE_COLUMNS:
        code_expr = _column(frame, name)
        if code_expr is None:
            continue
        dtype = frame.select(code_expr).to_series().dtype
        if dtype not in (pl.String, pl.Null):
            raise SchemaError(f"benchmark {label}: its code column {name!r} holds {dtype}, not text")
        code_column = name
        break
    else:
        raise SchemaError(
            f"benchmark {label} has no code column (looked for {', '.join(CODE_COLUMNS)}); "
            f"columns found: {_columns_found(frame)}"
        )
    label_exprs = [(name, e) for name in LABEL_COLUMNS if (e := _column(frame, name)) is not None]
    rows = frame.select(
        code_expr.cast(pl.String).alias("_code"),
        *[e.cast(pl.String).alias(f"_label_{i}") for i, (_, e) in enumerate(label_exprs)],
    )
    codes, labels = [], []
    missing = 0
    for i, row in enumerate(rows.iter_rows()):
        code = row[0]
        if code is None or not code.strip():
            missing += 1
            continue
        parts = [f"{name}={value}" for (name, _), value in zip(label_exprs, row[1:]) if value is not None]
        labels.append(", ".join(parts) if parts else f"row {i}")
        codes.append(code)
    if not codes:
        raise UserError(f"benchmark {label} has no item with code in its column {code_column!r}")
    return Benchmark(source=source, code_column=code_column, labels=labels, codes=codes, rows_without_code=missing)


def read_benchmark(source: str) -> Benchmark:
    """Read a benchmark source: a local file or folder (every file of it), or a Hub dataset id
    (every split). Raises a :class:`UserError` subclass with one clear line on failure."""
    path = Path(source).expanduser()
    kind = loading.classify_source(source, "--decontaminate")  # a mistyped path: "no such file or folder"
    if kind == "local":
        files = [f for split_files in loading._local_split_files(path).values() for f in split_files]
        frames = [loading._read_file(f) for f in sorted(files)]
        frame = loading._concat(frames, str(path)) if len(frames) > 1 else frames[0]
    elif kind == "hub":
        frame = _read_hub_benchmark(source)
    else:
        raise SourceUnavailableError("--decontaminate sample: the bundled sample is not a benchmark; give a benchmark's file, folder or Hub id")
    if frame.height == 0:
        raise UserError(f"benchmark {public_source(source)} has no rows")
    return benchmark_of(frame, source)


def _read_hub_benchmark(dataset_id: str) -> pl.DataFrame:
    """Every split of a Hub dataset (KernelBench has one per level), with ``datasets``."""
    import datasets  # heavy import, only when the Hub is used

    try:
        splits = datasets.load_dataset(dataset_id)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo (datasets raises many kinds): one clear message
        raise loading.hub_unavailable(
            exc, f"benchmark {dataset_id!r}", "download the benchmark and pass its local path "
            "(a .parquet/.jsonl file or a folder) with --decontaminate.",
        ) from None
    frames = [pl.from_arrow(splits[name].with_format("arrow")[:]) for name in splits]
    return loading._concat(frames, dataset_id) if len(frames) > 1 else frames[0]


# --- the stage -------------------------------------------------------------------------------


@dataclass
class DecontaminationResult:
    """The stage's result and, per benchmark, what it removed (for the summary and the card)."""

    result: StageResult
    report: dict = field(default_factory=dict)


def decontaminate(
    frame: pl.DataFrame,
    benchmarks: Sequence[Benchmark],
    threshold: float = neardup.DEFAULT_NEAR_DUP_THRESHOLD,
    forms: pl.DataFrame | None = None,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DecontaminationResult:
    """The ``decontaminate`` stage: reject every row whose module (``problem_id`` /
    ``_python_code``) is a near-duplicate of an item of any of ``benchmarks``. A row matching
    several benchmarks is counted for the first of them (in the order given); the detail names
    its best-matching item (highest similarity). ``forms``: normalised forms already computed
    per ``problem_id`` (column ``_form``), reused instead of normalising again."""
    neardup.check_threshold(threshold)
    if not benchmarks:
        return DecontaminationResult(StageResult.of(STAGE, frame.height, frame, empty_rejections()), report={})
    problems = frame.select("problem_id", schema.PYTHON_CODE).unique(subset="problem_id", keep="first", maintain_order=True)
    if forms is not None:
        problems = problems.join(forms, on="problem_id", how="left")
    else:
        problems = problems.with_columns(pl.lit(None, dtype=pl.String).alias("_form"))
    todo = problems.filter(pl.col("_form").is_null())
    if todo.height:
        computed, _ = neardup.normalize_many(todo.get_column(schema.PYTHON_CODE).to_list(), workers)
        problems = problems.update(todo.select("problem_id").with_columns(pl.Series("_form", computed, dtype=pl.String)), on="problem_id")
    problem_ids = problems.get_column("problem_id").to_list()
    problem_forms = problems.get_column("_form").to_list()
    matched: dict[str, str] = {}  # problem_id -> detail
    first_bench: dict[str, int] = {}  # problem_id -> the first benchmark it matched
    per_benchmark = []
    compared_total = 0
    for b, bench in enumerate(benchmarks):
        index = neardup.ReferenceIndex(bench.codes, threshold, workers)
        matches, compared = index.match(problem_forms)
        compared_total += compared
        newly = 0
        for pid, match in zip(problem_ids, matches):
            if match is None or pid in matched:
                continue
            matched[pid] = (
                f"near-duplicate of {bench.name} item {bench.labels[match.item]} (similarity {match.similarity:.2f})"
            )
            first_bench[pid] = b
            newly += 1
        per_benchmark.append({
            "source": bench.name, "code_column": bench.code_column, "items": len(bench.codes),
            "rows_without_code": bench.rows_without_code, "problems_removed": newly,
        })  # fmt: skip
        if progress:
            progress(f"decontaminate: {bench.name}: {len(bench.codes)} items, {newly} problem(s) match")
    details = pl.DataFrame(
        {"problem_id": list(matched), "_detail": list(matched.values())}, schema={"problem_id": pl.String, "_detail": pl.String}
    )
    flagged = frame.join(details, on="problem_id", how="left", maintain_order="left")
    bad = flagged.filter(pl.col("_detail").is_not_null())
    kept = flagged.filter(pl.col("_detail").is_null()).drop("_detail")
    if "example_id" not in bad.columns:  # KernelBook rows (prompt generation) have none
        bad = bad.with_columns(pl.lit(None, dtype=pl.Int64).alias("example_id"))
    rejected = rejections(bad, STAGE, REJECT_CONTAMINATED, pl.col("_detail"))
    # Rows removed per benchmark: each matched problem counts for the first benchmark it matched.
    rows_per_problem = dict(bad.group_by("problem_id").len().iter_rows()) if bad.height else {}
    for b, entry in enumerate(per_benchmark):
        entry["rows_removed"] = int(sum(n for pid, n in rows_per_problem.items() if first_bench.get(pid) == b))
    report = {
        "normalization": neardup.NORMALIZATION_VERSION,
        "threshold": threshold,
        "benchmarks": per_benchmark,
        "pairs_compared": compared_total,
    }
    return DecontaminationResult(StageResult.of(STAGE, frame.height, kept, rejected), report=report)
