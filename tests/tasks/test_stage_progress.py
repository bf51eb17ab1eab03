"""Long non-LLM stages report progress through ``kernelbook_lib.progress`` too: the load stage
(validating every source row), the near-duplicate families (normalising every distinct module)
and the static judge (as its chunks finish)."""

from __future__ import annotations

import logging

import pytest

import kernelbook_lib.pipelines.curate as curate_pipeline
from flows.curate import curate
from kernelbook_lib.params import CurateParams

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_load_and_static_judge_report_progress(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(curate_pipeline, "STATIC_CHUNK_ROWS", 20)  # several chunks on the sample
    caplog.set_level(logging.INFO)
    summary = curate(CurateParams(source="sample", judge="static", out=str(tmp_path / "out"), analysis=False))
    stages = {stage["name"]: stage for stage in summary["stages"]}
    load, judge = stages["load"], stages["judge"]
    finished = [r.getMessage() for r in caplog.records if r.getMessage().endswith("(finished)")]
    assert any(m.startswith(f"load: {load['rows_in']}/{load['rows_in']} rows done (100.0%)") for m in finished), finished
    assert any(m.startswith(f"judge: {judge['rows_in']}/{judge['rows_in']} rows done (100.0%)") for m in finished), finished
    problems = summary["near_dup"]["problems"]
    assert any(m.startswith(f"families: {problems}/{problems} modules done (100.0%)") for m in finished), finished
    assert all("/s" in m and "ETA" in m for m in finished)
