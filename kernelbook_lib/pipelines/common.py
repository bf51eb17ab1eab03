"""The stages both pipelines share: prepare the output folder, read the benchmarks, read and
check the source, group near-duplicate families, decontaminate (each a :class:`Stage`).

``curate`` and ``generate-prompts`` differ in the source they read, their LLM stage and their
outputs; everything here they run the same way (:mod:`kernelbook_lib.pipelines.curate`,
:mod:`kernelbook_lib.pipelines.generate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from kernelbook_lib import decontam, export, loading
from kernelbook_lib.errors import SourceUnavailableError
from kernelbook_lib.pipeline import Run, Stage, StageOutput
from kernelbook_lib.stages import assign_families


def network_failure(exc: BaseException) -> bool:
    """Retry a read only when the Hub could not be reached; a wrong path or schema is final."""
    return isinstance(exc, SourceUnavailableError) and exc.transient


@dataclass(frozen=True, repr=False)
class PrepareOut(Stage):
    """Create ``--out`` and mark the run unfinished: remove the pipeline's summary file (its
    other files are replaced whole when they are written)."""

    summary_file: str
    name = "prepare-out"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        return StageOutput(facts={"out": str(export.prepare_out_dir(run.params.out, self.summary_file))})  # type: ignore[attr-defined]


class LoadBenchmarks(Stage):
    """The benchmarks of ``--decontaminate``, read before anything else, so a wrong one fails the
    run at once (one clear line) and not after the source is read."""

    name = "load-benchmarks"
    retries = 1
    retry_if = staticmethod(network_failure)

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        benchmarks = []
        for source in run.params.decontaminate or []:  # type: ignore[attr-defined]
            bench = decontam.read_benchmark(source)
            run.log(
                f"decontaminate: {bench.name}: {len(bench.codes)} items (code column {bench.code_column!r}"
                + (f", {bench.rows_without_code} rows without code skipped" if bench.rows_without_code else "") + ")"
            )
            benchmarks.append(bench)
        return StageOutput(facts={"benchmarks": benchmarks})


@dataclass(frozen=True, repr=False)
class ReadSource(Stage):
    """Read ``--source`` (split ``--split``) as it is; only this and the benchmarks touch the
    network, so only they retry (on a network failure)."""

    read: Callable[[str, str], loading.LoadedSource] = loading.read_source
    describe: Callable[[str], str] = loading.describe_source
    name = "read-source"
    retries = 1
    retry_if = staticmethod(network_failure)

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        p = run.params
        run.log(f"load: reading {self.describe(p.source)} (split {p.split})")  # type: ignore[attr-defined]
        return StageOutput(facts={"loaded": self.read(p.source, p.split)})  # type: ignore[attr-defined]


class Families(Stage):
    """Near-duplicate families over every valid row (before the filter, so a problem's family never
    depends on ``--threshold`` or ``--limit``). Nothing is dropped; it adds ``family_id``."""

    name = "families"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        p = run.params
        near_dup, threshold = p.near_dup, p.near_dup_threshold  # type: ignore[attr-defined]
        if near_dup:
            with run.progress("families", frame.get_column("problem_id").n_unique(), "modules") as progress:
                result = assign_families(frame, near_dup, threshold, progress=progress, log=run.log)
        else:
            result = assign_families(frame, near_dup, threshold, log=run.log)
        nd = result.near_dup
        if nd.get("enabled"):
            run.log(
                f"families: {nd['problems']} problems in {nd['families']} families, {nd['problems_in_shared_families']} "
                f"in a family of more than one (largest {nd['largest_family']}); {nd['pairs_compared']} pairs compared "
                f"in {result.timings['wall_s']} s (threshold {threshold}, {nd['normalization']})"
            )
        else:
            run.log("families: --no-near-dup, every problem is its own family")
        return StageOutput(result.result, facts={"forms": result.forms}, summary={"near_dup": result.near_dup})


class Decontaminate(Stage):
    """Drop every row whose module copies an item of a ``--decontaminate`` benchmark
    (``contaminated``, the detail naming the item); a pass-through without benchmarks."""

    name = "decontaminate"

    def run(self, frame: pl.DataFrame | None, run: Run) -> StageOutput:
        assert frame is not None
        result = decontam.decontaminate(
            frame, run.facts["benchmarks"], run.params.near_dup_threshold, run.facts.get("forms"), progress=run.log  # type: ignore[attr-defined]
        )
        return StageOutput(result.result, summary={"decontamination": result.report or None})
