"""The ``kernelbook`` command line: one sub-command per flow (``re-evaluate`` included), plus
``server``.

Each flow command's options are generated from the flow's parameter model in
:mod:`kernelbook_lib.params` (:func:`model_command`: name, default, help, choices), never
declared a second time here; the command passes the validated model to the flow. Flows
(and so Prefect, ~4 s to import) are imported only when a command runs, so ``--help`` is quick. A :class:`~kernelbook_lib.errors.UserError` ends the run with one clear line on
stderr and its exit code (2 for a user mistake), never a traceback.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.core import TyperGroup

from kernelbook_lib.errors import BatchesPendingError, UserError
from kernelbook_lib.params import AnalyzeParams, CurateParams, GenerateParams, PublishParams, ReevaluateParams, RunnerParams, TaskRunner


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


def _cli_type(annotation: Any) -> Any:
    """The annotation typer reads for a model field (``X | None`` as ``Optional[X]``)."""
    args = typing.get_args(annotation)
    if type(annotation) is types.UnionType or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return Optional[rest[0]] if len(rest) == 1 else annotation
    return annotation


def _flags(name: str, field: FieldInfo) -> tuple[str, ...]:
    """A field's option spelling: its ``flag`` extra, else ``--name`` (``--name/--no-name`` for a
    boolean that is on by default)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "flag" in extra:
        return (str(extra["flag"]),)
    flag = "--" + name.replace("_", "-")
    if field.annotation is bool and field.default is True:
        return (f"{flag}/--no-{flag[2:]}",)
    return (flag,)


def model_options(*models: type[BaseModel]) -> list[inspect.Parameter]:
    """The CLI options of ``models``' fields, in declaration order (a field declared by several
    models once): name, default, choices (``Literal``), help, and the ``flag``/``metavar`` extras.
    Bounds are not repeated: the preflight checks them against the model, and a value out of
    range is one line naming the option, like every other mistake."""
    options: dict[str, inspect.Parameter] = {}
    for model in models:
        for name, field in model.model_fields.items():
            if name in options:
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            option = typer.Option(field.default, *_flags(name, field), help=field.description, metavar=extra.get("metavar"))
            options[name] = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_cli_type(field.annotation))
    return list(options.values())


