"""Publish the output datasets to the Hugging Face Hub: validate, plan, push.

1. :func:`validate_dataset_folder` checks one dataset folder (Hub layout) against its run
   summary: the expected split files are there, no ``problem_id`` sits in two splits, the row
   counts equal the summary's. It lists every problem it finds, never only the first.
2. :func:`plan_publish` builds, per dataset, what would be uploaded: repo id, files with sizes,
   rows per split, the regenerated card and commit message, and the validation result. A
   dataset without a repo id is listed as skipped and is never pushed.
3. :func:`push` refuses a plan with any problem, then, per dataset, creates the dataset repo
   and uploads the folder in ONE commit whose message carries the run summary.

No function here prints or logs the token; Hub failures become one clear
:class:`PublishError` (a :class:`UserError`) without the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from pydantic import SecretStr

from kernelbook_lib import __version__
from kernelbook_lib.cards import DECLARED_COLUMNS, EXPECTED_SPLITS, KINDS, public_source, render_dataset_card
from kernelbook_lib.errors import UserError
from kernelbook_lib.export import write_text

#: Which summary describes each dataset, relative to the output folder.
SUMMARY_FILES: dict[str, str] = {
    "filtered": "run_summary.json",
    "unique": "run_summary.json",
    "synthetic": "synthetic_summary.json",
}
#: The analyze flow's result, relative to the output folder (optional).
ANALYSIS_FILE = Path("analysis") / "analysis.json"
#: The settings variable that names each dataset's repo.
REPO_VARIABLES: dict[str, str] = {
    "filtered": "HF_FILTERED_REPO",
    "unique": "HF_UNIQUE_REPO",
    "synthetic": "HF_SYNTHETIC_REPO",
}
#: Remote files the push replaces: stale shards of an earlier upload must not survive next to
#: the new ones (the card's ``data/{split}-*`` patterns would load them too).
REMOTE_DATA_PATTERN = "data/*"

_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_LEAK_EXAMPLES = 5


class PublishError(UserError):
    """Publishing failed or was refused. ``transient`` is true when trying again later may work
    (the Hub could not be reached or answered 5xx); the Prefect task retries only those."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


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

    @property
    def ok(self) -> bool:
        return not self.problems


