"""Publishing: validation and refusals, the dry-run plan, and real pushes over HTTP to the
loopback Hub stand-in (``tests.fixtures.hub_server``), checking exactly what was sent."""

from __future__ import annotations

import logging

import json
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from kernelbook_lib import hub
from kernelbook_lib.errors import UserError
from tests.fixtures.hub_server import GITATTRIBUTES, HubStandIn
from tests.lib.test_cards import ANALYSIS, SPLIT_FILE, judged_frame, write_out, write_synthetic

TOKEN = "hf_TEST-token-0123456789abcdefghijklmnopqrstu"
DATA_FILES = [SPLIT_FILE.format(split="train"), SPLIT_FILE.format(split="validation")]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_out(tmp_path / "out")


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; the stand-in is on loopback, so allow it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def stand_in():
    with HubStandIn(TOKEN) as server:
        yield server


def summary_of(root: Path) -> dict:
    return json.loads((root / "run_summary.json").read_text())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- validation ------------------------------------------------------------------------------


def test_valid_folder_passes(out: Path):
    report = hub.validate_dataset_folder(out / "filtered", "filtered", summary_of(out))
    assert report.ok, report.problems
    assert report.rows == {"train": 6, "validation": 2}
    assert report.data_files == tuple(DATA_FILES)
    assert report.split_bytes["train"] > 0 and "problem_id" in report.columns


def test_every_problem_is_listed(out: Path):
    """A problem in both splits, a count that disagrees with run_summary.json and a stray split,
    all in one folder: all three are reported, not only the first."""
    folder = out / "unique"
    judged_frame([1, 4], 1).write_parquet(folder / SPLIT_FILE.format(split="validation"))  # problem 1 is also in train
    judged_frame([9], 1).write_parquet(folder / SPLIT_FILE.format(split="test"))
    report = hub.validate_dataset_folder(folder, "unique", summary_of(out))
    problems = "\n".join(report.problems)
    assert len(report.problems) == 3, problems
    assert "1 problem_id(s) are in both train and validation" in problems
    assert "split 'validation' has 2 rows but run_summary.json says 1" in problems
    assert "unexpected split 'test'" in problems


def test_missing_split_is_a_problem(out: Path):
    (out / "filtered" / SPLIT_FILE.format(split="validation")).unlink()
    report = hub.validate_dataset_folder(out / "filtered", "filtered", summary_of(out))
    assert report.problems == ("split 'validation' is missing (no data/validation-*.parquet)",)


def test_missing_columns_and_summary_counts_are_problems(out: Path):
    summary = summary_of(out)
    del summary["datasets"]["filtered"]
    folder = out / "filtered"
    judged_frame([1, 2, 3]).drop("score").write_parquet(folder / SPLIT_FILE.format(split="train"))
    problems = "\n".join(hub.validate_dataset_folder(folder, "filtered", summary).problems)
    assert "lacks column(s) ['score']" in problems
    assert "other columns or types" in problems
    assert "run_summary.json has no row counts for 'filtered'" in problems


# --- plan and dry run ------------------------------------------------------------------------


def test_dry_run_plan_lists_repo_files_sizes_and_rows(out: Path):
    readme_before = (out / "filtered" / "README.md").read_text()
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered", "unique": "me/kb-unique", "synthetic": None})
    filtered, unique, synthetic = plan
    assert filtered.ok and unique.ok and synthetic.skipped
    assert [f.path_in_repo for f in filtered.files] == ["README.md", *DATA_FILES]
    for f in filtered.files[1:]:
        assert f.size == (out / "filtered" / f.path_in_repo).stat().st_size
    assert filtered.files[0].size == len(filtered.card.encode())
    text = hub.format_plan(plan)
    assert "dry run: nothing is uploaded" in text
    assert "- filtered -> dataset repo me/kb-filtered [ready]" in text
    assert "rows: train 6, validation 2" in text and "rows: train 3, validation 1" in text
    for f in filtered.files:
        assert f"{f.path_in_repo}  {f.size:,} bytes" in text
    assert "- synthetic: skipped, no repo id (pass --synthetic-repo or set HF_SYNTHETIC_REPO)" in text
    # Planning changes nothing on disk.
    assert (out / "filtered" / "README.md").read_text() == readme_before


def test_plan_refuses_bad_repo_ids_and_missing_folders(out: Path):
    plan = hub.plan_publish(out, {"filtered": "me/same", "unique": "me/same", "synthetic": "not a repo"})
    assert plan[0].ok
    assert "each dataset needs its own repo" in plan[1].problems[0]
    assert any("is not a valid Hub repo id" in p for p in plan[2].problems)
    assert any("synthetic_summary.json not found" in p for p in plan[2].problems)
    assert "REFUSED" in hub.format_plan(plan)


