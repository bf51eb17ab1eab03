"""Publishing: validation and refusals, the dry-run plan, and real pushes over HTTP to the
loopback Hub stand-in (``tests.fixtures.hub_server``), checking exactly what was sent, that it
took the LFS path, that each commit is tagged, and that ``datasets`` loads the repo back."""

from __future__ import annotations

import logging

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
from pydantic import SecretStr

from kernelbook_lib import export, hub, hub_plots
from kernelbook_lib.errors import UserError
from kernelbook_lib.params import PublishParams
from tests.fixtures.hub_server import GITATTRIBUTES, HubStandIn, SilentHub
from tests.lib.test_cards import ANALYSIS, judged_frame, replace_shard, shard, write_out, write_synthetic

TOKEN = "hf_TEST-token-0123456789abcdefghijklmnopqrstu"
ROOT = Path(__file__).resolve().parents[2]


def data_files(folder: Path) -> list[str]:
    files = export.dataset_files(folder)
    return [*files["train"], *files.get("validation", [])]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return write_out(tmp_path / "out")


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; the stand-in is on loopback, so allow it.

    With hf_xet installed, huggingface_hub 2.4 sends every LFS file through Xet without asking
    the server; the stand-in speaks LFS (which the client uses without hf_xet), so Xet is off."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def no_saved_login(tmp_path: Path, monkeypatch):
    """No token saved by `hf auth login` (a developer's own must not leak into a test)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


def write_analysis(root: Path, **overrides) -> dict:
    """An analysis.json of this run (what the analyze flow records), with one plot beside it."""
    folder = root / "analysis"
    folder.mkdir(exist_ok=True)
    (folder / "joint_distribution.png").write_bytes(b"\x89PNG plot of this run")
    summary = json.loads((root / "run_summary.json").read_text())
    analysis = {**ANALYSIS, "run": hub_plots.run_identity(summary), "data_files": export.dataset_files(root / "filtered"),
                "plots": hub_plots.plot_digests([folder / "joint_distribution.png"]), **overrides}
    (folder / "analysis.json").write_text(json.dumps(analysis))
    return analysis


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
    assert report.data_files == tuple(data_files(out / "filtered"))
    assert report.split_bytes["train"] > 0 and "problem_id" in report.columns


def test_every_problem_is_listed(out: Path):
    """A problem in both splits, a count that disagrees with run_summary.json and a stray split,
    all in one folder: all three are reported, not only the first."""
    folder = out / "unique"
    replace_shard(folder, "validation", judged_frame([1, 4], 1))  # problem 1 is also in train
    export.write_parquet(judged_frame([9], 1), folder / "data" / "stray.parquet")
    stray = folder / "data" / f"test-00000-of-00001-{export.file_sha256(folder / 'data' / 'stray.parquet')[:16]}.parquet"
    (folder / "data" / "stray.parquet").rename(stray)
    report = hub.validate_dataset_folder(folder, "unique", summary_of(out))
    problems = "\n".join(report.problems)
    assert len(report.problems) == 3, problems
    assert "1 problem_id(s) are in both train and validation" in problems
    assert "split 'validation' has 2 rows but run_summary.json says 1" in problems
    assert "unexpected split 'test'" in problems


def test_a_shard_whose_content_does_not_match_its_name_is_a_problem(out: Path):
    judged_frame([1, 2, 3]).write_parquet(shard(out / "filtered", "train"))  # edited by hand, name kept
    problems = hub.validate_dataset_folder(out / "filtered", "filtered", summary_of(out)).problems
    assert any("does not hold the content its name's fingerprint says" in p for p in problems), problems


def test_missing_split_is_a_problem(out: Path):
    shard(out / "filtered", "validation").unlink()
    report = hub.validate_dataset_folder(out / "filtered", "filtered", summary_of(out))
    assert report.problems == ("split 'validation' is missing (no data/validation-*.parquet)",)


def test_missing_columns_and_summary_counts_are_problems(out: Path):
    summary = summary_of(out)
    del summary["datasets"]["filtered"]
    folder = out / "filtered"
    replace_shard(folder, "train", judged_frame([1, 2, 3]).drop("score"))
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
    assert [f.path_in_repo for f in filtered.files] == ["README.md", *data_files(out / "filtered")]
    for f in filtered.files[1:]:
        assert f.size == (out / "filtered" / f.path_in_repo).stat().st_size == f.source.stat().st_size
    assert filtered.files[0].size == len(filtered.card.encode())
    text = hub.format_plan(plan)
    assert "dry run: nothing is uploaded" in text
    assert "- filtered -> dataset repo me/kb-filtered [ready]" in text
    assert "rows: train 6, validation 2" in text and "rows: train 3, validation 1" in text
    for f in filtered.files:
        assert f"{f.path_in_repo}  {f.size:,} bytes" in text
    assert "- synthetic: skipped, no repo id (pass --synthetic-repo or set HF_SYNTHETIC_REPO)" in text
    assert "replaces remote: data/*, images/*" in text
    assert "tag: curate-2025-01-01-<first 8 hex digits of the commit>" in text
    # Planning changes nothing on disk.
    assert (out / "filtered" / "README.md").read_text() == readme_before


def test_plan_refuses_bad_repo_ids_and_missing_folders(out: Path):
    plan = hub.plan_publish(out, {"filtered": "me/same", "unique": "me/same", "synthetic": "not a repo"})
    assert plan[0].ok
    assert "each dataset needs its own repo (or use --single-repo)" in plan[1].problems[0]
    assert any("is not a valid Hub repo id" in p for p in plan[2].problems)
    assert any("synthetic_summary.json not found" in p for p in plan[2].problems)
    assert "REFUSED" in hub.format_plan(plan)


def test_plan_refuses_an_analysis_of_another_run(out: Path):
    rerun = "re-run the analyze flow (or remove the stale analysis)"
    write_analysis(out, run={"pipeline": "curate", "started_at": "2024-12-01T00:00:00+00:00", "finished_at": "2024-12-01T00:01:00+00:00"})
    filtered, unique, _ = hub.plan_publish(out, {"filtered": "me/f", "unique": "me/u"})
    for item in (filtered, unique):
        assert item.problems == ("analysis/analysis.json analysed the run finished at 2024-12-01T00:01:00+00:00, not this "
                                 f"run (finished at 2025-01-01T00:01:00+00:00); {rerun}",)
    write_analysis(out, data_files={"train": ["data/train-00000-of-00001-0000000000000000.parquet"]})
    assert hub.plan_publish(out, {"filtered": "me/f"})[0].problems == (
        f"analysis/analysis.json analysed other filtered files than those in the folder; {rerun}",)
    older = {k: v for k, v in write_analysis(out).items() if k not in ("run", "data_files")}
    (out / "analysis" / "analysis.json").write_text(json.dumps(older))
    assert "does not say which run it analysed" in hub.plan_publish(out, {"filtered": "me/f"})[0].problems[0]


def test_plan_refuses_a_plot_the_analysis_did_not_draw(out: Path):
    write_analysis(out)
    (out / "analysis" / "joint_distribution.png").write_bytes(b"\x89PNG a plot of another run")
    [filtered, *_] = hub.plan_publish(out, {"filtered": "me/f"})
    assert filtered.problems == ("analysis/joint_distribution.png is not the plot this analysis drew; "
                                 "re-run the analyze flow (or remove the stale analysis)",)
    assert filtered.files == () and filtered.card is None


def test_attach_analysis_puts_this_runs_plots_into_the_folders_and_cards(out: Path):
    write_analysis(out)
    (out / "filtered" / "images").mkdir()
    (out / "filtered" / "images" / "old_plot.png").write_bytes(b"from another run")
    assert hub_plots.attach_analysis(out) == [out / "filtered", out / "unique"]
    for kind in ("filtered", "unique"):
        folder = out / kind
        assert sorted(p.name for p in (folder / "images").iterdir()) == ["joint_distribution.png"]
        assert (folder / "images" / "joint_distribution.png").read_bytes() == (out / "analysis" / "joint_distribution.png").read_bytes()
        card = (folder / "README.md").read_text()
        assert "](images/joint_distribution.png)" in card and "| difficulty ~ reward | 8 |" in card
    # An analysis of another run is never attached.
    write_analysis(out, run={"pipeline": "curate", "started_at": "x", "finished_at": "y"})
    with pytest.raises(UserError, match="not adding the analysis to .*analysed the run finished at y"):
        hub_plots.attach_analysis(out)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_dry_run_uploads_nothing_and_takes_repos_from_settings(out: Path, monkeypatch, caplog):
    from flows.publish import publish

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HF_UNIQUE_REPO", "team/kb-unique")
    with HubStandIn(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        result = publish(PublishParams(input=str(out), filtered_repo="me/kb-filtered"))
    assert server.requests == []
    assert result["pushed"] is False and result["commits"] == []
    by_kind = {d["kind"]: d for d in result["datasets"]}
    assert by_kind["filtered"]["repo_id"] == "me/kb-filtered"
    assert by_kind["unique"]["repo_id"] == "team/kb-unique"
    assert by_kind["synthetic"]["skipped"] is True
    assert by_kind["unique"]["rows"] == {"train": 3, "validation": 1}
    logged = caplog.text  # the flow's run logger
    assert "- unique -> dataset repo team/kb-unique [ready]" in logged
    assert f"{data_files(out / 'unique')[0]}  " in logged


# --- refusals and the token ------------------------------------------------------------------


def test_push_refuses_without_token(out: Path, stand_in: HubStandIn, online):
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    for token in (None, SecretStr(""), SecretStr("   ")):
        with pytest.raises(UserError) as info:
            hub.push(plan, token, private=True, endpoint=stand_in.endpoint)
        assert "set HF_TOKEN (environment or .env)" in str(info.value) and "`hf auth login`" in str(info.value)
    assert stand_in.requests == []


def test_the_token_of_a_saved_login_is_found(tmp_path: Path, monkeypatch, no_saved_login):
    import huggingface_hub.constants

    assert hub.find_token(None) is None
    saved = tmp_path / "saved-token"
    saved.write_text(TOKEN + "\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(saved))  # where `hf auth login` writes it
    assert hub.find_token(None).get_secret_value() == TOKEN
    assert hub.find_token(SecretStr("hf_from-settings")).get_secret_value() == "hf_from-settings"  # HF_TOKEN first


def test_push_refuses_a_folder_that_fails_validation(out: Path, stand_in: HubStandIn, online):
    replace_shard(out / "filtered", "validation", judged_frame([1, 4]))  # leak + count
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


def test_single_repo_refuses_repo_flags_too(out: Path):
    with pytest.raises(UserError, match="--single-repo puts every dataset in one repo; do not also pass --unique-repo"):
        hub.plan_publish(out, {"unique": "me/u"}, single_repo="me/kb")


@pytest.mark.usefixtures("prefect_harness", "no_saved_login")
def test_cli_push_without_token_names_both_ways(out: Path, monkeypatch):
    from typer.testing import CliRunner

    from kernelbook_cli import app

    monkeypatch.setenv("HF_TOKEN", "")
    result = CliRunner().invoke(app, ["publish", "--input", str(out), "--filtered-repo", "me/kb-filtered", "--push"])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: no Hugging Face token found: set HF_TOKEN") and "`hf auth login`" in last


# --- real pushes over HTTP -------------------------------------------------------------------


def test_push_sends_the_planned_files_through_lfs_in_one_tagged_commit(out: Path, stand_in: HubStandIn, online, caplog, capsys):
    write_analysis(out)
    (out / "filtered" / "notes.txt").write_text("not part of the dataset")
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered", "unique": "me/kb-unique"})
    results = hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)

    assert [r.repo_id for r in results] == ["me/kb-filtered", "me/kb-unique"]
    for item, result in zip(plan, results):
        files = data_files(item.folder)
        repo = stand_in.repo(item.repo_id)  # created as a *dataset* repo
        assert repo.repo_type == "dataset" and repo.private is True
        initial, commit = repo.commits  # the repo's initial commit, then exactly one upload
        assert initial.summary == "initial commit" and result.commit_oid == commit.oid
        assert sorted(commit.added) == sorted(["README.md", "images/joint_distribution.png", *files])
        # Parquet and images took the LFS path (batch API, upload, lfsFile entries), the card did not.
        assert sorted(commit.lfs) == sorted(["images/joint_distribution.png", *files])
        for path in files:
            assert commit.added[path] == (item.folder / path).read_bytes()
        card = commit.added["README.md"].decode()
        assert card == item.card == (item.folder / "README.md").read_text()  # local card updated too
        assert (item.folder / "images" / "joint_distribution.png").read_bytes() == commit.added["images/joint_distribution.png"]
        assert f'load_dataset("{item.repo_id}")' in card and "Correlations of difficulty, style and reward" in card
        assert "](images/joint_distribution.png)" in card
        assert sorted(repo.files) == sorted([".gitattributes", "README.md", "images/joint_distribution.png", *files])
        # The commit is tagged: the run's day and the commit's first 8 hex digits.
        assert result.tag == f"curate-2025-01-01-{commit.oid[:8]}" and repo.tags == {result.tag: commit.oid}
        assert result.commit_url.endswith(f"/datasets/{item.repo_id}/commit/{commit.oid}")
    paths = [r.path for r in stand_in.requests]
    assert sum(p.endswith(".git/info/lfs/objects/batch") for p in paths) == 2
    assert sum(p.startswith("/lfs-upload/") for p in paths) == 5  # 2 shards each, the plot once (the Hub dedupes it)
    filtered_commit = stand_in.repo("me/kb-filtered").commits[-1]
    assert filtered_commit.summary == "Publish filtered: 6 train / 2 validation rows (judge static-ast-v1, source sample)"
    assert "threshold: 0.85" in filtered_commit.description
    assert "stage load: 13 in, 10 out (missing_answer 3)" in filtered_commit.description
    assert all(r.authorized for r in stand_in.requests if not r.path.startswith("/lfs-upload/"))
    assert sum(r.path.endswith("/commit/main") for r in stand_in.requests) == 2
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err, json.dumps([r.as_dict() for r in results])):
        assert TOKEN not in text


def test_push_replaces_stale_files_and_keeps_public_flag_honest(out: Path, stand_in: HubStandIn, online):
    stale = {"data/train-00000-of-00002.parquet": b"old", "data/train-00001-of-00002.parquet": b"old",
             "images/old_plot.png": b"old", "notes.md": b"keep"}
    stand_in.add_repo("me/kb-filtered", private=False, files=stale)
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    with pytest.raises(hub.PublishError, match="already exists and is public"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert len(stand_in.repo("me/kb-filtered").commits) == 2  # nothing was committed

    [result] = hub.push(plan, SecretStr(TOKEN), private=False, endpoint=stand_in.endpoint)
    repo = stand_in.repo("me/kb-filtered")
    assert len(repo.commits) == 3
    assert sorted(repo.commits[-1].deleted) == sorted(p for p in stale if p != "notes.md") == sorted(result.deleted)
    assert sorted(repo.files) == sorted([".gitattributes", "README.md", *data_files(out / "filtered"), "notes.md"])
    assert repo.files[".gitattributes"] == GITATTRIBUTES


def test_republishing_the_same_day_makes_a_new_tag(out: Path, stand_in: HubStandIn, online):
    plan = hub.plan_publish(out, {"unique": "me/kb-unique"})
    first = hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)[0].tag
    second = hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)[0].tag
    repo = stand_in.repo("me/kb-unique")
    assert first != second and repo.tags == {first: repo.commits[-2].oid, second: repo.commits[-1].oid}
    # Unchanged shards are not uploaded again: the LFS batch answers that the Hub holds them.
    assert sum(r.path.startswith("/lfs-upload/") for r in stand_in.requests) == 2


def test_synthetic_push(tmp_path: Path, stand_in: HubStandIn, online):
    root = write_synthetic(tmp_path / "out")
    [item] = [i for i in hub.plan_publish(root, {"synthetic": "me/kb-synthetic"}) if not i.skipped]
    assert item.ok, item.problems
    [result] = hub.push([item], SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    commit = stand_in.repo("me/kb-synthetic").commits[-1]
    assert sorted(commit.added) == ["README.md", *data_files(root / "synthetic")]
    assert commit.summary == "Publish synthetic: 3 train rows (generator openai/gpt-5.2, source GPUMODE/KernelBook)"
    assert result.tag.startswith("generate-2025-01-01-")


def test_single_repo_push_holds_every_dataset_as_a_config(tmp_path: Path, stand_in: HubStandIn, online):
    root = write_synthetic(write_out(tmp_path / "out"))
    write_analysis(root)
    [item] = hub.plan_publish(root, {}, single_repo="me/kb")
    assert item.ok, item.problems
    assert item.kind == "filtered+unique+synthetic" and item.replaced == hub.REMOTE_REPLACED_SINGLE
    assert item.rows == {"filtered/train": 6, "filtered/validation": 2, "unique/train": 3, "unique/validation": 1, "synthetic/train": 3}
    [result] = hub.push([item], SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    repo = stand_in.repo("me/kb")
    expected = ["README.md", "images/joint_distribution.png"] + [
        f"{kind}/{f}" for kind in ("filtered", "unique", "synthetic") for f in data_files(root / kind)]
    assert len(repo.commits) == 2 and sorted(repo.commits[-1].added) == sorted(expected)
    card = repo.files["README.md"].decode()
    assert "config_name: unique" in card and 'load_dataset("me/kb", "synthetic")' in card
    assert result.tag.startswith("curate-2025-01-01-")
    # The local dataset cards are not the repo's card: they stay as they were.
    assert "me/kb" not in (root / "filtered" / "README.md").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_flow_push_reads_the_token_inside_the_task(out: Path, stand_in: HubStandIn, online, monkeypatch, capsys, caplog):
    from flows.publish import publish

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    result = publish(PublishParams(input=str(out), push=True, filtered_repo="me/kb-filtered", unique_repo="me/kb-unique"))
    assert result["pushed"] is True
    assert [c["repo_id"] for c in result["commits"]] == ["me/kb-filtered", "me/kb-unique"]
    assert stand_in.repo("me/kb-unique").private is True
    captured = capsys.readouterr()
    assert f"published README.md, {data_files(out / 'filtered')[0]}" in caplog.text
    assert f"tagged {result['commits'][0]['tag']}" in caplog.text
    assert TOKEN not in captured.err + captured.out + caplog.text and TOKEN not in json.dumps(result)


# --- the round trip: what datasets loads from the repo is what was written ------------------

LOAD_SCRIPT = """
import json, sys
import datasets
out = {}
for name, revision in json.loads(sys.argv[1]).items():
    ds = datasets.load_dataset(sys.argv[2], revision=revision)
    out[name] = {split: sorted(zip(ds[split]["example_id"], ds[split]["reward"], ds[split]["problem_id"])) for split in ds}
