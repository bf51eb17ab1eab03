"""Publish the output datasets to the Hugging Face Hub: plan, push, tag.

1. :func:`plan_publish` builds, per dataset repo, what would be uploaded: repo id, files with
   sizes, rows per split, the regenerated card, the analysis plots (only when the analysis is
   this run's, see :func:`kernelbook_lib.hub_plots.analysis_problems`), the commit message and
   the validation result (:func:`kernelbook_lib.hub_validate.validate_dataset_folder`, which
   checks each dataset folder against its run summary). A dataset without a repo id is listed as
   skipped and is never pushed. With ``single_repo`` the datasets become configs of one repo.
2. :func:`push` refuses a plan with any problem, then, per repo, creates the dataset repo,
   makes ONE commit (``create_commit``: the planned files added, the repo's older data files and
   plots deleted) and tags it (``create_tag``), so every publish stays loadable with
   ``revision=<tag>``.

The analyze flow calls :func:`kernelbook_lib.hub_plots.attach_analysis` to put the plots and the
correlation table into the local dataset folders and cards, so a folder looks like the repo it
becomes.

No function here prints or logs the token; Hub failures become one clear
:class:`PublishError` (a :class:`UserError`) without the token. Every request to the Hub has
a timeout (:data:`HUB_TIMEOUT_S`): a Hub that accepts a connection and never answers ends in
an error, not a hang.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from kernelbook_lib import __version__, export
from kernelbook_lib.cards import (
    KINDS,
    CardPart,
    public_source,
    render_combined_card,
    render_dataset_card,
)
from kernelbook_lib.errors import UserError
from kernelbook_lib.export import write_text
from kernelbook_lib.hub_plots import _mirror_images, _read_json, analysis_images, analysis_problems, load_analysis
from kernelbook_lib.hub_validate import SUMMARY_FILES, FolderReport, validate_dataset_folder

#: The settings variable that names each dataset's repo.
REPO_VARIABLES: dict[str, str] = {
    "filtered": "HF_FILTERED_REPO",
    "unique": "HF_UNIQUE_REPO",
    "synthetic": "HF_SYNTHETIC_REPO",
}
#: Remote files a push replaces (deleted in the same commit unless sent again): a repo holds
#: exactly one publish's data and plots, like a local dataset folder holds one run's.
REMOTE_REPLACED = ("data/*", "images/*")
#: The same for a single repo holding the datasets as configs (``kind/data/...``).
REMOTE_REPLACED_SINGLE = ("data/*", "images/*", *(f"{kind}/*" for kind in KINDS))
#: Seconds a request to the Hub may wait to connect, for the pool, or between two reads or
#: writes (not the whole transfer: a large upload that keeps moving never times out).
HUB_TIMEOUT_S = 60.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class PublishError(UserError):
    """Publishing failed or was refused. ``transient`` is true when trying again later may work
    (the Hub could not be reached or answered 5xx); the Prefect task retries only those."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# --- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    size: int  # bytes
    source: Path | None = None  # the local file sent; None for the card (sent from the plan)


@dataclass(frozen=True)
class PublishPlanItem:
    """One repo of the plan: where it goes, what is sent, and whether it may be sent.

    ``kind`` is a dataset kind, or ``filtered+unique+...`` for a single repo holding several."""

    kind: str
    folder: Path  # the dataset folder (the output folder for a single repo)
    repo_id: str | None  # None: skipped, never pushed
    skipped_reason: str | None = None
    files: tuple[PlannedFile, ...] = ()
    rows: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    card: str | None = None  # the regenerated README.md (written into the folder by push())
    commit_message: str | None = None
    commit_description: str | None = None
    replaced: tuple[str, ...] = REMOTE_REPLACED  # remote files deleted unless sent again
    tag_prefix: str | None = None  # the tag is ``{tag_prefix}-{first 8 hex digits of the commit}``
    mirror_local: bool = True  # push() writes the card and plots into ``folder`` too

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
            "tag": f"{self.tag_prefix}-<commit>" if self.tag_prefix else None,
        }


