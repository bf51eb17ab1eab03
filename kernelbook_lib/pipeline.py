"""Pipelines as data: a :class:`Stage` is a small object that takes a frame and returns its
:class:`~kernelbook_lib.ledger.StageResult` (rows in = rows out + dropped, each drop with a
reason); a :class:`Pipeline` declares its parameter model, its stages in order and its outputs.

The executor is apart from the pipeline (as in datatrove): :func:`run_stages` walks the stages
and calls ``execute(stage, frame, run)`` for each; the default runs the stage here, in this
process (what the unit tests use), and ``tasks/pipeline.py`` passes one that runs each stage as
a Prefect task, with the name, retries and retry condition the stage declares. What an executor
lends the stages (logging, progress, mapping chunks over workers, LLM calls) comes through
:class:`Services`, so no stage knows about Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
from pydantic import BaseModel

from kernelbook_lib.ledger import StageReport, StageResult, empty_rejections
from kernelbook_lib.summary import now_iso

if TYPE_CHECKING:
    from kernelbook_lib.llm import LLMRequest, LLMTask
    from kernelbook_lib.progress import Progress


@dataclass(frozen=True)
class LLMCalls:
    """What an LLM stage gets back from :attr:`Services.llm`: one outcome per request, in
    request order, and the run's accounting (calls, tokens, cost)."""

    outcomes: list
    accounting: dict[str, Any]


def _no_progress(label: str, total: int, unit: str = "rows") -> AbstractContextManager[Progress | None]:
    return nullcontext()


def _map_here(name: str, fn: Callable[[Any], Any], items: Sequence[Any], advance: Callable[[Any], int] | None = None,
              progress: Progress | None = None) -> list[Any]:
    results = []
    for item in items:
        results.append(fn(item))
        if progress is not None and advance is not None:
            progress.advance(advance(item))
    return results


def _no_llm(task: LLMTask, requests: list[LLMRequest], refresh: bool, label: str) -> LLMCalls:
    raise RuntimeError("this executor makes no LLM calls (run the pipeline through tasks/pipeline.py)")


@dataclass(frozen=True)
class Services:
    """What the executor lends the stages. ``map(name, fn, items, advance, progress)`` applies
    ``fn`` to every item and returns the results in order (the Prefect executor maps them as
    task runs named ``name``, so a Dask task runner spreads them; ``advance(item)`` rows are
    added to ``progress`` as each finishes). ``llm`` makes the calls of an LLM stage."""

    log: Callable[[str], None] = lambda message: None
    progress: Callable[..., AbstractContextManager[Progress | None]] = _no_progress
    map: Callable[..., list[Any]] = _map_here
    llm: Callable[[LLMTask, list[LLMRequest], bool, str], LLMCalls] = _no_llm


@dataclass(frozen=True)
class StageOutput:
    """A stage's result: the rows it passes on with its ledger (``result``; None for a step that
    reads or prepares something and passes the frame on unchanged), ``facts`` for later stages
    (named values: the benchmarks, the judge that runs, the normalised forms) and ``summary``,
    fields of the run summary."""

    result: StageResult | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


