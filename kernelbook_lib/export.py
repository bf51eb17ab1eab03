"""Write the outputs: ``filtered`` and ``unique`` in Hugging Face Hub layout, the JSONL files
of the original scripts, the drop ledger and the run summary.

Crash safety: the run summary is removed first and written last (by :func:`finish_run`, after
the analysis too), and every file is written to a temporary name and renamed into place, so a
folder with a ``run_summary.json`` is always a finished, consistent run, and a half-written file
never looks finished.

A dataset folder holds exactly one run's files: ``data/{split}-00000-of-00001-{fingerprint}.parquet``
(the fingerprint is the start of the file's SHA-256), a card listing exactly those files, and,
after the analysis, ``images/`` with that run's plots. Parquet is written with pyarrow's
content-defined chunking, so a republish of mostly unchanged rows re-sends little to Xet storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from kernelbook_lib import schema
from kernelbook_lib.cards import render_dataset_card
from kernelbook_lib.errors import UserError
from kernelbook_lib.stages import SPLIT_COLUMN, leaked_problems, split_counts
from kernelbook_lib.summary import RunSummary, now_iso

SUMMARY_FILE = "run_summary.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
REJECTED_FILE = "rejected.jsonl"
DATASETS = ("filtered", "unique")
DATA_DIR = "data"
IMAGES_DIR = "images"
CARD_FILE = "README.md"
#: Hex digits of the content fingerprint in a shard's name.
FINGERPRINT_CHARS = 16
#: ``train-00000-of-00001-0123456789abcdef.parquet``: the Hub's shard naming, then the content
#: fingerprint (``datasets``' default split patterns still match it).
SHARD_NAME = re.compile(
    r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})-(?P<fingerprint>[0-9a-f]{%d})\.parquet$" % FINGERPRINT_CHARS
)
#: Split files as ``{split: [path relative to the dataset folder, ...]}``.
DataFiles = dict[str, list[str]]


def prepare_out_dir(out: str | os.PathLike, summary_file: str = SUMMARY_FILE) -> Path:
    """Create ``out`` if needed and mark it unfinished (remove an older ``summary_file``)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / summary_file).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to --out {path}: {exc.strerror or exc}") from None
    return path


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def output_columns(frame: pl.DataFrame) -> list[str]:
    """Source columns in their source order, then the judged columns, then the SFT columns the
    frame has (``completion_original`` only when the completion was rewritten); never internal ones."""
    source = [c for c in frame.columns if not c.startswith("_") and c not in schema.JUDGED_SCHEMA and c not in schema.SFT_SCHEMA]
    return source + list(schema.JUDGED_SCHEMA) + [c for c in schema.SFT_SCHEMA if c in frame.columns]