def tag_prefix(summary: Mapping[str, Any]) -> str:
    """``curate-2026-11-30``: the pipeline and the day its run finished. push() appends the
    commit's first 8 hex digits, so a second publish the same day gets its own tag."""
    pipeline = re.sub(r"[^A-Za-z0-9_-]+", "-", str(summary.get("pipeline") or "publish"))
    day = str(summary.get("finished_at") or "")[:10]
    return f"{pipeline}-{day}" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) else pipeline


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
    for key in ("split", "threshold", "limit", "judge", "judge_model", "judge_prompt_version", "generator_model",
                "generator_prompt_version", "group_by", "seed", "val_fraction"):
        if summary.get(key) is not None:
            lines.append(f"{key}: {summary[key]}")
    for stage in summary.get("stages") or []:
        dropped = ", ".join(f"{r} {n}" for r, n in (stage.get("dropped") or {}).items()) or "none dropped"
        lines.append(f"stage {stage.get('name')}: {stage.get('rows_in')} in, {stage.get('rows_out')} out ({dropped})")
    return message, "\n".join(lines)


def _repo_problem(repo_id: str) -> str | None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        return f"{repo_id!r} is not a valid Hub repo id (expected owner/name)"
    return None


@dataclass
class _Dataset:
    """One dataset folder checked for publishing (what both layouts need)."""

    kind: str
    folder: Path
    summary: dict
    report: FolderReport | None
    problems: list[str]
    analysis: dict | None = None
    images: list[tuple[Path, str, str]] = field(default_factory=list)


def _check_dataset(root: Path, kind: str, analysis: dict | None) -> _Dataset:
    folder = root / kind
    try:
        summary = _read_json(root / SUMMARY_FILES[kind], f"the {kind} dataset has no summary; run its flow first")
    except UserError as exc:
        return _Dataset(kind, folder, {}, None, [str(exc)])
    report = validate_dataset_folder(folder, kind, summary)
    problems = list(report.problems)
    images: list[tuple[Path, str, str]] = []
    if kind == "synthetic" or analysis is None:
        analysis = None
    else:
        problems += analysis_problems(analysis, root, summary)
        images = analysis_images(root, analysis)
    return _Dataset(kind, folder, summary, report, problems, analysis, images)


def _data_file(folder: Path, relative: str, in_repo: str) -> PlannedFile:
    return PlannedFile(in_repo, (folder / relative).stat().st_size, folder / relative)


def _image_files(images: list[tuple[Path, str, str]]) -> list[PlannedFile]:
    return [PlannedFile(in_repo, source.stat().st_size, source) for source, in_repo, _ in images]


def _plan_separate(root: Path, kind: str, repo_id: str, analysis: dict | None, seen: dict[str, str]) -> PublishPlanItem:
    problems: list[str] = []
    if (problem := _repo_problem(repo_id)) is not None:
        problems.append(problem)
    if repo_id in seen:
        problems.append(f"{repo_id} is also the {seen[repo_id]} repo; each dataset needs its own repo (or use --single-repo)")
    seen.setdefault(repo_id, kind)
    dataset = _check_dataset(root, kind, analysis)
    problems += dataset.problems
    report = dataset.report
    card = message = description = None
    files: tuple[PlannedFile, ...] = ()
    if report is not None and not problems:
        try:
            card = render_dataset_card(
                kind, dataset.summary, report.rows, dataset.analysis, repo_id,
                data_files=report.split_files, split_bytes=report.split_bytes, columns=report.columns,
                images=[(in_repo, caption) for _, in_repo, caption in dataset.images],
            )
        except UserError as exc:
            problems.append(str(exc))
        else:
            message, description = commit_text(kind, dataset.summary, report.rows)
            files = (
                PlannedFile(export.CARD_FILE, len(card.encode("utf-8"))),
                *_image_files(dataset.images),
                *(_data_file(dataset.folder, rel, rel) for rel in report.data_files),
            )
    return PublishPlanItem(
        kind, dataset.folder, repo_id, files=files, rows=dict(report.rows) if report else {}, problems=tuple(problems),
        card=card, commit_message=message, commit_description=description,
        tag_prefix=tag_prefix(dataset.summary) if dataset.summary else None,
    )


