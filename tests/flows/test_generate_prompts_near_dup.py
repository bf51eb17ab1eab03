"""``generate-prompts`` with near-duplicate families (the default) and ``--decontaminate``:
one specification per family, the others recorded, benchmark copies never generated."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flows.generate_prompts import generate_prompts
from kernelbook_lib import prompt_dataset
from tests.lib.test_decontam import SOFTMAX, UNRELATED, kernelbench
from tests.lib.test_neardup import SWISH, SWISH_DISGUISED
from kernelbook_lib.params import GenerateParams

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_one_specification_per_family_and_no_benchmark_copy(tmp_path):
    src = tmp_path / "kernelbook.parquet"
    pl.DataFrame({
        "module_name": ["Swish", "Model", "SwishModule", "Model", "Swish"],
        "python_code": [SWISH, SOFTMAX, SWISH_DISGUISED, UNRELATED, SWISH],
        "uuid": [1, 2, 3, 4, 5],
    }).write_parquet(src)  # fmt: skip
    bench = kernelbench(tmp_path / "kb.parquet", [(1, 23, "23_Softmax.py", SOFTMAX)])
    out = tmp_path / "out"
    summary = generate_prompts(GenerateParams(source=str(src), backend="template", out=str(out), decontaminate=[str(bench)]))
    rows = [json.loads(line) for line in (out / prompt_dataset.PROMPTS_FILE).read_text().splitlines()]
    assert [r["uuid"] for r in rows] == [1, 4]  # the first Swish stands for its family; no softmax
    assert rows[0]["family_id"] == min(rows[0]["problem_id"], prompt_dataset.problem_id(SWISH_DISGUISED))
    ledger = {r["source_index"]: r["reason"] for r in map(json.loads, (out / prompt_dataset.REJECTED_FILE).read_text().splitlines())}
    assert ledger == {1: "contaminated", 2: "near_duplicate", 4: "duplicate_problem"}
    assert [s["name"] for s in summary["stages"]] == ["load", "families", "decontaminate", "dedupe", "generate"]
    assert summary["near_dup"]["enabled"] and summary["near_duplicates_collapsed"] == 1
    assert summary["decontamination"]["benchmarks"][0]["rows_removed"] == 1
    card = (out / "synthetic" / "README.md").read_text()
    assert "One prompt per near-duplicate family" in card and "**Decontamination.**" in card

    # --no-near-dup: one specification per problem, as before families.
    off = generate_prompts(GenerateParams(source=str(src), backend="template", out=str(tmp_path / "off"), near_dup=False))
    assert off["stages"][-1]["rows_out"] == 4 and off["near_duplicates_collapsed"] == 0