def _split_files(folder: Path, kind: str, problems: list[str]) -> dict[str, list[Path]]:
    """The parquet files of each expected split; every other parquet file is a problem."""
    expected = EXPECTED_SPLITS[kind]
    shards: dict[str, list[tuple[int, int, Path]]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        relative = path.relative_to(folder).as_posix()
        match = _SHARD.match(path.name)
        if path.parent != folder / "data" or match is None:
            problems.append(f"unexpected data file {relative} (expected data/<split>-NNNNN-of-NNNNN.parquet)")
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

    return FolderReport(folder, kind, rows, split_bytes, columns, tuple(data_files), tuple(problems))


# --- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    size: int  # bytes


@dataclass(frozen=True)
class PublishPlanItem:
    """One dataset of the plan: where it goes, what is sent, and whether it may be sent."""

    kind: str
    folder: Path
    repo_id: str | None  # None: skipped, never pushed
    skipped_reason: str | None = None
    files: tuple[PlannedFile, ...] = ()
    rows: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    card: str | None = None  # the regenerated README.md, written into the folder by push()
    commit_message: str | None = None
    commit_description: str | None = None

    @property
    def skipped(self) -> bool:
        return self.repo_id is None

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able view (for flow results and logs; the card text is left out)."""
        return {
            "kind": self.kind,
            "repo_id": self.repo_id,
            "skipped": self.skipped,
            "skipped_reason": self.skipped_reason,
            "files": {f.path_in_repo: f.size for f in self.files},
            "rows": dict(self.rows),
            "problems": list(self.problems),
            "commit_message": self.commit_message,
        }


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def load_analysis(input_dir: str | Path) -> dict | None:
    """``OUT/analysis/analysis.json`` when the analyze flow has run, else None."""
    path = Path(input_dir) / ANALYSIS_FILE
    return _read_json(path, "run the analyze flow first") if path.exists() else None


def commit_text(kind: str, summary: Mapping[str, Any], rows: Mapping[str, int]) -> tuple[str, str]:
    """The commit message (one line: counts, judge or generator, source) and its description."""
    counts = " / ".join(f"{n} {split}" for split, n in rows.items())
    source = public_source(str(summary.get("source", "?")))
    if kind == "synthetic":
        who = f"generator {summary.get('generator_model') or summary.get('generator') or 'unknown'}"
    else:
        who = f"judge {summary.get('judge_model') or summary.get('judge', '?')}"
    message = f"Publish {kind}: {counts} rows ({who}, source {source})"
    lines = [f"kernelbook-curator {summary.get('version', __version__)}, {summary.get('pipeline', '?')} run finished at {summary.get('finished_at', '?')}."]
    for key in ("split", "threshold", "limit", "judge", "judge_model", "judge_prompt_version", "generator_model", "generator_prompt_version", "group_by", "seed", "val_fraction"):
        if summary.get(key) is not None:
            lines.append(f"{key}: {summary[key]}")
    for stage in summary.get("stages") or []:
        dropped = ", ".join(f"{r} {n}" for r, n in (stage.get("dropped") or {}).items()) or "none dropped"
        lines.append(f"stage {stage.get('name')}: {stage.get('rows_in')} in, {stage.get('rows_out')} out ({dropped})")
    return message, "\n".join(lines)


def _stale_analysis(analysis: Mapping[str, Any], summary: Mapping[str, Any]) -> list[str]:
    """The analysis covers the whole filtered dataset; a different row count means it belongs
    to another run, and its correlations must not go into this run's card."""
    filtered = (summary.get("datasets") or {}).get("filtered") or {}
    expected = sum(filtered.values()) if filtered else None
    if expected is not None and analysis.get("n") != expected:
        return [
            f"{ANALYSIS_FILE.as_posix()} covers {analysis.get('n')} rows but this run's filtered dataset "
            f"has {expected}; re-run the analyze flow (or remove the stale analysis)"
        ]
    return []


def _repo_problem(repo_id: str) -> str | None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        return f"{repo_id!r} is not a valid Hub repo id (expected owner/name)"
    return None


def plan_publish(input_dir: str | Path, repos: Mapping[str, str | None]) -> list[PublishPlanItem]:
    """What :func:`push` would upload from ``input_dir``, per dataset kind.

    ``repos`` maps ``filtered``/``unique``/``synthetic`` to a repo id or None; a kind without
    a repo id is listed as skipped. For each named dataset: the folder is validated against its
    summary, the card is regenerated (with the analysis when ``analysis/analysis.json``
    exists, and the repo id), and the files and sizes to send are listed.
    """
    unknown = set(repos) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown dataset kind(s) {sorted(unknown)}; expected {KINDS}")
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder; run the curate flow first")
    analysis = load_analysis(root)
    items: list[PublishPlanItem] = []
    seen: dict[str, str] = {}
    for kind in KINDS:
        folder = root / kind
        repo_id = repos.get(kind)
        if not repo_id:
            reason = f"no repo id (pass --{kind}-repo or set {REPO_VARIABLES[kind]})"
            items.append(PublishPlanItem(kind, folder, None, skipped_reason=reason))
            continue
        problems: list[str] = []
        if (problem := _repo_problem(repo_id)) is not None:
            problems.append(problem)
        if repo_id in seen:
            problems.append(f"{repo_id} is also the {seen[repo_id]} repo; each dataset needs its own repo")
        seen.setdefault(repo_id, kind)
        try:
            summary = _read_json(root / SUMMARY_FILES[kind], f"the {kind} dataset has no summary; run its flow first")
        except UserError as exc:
            items.append(PublishPlanItem(kind, folder, repo_id, problems=(*problems, str(exc))))
            continue
        report = validate_dataset_folder(folder, kind, summary)
        problems += report.problems
        if kind != "synthetic" and analysis is not None:
            problems += _stale_analysis(analysis, summary)
        card = message = description = None
        files: tuple[PlannedFile, ...] = ()
        if report.ok:
            try:
                card = render_dataset_card(
                    kind, summary, report.rows, analysis if kind != "synthetic" else None, repo_id,
                    split_bytes=report.split_bytes, columns=report.columns,
                )
            except UserError as exc:
                problems.append(str(exc))
            else:
                message, description = commit_text(kind, summary, report.rows)
                files = (
                    PlannedFile("README.md", len(card.encode("utf-8"))),
                    *(PlannedFile(rel, (folder / rel).stat().st_size) for rel in report.data_files),
                )
        items.append(
            PublishPlanItem(
                kind, folder, repo_id, files=files, rows=dict(report.rows), problems=tuple(problems),
                card=card, commit_message=message, commit_description=description,
            )
        )
    return items


def format_plan(plan: list[PublishPlanItem], *, dry_run: bool = True) -> str:
    """The plan as text for the terminal: per dataset the repo, rows, files and sizes."""
    head = "Publish plan (dry run: nothing is uploaded; add --push to upload)" if dry_run else "Publish plan"
    lines = [head]
    for item in plan:
        if item.skipped:
            lines.append(f"- {item.kind}: skipped, {item.skipped_reason}")
            continue
        status = "ready" if item.ok else "REFUSED"
        lines.append(f"- {item.kind} -> dataset repo {item.repo_id} [{status}]")
        if item.rows:
            lines.append("    rows: " + ", ".join(f"{split} {n:,}" for split, n in item.rows.items()))
        if item.files:
            total = sum(f.size for f in item.files)
            lines.append(f"    files ({len(item.files)}, {total:,} bytes, one commit):")
            lines += [f"      {f.path_in_repo}  {f.size:,} bytes" for f in item.files]
        if item.commit_message:
            lines.append(f"    commit: {item.commit_message}")
        lines += [f"    problem: {p}" for p in item.problems]
    return "\n".join(lines)


def check_publishable(plan: list[PublishPlanItem]) -> list[PublishPlanItem]:
    """The items to push; a :class:`PublishError` when there are none or any has a problem."""
    to_push = [item for item in plan if not item.skipped]
    if not to_push:
        names = ", ".join(f"--{k}-repo/{v}" for k, v in REPO_VARIABLES.items())
        raise PublishError(f"nothing to publish: no repo id given ({names})")
    refusals = [f"{item.kind}: {p}" for item in to_push for p in item.problems]
    if refusals:
        raise PublishError("refusing to publish; fix these first: " + "; ".join(refusals))
    return to_push


# --- push ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    kind: str
    repo_id: str
    commit_url: str
    commit_oid: str
    files: tuple[str, ...]
    private: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "repo_id": self.repo_id, "commit_url": self.commit_url,
            "commit_oid": self.commit_oid, "files": list(self.files), "private": self.private,
        }