def test_plan_refuses_an_analysis_of_another_run(out: Path):
    (out / "analysis").mkdir()
    (out / "analysis" / "analysis.json").write_text(json.dumps({**ANALYSIS, "n": 99}))
    filtered, unique, _ = hub.plan_publish(out, {"filtered": "me/f", "unique": "me/u"})
    for item in (filtered, unique):
        assert item.problems == ("analysis/analysis.json covers 99 rows but this run's filtered dataset has 8; "
                                 "re-run the analyze flow (or remove the stale analysis)",)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_dry_run_uploads_nothing_and_takes_repos_from_settings(out: Path, monkeypatch, caplog):
    from flows.publish import publish

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HF_UNIQUE_REPO", "team/kb-unique")
    with HubStandIn(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        result = publish(input=str(out), filtered_repo="me/kb-filtered")
    assert server.requests == []
    assert result["pushed"] is False and result["commits"] == []
    by_kind = {d["kind"]: d for d in result["datasets"]}
    assert by_kind["filtered"]["repo_id"] == "me/kb-filtered"
    assert by_kind["unique"]["repo_id"] == "team/kb-unique"
    assert by_kind["synthetic"]["skipped"] is True
    assert by_kind["unique"]["rows"] == {"train": 3, "validation": 1}
    logged = caplog.text  # the flow's run logger
    assert "- unique -> dataset repo team/kb-unique [ready]" in logged
    assert "data/train-00000-of-00001.parquet  " in logged


# --- refusals --------------------------------------------------------------------------------


def test_push_refuses_without_token(out: Path, stand_in: HubStandIn, online):
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    for token in (None, SecretStr(""), SecretStr("   ")):
        with pytest.raises(UserError, match="HF_TOKEN is not set"):
            hub.push(plan, token, private=True, endpoint=stand_in.endpoint)
    assert stand_in.requests == []


def test_push_refuses_a_folder_that_fails_validation(out: Path, stand_in: HubStandIn, online):
    judged_frame([1, 4]).write_parquet(out / "filtered" / SPLIT_FILE.format(split="validation"))  # leak + count
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered", "unique": "me/kb-unique"})
    with pytest.raises(hub.PublishError) as info:
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    message = str(info.value)
    assert message.startswith("refusing to publish")
    assert "filtered: 1 problem_id(s) are in both train and validation" in message
    assert "filtered: split 'validation' has 4 rows but run_summary.json says 2" in message
    assert "\n" not in message
    assert stand_in.requests == []  # refused before anything was sent, the valid unique included


def test_push_refuses_when_nothing_is_named(out: Path):
    with pytest.raises(hub.PublishError, match="nothing to publish"):
        hub.push(hub.plan_publish(out, {}), SecretStr(TOKEN), private=True)


@pytest.mark.usefixtures("prefect_harness")
def test_cli_push_without_token_names_hf_token(out: Path, monkeypatch):
    from typer.testing import CliRunner

    from kernelbook_cli import app

    monkeypatch.setenv("HF_TOKEN", "")
    result = CliRunner().invoke(app, ["publish", "--input", str(out), "--filtered-repo", "me/kb-filtered", "--push"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: HF_TOKEN is not set")


# --- real pushes over HTTP -------------------------------------------------------------------


def test_push_sends_exactly_the_planned_files_in_one_commit(out: Path, stand_in: HubStandIn, online, caplog, capsys):
    (out / "analysis").mkdir()
    (out / "analysis" / "analysis.json").write_text(json.dumps(ANALYSIS))
    (out / "filtered" / "notes.txt").write_text("not part of the dataset")
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered", "unique": "me/kb-unique"})
    results = hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)

    assert [r.repo_id for r in results] == ["me/kb-filtered", "me/kb-unique"]
    for item, result in zip(plan, results):
        repo = stand_in.repo(item.repo_id)  # created as a *dataset* repo
        assert repo.repo_type == "dataset" and repo.private is True
        initial, commit = repo.commits  # the repo's initial commit, then exactly one upload
        assert initial.summary == "initial commit" and result.commit_oid == commit.oid
        assert sorted(commit.added) == ["README.md", *DATA_FILES]
        for path in DATA_FILES:
            assert commit.added[path] == (item.folder / path).read_bytes()
        card = commit.added["README.md"].decode()
        assert card == item.card == (item.folder / "README.md").read_text()  # local card updated too
        assert f'load_dataset("{item.repo_id}")' in card and "Correlations of difficulty, style and reward" in card
        assert sorted(repo.files) == [".gitattributes", "README.md", *DATA_FILES]
    filtered_commit = stand_in.repo("me/kb-filtered").commits[-1]
    assert filtered_commit.summary == "Publish filtered: 6 train / 2 validation rows (judge static-ast-v1, source sample)"
    assert "threshold: 0.85" in filtered_commit.description
    assert "stage load: 13 in, 10 out (missing_answer 3)" in filtered_commit.description
    assert all(r.authorized for r in stand_in.requests)
    assert sum(r.path.endswith("/commit/main") for r in stand_in.requests) == 2
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err, json.dumps([r.as_dict() for r in results])):
        assert TOKEN not in text


def test_push_replaces_stale_shards_and_keeps_public_flag_honest(out: Path, stand_in: HubStandIn, online):
    stale = {"data/train-00000-of-00002.parquet": b"old", "data/train-00001-of-00002.parquet": b"old", "notes.md": b"keep"}
    stand_in.add_repo("me/kb-filtered", private=False, files=stale)
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    with pytest.raises(hub.PublishError, match="already exists and is public"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert len(stand_in.repo("me/kb-filtered").commits) == 2  # nothing was committed

    hub.push(plan, SecretStr(TOKEN), private=False, endpoint=stand_in.endpoint)
    repo = stand_in.repo("me/kb-filtered")
    assert len(repo.commits) == 3
    assert sorted(repo.commits[-1].deleted) == sorted(p for p in stale if p.startswith("data/"))
    assert sorted(repo.files) == [".gitattributes", "README.md", *DATA_FILES, "notes.md"]
    assert repo.files[".gitattributes"] == GITATTRIBUTES


def test_synthetic_push(tmp_path: Path, stand_in: HubStandIn, online):
    root = write_synthetic(tmp_path / "out")
    [item] = [i for i in hub.plan_publish(root, {"synthetic": "me/kb-synthetic"}) if not i.skipped]
    assert item.ok, item.problems
    hub.push([item], SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    commit = stand_in.repo("me/kb-synthetic").commits[-1]
    assert sorted(commit.added) == ["README.md", SPLIT_FILE.format(split="train")]
    assert commit.summary == "Publish synthetic: 3 train rows (generator openai/gpt-5.2, source GPUMODE/KernelBook)"


@pytest.mark.usefixtures("prefect_harness")
def test_flow_push_reads_the_token_inside_the_task(out: Path, stand_in: HubStandIn, online, monkeypatch, capsys, caplog):
    from flows.publish import publish

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    result = publish(input=str(out), push=True, filtered_repo="me/kb-filtered", unique_repo="me/kb-unique")
    assert result["pushed"] is True
    assert [c["repo_id"] for c in result["commits"]] == ["me/kb-filtered", "me/kb-unique"]
    assert stand_in.repo("me/kb-unique").private is True
    captured = capsys.readouterr()
    assert "published README.md, data/train-00000-of-00001.parquet" in caplog.text
    assert TOKEN not in captured.err + captured.out + caplog.text and TOKEN not in json.dumps(result)


# --- Hub failures: one clear error, no token -------------------------------------------------


@pytest.mark.parametrize("forbid", [False, True])
def test_auth_failure_is_one_clear_error(out: Path, online, forbid: bool):
    wrong = "hf_WRONG-token-0123456789abcdefghijklmnopq"
    with HubStandIn(TOKEN if forbid else "hf_someoneelse", forbid_writes=forbid) as server:
        plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
        with pytest.raises(hub.PublishError) as info:
            hub.push(plan, SecretStr(TOKEN if forbid else wrong), private=True, endpoint=server.endpoint)
    message = str(info.value)
    assert ("HTTP 403 Forbidden" if forbid else "HTTP 401 Unauthorized") in message
    assert "HF_TOKEN" in message and "\n" not in message
    assert TOKEN not in message and wrong not in message
    assert info.value.transient is False and info.value.__cause__ is None and info.value.exit_code == 2


def test_unreachable_hub_is_one_clear_error(out: Path, online):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    with pytest.raises(hub.PublishError) as info:
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=endpoint)
    message = str(info.value)
    assert message.startswith("publishing filtered to me/kb-filtered: cannot reach the Hugging Face Hub at " + endpoint)
    assert "\n" not in message and TOKEN not in message
    assert info.value.transient is True and info.value.__cause__ is None


def test_offline_mode_is_named(out: Path, stand_in: HubStandIn):
    # The test session sets HF_HUB_OFFLINE=1 (no `online` fixture here).
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    with pytest.raises(hub.PublishError, match="HF_HUB_OFFLINE"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert stand_in.requests == []


def test_folder_changed_after_planning_is_refused(out: Path, stand_in: HubStandIn, online):
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    judged_frame([1, 2, 3, 5]).write_parquet(out / "filtered" / SPLIT_FILE.format(split="train"))
    with pytest.raises(hub.PublishError, match="changed since the plan was made"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert stand_in.requests == []