print(json.dumps(out))
"""


def load_from_hub(endpoint: str, repo_id: str, revisions: dict[str, str | None], home: Path) -> dict:
    """``datasets.load_dataset(repo_id)`` in a fresh process: huggingface_hub and datasets read
    HF_ENDPOINT and the offline switches when they are imported. One cache for every call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0")
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, json.dumps(revisions), repo_id],
                          env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: {split: [tuple(r) for r in rows] for split, rows in splits.items()}
            for name, splits in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def local_rows(folder: Path) -> dict[str, list[tuple]]:
    rows = {}
    for split, [relative] in export.dataset_files(folder).items():
        frame = pl.read_parquet(folder / relative)
        rows[split] = sorted(zip(frame["example_id"], frame["reward"], frame["problem_id"]))
    return rows


@pytest.mark.usefixtures("prefect_harness")
def test_publish_then_load_by_repo_id_returns_exactly_the_rows_at_the_tag_and_at_main(tmp_path: Path, stand_in: HubStandIn, online, monkeypatch):
    from typer.testing import CliRunner

    from kernelbook_cli import app

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
    out = write_out(tmp_path / "out")
    command = ["publish", "--input", str(out), "--filtered-repo", "me/kb-filtered", "--push"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    [tag1] = stand_in.repo("me/kb-filtered").tags
    oid1 = stand_in.repo("me/kb-filtered").tags[tag1]
    assert f"filtered: me/kb-filtered commit {stand_in.endpoint}/datasets/me/kb-filtered/commit/{oid1} tag {tag1}" in first.output
    rows1 = local_rows(out / "filtered")

    home = tmp_path / "hf-home"  # one datasets cache for every load below, as a user has
    loaded = load_from_hub(stand_in.endpoint, "me/kb-filtered", {"main": None, "tag": tag1}, home)
    assert loaded["main"] == loaded["tag"] == rows1

    # A new run into the same folder (other rows), published again: loading by repo id returns
    # the new rows, and the first publish's tag still returns the old ones.
    write_out(out, train=(1, 2, 3, 5, 6), validation=(4, 7))
    second = CliRunner().invoke(app, command)
    assert second.exit_code == 0, second.output
    rows2 = local_rows(out / "filtered")
    assert rows2 != rows1
    [tag2] = set(stand_in.repo("me/kb-filtered").tags) - {tag1}
    loaded = load_from_hub(stand_in.endpoint, "me/kb-filtered", {"main": None, "tag2": tag2, "tag1": tag1}, home)
    assert loaded["main"] == loaded["tag2"] == rows2
    assert loaded["tag1"] == rows1


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


def test_a_hub_that_never_answers_ends_in_a_clear_error(out: Path, online):
    """Accepts the connection, never answers: without a timeout the client would wait forever."""
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            hub.push(plan, SecretStr(TOKEN), private=True, endpoint=silent.endpoint, timeout=1.0)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            outcome.append(exc)

    with SilentHub() as silent:
        worker = threading.Thread(target=publish, daemon=True)
        worker.start()
        worker.join(120)  # a bound on a hang, not a timing assertion
        assert not worker.is_alive(), "publishing to a Hub that never answers did not end"
        assert silent.connections >= 1
    [error] = outcome
    assert isinstance(error, hub.PublishError), repr(error)
    assert str(error) == (f"publishing filtered to me/kb-filtered: the Hugging Face Hub at {silent.endpoint} did not "
                          "answer within 1 s (ReadTimeout); try again later")
    assert error.transient is True


def test_the_default_client_comes_back_after_a_push(out: Path, online):
    from huggingface_hub import get_session

    with SilentHub() as silent:
        with pytest.raises(hub.PublishError):
            hub.push(hub.plan_publish(out, {"filtered": "me/kb-filtered"}), SecretStr(TOKEN), private=True,
                     endpoint=silent.endpoint, timeout=0.5)
    assert get_session().timeout.read is None  # huggingface_hub's own default, for everything else


def test_a_hub_without_xet_storage_is_named(out: Path, stand_in: HubStandIn, monkeypatch):
    """hf_xet is installed, so parquet goes through Xet, which the stand-in (like a Hub mirror
    without Xet) does not have: one clear line saying how to take the LFS path instead."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(hub.PublishError) as info:
        hub.push(hub.plan_publish(out, {"filtered": "me/kb-filtered"}), SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    message = str(info.value)
    assert message.startswith("publishing filtered to me/kb-filtered: the upload to the Hub's Xet storage failed (")
    assert message.endswith("set HF_HUB_DISABLE_XET=1 to upload through LFS") and "\n" not in message and TOKEN not in message
    assert len(stand_in.repo("me/kb-filtered").commits) == 1  # nothing committed


def test_offline_mode_is_named(out: Path, stand_in: HubStandIn):
    # The test session sets HF_HUB_OFFLINE=1 (no `online` fixture here).
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    with pytest.raises(hub.PublishError, match="HF_HUB_OFFLINE"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert stand_in.requests == []


def test_folder_changed_after_planning_is_refused(out: Path, stand_in: HubStandIn, online):
    plan = hub.plan_publish(out, {"filtered": "me/kb-filtered"})
    judged_frame([1, 2, 3, 5]).write_parquet(shard(out / "filtered", "train"))
    with pytest.raises(hub.PublishError, match="changed since the plan was made"):
        hub.push(plan, SecretStr(TOKEN), private=True, endpoint=stand_in.endpoint)
    assert stand_in.requests == []
