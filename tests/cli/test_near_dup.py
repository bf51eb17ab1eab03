"""``kernelbook curate`` with near-duplicate families and ``--decontaminate``, as a user runs it:
the families-aware split, ``--no-near-dup``, ``--group-by family_id``, the figures in the
summary, the end table and the card, and the benchmark's user errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import neardup, stages
from kernelbook_lib.rubric import build_judge_messages
from kernelbook_lib.text import extract_answer
from tests.fixtures import fake_data
from tests.fixtures.llm import loopback_llm
from tests.fixtures.llm_server import prompt_hash
from tests.lib.test_decontam import SOFTMAX, UNRELATED, kernelbench
from tests.lib.test_neardup import labelled_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run(*args: str):
    return CliRunner().invoke(app, ["curate", "--judge", "static", "--no-analysis", *args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def read(out: Path, name: str) -> pl.DataFrame:
    return pl.concat([
        pl.read_parquet(out / name / "data" / f"{split}-*.parquet").with_columns(pl.lit(split).alias("split"))
        for split in ("train", "validation")
    ])  # fmt: skip


def test_a_benchmark_without_a_code_column_or_out_of_reach_is_one_line_before_any_work(tmp_path):
    bench = tmp_path / "bench.parquet"
    pl.DataFrame({"name": ["19_ReLU.py"], "level": [1]}).write_parquet(bench)
    source = fake_data.write_rows([fake_data.row(0)], tmp_path / "src.parquet")
    error = one_error_line(run("--source", str(source), "--decontaminate", str(bench), "--out", str(tmp_path / "o1")))
    assert "bench.parquet has no code column" in error and error.endswith("columns found: name, level")
    assert not (tmp_path / "o1" / "run_summary.json").exists()
    error = one_error_line(run("--source", str(source), "--decontaminate", "ScalingIntelligence/KernelBench",
                               "--out", str(tmp_path / "o2")))
    assert "cannot load benchmark 'ScalingIntelligence/KernelBench' from the Hugging Face Hub" in error


def test_families_keep_near_copies_on_one_side_and_no_near_dup_is_the_split_by_problem(tmp_path):
    rows, _ = labelled_rows(1)
    source = fake_data.write_rows(rows, tmp_path / "src.parquet")
    on, off, fam = tmp_path / "on", tmp_path / "off", tmp_path / "fam"
    first = run("--source", str(source), "--out", str(on), "--val-fraction", "0.3")
    assert first.exit_code == 0, first.output
    filtered, unique = read(on, "filtered"), read(on, "unique")
    assert filtered.columns[filtered.columns.index("problem_id") + 1] == "family_id"
    for frame in (filtered, unique):
        assert frame.group_by("family_id").agg(pl.col("split").n_unique().alias("n"))["n"].max() == 1
    summary = json.loads((on / "run_summary.json").read_text())
    near = summary["near_dup"]
    assert near["enabled"] and near["threshold"] == neardup.DEFAULT_NEAR_DUP_THRESHOLD
    assert near["normalization"] == neardup.NORMALIZATION_VERSION
    assert near["families"] < near["problems"] and near["problems_in_shared_families"] > 0 and near["largest_family"] > 1
    assert near["by_dataset"]["unique"] == {"problems": unique["problem_id"].n_unique(), "families": unique["family_id"].n_unique()}
    assert [s["name"] for s in summary["stages"]][:4] == ["load", "families", "filter", "decontaminate"]
    assert f"families: {near['problems']} problems in {near['families']} families" in first.output
    card = (on / "unique" / "README.md").read_text()
    assert "Train/validation by near-duplicate family" in card and f"{near['families']} families" in card
    assert "`family_id`" in card

    # --no-near-dup: every problem its own family, the split of before (by problem), same rows.
    second = run("--source", str(source), "--out", str(off), "--val-fraction", "0.3", "--no-near-dup")
    assert second.exit_code == 0, second.output
    filtered_off, unique_off = read(off, "filtered"), read(off, "unique")
    for frame in (filtered_off, unique_off):
        assert (frame["family_id"] == frame["problem_id"]).all()
        assert frame["split"].to_list() == [stages.split_of(p, 42, 0.3) for p in frame["problem_id"]]
    key = ["example_id", "problem_id"]
    assert filtered_off.select(key).sort(key).equals(filtered.select(key).sort(key))
    assert unique_off.select(key).sort(key).equals(unique.select(key).sort(key))
    assert json.loads((off / "run_summary.json").read_text())["near_dup"]["enabled"] is False
    assert "Near-duplicate grouping was off" in (off / "unique" / "README.md").read_text()
    # With families, the same source had copies of one module on both sides when split by problem.
    assert filtered_off.group_by("family_id").len().height > filtered.group_by("family_id").len().height

    # --group-by family_id: one row per family in unique.
    third = run("--source", str(source), "--out", str(fam), "--val-fraction", "0.3", "--group-by", "family_id")
    assert third.exit_code == 0, third.output
    unique_fam = read(fam, "unique")
    assert unique_fam.height == unique_fam["family_id"].n_unique() == unique["family_id"].n_unique()


def test_contaminated_rows_are_removed_before_the_judge_and_never_paid_for(monkeypatch, tmp_path):
    disguised = SOFTMAX.replace("class Model", "class Softmax2").replace("super(Model, self)", "super()")
    rows = [
        fake_data.row(0, name="Model", code=SOFTMAX, reward=0.95),
        fake_data.row(1, name="Softmax2", code=disguised, reward=0.95),
        fake_data.row(2, name="Scale", k=2, reward=0.95),
        fake_data.row(3, name="Model", code=UNRELATED, reward=0.95),
    ]
    source = fake_data.write_rows(rows, tmp_path / "src.parquet")
    bench = kernelbench(tmp_path / "kernelbench.parquet", [(1, 23, "23_Softmax.py", SOFTMAX)])
    out = tmp_path / "out"
    with loopback_llm(monkeypatch, tmp_path / "cache", "sk-decontam-test-0123456789") as server:
        result = CliRunner().invoke(app, ["curate", "--source", str(source), "--judge", "llm", "--no-analysis",
                                          "--decontaminate", str(bench), "--out", str(out)])
        assert result.exit_code == 0, result.output
        calls = server.stats()["calls_by_hash"]
    sent = set(calls)
    for i, row in enumerate(rows):
        answer = extract_answer(row["completion"][0]["content"])
        prompt = prompt_hash(build_judge_messages(row["info"]["module_name"], row["info"]["python_code"], answer))
        assert (prompt in sent) == (i >= 2), i  # the two copies of the benchmark item were never sent
    summary = json.loads((out / "run_summary.json").read_text())
    by_name = {s["name"]: s for s in summary["stages"]}
    assert by_name["decontaminate"]["dropped"] == {"contaminated": 2} and by_name["judge"]["rows_in"] == 2
    [entry] = summary["decontamination"]["benchmarks"]
    assert entry["source"] == "kernelbench.parquet" and entry["rows_removed"] == 2 and entry["items"] == 1
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    contaminated = [r for r in rejected if r["reason"] == "contaminated"]
    assert sorted(r["example_id"] for r in contaminated) == [0, 1]
    assert all("kernelbench.parquet item level=1, problem_id=23, name=23_Softmax.py" in r["detail"] for r in contaminated)
    card = (out / "filtered" / "README.md").read_text()
    assert "**Decontamination.**" in card and "| `kernelbench.parquet` | 1 | 2 | 2 |" in card
    assert "decontaminate: kernelbench.parquet: 1 items, removed 2 rows (2 problems)" in result.output
