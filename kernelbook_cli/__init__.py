"""The ``kernelbook`` command line: one sub-command per flow.

Flows (and so Prefect, ~4 s to import) are imported only when a command runs, so ``--help``
is instant. A :class:`~kernelbook_lib.errors.UserError` ends the run with one clear line on
stderr and its exit code (2 for a user mistake), never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from kernelbook_lib.errors import UserError


def _all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_all_subclasses(direct))]

class _SessionGroup(TyperGroup):
    """Runs each command inside a :class:`tasks.runtime.CliSession`: from the moment its options
    are parsed (so before it imports the flows) the session starts the Prefect server the run
    will use, ends the run cleanly on Ctrl-C (exit code 130), and stops the server at the end.
    Command groups (``server``) run as they are."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is None or isinstance(command, TyperGroup) or getattr(command, "_in_session", False):
            return command
        invoke = command.invoke

        def invoke_in_session(sub_ctx):
            from tasks.runtime import CliSession

            with CliSession():
                return invoke(sub_ctx)

        command.invoke = invoke_in_session
        command._in_session = True
        return command


app = typer.Typer(
    name="kernelbook",
    help="Curate LLM eval rollouts of Triton kernels into judged, deduplicated, leak-free SFT datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_SessionGroup,
)


@app.callback()
def _group() -> None:
    """Curate LLM eval rollouts of Triton kernels into judged, deduplicated, leak-free SFT datasets."""


class Split(str, Enum):
    train = "train"
    validation = "validation"
    all = "all"


class JudgeChoice(str, Enum):
    auto = "auto"
    static = "static"
    llm = "llm"


class TaskRunnerChoice(str, Enum):
    default = "default"
    dask = "dask"


TaskRunnerOption = Annotated[
    TaskRunnerChoice,
    typer.Option("--task-runner", help="default: threads in this process; dask: a local Dask cluster (one worker process per core) or --dask-address. Spreads the static judge over cores; the LLM stage is bound by its concurrency limit, not CPU."),
]
DaskAddressOption = Annotated[Optional[str], typer.Option("--dask-address", help="Scheduler address of an existing Dask cluster (with --task-runner dask).")]


def run_with_runner(fn, runner: TaskRunnerChoice, address: str | None, **kwargs):
    """Run a flow on the chosen task runner (see tasks/runners.py)."""
    if runner == TaskRunnerChoice.default and address is None:
        return run_flow(fn, **kwargs)
    from tasks.runners import task_runner_session

    try:
        with task_runner_session(runner.value, address) as task_runner:
            return run_flow(fn.with_options(task_runner=task_runner), **kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


class GroupBy(str, Enum):
    problem_id = "problem_id"
    module_name = "module_name"
    family_id = "family_id"


NearDupOption = Annotated[bool, typer.Option("--near-dup/--no-near-dup", help="Group near-duplicate modules into families (MinHash over a normalised form of the code); --no-near-dup makes every problem its own family.")]
NearDupThresholdOption = Annotated[float, typer.Option("--near-dup-threshold", help="Similarity (Jaccard of the normalised modules' shingles, above 0 and at most 1) at which two modules are one family, or a row copies a benchmark item.", min=0.0, max=1.0)]
DecontaminateOption = Annotated[Optional[list[str]], typer.Option("--decontaminate", metavar="SRC", help="An evaluation benchmark (local .parquet/.jsonl file or folder, or a Hub dataset id such as ScalingIntelligence/KernelBench) whose items must not be copied: matching rows are removed as 'contaminated'. Repeatable.")]


class _HideUserErrors(logging.Filter):
    """Keep a user mistake to one clear line: drop the console records Prefect writes about a
    task or flow that ended in a :class:`UserError` (its traceback and state lines). The records
    still reach the Prefect API, so the run's page in the UI shows the error."""

    _names = tuple(cls.__name__ for cls in (UserError, *_all_subclasses(UserError)))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            return False
        message = record.getMessage()
        about_a_failure = "state Failed" in message or "exception" in message
        return not (about_a_failure and any(name in message for name in self._names))


def _quiet_user_errors() -> None:
    """Attach the filter to Prefect's console handlers (Prefect configures logging on import)."""
    import prefect  # noqa: F401  (sets up Prefect's logging)

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _HideUserErrors) for f in handler.filters):
            handler.addFilter(_HideUserErrors())