def _hub_error(exc: Exception, item: PublishPlanItem, endpoint: str, secret: str) -> PublishError:
    """One clear message for a Hub failure (never the token, never a traceback)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = f"publishing {item.kind} to {item.repo_id}"
    transient = False
    if isinstance(exc, OfflineModeIsEnabled):
        message = f"{where}: Hugging Face offline mode is on (HF_HUB_OFFLINE); unset it to publish"
    elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        server = (exc.server_message or "").strip().splitlines()
        detail = f": {server[0]}" if server else ""
        if status == 401:
            message = f"{where}: the Hub rejected HF_TOKEN (HTTP 401 Unauthorized{detail}); check that the token is valid"
        elif status == 403:
            message = f"{where}: HF_TOKEN may not write there (HTTP 403 Forbidden{detail}); use a token with write access to that namespace"
        elif status >= 500:
            transient = True
            message = f"{where}: the Hub failed (HTTP {status}{detail}); try again later"
        else:
            message = f"{where}: the Hub refused (HTTP {status}{detail})"
    elif isinstance(exc, httpx2.TransportError):
        transient = True
        message = f"{where}: cannot reach the Hugging Face Hub at {endpoint} ({type(exc).__name__}); check the network or HF_ENDPOINT"
    else:
        raise exc
    return PublishError(message.replace(secret, "***"), transient=transient)


def _push_one(api, item: PublishPlanItem, private: bool, secret: str) -> PushResult:
    assert item.card is not None and item.commit_message is not None and item.repo_id is not None
    if any(secret in text for text in (item.card, item.commit_message, item.commit_description or "")):
        raise PublishError(f"refusing to publish {item.kind}: the HF token appears in its card or commit message")
    # The folder must still be what was planned (a curate run in between would change it).
    for planned in item.files[1:]:
        path = item.folder / planned.path_in_repo
        if not path.is_file() or path.stat().st_size != planned.size:
            raise PublishError(f"{path} changed since the plan was made; run publish again")
    paths = [f.path_in_repo for f in item.files]
    try:
        api.create_repo(item.repo_id, repo_type="dataset", exist_ok=True, private=private)
        if private and not api.dataset_info(item.repo_id).private:
            # create_repo ignores `private` for an existing repo: never publish into a public one
            # when the user asked for a private dataset.
            raise PublishError(
                f"{item.repo_id} already exists and is public, but a private upload was asked for; "
                "make the repo private on the Hub, or publish with --public"
            )
        # The published card carries the repo id and the analysis: keep the local copy the same.
        write_text(item.folder / "README.md", item.card)
        commit = api.upload_folder(
            folder_path=item.folder,
            repo_id=item.repo_id,
            repo_type="dataset",
            commit_message=item.commit_message,
            commit_description=item.commit_description,
            allow_patterns=paths,  # exactly the planned files, nothing else in the folder
            delete_patterns=[REMOTE_DATA_PATTERN],
        )
    except UserError:
        raise
    except Exception as exc:
        raise _hub_error(exc, item, api.endpoint, secret) from None
    return PushResult(item.kind, item.repo_id, commit.commit_url, commit.oid, tuple(paths), private)


def push(plan: list[PublishPlanItem], token: SecretStr | None, private: bool, endpoint: str | None = None) -> list[PushResult]:
    """Upload every named dataset of ``plan``: one dataset repo and ONE commit each.

    Refuses (:class:`PublishError`) before any network call when the plan has a problem or the
    token is missing. ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT``).
    """
    to_push = check_publishable(plan)
    secret = token.get_secret_value().strip() if token is not None else ""
    if not secret:
        raise PublishError("HF_TOKEN is not set: put a Hugging Face token with write access in HF_TOKEN (environment or .env) to publish")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=secret, library_name="kernelbook-curator", library_version=__version__)
    return [_push_one(api, item, private, secret) for item in to_push]
