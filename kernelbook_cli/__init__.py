"""The ``kernelbook`` command line: one sub-command per flow (``re-evaluate`` included; ``python -m
flows.x`` calls it from the flow module's ``__main__`` block).

Each flow command's options are built from the flow's parameter model in
:mod:`kernelbook_lib.params` (default, help, choices), never declared a second time here. Flows
(and so Prefect, ~4 s to import) are imported only when a command runs, so ``--help`` is quick. A :class:`~kernelbook_lib.errors.UserError` ends the run with one clear line on
stderr and its exit code (2 for a user mistake), never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel
from typer.core import TyperGroup

from kernelbook_lib.errors import UserError
from kernelbook_lib.params import (
    Backend,
    CurateParams,
    GenerateParams,
    GroupBy,
    Judge,
    ReevaluateParams,
    RunnerParams,
    ScreenMode,
    SplitName,
    TaskRunner,
)


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


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kernelbook-curator {metadata.version('kernelbook-curator')} (prefect {metadata.version('prefect')})")
        raise typer.Exit()


@app.callback()
def _group(
    version: Annotated[bool, typer.Option("--version", help="Print the versions of kernelbook-curator and Prefect, and exit.", callback=_print_version, is_eager=True)] = False,
) -> None:
    """Curate LLM eval rollouts of Triton kernels into judged, deduplicated, leak-free SFT datasets."""


def _option(model: type[BaseModel], name: str, *flags: str, **extra: Any) -> Any:
    """A typer option declared by the field ``name`` of a flow's parameter model: its default and
    help text come from the model, so the CLI, the flows and ``prefect.yaml`` share one
    declaration (choices come from the field's ``Literal`` type, which the command's annotation
    names). Bounds are not repeated here: the preflight checks them against the model, and a
    value out of range is one line naming the option, like every other mistake."""
    field = model.model_fields[name]
    return typer.Option(field.default, *flags, help=field.description, **extra)


def _task_runner_option() -> Any:
    return _option(RunnerParams, "task_runner", "--task-runner")


def _dask_address_option() -> Any:
    return _option(RunnerParams, "dask_address", "--dask-address")


#: What the analysis imports to draw its plots (see ``run_flow``'s ``prefetch``).
PLOTTING = ("kernelbook_lib.plots",)


def run_with_runner(fn, runner: TaskRunner, address: str | None, *, prefetch: tuple[str, ...] = (), **kwargs):
    """Run a flow on the chosen task runner (see tasks/runners.py)."""
    if runner == "default" and address is None:
        return run_flow(fn, prefetch=prefetch, **kwargs)
    from tasks.runners import task_runner_session

    try:
        with task_runner_session(runner, address) as task_runner:
            return run_flow(fn.with_options(task_runner=task_runner), prefetch=prefetch, **kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


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


def run_flow(fn, *, prefetch: tuple[str, ...] = (), **kwargs):
    """Run a flow on the session's Prefect API; turn a UserError into one line on stderr and its
    exit code. (Ctrl-C is the session's: one line, exit code 130.)

    ``prefetch``: modules the flow may import later, imported while this process would only
    wait for its temporary Prefect server to start (see ``tasks.runtime.CliSession.attach``)."""
    from tasks.runtime import attach_prefect_api

    _quiet_user_errors()
    try:
        attach_prefect_api(prefetch=prefetch)
        return fn(**kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def _checked_and_locked(pipeline: str, values: dict, task_runner: TaskRunner, dask_address: str | None) -> Iterator[None]:
    """Before Prefect starts (a mistake costs no server start): check the options, ``.env`` and
    the settings, then lock ``--out`` for the whole command (the flow takes the same lock again,
    for deployments; in this process that only counts a level). A mistake or a folder in use
    is one line and exit code 2."""
    from kernelbook_lib import outlock, params

    try:
        params.validate_params("task-runner", {"task_runner": task_runner, "dask_address": dask_address})
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


def _show_curate_summary(summary: dict) -> None:
    """The run's table (rows in, kept, dropped with reasons, per stage), LLM use and warnings."""
    from kernelbook_lib.summary import RunSummary, format_llm, format_table

    summary = RunSummary.model_validate(summary)
    typer.echo(format_table(summary))
    if summary.llm:
        typer.echo(format_llm(summary.llm))
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}")