def run_flow(fn, **kwargs):
    """Run a flow on the session's Prefect API; turn a UserError into one line on stderr and its
    exit code. (Ctrl-C is the session's: one line, exit code 130.)"""
    from tasks.runtime import attach_prefect_api

    _quiet_user_errors()
    try:
        attach_prefect_api()
        return fn(**kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def _checked_and_locked(pipeline: str, values: dict, task_runner: TaskRunnerChoice, dask_address: str | None) -> Iterator[None]:
    """Before Prefect starts (a mistake costs no server start): check the options, ``.env`` and
    the settings, then lock ``--out`` for the whole command (the flow takes the same lock again,
    for deployments; in this process that only counts a level). A mistake or a folder in use
    is one line and exit code 2."""
    from kernelbook_lib import outlock, params

    try:
        params.validate_params("task-runner", {"task_runner": task_runner.value, "dask_address": dask_address})
        checked = params.preflight(pipeline, values)
        stale = outlock.acquire(values["out"], pipeline)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    for warning in checked.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if stale is not None:
        typer.echo(f"warning: {values['out']}: took over the lock left by {stale.describe()}, which is no longer running", err=True)
    try:
        yield
    finally:
        outlock.release(values["out"], pipeline)


@contextmanager
def _summary_of_a_failed_run(summary_path: Path, show) -> Iterator[None]:
    """A run that failed after writing everything (exit code 1, e.g. too many judge failures)
    still shows its counts: ``show`` prints the summary it wrote (its last file)."""
    try:
        yield
    except typer.Exit as exc:
        if exc.exit_code == 1 and summary_path.is_file():
            import json

            typer.echo("")
            show(json.loads(summary_path.read_text(encoding="utf-8")))
        raise


@app.command()
def curate(
    source: Annotated[str, typer.Option(help="'sample' (bundled synthetic sample), a local .parquet/.jsonl file or folder, or a Hub dataset id.")] = "siro1/kernelbook-glm4-evals",
    split: Annotated[Split, typer.Option(help="Source split to read (the original used train).")] = Split.train,
    threshold: Annotated[float, typer.Option(help="Keep rows with reward strictly above this.")] = 0.85,
    judge: Annotated[JudgeChoice, typer.Option(help="llm: the LLM judge (needs PRIME_API_KEY); static: the offline AST heuristic; auto: llm when a key is configured, else static.")] = JudgeChoice.auto,
    limit: Annotated[Optional[int], typer.Option(help="Keep only the first N rows that pass the filter (test mode).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the family-grouped train/validation split.")] = 42,
    val_fraction: Annotated[float, typer.Option(help="Share of near-duplicate families (problems with --no-near-dup) in validation.")] = 0.1,
    group_by: Annotated[GroupBy, typer.Option(help="Dedupe key: problem_id (default), family_id (one rollout per near-duplicate family) or module_name (the original's grouping).")] = GroupBy.problem_id,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("outputs"),
    analysis: Annotated[bool, typer.Option("--analysis/--no-analysis", help="Run the analysis (statistics, plots, report) at the end.")] = True,
    refresh_judge: Annotated[bool, typer.Option("--refresh-judge", help="Ignore cached LLM judgements and call again (the new replies replace the cached ones).")] = False,
    max_judge_failure_rate: Annotated[float, typer.Option(help="Exit non-zero (after writing everything) when more than this share of rows could not be judged.", min=0.0, max=1.0)] = 0.01,
    near_dup: NearDupOption = True,
    near_dup_threshold: NearDupThresholdOption = 0.7,
    decontaminate: DecontaminateOption = None,
    task_runner: TaskRunnerOption = TaskRunnerChoice.default,
    dask_address: DaskAddressOption = None,
) -> None:
    """Load, group near-duplicate families, filter, decontaminate, judge, dedupe, split and export (the filtered and unique datasets)."""
    values = dict(
        source=source, split=split.value, threshold=threshold, judge=judge.value, limit=limit,
        seed=seed, val_fraction=val_fraction, group_by=group_by.value, out=str(out), analysis=analysis,
        refresh_judge=refresh_judge, max_judge_failure_rate=max_judge_failure_rate,
        near_dup=near_dup, near_dup_threshold=near_dup_threshold, decontaminate=list(decontaminate or []),
    )
    with _checked_and_locked("curate", values, task_runner, dask_address):
        from flows.curate import curate as curate_flow
        from kernelbook_lib.export import SUMMARY_FILE
        from kernelbook_lib.summary import RunSummary, format_llm, format_table

        def show(summary: RunSummary | dict) -> None:
            summary = RunSummary.model_validate(summary)
            typer.echo(format_table(summary))
            if summary.llm:
                typer.echo(format_llm(summary.llm))
            for warning in summary.warnings:
                typer.echo(f"warning: {warning}")

        with _summary_of_a_failed_run(out / SUMMARY_FILE, show):
            result = run_with_runner(curate_flow, task_runner, dask_address, **values)
    typer.echo("")
    show(result)
    typer.echo(f"outputs in {out}/ (filtered/, unique/, rejected.jsonl, run_summary.json{', analysis/' if analysis else ''})")


@app.command()
def analyze(
    input: Annotated[Path, typer.Option("--input", help="A curate output folder.")] = Path("outputs"),
    out: Annotated[Optional[Path], typer.Option(help="Where to write the analysis (default: INPUT/analysis).")] = None,
) -> None:
    """Correlations of difficulty, style and reward: analysis.json, plots and report.md."""
    from kernelbook_lib.analysis import judged_files

    try:
        judged_files(input)  # a wrong folder is one clear line, before any flow run starts
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    from flows.analyze import analyze as analyze_flow

    result = run_flow(analyze_flow, input=str(input), out=str(out) if out else None)
    typer.echo(f"analysis written to {result['out']} (report: {result['report']})")


@app.command()
def publish(
    input: Annotated[Path, typer.Option("--input", help="A curate output folder.")] = Path("outputs"),
    push: Annotated[bool, typer.Option("--push", help="Upload for real (needs HF_TOKEN or `hf auth login`) and tag the commit; the default is a dry run.")] = False,
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of repos the push creates.")] = True,
    filtered_repo: Annotated[Optional[str], typer.Option(help="owner/name of the filtered dataset repo (default: HF_FILTERED_REPO).")] = None,
    unique_repo: Annotated[Optional[str], typer.Option(help="owner/name of the unique dataset repo (default: HF_UNIQUE_REPO).")] = None,
    synthetic_repo: Annotated[Optional[str], typer.Option(help="owner/name of the synthetic prompts repo (default: HF_SYNTHETIC_REPO).")] = None,
    single_repo: Annotated[Optional[str], typer.Option(help="owner/name of ONE dataset repo holding filtered, unique and synthetic as configs (instead of a repo each).")] = None,
) -> None:
    """Validate the datasets and publish them to the Hugging Face Hub (a dry run unless --push)."""
    from flows.publish import publish as publish_flow

    result = run_flow(
        publish_flow, input=str(input), push=push, private=private,
        filtered_repo=filtered_repo, unique_repo=unique_repo, synthetic_repo=synthetic_repo, single_repo=single_repo,
    )
    if not result["pushed"]:
        typer.echo("dry run: nothing was uploaded (the plan is above); add --push to upload")
    for commit in result["commits"]:
        typer.echo(f"{commit['kind']}: {commit['repo_id']} commit {commit['commit_url']} tag {commit['tag']}")


class Backend(str, Enum):
    auto = "auto"
    llm = "llm"
    template = "template"


@app.command("generate-prompts")
def generate_prompts(
    source: Annotated[str, typer.Option(help="'sample' (bundled synthetic KernelBook sample), a local .parquet/.jsonl file or folder, or a Hub dataset id; KernelBook schema (module_name, python_code) or eval schema (info.*).")] = "GPUMODE/KernelBook",
    split: Annotated[Split, typer.Option(help="Source split to read (KernelBook has train only).")] = Split.train,
    backend: Annotated[Backend, typer.Option(help="llm: specifications written by GENERATOR_MODEL (needs PRIME_API_KEY); template: offline, built from the module's syntax tree; auto: llm when a key is configured, else template.")] = Backend.auto,
    limit: Annotated[Optional[int], typer.Option(help="Generate for the first N families (distinct problems with --no-near-dup) only (test mode).", min=1)] = None,
    out: Annotated[Path, typer.Option(help="Output folder (may be curate's: only the synthetic* outputs are written).")] = Path("outputs"),
    refresh: Annotated[bool, typer.Option("--refresh", help="Ignore cached LLM replies and call again (the new replies replace the cached ones).")] = False,
    near_dup: Annotated[bool, typer.Option("--near-dup/--no-near-dup", help="One specification per near-duplicate family (default), or with --no-near-dup one per distinct problem.")] = True,
    near_dup_threshold: NearDupThresholdOption = 0.7,
    decontaminate: DecontaminateOption = None,
    task_runner: TaskRunnerOption = TaskRunnerChoice.default,
    dask_address: DaskAddressOption = None,
) -> None:
    """Write a task specification for every near-duplicate family (or distinct problem) of PyTorch modules (the synthetic prompts dataset)."""
    values = dict(
        source=source, split=split.value, backend=backend.value, limit=limit, out=str(out), refresh=refresh,
        near_dup=near_dup, near_dup_threshold=near_dup_threshold, decontaminate=list(decontaminate or []),
    )
    with _checked_and_locked("generate-prompts", values, task_runner, dask_address):
        from flows.generate_prompts import generate_prompts as generate_flow
        from kernelbook_lib.prompt_gen import SUMMARY_FILE, SyntheticSummary, format_summary

        def show(summary: SyntheticSummary | dict) -> None:
            summary = SyntheticSummary.model_validate(summary)
            typer.echo(format_summary(summary))
            for warning in summary.warnings:
                typer.echo(f"warning: {warning}")

        with _summary_of_a_failed_run(out / SUMMARY_FILE, show):
            result = run_with_runner(generate_flow, task_runner, dask_address, **values)
    typer.echo("")
    show(result)
    typer.echo(f"outputs in {out}/ (synthetic_prompts.jsonl, synthetic/, synthetic_rejected.jsonl, synthetic_summary.json)")


server_app = typer.Typer(
    help="A local Prefect server that outlives runs, with the UI. While it runs, kernelbook commands use it "
    "(unless PREFECT_API_URL points elsewhere) instead of starting a temporary server each time.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def _server_line(record) -> str:
    return f"{record.address} (UI: {record.address}, API: {record.api_url}, pid {record.pid})"


@server_app.command("start")
def server_start(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 4200,
) -> None:
    """Start the server in the background (its log: PREFECT_HOME/kernelbook-server.log)."""
    import tasks  # noqa: F401  (the Prefect defaults: no telemetry, quiet services)
    from tasks.local_server import LocalServer

    server = LocalServer()
    running = server.running()
    if running is not None:
        typer.echo(f"a Prefect server is already running at {_server_line(running)}")
        return
    typer.echo("starting the Prefect server (the first start on a new PREFECT_HOME creates its database)...")
    try:
        record = server.start(port=port)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Prefect server running at {_server_line(record)}")
    typer.echo("kernelbook runs use it until `kernelbook server stop`; its log: " + str(server.log_path))


@server_app.command("status")
def server_status() -> None:
    """Say whether the server runs (exit code 0) or not (exit code 1)."""
    from tasks.local_server import LocalServer

    server = LocalServer()
    record = server.running()
    if record is None:
        typer.echo(f"no kernelbook Prefect server is running for PREFECT_HOME={server.home}")
        raise typer.Exit(1)
    typer.echo(f"running at {_server_line(record)}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the server."""
    from tasks.local_server import LocalServer

    server = LocalServer()
    record = server.stop()
    if record is None:
        typer.echo(f"no kernelbook Prefect server was running for PREFECT_HOME={server.home}")
    else:
        typer.echo(f"stopped the Prefect server at {record.address}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="kernelbook")
