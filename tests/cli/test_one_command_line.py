"""One command line: every flow is a ``kernelbook`` sub-command whose options are declared by the
flow's parameter model (defaults, help, choices), ``re-evaluate`` included."""

from __future__ import annotations

import json
import typing
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import outlock, params

ROOT = Path(__file__).resolve().parents[2]
#: Wide enough that rich never wraps or truncates a help line.
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}

#: Each flow command, the model that declares its options, and the options the CLI adds (where
#: the mapped tasks run), declared by their own model.
COMMANDS = [
    ("curate", params.CurateParams, params.RunnerParams),
    ("re-evaluate", params.ReevaluateParams, None),
    ("generate-prompts", params.GenerateParams, params.RunnerParams),
]


def options_of(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params if p.name != "help"}


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("command", "model", "runner"), COMMANDS, ids=[c for c, _, _ in COMMANDS])
def test_each_option_takes_its_default_and_help_from_the_flow_model(command, model, runner):
    """One declaration: a default or a help text changed in the model is the CLI's at once."""
    fields = {**(runner.model_fields if runner else {}), **model.model_fields}
    options = options_of(command)
    assert set(options) == set(fields), f"{command}: options and model fields differ"
    for name, option in options.items():
        field = fields[name]
        assert option.default == field.default, f"{command} --{name}: CLI default {option.default!r}, model {field.default!r}"
        assert option.help and option.help == field.description, f"{command} --{name}: help is not the model's description"


@pytest.mark.parametrize(("command", "model", "runner"), COMMANDS, ids=[c for c, _, _ in COMMANDS])
def test_help_shows_every_option_its_help_and_the_models_choices(command, model, runner):
    text = help_of(command)
    fields = {**(runner.model_fields if runner else {}), **model.model_fields}
    for option in options_of(command).values():
        for flag in (*option.opts, *option.secondary_opts):
            assert flag in text, f"{command} --help does not show {flag}"
    for name, field in fields.items():
        assert field.description in text, f"{command} --help does not show the model's help of --{name}"
        if typing.get_origin(field.annotation) is typing.Literal:
            assert "<" + "|".join(typing.get_args(field.annotation)) + ">" in text, f"{command} --{name}: choices"


def test_reevaluate_keeps_the_flag_spellings_of_the_other_commands():
    options = options_of("re-evaluate")
    assert options["private"].opts == ["--private"] and options["private"].secondary_opts == ["--public"]
    assert options["near_dup"].secondary_opts == ["--no-near-dup"]
    assert options["publish"].opts == ["--publish"] and options["publish"].is_flag


def test_publish_shows_the_environment_variables_its_repo_options_read():
    text = " ".join(help_of("publish").split())
    for variable in ("HF_FILTERED_REPO", "HF_UNIQUE_REPO", "HF_SYNTHETIC_REPO"):
        assert f"default: {variable}" in text


def test_version_names_the_package_and_prefect():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"kernelbook-curator {metadata.version('kernelbook-curator')} (prefect {metadata.version('prefect')})"
    )


def test_flows_do_not_import_the_cli():
    """The CLI and deployments are the entry points; a flow module never reaches back into the CLI."""
    import ast

    for path in sorted((ROOT / "flows").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m.split(".")[0] == "kernelbook_cli"}, path.name


def test_every_option_of_a_flow_command_is_its_models_field():
    """A parameter is declared once: each flow command's options are exactly its model's fields
    (plus the task-runner options where the command has them), with the model's help and default."""
    from kernelbook_lib import params

    commands = {"curate": ("curate", True), "re-evaluate": ("re-evaluate", False), "generate-prompts": ("generate-prompts", True),
                "analyze": ("analyze", False), "publish": ("publish", False)}
    for command, (pipeline, with_runner) in commands.items():
        models = [params.MODELS[pipeline], *([params.RunnerParams] if with_runner else [])]
        fields = {name: field for model in models for name, field in model.model_fields.items()}
        options = options_of(command)
        assert set(options) == set(fields), command
        for name, option in options.items():
            assert option.help == fields[name].description and option.default == fields[name].default, (command, name)


@pytest.mark.usefixtures("prefect_harness")
def test_reevaluate_runs_once_and_prints_the_curate_summary(tmp_path):
    from kernelbook_lib.summary import RunSummary, format_table

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["re-evaluate", "--source", "sample", "--judge", "static", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["datasets"]["unique"]["train"] > 0
    assert (out / "analysis" / "report.md").is_file()
    assert (out / "unique").is_dir() and (out / "filtered").is_dir()
    assert format_table(RunSummary.model_validate(summary)) in result.output
    assert "not published: add --publish to upload" in result.output
    assert not outlock.lock_path(out, "re-evaluate").exists()  # the CLI's lock on --out is released


@pytest.mark.usefixtures("prefect_harness")
def test_publish_reads_the_repo_variables_but_not_for_a_single_repo(tmp_path, monkeypatch):
    """The options read HF_*_REPO (shown in --help); with --single-repo those variables do not
    apply, as before, while a --*-repo typed with it is still refused."""
    from tests.fixtures.hub_server import HubStandIn
    from tests.lib.test_cards import write_out

    out = write_out(tmp_path / "out")
    monkeypatch.setenv("HF_FILTERED_REPO", "team/kb-filtered")
    with HubStandIn("hf_unused") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        named = CliRunner().invoke(app, ["publish", "--input", str(out)])
        single = CliRunner().invoke(app, ["publish", "--input", str(out), "--single-repo", "team/kb"])
        both = CliRunner().invoke(app, ["publish", "--input", str(out), "--single-repo", "team/kb", "--filtered-repo", "me/f"])
    assert server.requests == []
    assert named.exit_code == 0 and "dry run: nothing was uploaded" in named.output, named.output
    assert single.exit_code == 0 and "dry run: nothing was uploaded" in single.output, single.output
    assert both.exit_code == 2 and "do not also pass --filtered-repo" in both.output, both.output
