"""Pipelines as data: stages run in order on each other's frames, their ledgers reconcile, and a
whole pipeline runs without Prefect (the in-process executor) with the same datasets as the flow."""

from __future__ import annotations

import json

import polars as pl
import pytest

from kernelbook_lib import schema
from kernelbook_lib.ledger import StageResult, empty_rejections, rejections
from kernelbook_lib.params import CurateParams, GenerateParams
from kernelbook_lib.pipeline import Outputs, Pipeline, Run, Stage, StageOutput, run_stages
from kernelbook_lib.pipelines import CURATE, GENERATE, PIPELINES


class Source(Stage):
    name = "source"

    def run(self, frame, run):
        rows = pl.DataFrame({schema.ROW: [0, 1, 2, 3], "problem_id": ["a", "b", "c", "d"], "example_id": [0, 1, 2, 3],
                             "reward": [0.1, 0.9, 0.95, 0.2]})
        return StageOutput(StageResult.of("source", 4, rows, empty_rejections()), facts={"seen": 4})


class KeepHigh(Stage):
    name = "keep-high"

    def run(self, frame, run):
        low = frame.filter(pl.col("reward") <= 0.5)
        return StageOutput(StageResult.of(self.name, frame.height, frame.filter(pl.col("reward") > 0.5),
                                          rejections(low, self.name, "low_reward")), summary={"kept_of": run.facts["seen"]})


class Quiet(KeepHigh):
    """Drops like KeepHigh, but its drops stay out of the ledger and its report out of the stages."""

    name = "quiet"
    in_ledger = False
    counted = False


class Broken(Stage):
    name = "broken"

    def run(self, frame, run):
        return StageResult.of(self.name, frame.height, frame, empty_rejections())  # not a StageOutput


def toy(*stages: Stage) -> Pipeline:
    return Pipeline("toy", CurateParams, lambda params: list(stages), Outputs("s.json", (), write=lambda run: None, finish=lambda o, s: s))


def test_stages_chain_and_their_ledgers_reconcile():
    run = run_stages(toy(Source(), KeepHigh()), CurateParams(source="sample"))
    assert run.result("keep-high").frame.get_column("problem_id").to_list() == ["b", "c"]
    assert [(r.name, r.rows_in, r.rows_out, r.dropped) for r in run.reports] == [
        ("source", 4, 4, {}), ("keep-high", 4, 2, {"low_reward": 2})]
    assert run.ledger.get_column("reason").to_list() == ["low_reward", "low_reward"]
    assert run.summary["kept_of"] == 4 and "started_at" in run.summary  # facts reach later stages


def test_a_stage_can_keep_its_drops_out_of_the_ledger_and_the_stage_list():
    run = run_stages(toy(Source(), Quiet()), CurateParams(source="sample"))
    assert [r.name for r in run.reports] == ["source"] and run.ledger.height == 0
    assert run.result("quiet").frame.height == 2  # ...but the rows it dropped are not passed on


def test_mistakes_in_a_pipeline_fail_loudly():
    with pytest.raises(ValueError, match="stage names must be unique"):
        run_stages(toy(Source(), Source()), CurateParams(source="sample"))
    with pytest.raises(TypeError, match="returned StageResult, not a StageOutput"):
        run_stages(toy(Source(), Broken()), CurateParams(source="sample"))
    with pytest.raises(TypeError, match="toy takes CurateParams, not GenerateParams"):
        run_stages(toy(Source()), GenerateParams(source="sample"))


def test_the_executor_decides_how_a_stage_runs():
    seen: list[str] = []

    def execute(stage: Stage, frame, run: Run) -> StageOutput:
        seen.append(stage.name)
        return stage.run(frame, run)

    run_stages(toy(Source(), KeepHigh()), CurateParams(source="sample"), execute=execute)
    assert seen == ["source", "keep-high"]


def test_the_declared_pipelines_and_their_stages():
    assert set(PIPELINES) == {"curate", "generate-prompts"}
    params = CurateParams(source="sample")
    data_stages = [n for n in CURATE.stage_names(params) if n not in ("prepare-out", "load-benchmarks", "read-source", "resolve-judge")]
    assert tuple(data_stages) == schema.STAGES
    off = CURATE.stage_names(CurateParams(source="sample", screen="off"))
    assert "screen" not in off and "mark-unscreened" in off
    shared = {"prepare-out", "load-benchmarks", "read-source", "load", "families", "decontaminate", "dedupe"}
    assert shared <= set(CURATE.stage_names(params)) & set(GENERATE.stage_names(GenerateParams(source="sample")))


def test_curate_runs_in_process_without_prefect_and_writes_what_the_flow_writes(tmp_path):
    """The in-process executor (no orchestrator) runs the real curate pipeline with the static
    judge; its datasets are the ones the summary counts, and every dropped row has its reason."""
    params = CurateParams(source="sample", judge="static", out=str(tmp_path / "out"), analysis=False)
    run = run_stages(CURATE, params)
    summary = CURATE.outputs.write(run)
    CURATE.outputs.finish(run.facts["out"], summary)
    written = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert [s["name"] for s in written["stages"]] == list(schema.STAGES)
    unique = pl.read_parquet(tmp_path / "out" / "unique" / "data" / "*.parquet")
    assert unique.height == sum(written["datasets"]["unique"].values()) > 0
    ledger = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    in_ledger = sum(sum(s["dropped"].values()) for s in written["stages"] if s["name"] != "dedupe")
    assert len(ledger) == in_ledger and all(r["reason"] for r in ledger)