class Stage:
    """One step of a pipeline. Subclasses set ``name`` (the task's name in Prefect, and the
    ledger's stage name for a stage that drops rows) and implement :meth:`run`.

    Declared on the stage, read by the executor: ``retries`` and ``retry_delay_s``, and
    ``retry_if(exception)`` (retry only when it says so; None: on every exception). Declared
    for the outputs: ``in_ledger`` (its dropped rows go to the rejected file; ``dedupe``'s
    losers stay in the ``filtered`` dataset instead) and ``counted`` (its report is one of the
    summary's stages)."""

    name: ClassVar[str]
    retries: ClassVar[int] = 0
    retry_delay_s: ClassVar[float] = 5.0
    retry_if: ClassVar[Callable[[BaseException], bool] | None] = None
    in_ledger: ClassVar[bool] = True
    counted: ClassVar[bool] = True

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass
class Run:
    """One run of a pipeline: its parameters, the executor's services, and what the stages
    have produced so far (their outputs by name, the facts they leave, the summary fields)."""

    params: BaseModel
    services: Services = field(default_factory=Services)
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)

    def result(self, name: str) -> StageResult:
        """The result of the stage ``name`` (which must have run and passed rows on)."""
        output = self.outputs.get(name)
        if output is None or output.result is None:
            raise KeyError(f"stage {name!r} has not produced rows in this run")
        return output.result

    @property
    def reports(self) -> list[StageReport]:
        """The counted stages' reports, in order (the summary's ``stages``)."""
        return [self.outputs[s.name].result.report for s in self.stages if s.counted and self.outputs[s.name].result is not None]  # type: ignore[union-attr]

    @property
    def ledger(self) -> pl.DataFrame:
        """Every dropped row of the stages whose drops go to the rejected file, in stage order."""
        parts = [self.outputs[s.name].result.rejected for s in self.stages if s.in_ledger and self.outputs[s.name].result is not None]  # type: ignore[union-attr]
        return pl.concat(parts) if parts else empty_rejections()

    def progress(self, label: str, total: int, unit: str = "rows") -> AbstractContextManager[Progress | None]:
        return self.services.progress(label, total, unit)

    def log(self, message: str) -> None:
        self.services.log(message)


Execute = Callable[[Stage, "pl.DataFrame | None", Run], StageOutput]


def execute_here(stage: Stage, frame: pl.DataFrame | None, run: Run) -> StageOutput:
    """The plain executor: run the stage in this process (retries are the orchestrator's)."""
    return stage.run(frame, run)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline as data: ``params`` (its parameter model: the flow's parameter, the CLI's
    options, the deployments' parameters), ``stages`` in order (built from the parameters, so
    ``--screen off`` is a pipeline without the screen), and ``outputs``, the files it writes."""

    name: str
    params: type[BaseModel]
    stages: Callable[[BaseModel], Sequence[Stage]]
    outputs: Outputs

    def stage_names(self, params: BaseModel) -> list[str]:
        return [s.name for s in self.stages(params)]


@dataclass(frozen=True)
class Outputs:
    """What a pipeline writes into its ``out`` folder (the one place for its file names) and how.

    ``summary_file``: written last, so a folder that has it holds a finished run (removed at
    the start of a run). ``write(run) -> summary``: everything but the summary file;
    ``finish(out, summary) -> summary``: the summary file. ``gate(run, summary)``: why the run
    must end non-zero after everything is written (None when it need not)."""

    summary_file: str
    files: tuple[str, ...]
    write: Callable[[Run], Any]
    finish: Callable[[str, Any], Any]
    gate: Callable[[Run, Any], str | None] = lambda run, summary: None


def run_stages(pipeline: Pipeline, params: BaseModel, services: Services | None = None,
               execute: Execute = execute_here) -> Run:
    """Run every stage of ``pipeline`` in order, each on the previous frame, and return the run.

    A stage's input is the rows the last stage with a result passed on (None before the first);
    its facts and summary fields are merged into the run for the stages after it. Stage names
    are unique within a pipeline (they key the outputs)."""
    if not isinstance(params, pipeline.params):
        raise TypeError(f"{pipeline.name} takes {pipeline.params.__name__}, not {type(params).__name__}")
    stages = list(pipeline.stages(params))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{pipeline.name}: stage names must be unique, got {names}")
    run = Run(params=params, services=services or Services(), stages=stages, summary={"started_at": now_iso()})
    frame: pl.DataFrame | None = None
    for stage in stages:
        output = execute(stage, frame, run)
        if not isinstance(output, StageOutput):
            raise TypeError(f"stage {stage.name!r} returned {type(output).__name__}, not a StageOutput")
        run.outputs[stage.name] = output
        run.facts.update(output.facts)
        run.summary.update(output.summary)
        if output.result is not None:
            if frame is not None and stage.counted and output.result.report.rows_in != frame.height:
                raise RuntimeError(f"stage {stage.name!r} reports {output.result.report.rows_in} rows in but got {frame.height}")
            frame = output.result.frame
    return run


def chunks(frame: pl.DataFrame, rows: int) -> Iterator[pl.DataFrame]:
    """``frame`` in slices of at most ``rows`` rows (none for an empty frame)."""
    for start in range(0, frame.height, rows):
        yield frame.slice(start, rows)