def to_output(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(output_columns(frame))


def write_jsonl(frame: pl.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        frame.write_ndjson(tmp)


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``folder``; on success swap it into place (the old folder,
    if any, is removed after), so a half-written dataset never looks finished."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield staging
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_parquet(frame: pl.DataFrame, target: Path) -> None:
    """Parquet for the Hub: zstd, statistics, and content-defined data pages (pyarrow's CDC), so
    rows that did not change between two runs make byte-identical pages that Xet stores once.
    zstd level 6: pyarrow's default (1) makes files about 25 % larger than level 6 for these
    text-heavy rows (benchmarks/republish_bytes.py prints the sizes)."""
    pq.write_table(
        frame.to_arrow(), target, compression="zstd", compression_level=6, write_statistics=True,
        use_content_defined_chunking=True,
    )


def write_dataset_folder(folder: Path, splits: Mapping[str, pl.DataFrame], render_card: Callable[[DataFiles], str]) -> DataFiles:
    """One dataset in Hub layout, swapped into place whole: one fingerprinted shard per split and
    the card ``render_card(data_files)`` (which must list exactly those files); returns them."""
    # datasets caches a folder whose card has `configs` under a key made from the card's data_files
    # strings, not the files: fixed names read back an older run's rows, content-named ones cannot.
    data_files: DataFiles = {}
    with atomic_folder(folder) as staging:
        (staging / DATA_DIR).mkdir()
        for split, frame in splits.items():
            tmp = staging / DATA_DIR / f".{split}.parquet.tmp"
            write_parquet(frame, tmp)
            relative = f"{DATA_DIR}/{split}-00000-of-00001-{file_sha256(tmp)[:FINGERPRINT_CHARS]}.parquet"
            os.replace(tmp, staging / relative)
            data_files[split] = [relative]
        (staging / CARD_FILE).write_text(render_card(data_files), encoding="utf-8")
    return data_files


def dataset_files(folder: Path) -> DataFiles:
    """The shards in ``folder/data`` by split (names that do not follow :data:`SHARD_NAME` are left
    out; the publisher's validation reports them)."""
    files: DataFiles = {}
    data = Path(folder) / DATA_DIR
    for path in sorted(data.glob("*.parquet")) if data.is_dir() else []:
        match = SHARD_NAME.match(path.name)
        if match:
            files.setdefault(match["split"], []).append(f"{DATA_DIR}/{path.name}")
    return files


def write_hub_dataset(frame: pl.DataFrame, folder: Path, kind: str, summary: RunSummary) -> dict[str, int]:
    """One dataset in Hub layout (see :func:`write_dataset_folder`); returns rows per split.

    Both splits are always written (an empty one keeps the schema) so ``datasets`` always sees
    ``train`` and ``validation``."""
    parts = {split: to_output(frame.filter(pl.col(SPLIT_COLUMN) == split)) for split in ("train", "validation")}
    counts = {split: part.height for split, part in parts.items()}
    fields = summary.model_dump(mode="json")
    columns = dict(parts["train"].schema)  # the card's columns table: what the files hold
    write_dataset_folder(folder, parts, lambda files: render_dataset_card(kind, fields, counts, data_files=files, columns=columns))
    return counts


def write_summary(out: Path, summary: RunSummary) -> Path:
    target = out / SUMMARY_FILE
    write_text(target, json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    return target


def write_all(
    out: str | os.PathLike,
    summary_fields: dict,
    filtered: pl.DataFrame,
    unique: pl.DataFrame,
    rejected: pl.DataFrame,
) -> RunSummary:
    """Write every output of a curate run except the run summary, and return the summary
    (:func:`finish_run` writes it last).

    ``filtered`` and ``unique`` carry the ``_split`` column. ``summary_fields`` holds the
    RunSummary fields except ``datasets`` and ``finished_at``. Refuses to write a dataset in
    which a problem sits in both splits (that would be a leak, and a bug)."""
    out_path = Path(out)
    for name, frame in (("filtered", filtered), ("unique", unique)):
        leaks = leaked_problems(frame)
        if leaks:
            raise RuntimeError(f"{name}: {len(leaks)} problem(s) in both splits, e.g. {leaks[:3]}; refusing to write")
    datasets = {"filtered": split_counts(filtered), "unique": split_counts(unique)}
    summary_fields = dict(summary_fields)
    warnings = list(summary_fields.pop("warnings", []))
    for name, counts in datasets.items():
        if counts["validation"] == 0 and counts["train"] > 0:
            warnings.append(f"{name}: the validation split is empty (too few problems for --val-fraction)")
    summary = RunSummary(**summary_fields, datasets=datasets, warnings=warnings, finished_at=now_iso())
    for name, frame in (("filtered", filtered), ("unique", unique)):
        write_hub_dataset(frame, out_path / name, name, summary)
    # The JSONL files hold every row (both splits) in source order, with a ``split`` field.
    for name, frame in (("filtered", filtered), ("unique", unique)):
        ordered = frame.sort(schema.ROW)
        write_jsonl(to_output(ordered).with_columns(ordered.get_column(SPLIT_COLUMN).alias("split")), out_path / f"{name}_dataset.jsonl")
    write_jsonl(rejected.sort("source_index"), out_path / REJECTED_FILE)
    return summary  # written by finish_run, once everything else (the analysis too) is written


def finish_run(out: str | os.PathLike, summary: RunSummary) -> RunSummary:
    """Write ``run_summary.json``, the very last file of a curate run; returns the summary as
    written (``finished_at`` set now)."""
    summary = summary.model_copy(update={"finished_at": now_iso()})
    write_summary(Path(out), summary)
    return summary