@app.command()
def curate(
    source: str = _option(CurateParams, "source"),
    split: SplitName = _option(CurateParams, "split"),
    threshold: float = _option(CurateParams, "threshold"),
    judge: Judge = _option(CurateParams, "judge"),
    limit: Optional[int] = _option(CurateParams, "limit"),
    seed: int = _option(CurateParams, "seed"),
    val_fraction: float = _option(CurateParams, "val_fraction"),
    group_by: GroupBy = _option(CurateParams, "group_by"),
    out: Path = _option(CurateParams, "out"),
    analysis: bool = _option(CurateParams, "analysis", "--analysis/--no-analysis"),
    refresh_judge: bool = _option(CurateParams, "refresh_judge", "--refresh-judge"),
    max_judge_failure_rate: float = _option(CurateParams, "max_judge_failure_rate"),
    near_dup: bool = _option(CurateParams, "near_dup", "--near-dup/--no-near-dup"),
    near_dup_threshold: float = _option(CurateParams, "near_dup_threshold"),
    decontaminate: Optional[list[str]] = _option(CurateParams, "decontaminate", "--decontaminate", metavar="SRC"),
    screen: ScreenMode = _option(CurateParams, "screen"),
    task_runner: TaskRunner = _task_runner_option(),
    dask_address: Optional[str] = _dask_address_option(),
) -> None:
    """Load, group near-duplicate families, filter, decontaminate, screen for real Triton kernels, judge, dedupe, split and export (the filtered and unique datasets)."""
    out = Path(out)
    values = dict(
        source=source, split=split, threshold=threshold, judge=judge, limit=limit,
        seed=seed, val_fraction=val_fraction, group_by=group_by, out=str(out), analysis=analysis,
        refresh_judge=refresh_judge, max_judge_failure_rate=max_judge_failure_rate,
        near_dup=near_dup, near_dup_threshold=near_dup_threshold, decontaminate=list(decontaminate or []),
        screen=screen,
    )
    with _checked_and_locked("curate", values, task_runner, dask_address):
        from flows.curate import curate as curate_flow
        from kernelbook_lib.export import SUMMARY_FILE

        with _summary_of_a_failed_run(out / SUMMARY_FILE, _show_curate_summary):
            result = run_with_runner(curate_flow, task_runner, dask_address, prefetch=PLOTTING if analysis else (), **values)
    typer.echo("")
    _show_curate_summary(result)
    typer.echo(f"outputs in {out}/ (filtered/, unique/, rejected.jsonl, run_summary.json{', analysis/' if analysis else ''})")


@app.command("re-evaluate")
def re_evaluate(
    source: str = _option(ReevaluateParams, "source"),
    split: SplitName = _option(ReevaluateParams, "split"),
    judge: Judge = _option(ReevaluateParams, "judge"),
    out: Path = _option(ReevaluateParams, "out"),
    publish: bool = _option(ReevaluateParams, "publish", "--publish"),
    private: bool = _option(ReevaluateParams, "private", "--private/--public"),
    threshold: float = _option(ReevaluateParams, "threshold"),
    limit: Optional[int] = _option(ReevaluateParams, "limit"),
    seed: int = _option(ReevaluateParams, "seed"),
    val_fraction: float = _option(ReevaluateParams, "val_fraction"),
    group_by: GroupBy = _option(ReevaluateParams, "group_by"),
    max_judge_failure_rate: Optional[float] = _option(ReevaluateParams, "max_judge_failure_rate"),
    near_dup: bool = _option(ReevaluateParams, "near_dup", "--near-dup/--no-near-dup"),
    near_dup_threshold: float = _option(ReevaluateParams, "near_dup_threshold"),
    decontaminate: Optional[list[str]] = _option(ReevaluateParams, "decontaminate", "--decontaminate", metavar="SRC"),
    screen: ScreenMode = _option(ReevaluateParams, "screen"),
    single_repo: Optional[str] = _option(ReevaluateParams, "single_repo", "--single-repo", metavar="OWNER/NAME"),
    task_runner: TaskRunner = _option(ReevaluateParams, "task_runner", "--task-runner"),
    dask_address: Optional[str] = _option(ReevaluateParams, "dask_address", "--dask-address"),
) -> None:
    """The scheduled refresh, run once: re-curate (re-judging only what changed), refresh the analysis, and publish with --publish."""
    out = Path(out)
    values = dict(
        source=source, split=split, judge=judge, out=str(out), publish=publish, private=private,
        threshold=threshold, limit=limit, seed=seed, val_fraction=val_fraction, group_by=group_by,
        max_judge_failure_rate=max_judge_failure_rate, near_dup=near_dup, near_dup_threshold=near_dup_threshold,
        decontaminate=list(decontaminate or []), screen=screen, single_repo=single_repo,
        task_runner=task_runner, dask_address=dask_address,
    )
    with _checked_and_locked("re-evaluate", values, task_runner, dask_address):
        from flows.reevaluate import reevaluate as reevaluate_flow
        from kernelbook_lib.export import SUMMARY_FILE

        # The flow opens the task runner for its curate subflow itself (as in a deployment).
        with _summary_of_a_failed_run(out / SUMMARY_FILE, _show_curate_summary):
            result = run_flow(reevaluate_flow, prefetch=PLOTTING, **values)
    typer.echo("")
    _show_curate_summary(result["summary"])
    typer.echo(f"outputs in {out}/ (filtered/, unique/, rejected.jsonl, run_summary.json, analysis/; report: {result['analysis_report']})")
    if result["published"] is None:
        typer.echo("not published: add --publish to upload")
    else:
        for commit in result["published"]["commits"]:
            typer.echo(f"{commit['kind']}: {commit['repo_id']} commit {commit['commit_url']} tag {commit['tag']}")


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

    result = run_flow(analyze_flow, prefetch=PLOTTING, input=str(input), out=str(out) if out else None)
    typer.echo(f"analysis written to {result['out']} (report: {result['report']})")