def model_command(name: str, help: str, *models: type[BaseModel]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(values)`` as the command ``name``, its options generated from ``models``
    (the flow's parameter model, and the task-runner options where the command has them)."""

    def register(fn: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
        parameters = model_options(*models)

        def command(**values: Any) -> None:
            fn(values)

        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        command.__doc__ = help
        command.__name__ = name.replace("-", "_")
        app.command(name, help=help)(command)
        return command

    return register


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
    except BatchesPendingError as exc:  # --no-wait: not an error; the line says how to collect
        typer.echo(str(exc))
        raise typer.Exit(exc.exit_code) from None
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


def _split_runner(values: dict[str, Any]) -> tuple[dict[str, Any], TaskRunner, str | None]:
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    return values, values.pop("task_runner"), values.pop("dask_address")


def _params(pipeline: str, values: dict[str, Any]) -> BaseModel:
    from kernelbook_lib.params import validate_params

    try:
        return validate_params(pipeline, values)
    except UserError as exc:  # already checked by the preflight; a second look cannot differ
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _outputs(pipeline: str) -> Any:
    """The files the pipeline writes (its spec is the one place for their names)."""
    from kernelbook_lib.pipelines import PIPELINES

    return PIPELINES[pipeline].outputs


def _run_writing_flow(pipeline: str, values: dict[str, Any], flow_of: Callable[[], Any], writes: str,
                      show: Callable[[dict], None], runner: tuple[TaskRunner, str | None] | None, prefetch: tuple[str, ...] = ()) -> dict:
    """A flow that writes ``--out``: checked and locked before Prefect starts, then the flow
    (``flow_of()`` imports it) on its validated model; a run that failed after writing everything
    still shows the summary it wrote. ``runner``: the task runner this command opens (None: the
    flow opens its own, as re-evaluate does in a deployment)."""
    task_runner, address = runner or (values["task_runner"], values["dask_address"])
    with _checked_and_locked(pipeline, values, task_runner, address):
        flow = flow_of()
        params = _params(pipeline, values)
        with _summary_of_a_failed_run(Path(values["out"]) / _outputs(writes).summary_file, show):
            if runner is None:
                return run_flow(flow, prefetch=prefetch, params=params)
            return run_with_runner(flow, *runner, prefetch=prefetch, params=params)


def _curate_flow():
    from flows.curate import curate

    return curate


@model_command(
    "curate",
    "Load, group near-duplicate families, filter, decontaminate, screen for real Triton kernels, judge, make SFT-ready (--completion, lengths, --max-sft-tokens), dedupe, split and export (the filtered and unique datasets).",
    CurateParams, RunnerParams,
)
def curate(values: dict[str, Any]) -> None:
    values, task_runner, dask_address = _split_runner(values)
    analysis = values["analysis"]
    result = _run_writing_flow("curate", values, _curate_flow, "curate", _show_curate_summary,
                               (task_runner, dask_address), PLOTTING if analysis else ())
    typer.echo("")
    _show_curate_summary(result)
    typer.echo(f"outputs in {values['out']}/ ({', '.join(_outputs('curate').files)}{', analysis/' if analysis else ''})")


def _reevaluate_flow():
    from flows.reevaluate import reevaluate

    return reevaluate


@model_command(
    "re-evaluate",
    "The scheduled refresh, run once: re-curate (re-judging only what changed), refresh the analysis, and publish with --publish.",
    ReevaluateParams,
)
def re_evaluate(values: dict[str, Any]) -> None:
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    # The flow opens the task runner for its curate subflow itself (as in a deployment).
    result = _run_writing_flow("re-evaluate", values, _reevaluate_flow, "curate", _show_curate_summary, None, PLOTTING)
    typer.echo("")
    _show_curate_summary(result["summary"])
    typer.echo(f"outputs in {values['out']}/ ({', '.join(_outputs('curate').files)}, analysis/; report: {result['analysis_report']})")
    if result["published"] is None:
        typer.echo("not published: add --publish to upload")
    else:
        for commit in result["published"]["commits"]:
            typer.echo(f"{commit['kind']}: {commit['repo_id']} commit {commit['commit_url']} tag {commit['tag']}")


@model_command("analyze", "Correlations of difficulty, style and reward: analysis.json, plots and report.md.", AnalyzeParams)
def analyze(values: dict[str, Any]) -> None:
    from kernelbook_lib.analysis import judged_files

    params = _params("analyze", values)
    try:
        judged_files(params.input)  # a wrong folder is one clear line, before any flow run starts
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    from flows.analyze import analyze as analyze_flow

    result = run_flow(analyze_flow, prefetch=PLOTTING, params=params)
    typer.echo(f"analysis written to {result['out']} (report: {result['report']})")


@model_command("publish", "Validate the datasets and publish them to the Hugging Face Hub (a dry run unless --push).", PublishParams)
def publish(values: dict[str, Any]) -> None:
    params = _params("publish", values)
    from flows.publish import publish as publish_flow

    result = run_flow(publish_flow, params=params)
    if not result["pushed"]:
        typer.echo("dry run: nothing was uploaded (the plan is above); add --push to upload")
    for commit in result["commits"]:
        typer.echo(f"{commit['kind']}: {commit['repo_id']} commit {commit['commit_url']} tag {commit['tag']}")


def _generate_flow():
    from flows.generate_prompts import generate_prompts

    return generate_prompts


def _show_synthetic_summary(summary: dict) -> None:
    from kernelbook_lib.prompt_dataset import SyntheticSummary, format_summary

    summary = SyntheticSummary.model_validate(summary)
    typer.echo(format_summary(summary))
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}")


@model_command(
    "generate-prompts",
    "Write a task specification for every near-duplicate family (or distinct problem) of PyTorch modules (the synthetic prompts dataset).",
    GenerateParams, RunnerParams,
)
def generate_prompts(values: dict[str, Any]) -> None:
    values, task_runner, dask_address = _split_runner(values)
    result = _run_writing_flow("generate-prompts", values, _generate_flow, "generate-prompts", _show_synthetic_summary,
                               (task_runner, dask_address))
    typer.echo("")
    _show_synthetic_summary(result)
    typer.echo(f"outputs in {values['out']}/ ({', '.join(_outputs('generate-prompts').files)})")


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