def _plan_single(root: Path, repo_id: str, analysis: dict | None) -> PublishPlanItem:
    """filtered, unique and (when generated) synthetic as configs of one repo, under ``kind/``."""
    problems: list[str] = []
    if (problem := _repo_problem(repo_id)) is not None:
        problems.append(problem)
    kinds = [k for k in KINDS if k != "synthetic" or (root / SUMMARY_FILES[k]).exists()]
    datasets = [_check_dataset(root, kind, analysis) for kind in kinds]
    problems += [f"{d.kind}: {p}" for d in datasets for p in d.problems]
    rows = {f"{d.kind}/{split}": n for d in datasets if d.report for split, n in d.report.rows.items()}
    kind = "+".join(kinds)
    card = message = description = None
    files: list[PlannedFile] = []
    if not problems:
        images = next((d.images for d in datasets if d.images), [])
        parts = [
            CardPart(
                d.kind, d.summary, d.report.rows, {s: [f"{d.kind}/{f}" for f in fs] for s, fs in d.report.split_files.items()},
                d.report.split_bytes, d.report.columns, d.analysis if d.kind == "filtered" else None,
                [(in_repo, caption) for _, in_repo, caption in images] if d.kind == "filtered" else (),
            )
            for d in datasets
            if d.report is not None
        ]
        try:
            card = render_combined_card(repo_id, parts)
        except UserError as exc:
            problems.append(str(exc))
        else:
            texts = [commit_text(d.kind, d.summary, d.report.rows) for d in datasets if d.report]
            message = "Publish " + "; ".join(m.removeprefix("Publish ") for m, _ in texts)
            description = "\n\n".join(f"{d.kind}:\n{text}" for d, (_, text) in zip(datasets, texts))
            files = [PlannedFile(export.CARD_FILE, len(card.encode("utf-8"))), *_image_files(images)]
            for d in datasets:
                files += [_data_file(d.folder, rel, f"{d.kind}/{rel}") for rel in d.report.data_files]
    filtered_summary = datasets[0].summary
    return PublishPlanItem(
        kind, root, repo_id, files=tuple(files), rows=rows, problems=tuple(problems), card=card,
        commit_message=message, commit_description=description, replaced=REMOTE_REPLACED_SINGLE,
        tag_prefix=tag_prefix(filtered_summary) if filtered_summary else None, mirror_local=False,
    )


def plan_publish(input_dir: str | Path, repos: Mapping[str, str | None], single_repo: str | None = None) -> list[PublishPlanItem]:
    """What :func:`push` would upload from ``input_dir``.

    ``repos`` maps ``filtered``/``unique``/``synthetic`` to a repo id or None; a kind without
    a repo id is listed as skipped. For each named dataset: the folder is validated against its
    summary, the card is regenerated (with the analysis and its plots when
    ``analysis/analysis.json`` is this run's, and the repo id), and the files and sizes to send
    are listed. ``single_repo``: one item instead, every dataset as a config of that repo
    (``repos`` must then name none).
    """
    unknown = set(repos) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown dataset kind(s) {sorted(unknown)}; expected {KINDS}")
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--input {root} is not a folder; run the curate flow first")
    analysis = load_analysis(root)
    if single_repo:
        named = [f"--{kind}-repo" for kind, repo in repos.items() if repo]
        if named:
            raise UserError(f"--single-repo puts every dataset in one repo; do not also pass {', '.join(named)}")
        return [_plan_single(root, single_repo, analysis)]
    items: list[PublishPlanItem] = []
    seen: dict[str, str] = {}
    for kind in KINDS:
        repo_id = repos.get(kind)
        if not repo_id:
            reason = f"no repo id (pass --{kind}-repo or set {REPO_VARIABLES[kind]})"
            items.append(PublishPlanItem(kind, root / kind, None, skipped_reason=reason))
            continue
        items.append(_plan_separate(root, kind, repo_id, analysis, seen))
    return items


def format_plan(plan: list[PublishPlanItem], *, dry_run: bool = True) -> str:
    """The plan as text for the terminal: per repo the rows, files and sizes, commit and tag."""
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
            lines.append(f"    replaces remote: {', '.join(item.replaced)} (older files there are deleted in the same commit)")
        if item.commit_message:
            lines.append(f"    commit: {item.commit_message}")
        if item.tag_prefix and item.ok:
            lines.append(f"    tag: {item.tag_prefix}-<first 8 hex digits of the commit>")
        lines += [f"    problem: {p}" for p in item.problems]
    return "\n".join(lines)


