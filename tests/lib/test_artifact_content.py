"""What the Prefect artifacts show (``kernelbook_lib.artifact_content``): pure formatting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kernelbook_lib import artifact_content as content
from kernelbook_lib.ledger import StageReport
from kernelbook_lib.prompt_dataset import SyntheticSummary
from kernelbook_lib.summary import RunSummary

LLM = {"requests": 40, "succeeded": 38, "cache_hits": 10, "failed": 2, "failures_by_kind": {"timeout": 2},
       "calls_made": 30, "prompt_tokens": 200_000, "cached_prompt_tokens": 50_000, "completion_tokens": 9_000,
       "estimated_cost_usd": 1.234, "wall_s": 12.5}


def stages(names: tuple[str, ...], rows: int) -> list[StageReport]:
    out, n = [], rows
    for i, name in enumerate(names):
        dropped = {"below_threshold": 3, "judge_failed:timeout": 2} if i == 2 else {}
        out.append(StageReport(name=name, rows_in=n, rows_out=n - sum(dropped.values()), dropped=dropped))
        n -= sum(dropped.values())
    return out


def run_summary(**overrides) -> RunSummary:
    fields = dict(
        source="sample", split="train", threshold=0.85, judge="llm", judge_model="openai/gpt-5.2",
        judge_prompt_version="rubric-v1", group_by="problem_id", seed=0, val_fraction=0.1,
        started_at="2026-11-27T10:00:00+00:00", finished_at="2026-11-27T10:01:05+00:00",
        stages=stages(("load", "families", "filter", "decontaminate", "judge", "dedupe", "split"), 50),
        datasets={"filtered": {"train": 40, "validation": 5}, "unique": {"train": 18, "validation": 2}},
        near_dup={"enabled": True, "problems": 20, "families": 17, "problems_in_shared_families": 5,
                  "largest_family": 3, "threshold": 0.9, "normalization": "norm-v1", "pairs_compared": 190,
                  "by_dataset": {"unique": {"problems": 20, "families": 17}}},
        decontamination={"benchmarks": [{"source": "kernelbench", "items": 250, "rows_removed": 4, "problems_removed": 2}]},
        llm=LLM, warnings=["something | to look at"],
    )
    return RunSummary(**{**fields, **overrides})


def synthetic_summary(**overrides) -> SyntheticSummary:
    fields = dict(
        source="sample", split="train", input_schema="kernelbook", backend="template", generator="template-ast-v2",
        distinct_problems=12, duplicates_collapsed=5, near_duplicates_collapsed=2, calls_saved_by_dedupe=7,
        started_at="2026-11-27T10:00:00+00:00", finished_at="2026-11-27T10:00:03+00:00",
        stages=stages(("load", "families", "decontaminate", "dedupe", "generate"), 30),
        datasets={"synthetic": {"train": 12}},
    )
    return SyntheticSummary(**{**fields, **overrides})


def test_stage_rows_hold_every_stage_with_its_drops_by_reason():
    summary = run_summary()
    rows = content.stage_rows(summary.stages)
    assert [r["stage"] for r in rows] == list(("load", "families", "filter", "decontaminate", "judge", "dedupe", "split"))
    filt = rows[2]
    assert (filt["rows in"], filt["rows out"], filt["dropped"]) == (50, 45, 5)
    assert filt["dropped by reason"] == "below_threshold 3, judge_failed:timeout 2"
    assert rows[0]["dropped by reason"] == "-" and rows[0]["dropped"] == 0
    for row in rows:  # the ledger rule holds in the table too
        assert row["rows in"] == row["rows out"] + row["dropped"]


def test_curate_summary_markdown_names_every_figure_an_operator_asks_for(tmp_path):
    text = content.summary_markdown(run_summary(), tmp_path)
    for expected in ("`sample` (split train)", "`openai/gpt-5.2`", "rubric-v1", "50 loaded, 45 in the unique dataset",
                     "| filtered | train 40, validation 5 |", "| unique | train 18, validation 2 (17 families) |",
                     "| families | 20 problems in 17 families", "kernelbench: 250 items, removed 4 rows (2 problems)",
                     "judged 38 of 40 rows", "calls 30", "cache hits 10", "failures 2 (timeout 2)",
                     "200,000 in (25% cached) / 9,000 out", "cost $1.23", "| wall time | 65.0 s |",
                     f"`{tmp_path.resolve()}`", "## Warnings", "something \\| to look at"):
        assert expected in text, expected


def test_static_judge_summary_says_no_llm_ran_and_cost_unknown_is_named(tmp_path):
    text = content.summary_markdown(run_summary(judge="static", judge_model=None, judge_prompt_version=None,
                                                llm=None, warnings=[], decontamination=None), tmp_path)
    assert "| judge | static |" in text and "none (no LLM stage ran)" in text
    assert "off (no benchmark given)" in text and "No warnings." in text
    priced = content.llm_line({**LLM, "estimated_cost_usd": None}, "judged")
    assert "n/a (set LLM_PRICE_*_PER_MTOK)" in priced


def test_generate_summary_markdown(tmp_path):
    text = content.summary_markdown(synthetic_summary(), tmp_path)
    assert text.startswith("# generate-prompts run")
    assert "template: template-ast-v2" in text and "12 distinct; 5 duplicate rows and 2 near-duplicates" in text
    assert "| synthetic | train 12 |" in text and "| wall time | 3.0 s |" in text
    assert "LLM calls saved by dedupe | – |" in text  # the template backend saves no calls
    llm = content.summary_markdown(synthetic_summary(backend="llm", generator="llm", generator_model="m/x", llm=LLM), tmp_path)
    assert "LLM calls saved by dedupe | 7 |" in llm and "generated 38 of 40 rows" in llm


def test_folder_link_is_a_file_uri_of_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link, text = content.folder_link(Path("out") / "filtered")
    assert text == str(tmp_path.resolve() / "out" / "filtered")
    assert link == (tmp_path.resolve() / "out" / "filtered").as_uri() and link.startswith("file:///")


def test_push_link_points_at_the_commit_with_the_tag_and_links_the_plots():
    commit = {"kind": "filtered", "repo_id": "me/kb-filtered", "private": True, "tag": "curate-2026-11-27-0123abcd",
              "commit_url": "https://hub.example/datasets/me/kb-filtered/commit/0123abcdef",
              "files": ["README.md", "data/train-x.parquet", "images/joint_distribution.png"]}
    link = content.push_link(commit)
    assert link["key"] == "publish-filtered"
    assert link["link"] == commit["commit_url"] and link["link_text"] == "me/kb-filtered @ curate-2026-11-27-0123abcd"
    assert ("[images/joint_distribution.png](https://hub.example/datasets/me/kb-filtered/blob/0123abcdef/"
            "images/joint_distribution.png)") in link["description"]
    assert "parquet" not in link["description"].split("\n", 1)[-1]
    assert content.push_link({**commit, "kind": "filtered+unique+synthetic"})["key"] == "publish-filtered-unique-synthetic"


def test_every_key_is_one_prefect_accepts():
    keys = [content.CURATE_STAGES_KEY, content.CURATE_SUMMARY_KEY, content.CURATE_SCREEN_KEY, *content.CURATE_FOLDER_KEYS.values(),
            content.GENERATE_STAGES_KEY, content.GENERATE_SUMMARY_KEY, content.GENERATE_FOLDER_KEY,
            content.CORRELATIONS_KEY, content.publish_key("Filtered"), content.artifact_key("a_b", "C")]
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys), keys
    assert len(set(keys)) == len(keys)
    with pytest.raises(ValueError):
        content.artifact_key("+++")


def test_correlation_rows_one_per_coefficient_and_one_for_an_undefined_pair():
    def coeff(r, ci=None):
        return {"r": r, "p": 0.001, **({"ci95": ci} if ci else {}), "strength": "weak", "direction": "positive", "significant": True}
    analysis = {"n": 40, "pairs": {
        "difficulty~reward": {"n": 40, "pearson": coeff(0.31234, [0.1, 0.5]), "spearman": coeff(0.3), "kendall": coeff(0.2)},
        "style~reward": {"n": 40, "undefined": True, "reason": "style is constant (every row is 5)"},
        "difficulty~style": {"n": 40, "pearson": coeff(-0.1, [-0.4, 0.2]), "spearman": coeff(-0.1), "kendall": coeff(-0.1)},
    }}
    rows = content.correlation_rows(analysis)
    assert [(r["pair"], r["coefficient"]) for r in rows] == [
        ("difficulty~reward", "pearson"), ("difficulty~reward", "spearman"), ("difficulty~reward", "kendall"),
        ("style~reward", None),
        ("difficulty~style", "pearson"), ("difficulty~style", "spearman"), ("difficulty~style", "kendall")]
    assert rows[0]["value"] == 0.3123 and (rows[0]["ci95 low"], rows[0]["ci95 high"]) == (0.1, 0.5)
    assert rows[1]["ci95 low"] is None
    assert rows[3]["note"] == "style is constant (every row is 5)" and rows[3]["value"] is None
