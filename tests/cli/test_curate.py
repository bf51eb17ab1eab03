"""End to end: `kernelbook curate` on the bundled sample, checked against the output contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import loading, schema
from tests.fixtures import fake_data

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """What a new user sees: the real command in a subprocess, a new PREFECT_HOME, no Prefect
    server configured. Its outputs are what the tests below check (one run serves them all)."""
    base = tmp_path_factory.mktemp("curate")
    out = base / "outputs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(base / "prefect-home")
    proc = subprocess.run(
        [sys.executable, "-m", "kernelbook_cli", "curate", "--source", "sample", "--judge", "static", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return out, output


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_datasets_load_with_both_splits_and_all_columns(sample_run):
    import datasets

    out, _ = sample_run
    source_columns = list(schema.SOURCE_SCHEMA)
    for name in ("filtered", "unique"):
        ds = datasets.load_dataset(str(out / name))
        assert set(ds) == {"train", "validation"}
        assert ds["train"].num_rows > 0 and ds["validation"].num_rows > 0
        # The default (--completion full, no --tokenizer) adds only the SFT lengths, after the judged columns.
        assert ds["train"].column_names == source_columns + list(schema.JUDGED_SCHEMA) + list(schema.SFT_COLUMNS)
        assert (out / name / "README.md").read_text().startswith("---")


def test_no_problem_in_both_splits_and_unique_agrees_with_filtered(sample_run):
    out, _ = sample_run
    split_of = {}
    for name in ("filtered", "unique"):
        for split in ("train", "validation"):
            frame = pl.read_parquet(out / name / "data" / f"{split}-00000-of-00001-*.parquet")
            for problem in frame["problem_id"].unique():
                assert split_of.setdefault(problem, split) == split, f"{problem} leaks across splits"
    unique = pl.read_parquet(out / "unique" / "data" / "*.parquet")
    assert unique["problem_id"].n_unique() == unique.height  # one row per problem


def test_counts_reconcile_and_every_dropped_row_is_in_the_ledger(sample_run):
    out, output = sample_run
    summary = json.loads((out / "run_summary.json").read_text())
    stages = summary["stages"]
    assert [s["name"] for s in stages] == ["load", "families", "filter", "decontaminate", "screen", "judge", "sft", "dedupe", "split"]
    for stage in stages:
        assert stage["rows_in"] == stage["rows_out"] + sum(stage["dropped"].values())
    source_rows = pl.read_parquet(loading.SAMPLE_PATH).height
    filtered = read_jsonl(out / "filtered_dataset.jsonl")
    rejected = read_jsonl(out / "rejected.jsonl")
    assert stages[0]["rows_in"] == source_rows
    assert len(filtered) + len(rejected) == source_rows  # every source row is accounted for once
    assert len(read_jsonl(out / "unique_dataset.jsonl")) == {s["name"]: s for s in stages}["dedupe"]["rows_out"]
    assert summary["datasets"]["filtered"]["train"] + summary["datasets"]["filtered"]["validation"] == len(filtered)
    # The table printed at the end shows each stage.
    for name in ("load", "families", "filter", "decontaminate", "screen", "judge", "sft", "dedupe", "split"):
        assert name in output
    assert "sft: completion full, characters only (no --tokenizer), no length limit" in output


def test_every_kind_of_bad_sample_row_is_rejected_with_its_reason(sample_run):
    out, _ = sample_run
    source = pl.read_parquet(loading.SAMPLE_PATH).with_row_index("i")
    rejected = {r["source_index"]: r for r in read_jsonl(out / "rejected.jsonl")}
    reasons = {r["reason"] for r in rejected.values()}
    assert {"reward_null", "reward_nan", "empty_completion", "missing_answer", "empty_python_code"} <= reasons
    assert "reward_not_above_threshold" in reasons
    for row in source.filter(pl.col("reward").is_null()).iter_rows(named=True):
        assert rejected[row["i"]]["reason"] == "reward_null"
    for line in rejected.values():
        assert set(line) >= {"stage", "reason", "example_id", "problem_id", "source_index"}


def test_static_judge_columns_are_labelled(sample_run):
    out, _ = sample_run
    frame = pl.read_parquet(out / "filtered" / "data" / "*.parquet")
    assert frame["judge"].unique().to_list() == ["static-ast-v1"]
    assert frame["difficulty"].is_between(0, 10).all() and frame["style"].is_between(0, 10).all()
    assert (frame["score"] - frame["reward"] * frame["difficulty"] * frame["style"]).abs().max() < 1e-9


def test_the_default_datasets_are_sft_ready_and_carry_the_source_messages_unchanged(sample_run):
    """--completion full: every row of both datasets, loaded with ``datasets``, is a
    conversational prompt-completion example, and prompt and completion are the source's own
    messages (only sft_chars and sft_tokens are new); the summary and the card say so."""
    import datasets

    from kernelbook_lib import sft
    from tests.lib.test_sft import trl_problems

    out, _ = sample_run
    source = pl.read_parquet(loading.SAMPLE_PATH)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["sft"] == {"completion": "full", "chat_format": sft.CHAT_FORMAT, "tokenizer": None, "tokenizer_sha256": None,
                              "max_tokens": None, "too_long": 0, "chars_by_form": summary["sft"]["chars_by_form"]}
    judged = next(s for s in summary["stages"] if s["name"] == "judge")["rows_out"]
    assert all(stats["n"] == judged for stats in summary["sft"]["chars_by_form"].values())
    by_example = {}
    for row in source.iter_rows(named=True):
        by_example.setdefault((row["example_id"], row["reward"]), []).append(row)
    for name in ("filtered", "unique"):
        for split, ds in datasets.load_dataset(str(out / name)).items():
            assert "completion_original" not in ds.column_names
            for row in ds:
                assert trl_problems(row["prompt"], row["completion"], "full") == [], (name, split, row["example_id"])
                assert row["sft_chars"] == len(sft.format_messages(row["prompt"] + row["completion"])) and row["sft_tokens"] is None
                assert any(row["prompt"] == s["prompt"] and row["completion"] == s["completion"]
                           for s in by_example[(row["example_id"], row["reward"])])
        card = (out / name / "README.md").read_text()
        assert "Completion form `full`" in card and "`sft_tokens` is null: the run was given no tokenizer" in card


def test_a_missing_tokenizer_is_one_line_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--judge", "static", "--tokenizer", str(tmp_path / "tokenizer.json"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: --tokenizer {tmp_path / 'tokenizer.json'}: no such file")
    assert not (tmp_path / "o").exists()  # nothing was started or written
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--max-sft-tokens", "100", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--max-sft-tokens needs --tokenizer" in result.output


def test_missing_column_exits_2_with_one_clear_message(tmp_path):
    frame = fake_data.frame_of([fake_data.row(0)]).drop("completion")
    path = tmp_path / "broken.parquet"
    frame.write_parquet(path)
    result = CliRunner().invoke(app, ["curate", "--source", str(path), "--judge", "static", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "missing column(s): completion" in result.output
    assert "Columns found:" in result.output
    assert "Traceback" not in result.output


def test_first_run_on_a_fresh_prefect_home_is_clean(sample_run):
    out, output = sample_run
    assert "Traceback" not in output and "ERROR" not in output, output
    assert (out / "run_summary.json").is_file()


def test_the_dataset_cards_show_this_runs_analysis(sample_run):
    """curate runs the analysis at the end; its plots go into each dataset folder and card,
    byte for byte those the analysis recorded, and the folder is publishable as it is."""
    from kernelbook_lib import hub, hub_plots

    out, _ = sample_run
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["run"] == hub_plots.run_identity(json.loads((out / "run_summary.json").read_text()))
    for name in ("filtered", "unique"):
        folder = out / name
        images = sorted((folder / "images").iterdir())
        assert [p.name for p in images] == sorted(analysis["plots"])
        for image in images:
            assert image.read_bytes() == (out / "analysis" / image.name).read_bytes()
            assert hub_plots.plot_digests([image])[image.name] == analysis["plots"][image.name]
        card = (folder / "README.md").read_text()
        assert all(f"](images/{p.name})" in card for p in images)
        assert "## Correlations of difficulty, style and reward" in card and f"n = {analysis['n']} judged rows" in card
        assert "(built from the bundled synthetic sample, not real data; heuristic scores, no LLM judge)" in card
    plan = hub.plan_publish(out, {"filtered": "me/f", "unique": "me/u"})
    assert all(item.ok for item in plan if not item.skipped), [item.problems for item in plan]


def test_a_rerun_without_analysis_carries_no_plot_of_the_earlier_run(sample_run, tmp_path):
    import shutil

    from kernelbook_lib import hub

    out = tmp_path / "outputs"
    shutil.copytree(sample_run[0], out)
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--judge", "static", "--threshold", "0.5",
                                      "--no-analysis", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("filtered", "unique"):
        assert not (out / name / "images").exists() and "## Plots" not in (out / name / "README.md").read_text()
    # The earlier analysis is still in analysis/, but it is not this run's: publishing refuses it.
    [filtered, *_] = hub.plan_publish(out, {"filtered": "me/f"})
    assert any("not this run" in p for p in filtered.problems), filtered.problems