def check_publishable(plan: list[PublishPlanItem]) -> list[PublishPlanItem]:
    """The items to push; a :class:`PublishError` when there are none or any has a problem."""
    to_push = [item for item in plan if not item.skipped]
    if not to_push:
        names = ", ".join(f"--{k}-repo/{v}" for k, v in REPO_VARIABLES.items())
        raise PublishError(f"nothing to publish: no repo id given ({names}, or --single-repo)")
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
    tag: str
    files: tuple[str, ...]
    deleted: tuple[str, ...]
    private: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "repo_id": self.repo_id, "commit_url": self.commit_url,
            "commit_oid": self.commit_oid, "tag": self.tag, "files": list(self.files),
            "deleted": list(self.deleted), "private": self.private,
        }


NO_TOKEN_MESSAGE = (
    "no Hugging Face token found: set HF_TOKEN (environment or .env) to a token with write access, "
    "or log in once with `hf auth login`"
)


def find_token(configured: SecretStr | None) -> SecretStr | None:
    """The token to publish with: HF_TOKEN from the settings (environment or .env), else what
    ``huggingface_hub.get_token()`` finds (HF_TOKEN, or the token saved by ``hf auth login``)."""
    if configured is not None and configured.get_secret_value().strip():
        return configured
    from huggingface_hub import get_token

    saved = get_token()
    return SecretStr(saved) if saved and saved.strip() else None


@contextmanager
def hub_timeout(seconds: float) -> Iterator[None]:
    """Every request huggingface_hub makes inside the block times out after ``seconds`` without
    progress (its default client has no timeout at all). The default client comes back after."""
    import httpx2
    from huggingface_hub import set_client_factory
    from kernelbook_lib.hub_internals import default_client  # keeps the offline check and request ids

    def with_timeout() -> httpx2.Client:
        client = default_client()
        client.timeout = httpx2.Timeout(seconds)
        return client

    set_client_factory(with_timeout)
    try:
        yield
    finally:
        set_client_factory(default_client)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _hub_error(exc: Exception, where: str, endpoint: str, secret: str, timeout: float) -> PublishError:
    """One clear message for a Hub failure (never the token, never a traceback). The upload
    helpers wrap HTTP errors in their own, so the whole chain of causes is read."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    transient = False
    for cause in _causes(exc):
        if isinstance(cause, OfflineModeIsEnabled):
            message = f"{where}: Hugging Face offline mode is on (HF_HUB_OFFLINE); unset it to publish"
            break
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            server = (cause.server_message or "").strip().splitlines()
            detail = f": {server[0]}" if server else ""
            if status == 401:
                message = f"{where}: the Hub rejected the token (HTTP 401 Unauthorized{detail}); check HF_TOKEN or log in again with `hf auth login`"
            elif status == 403:
                message = f"{where}: the token may not write there (HTTP 403 Forbidden{detail}); use a HF_TOKEN with write access to that namespace"
            elif status >= 500:
                transient = True
                message = f"{where}: the Hub failed (HTTP {status}{detail}); try again later"
            else:
                message = f"{where}: the Hub refused (HTTP {status}{detail})"
            break
        if isinstance(cause, httpx2.TimeoutException):
            transient = True
            message = f"{where}: the Hugging Face Hub at {endpoint} did not answer within {timeout:g} s ({type(cause).__name__}); try again later"
            break
        if isinstance(cause, httpx2.TransportError):
            transient = True
            message = f"{where}: cannot reach the Hugging Face Hub at {endpoint} ({type(cause).__name__}); check the network or HF_ENDPOINT"
            break
        if isinstance(cause, ConnectionError) and "xet" in str(cause).lower():  # hf_xet's own errors
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            message = (f"{where}: the upload to the Hub's Xet storage failed ({first}); if {endpoint} has no Xet "
                       "storage, set HF_HUB_DISABLE_XET=1 to upload through LFS")
            break
    else:
        raise exc
    return PublishError(message.replace(secret, "***"), transient=transient)


def _check_unchanged(item: PublishPlanItem) -> None:
    """The files must still be what was planned (a curate run in between would change them)."""
    for planned in item.files:
        if planned.source is not None and (not planned.source.is_file() or planned.source.stat().st_size != planned.size):
            raise PublishError(f"{planned.source} changed since the plan was made; run publish again")


def _operations(api, item: PublishPlanItem) -> tuple[list, list[str]]:
    """The commit's operations: every planned file added, and every remote file under the
    replaced paths that is not sent again deleted (older shards, older plots)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    adds = [
        CommitOperationAdd(f.path_in_repo, str(f.source) if f.source is not None else item.card.encode("utf-8"))
        for f in item.files
    ]
    sent = {f.path_in_repo for f in item.files}
    remote = api.list_repo_files(item.repo_id, repo_type="dataset")
    stale = sorted(
        path for path in remote
        if path not in sent and path != ".gitattributes" and any(fnmatch.fnmatch(path, p) for p in item.replaced)
    )
    return [*(CommitOperationDelete(path) for path in stale), *adds], stale


