"""The Prefect artifacts a run leaves where operators look, read back from a real Prefect server
(the session's ``prefect_harness``) through the Prefect client after ``curate``,
``generate-prompts``, ``analyze`` and ``publish --push`` ran on the bundled sample."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from flows.curate import curate
from flows.generate_prompts import generate_prompts
from tests.flows.test_publish import TOKEN, online, out, stand_in, write_analysis  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("prefect_harness")

CURATE_KEYS = ["curate-stages", "curate-summary", "curate-filtered", "curate-unique", "curate-analysis"]


def artifacts(key: str, flow_run_id: UUID | None = None) -> list:
    """Every artifact with ``key`` (of one flow run when given), oldest first."""
    flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    if flow_run_id is not None:
        flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=flt)
    return sorted(found, key=lambda a: a.created)


def one(key: str, flow_run_id: UUID):
    found = artifacts(key, flow_run_id)
    assert len(found) == 1, f"{key}: {len(found)} artifacts for flow run {flow_run_id}"
    return found[0]


def run(flow, **parameters) -> tuple[dict, UUID]:
    state = flow(parameters, return_state=True)  # the mapping a deployment run passes
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


def expected_stage_rows(summary: dict) -> list[dict]:
    return [
        {"stage": s["name"], "rows in": s["rows_in"], "rows out": s["rows_out"], "dropped": sum(s["dropped"].values()),
         "dropped by reason": ", ".join(f"{r} {n}" for r, n in s["dropped"].items()) or "-"}
        for s in summary["stages"]
    ]


def assert_folder_link(artifact, folder: Path) -> None:
    path = folder.resolve()
    assert artifact.type == "markdown"  # Prefect stores a link artifact as a Markdown link
    assert artifact.data == f"[{path}]({path.as_uri()})"
    assert path.is_dir()


def test_curate_and_its_analysis_publish_their_artifacts(tmp_path):
    out = tmp_path / "out"
    summary, flow_run_id = run(curate, source="sample", judge="static", out=str(out))
    on_disk = json.loads((out / "run_summary.json").read_text())
    assert on_disk == summary

    stages = one("curate-stages", flow_run_id)
    assert stages.type == "table"
    assert json.loads(stages.data) == expected_stage_rows(on_disk)
    assert on_disk["stages"][0]["rows_in"] > on_disk["stages"][-1]["rows_out"] > 0  # something was dropped, something kept

    report = one("curate-summary", flow_run_id)
    assert report.type == "markdown"
    filtered, unique = on_disk["datasets"]["filtered"], on_disk["datasets"]["unique"]
    assert on_disk["judge"].startswith("static")
    for expected in (f"`{on_disk['run_id']}`", f"| judge | {on_disk['judge']} |", "none (no LLM stage ran)",
                     f"train {filtered['train']}, validation {filtered['validation']}",
                     f"train {unique['train']}, validation {unique['validation']}", str(out.resolve())):
        assert expected in report.data, expected

    screen = one("curate-screen", flow_run_id)
    assert screen.type == "table" and "not_a_kernel" not in screen.description  # kinds shown short
    table = json.loads(screen.data)
    assert [row["reward"] for row in table] == [b["band"] for b in on_disk["screen"]["by_reward_band"]] + ["all"]
    assert table[-1]["rows"] == on_disk["screen"]["rows"] and table[-1]["rejected"] == sum(on_disk["screen"]["rejected"].values())
    assert "try_fallback 1" in screen.description  # the sample's planted hacks, by kind

    for name in ("filtered", "unique", "analysis"):
        assert_folder_link(one(f"curate-{name}", flow_run_id), out / name)

    # The analysis ran as a subflow: its correlation table is on the server with the report.
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    correlations = artifacts("analysis-correlations")[-1]
    assert correlations.type == "table" and correlations.flow_run_id != flow_run_id
    table = json.loads(correlations.data)
    pearson = {row["pair"]: row for row in table if row["coefficient"] == "pearson"}
    for name, pair in analysis["pairs"].items():
        if pair.get("undefined"):
            assert any(row["pair"] == name and row["note"] == pair["reason"] for row in table)
        else:
            assert pearson[name]["value"] == round(pair["pearson"]["r"], 4) and pearson[name]["n"] == pair["n"]
    assert artifacts("analysis-report")[-1].flow_run_id == correlations.flow_run_id


def test_without_the_analysis_there_is_no_analysis_link_and_the_keys_stay_the_same(tmp_path):
    before = {key: len(artifacts(key)) for key in CURATE_KEYS}
    _, flow_run_id = run(curate, source="sample", judge="static", out=str(tmp_path / "out"), analysis=False)
    assert not artifacts("curate-analysis", flow_run_id)
    for key in CURATE_KEYS[:-1]:  # a new version under the same key: the UI's history of that key
        assert len(artifacts(key)) == before[key] + 1
        one(key, flow_run_id)


def test_an_artifact_the_server_refuses_is_a_warning_not_a_failed_run(tmp_path, monkeypatch, caplog):
    import tasks.artifacts as artifact_tasks

    def refuse(**_):
        raise RuntimeError("server hiccup")

    monkeypatch.setattr(artifact_tasks, "create_table_artifact", refuse)
    caplog.set_level(logging.WARNING)
    out = tmp_path / "out"
    _, flow_run_id = run(curate, source="sample", judge="static", out=str(out), analysis=False)
    assert (out / "run_summary.json").is_file()
    assert "could not create the Prefect artifact 'curate-stages': RuntimeError: server hiccup" in caplog.text
    assert not artifacts("curate-stages", flow_run_id)
    one("curate-summary", flow_run_id)  # the others are still published
    assert_folder_link(one("curate-unique", flow_run_id), out / "unique")


def test_generate_prompts_publishes_the_same_kinds_of_artifacts(tmp_path):
    out = tmp_path / "out"
    summary, flow_run_id = run(generate_prompts, source="sample", backend="template", out=str(out))
    on_disk = json.loads((out / "synthetic_summary.json").read_text())
    assert on_disk == summary
    assert json.loads(one("generate-stages", flow_run_id).data) == expected_stage_rows(on_disk)
    text = one("generate-summary", flow_run_id).data
    assert f"| synthetic | train {on_disk['datasets']['synthetic']['train']} |" in text
    assert f"{on_disk['distinct_problems']} distinct" in text and "template" in text
    assert_folder_link(one("generate-synthetic", flow_run_id), out / "synthetic")


def test_publish_push_links_each_commit_with_its_tag(out: Path, stand_in, online, monkeypatch):
    from flows.publish import publish

    write_analysis(out)  # this run's analysis with one plot, which the filtered repo gets
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    result, flow_run_id = run(publish, input=str(out), push=True, filtered_repo="me/kb-filtered", unique_repo="me/kb-unique")
    for commit in result["commits"]:
        link = one(f"publish-{commit['kind']}", flow_run_id)
        assert link.type == "markdown"
        assert link.data == f"[{commit['repo_id']} @ {commit['tag']}]({commit['commit_url']})"
        assert commit["commit_url"].startswith(stand_in.endpoint) and commit["tag"] in link.data
    assert [c["kind"] for c in result["commits"]] == ["filtered", "unique"]
    # The plot is linked at the commit that published it.
    filtered = result["commits"][0]
    [plot] = [f for f in filtered["files"] if f.endswith(".png")]
    blob = filtered["commit_url"].replace("/commit/", "/blob/")
    assert f"]({blob}/{plot})" in one("publish-filtered", flow_run_id).description
    assert TOKEN not in json.dumps([a.model_dump(mode="json") for a in artifacts("publish-filtered", flow_run_id)])
