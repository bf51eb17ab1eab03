"""Write the outputs: ``filtered`` and ``unique`` in Hugging Face Hub layout, the JSONL files
of the original scripts, the drop ledger and the run summary.

Crash safety: the run summary is removed first and written last (by :func:`finish_run`, after
the analysis too), and every file is written to a temporary name and renamed into place, so a
folder with a ``run_summary.json`` is always a finished, consistent run, and a half-written file
never looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

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
SPLIT_FILES = {"train": "data/train-00000-of-00001.parquet", "validation": "data/validation-00000-of-00001.parquet"}


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
    """Source columns in their source order, then the judged columns; never internal ones."""
    source = [c for c in frame.columns if not c.startswith("_") and c not in schema.JUDGED_SCHEMA]
    return source + list(schema.JUDGED_SCHEMA)


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


def write_hub_dataset(frame: pl.DataFrame, folder: Path, kind: str, summary: RunSummary) -> dict[str, int]:
    """One dataset in Hub layout: ``data/{split}-00000-of-00001.parquet`` and a card.

    Both split files are always written (an empty one keeps the schema) so ``datasets``
    always sees ``train`` and ``validation``."""
    counts: dict[str, int] = {}
    with atomic_folder(folder) as staging:
        for split, relative in SPLIT_FILES.items():
            part = to_output(frame.filter(pl.col(SPLIT_COLUMN) == split))
            counts[split] = part.height
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            part.write_parquet(staging / relative, compression="zstd", statistics=True)
        card = render_dataset_card(kind, summary.model_dump(mode="json"), counts)
        (staging / "README.md").write_text(card, encoding="utf-8")
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