def _mirror_locally(item: PublishPlanItem) -> None:
    """The published card carries the repo id and the analysis: keep the local folder the same."""
    write_text(item.folder / export.CARD_FILE, item.card)
    images = [(f.source, f.path_in_repo, "") for f in item.files if f.path_in_repo.startswith(f"{export.IMAGES_DIR}/")]
    _mirror_images(item.folder, images)


def _push_one(api, item: PublishPlanItem, private: bool, secret: str, timeout: float) -> PushResult:
    assert item.card is not None and item.commit_message is not None and item.repo_id is not None
    if any(secret in text for text in (item.card, item.commit_message, item.commit_description or "")):
        raise PublishError(f"refusing to publish {item.kind}: the HF token appears in its card or commit message")
    _check_unchanged(item)
    where = f"publishing {item.kind} to {item.repo_id}"
    try:
        api.create_repo(item.repo_id, repo_type="dataset", exist_ok=True, private=private)
        if private and not api.dataset_info(item.repo_id).private:
            # create_repo ignores `private` for an existing repo: never publish into a public one
            # when the user asked for a private dataset.
            raise PublishError(
                f"{item.repo_id} already exists and is public, but a private upload was asked for; "
                "make the repo private on the Hub, or publish with --public"
            )
        operations, stale = _operations(api, item)
        if item.mirror_local:
            _mirror_locally(item)
        commit = api.create_commit(
            item.repo_id,
            operations,
            commit_message=item.commit_message,
            commit_description=item.commit_description,
            repo_type="dataset",
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of the commit is classified by _hub_error (and the token scrubbed)
        raise _hub_error(exc, where, api.endpoint, secret, timeout) from None
    tag = f"{item.tag_prefix or 'publish'}-{commit.oid[:8]}"
    try:
        api.create_tag(item.repo_id, tag=tag, revision=commit.oid, repo_type="dataset", tag_message=item.commit_message)
    except Exception as exc:  # noqa: BLE001 - the commit landed; any tagging failure is reported with what to do
        error = _hub_error(exc, f"{where}: committed {commit.commit_url} but could not tag it {tag}", api.endpoint, secret, timeout)
        raise PublishError(f"{error}; tag it by hand or publish again", transient=False) from None
    paths = tuple(f.path_in_repo for f in item.files)
    return PushResult(item.kind, item.repo_id, commit.commit_url, commit.oid, tag, paths, tuple(stale), private)


def push(
    plan: list[PublishPlanItem],
    token: SecretStr | None,
    private: bool,
    endpoint: str | None = None,
    *,
    timeout: float = HUB_TIMEOUT_S,
) -> list[PushResult]:
    """Upload every named repo of ``plan``: ONE commit each, then a tag on it.

    Refuses (:class:`PublishError`) before any network call when the plan has a problem or
    there is no token (see :func:`find_token`). ``endpoint`` defaults to huggingface_hub's
    (``HF_ENDPOINT``). ``timeout``: seconds a request may make no progress.
    """
    to_push = check_publishable(plan)
    secret = token.get_secret_value().strip() if token is not None else ""
    if not secret:
        raise PublishError(NO_TOKEN_MESSAGE)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=secret, library_name="kernelbook-curator", library_version=__version__)
    with hub_timeout(timeout):
        return [_push_one(api, item, private, secret, timeout) for item in to_push]
