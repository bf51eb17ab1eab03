"""Check one dataset folder (Hub layout) against its run summary before it is published.

:func:`validate_dataset_folder` checks that the expected split files are there, that each shard's
name carries its content's fingerprint, that no ``problem_id`` sits in two splits and that the row
counts equal the summary's. It lists every problem it finds, never only the first; the publish
plan (:mod:`kernelbook_lib.hub`) refuses a folder with any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from kernelbook_lib import export
from kernelbook_lib.cards import DECLARED_COLUMNS, EXPECTED_SPLITS, KINDS

#: Which summary describes each dataset, relative to the output folder.
SUMMARY_FILES: dict[str, str] = {
    "filtered": "run_summary.json",
    "unique": "run_summary.json",
    "synthetic": "synthetic_summary.json",
}
_LEAK_EXAMPLES = 5


# --- validation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderReport:
    """What :func:`validate_dataset_folder` found in one dataset folder."""

    path: Path
    kind: str
    rows: dict[str, int]  # rows per expected split that was found
    split_bytes: dict[str, int]  # Arrow bytes per split (the card's dataset_info num_bytes)
    columns: dict[str, pl.DataType]  # the data's columns and types (all files agree when ok)
    data_files: tuple[str, ...]  # the split files, relative to the folder, posix style
    problems: tuple[str, ...]
    split_files: dict[str, list[str]] = field(default_factory=dict)  # the same files by split

    @property
    def ok(self) -> bool:
        return not self.problems


def _split_files(folder: Path, kind: str, problems: list[str]) -> dict[str, list[Path]]:
    """The parquet files of each expected split; every other parquet file is a problem."""
    expected = EXPECTED_SPLITS[kind]
    shards: dict[str, list[tuple[int, int, Path]]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        relative = path.relative_to(folder).as_posix()
        match = export.SHARD_NAME.match(path.name)
        if path.parent != folder / "data" or match is None:
            problems.append(f"unexpected data file {relative} (expected data/<split>-NNNNN-of-NNNNN-<fingerprint>.parquet)")
        elif export.file_sha256(path)[: export.FINGERPRINT_CHARS] != match["fingerprint"]:
            # The name is what datasets' cache and the card key on: it must follow the content.
            problems.append(f"{relative} does not hold the content its name's fingerprint says (edited by hand?); run its flow again")
        elif match["split"] not in expected:
            problems.append(f"unexpected split {match['split']!r} ({relative}); {kind} has splits {list(expected)}")
        else:
            shards.setdefault(match["split"], []).append((int(match["index"]), int(match["count"]), path))
    files: dict[str, list[Path]] = {}
    for split in expected:
        found = sorted(shards.get(split, []))
        if not found:
            problems.append(f"split {split!r} is missing (no data/{split}-*.parquet)")
            continue
        counts = {count for _, count, _ in found}
        if len(counts) != 1 or [index for index, _, _ in found] != list(range(counts.pop())):
            names = ", ".join(p.name for _, _, p in found)
            problems.append(f"split {split!r} has an incomplete set of shards ({names})")
            continue
        files[split] = [p for _, _, p in found]
    return files


def _arrow_bytes(parquet: pq.ParquetFile) -> int:
    """The in-memory Arrow size of a parquet file, read one row group at a time."""
    return sum(parquet.read_row_group(i).nbytes for i in range(parquet.num_row_groups))


def validate_dataset_folder(path: str | Path, kind: str, summary: Mapping[str, Any]) -> FolderReport:
    """Check one dataset folder in Hub layout against ``summary`` (its run summary as a dict).

    Reads the parquet files directly (metadata, the schema, ``problem_id``; Arrow sizes row
    group by row group) rather than through ``datasets``, which would first copy everything
    into its cache. Never raises for a problem in the data: every problem is listed in
    :attr:`FolderReport.problems`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    folder = Path(path)
    problems: list[str] = []
    rows: dict[str, int] = {}
    split_bytes: dict[str, int] = {}
    columns: dict[str, pl.DataType] = {}
    data_files: list[str] = []
    split_files: dict[str, list[str]] = {}
    if not folder.is_dir():
        problems.append(f"{folder} does not exist; run the flow that writes it first")
        return FolderReport(folder, kind, rows, split_bytes, columns, (), tuple(problems))

    files = _split_files(folder, kind, problems)
    problem_ids: dict[str, set[str]] = {}
    for split, paths in files.items():
        for file in paths:
            relative = file.relative_to(folder).as_posix()
            try:
                parquet = pq.ParquetFile(file)
                file_columns = dict(pl.read_parquet_schema(file))
                n, nbytes = parquet.metadata.num_rows, _arrow_bytes(parquet)
                ids = None
                if kind != "synthetic" and "problem_id" in file_columns:
                    ids = pl.read_parquet(file, columns=["problem_id"]).get_column("problem_id")
            except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
                problems.append(f"cannot read {relative}: {exc}")
                continue
            data_files.append(relative)
            split_files.setdefault(split, []).append(relative)
            rows[split] = rows.get(split, 0) + n
            split_bytes[split] = split_bytes.get(split, 0) + nbytes
            if not columns:
                columns = file_columns
            elif file_columns != columns:
                problems.append(f"{relative} has other columns or types than {data_files[0]}")
            if ids is not None:
                if ids.null_count():
                    problems.append(f"{relative}: {ids.null_count()} row(s) without a problem_id")
                problem_ids.setdefault(split, set()).update(ids.drop_nulls().to_list())

    if columns:
        missing = [c for c in DECLARED_COLUMNS[kind] if c not in columns]
        if missing:
            problems.append(f"the data lacks column(s) {missing}; columns found: {list(columns)}")

    # A problem in two splits leaks validation into training.
    split_names = list(problem_ids)
    for i, first in enumerate(split_names):
        for second in split_names[i + 1:]:
            shared = sorted(problem_ids[first] & problem_ids[second])
            if shared:
                examples = ", ".join(shared[:_LEAK_EXAMPLES]) + (", ..." if len(shared) > _LEAK_EXAMPLES else "")
                problems.append(f"{len(shared)} problem_id(s) are in both {first} and {second}: {examples}")

    summary_file = SUMMARY_FILES[kind]
    expected_rows = (summary.get("datasets") or {}).get(kind)
    if not isinstance(expected_rows, Mapping):
        problems.append(f"{summary_file} has no row counts for {kind!r} (its 'datasets' entry)")
    elif set(files) == set(EXPECTED_SPLITS[kind]):  # counts are only comparable when every split was read
        for split in sorted(set(expected_rows) | set(rows)):
            found, expected = rows.get(split, 0), expected_rows.get(split)
            if found != expected:
                problems.append(f"split {split!r} has {found} rows but {summary_file} says {expected}")

    return FolderReport(folder, kind, rows, split_bytes, columns, tuple(data_files), tuple(problems), split_files)