@app.command()
def publish(
    ctx: typer.Context,
    input: Annotated[Path, typer.Option("--input", help="A curate output folder.")] = Path("outputs"),
    push: Annotated[bool, typer.Option("--push", help="Upload for real (needs HF_TOKEN or `hf auth login`) and tag the commit; the default is a dry run.")] = False,
    private: Annotated[bool, typer.Option("--private/--public", help="Visibility of repos the push creates.")] = True,
    filtered_repo: Annotated[Optional[str], typer.Option(envvar="HF_FILTERED_REPO", help="owner/name of the filtered dataset repo (or HF_FILTERED_REPO in .env).")] = None,
    unique_repo: Annotated[Optional[str], typer.Option(envvar="HF_UNIQUE_REPO", help="owner/name of the unique dataset repo (or HF_UNIQUE_REPO in .env).")] = None,
    synthetic_repo: Annotated[Optional[str], typer.Option(envvar="HF_SYNTHETIC_REPO", help="owner/name of the synthetic prompts repo (or HF_SYNTHETIC_REPO in .env).")] = None,
    single_repo: Annotated[Optional[str], typer.Option(help="owner/name of ONE dataset repo holding filtered, unique and synthetic as configs (instead of a repo each).")] = None,
) -> None:
    """Validate the datasets and publish them to the Hugging Face Hub (a dry run unless --push)."""
    from flows.publish import publish as publish_flow

    if single_repo:  # HF_*_REPO do not apply to a single repo (only a --*-repo given with it is refused)
        from_env = {name for name in ("filtered_repo", "unique_repo", "synthetic_repo") if getattr(ctx.get_parameter_source(name), "name", None) == "ENVIRONMENT"}
        filtered_repo, unique_repo, synthetic_repo = (
            None if name in from_env else value
            for name, value in (("filtered_repo", filtered_repo), ("unique_repo", unique_repo), ("synthetic_repo", synthetic_repo))
        )

    result = run_flow(
        publish_flow, input=str(input), push=push, private=private,
        filtered_repo=filtered_repo, unique_repo=unique_repo, synthetic_repo=synthetic_repo, single_repo=single_repo,
    )
    if not result["pushed"]:
        typer.echo("dry run: nothing was uploaded (the plan is above); add --push to upload")
    for commit in result["commits"]:
        typer.echo(f"{commit['kind']}: {commit['repo_id']} commit {commit['commit_url']} tag {commit['tag']}")


@app.command("generate-prompts")
def generate_prompts(
    source: str = _option(GenerateParams, "source"),
    split: SplitName = _option(GenerateParams, "split"),
    backend: Backend = _option(GenerateParams, "backend"),
    limit: Optional[int] = _option(GenerateParams, "limit"),
    out: Path = _option(GenerateParams, "out"),
    refresh: bool = _option(GenerateParams, "refresh", "--refresh"),
    near_dup: bool = _option(GenerateParams, "near_dup", "--near-dup/--no-near-dup"),
    near_dup_threshold: float = _option(GenerateParams, "near_dup_threshold"),
    decontaminate: Optional[list[str]] = _option(GenerateParams, "decontaminate", "--decontaminate", metavar="SRC"),
    task_runner: TaskRunner = _task_runner_option(),
    dask_address: Optional[str] = _dask_address_option(),
) -> None:
    """Write a task specification for every near-duplicate family (or distinct problem) of PyTorch modules (the synthetic prompts dataset)."""
    out = Path(out)
    values = dict(
        source=source, split=split, backend=backend, limit=limit, out=str(out), refresh=refresh,
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
