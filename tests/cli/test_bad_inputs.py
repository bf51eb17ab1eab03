"""Crash safety on bad inputs: each ends as one clear error line (exit code 2), never a traceback.

The CLI runs in process (``typer.testing.CliRunner``) against the shared Prefect test server, as
a user would run ``kernelbook curate --source ... --out ...``. Everything the command prints is
checked, including the lines Prefect's console log handler prints (after the CLI's filters): a
user must see what is wrong and where, and no Python traceback.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import schema
from tests.fixtures import fake_data

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Bytes that are neither UTF-8 text nor a parquet file: a PNG header, NULs and invalid UTF-8.
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfd" + bytes(range(256)) * 4


def prefect_console_handlers() -> list[logging.Handler]:
    """Prefect's console log handlers (they print through a rich Console of their own)."""
    import flows.curate  # noqa: F401  (Prefect configures its logging when the flow API is imported)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    handlers = {id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    return list(handlers.values())


def curate(monkeypatch, source: Path | str, out: Path, flow_starts: bool = True) -> tuple[int, str, list[str]]:
    """Run ``kernelbook curate --source SOURCE --judge static --out OUT``; return the exit code,
    everything printed (the command's output and Prefect's console log), and the error lines.
    ``flow_starts=False``: the mistake must be caught before any flow run starts."""
    console = io.StringIO()
    handlers = prefect_console_handlers()
    assert handlers, "Prefect's console log handler was not found"
    for handler in handlers:
        monkeypatch.setattr(handler.console, "file", console)
    result = CliRunner().invoke(
        app, ["curate", "--source", str(source), "--judge", "static", "--no-analysis", "--out", str(out)]
    )
    printed = result.output + console.getvalue()
    # The console log really was captured: the run's first line is there (or must not be).
    assert ("Beginning flow run" in console.getvalue()) == flow_starts, printed
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    return result.exit_code, printed, errors


def assert_one_clear_error(code: int, printed: str, errors: list[str], *expected: str) -> str:
    assert code == 2, printed
    assert "Traceback" not in printed and "| ERROR" not in printed, printed
    assert len(errors) == 1, printed
    [error] = errors
    for fragment in expected:
        assert fragment in error, error
    return error


def test_binary_file_named_jsonl(tmp_path: Path, monkeypatch):
    source = tmp_path / "evals.jsonl"
    source.write_bytes(BINARY)
    out = tmp_path / "out"
    code, printed, errors = curate(monkeypatch, source, out)
    assert_one_clear_error(code, printed, errors, "cannot read", str(source))
    assert not (out / "run_summary.json").exists()


def test_non_utf8_text_named_jsonl(tmp_path: Path, monkeypatch):
    """JSON lines written in Latin-1 (an accented name), not UTF-8."""
    line = json.dumps(fake_data.row(0), ensure_ascii=False).replace("Scale", "Échelle")
    source = tmp_path / "evals.jsonl"
    source.write_bytes((line + "\n").encode("latin-1"))
    code, printed, errors = curate(monkeypatch, source, tmp_path / "out")
    assert_one_clear_error(code, printed, errors, "cannot read", str(source))


def test_binary_file_named_parquet(tmp_path: Path, monkeypatch):
    source = tmp_path / "evals.parquet"
    source.write_bytes(BINARY)
    code, printed, errors = curate(monkeypatch, source, tmp_path / "out")
    assert_one_clear_error(code, printed, errors, "cannot read", str(source))


def test_empty_parquet_with_the_right_schema(tmp_path: Path, monkeypatch):
    source = fake_data.write_rows([], tmp_path / "evals.parquet")
    assert pq.read_metadata(source).num_rows == 0
    code, printed, errors = curate(monkeypatch, source, tmp_path / "out")
    assert_one_clear_error(code, printed, errors, "no rows")


def test_empty_jsonl_file(tmp_path: Path, monkeypatch):
    source = tmp_path / "evals.jsonl"
    source.write_bytes(b"")
    code, printed, errors = curate(monkeypatch, source, tmp_path / "out")
    assert_one_clear_error(code, printed, errors, str(source))


def write_with_reward_as_strings(path: Path) -> Path:
    """Every column present, but ``reward`` holds strings ("0.9") instead of numbers."""
    rows = [fake_data.row(i, reward=None) | {"reward": "0.9"} for i in range(3)]
    if path.suffix == ".parquet":
        fields = [pa.field("reward", pa.string()) if f.name == "reward" else f for f in schema.SOURCE_ARROW_SCHEMA]
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)
    else:  # JSON lines where only some rewards are strings: the column is no longer numeric
        rows[0]["reward"] = 0.9
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["evals.parquet", "evals.jsonl"])
def test_right_columns_wrong_types(tmp_path: Path, monkeypatch, name: str):
    source = write_with_reward_as_strings(tmp_path / name)
    code, printed, errors = curate(monkeypatch, source, tmp_path / "out")
    error = assert_one_clear_error(code, printed, errors, "'reward' must be numeric", "Columns found:")
    assert "reward (String)" in error  # the columns found, with the types found


@pytest.mark.parametrize(("out_name", "message"), [("outputs", "not a folder"), ("outputs/run1", "cannot write to --out")])
def test_out_is_an_existing_file(tmp_path: Path, monkeypatch, out_name: str, message: str):
    """``--out`` is a file, or a folder under a file: refused before any flow run starts."""
    source = fake_data.write_rows([fake_data.row(i) for i in range(3)], tmp_path / "evals.parquet")
    (tmp_path / "outputs").write_text("not a folder\n")
    out = tmp_path / out_name
    code, printed, errors = curate(monkeypatch, source, out, flow_starts=False)
    assert_one_clear_error(code, printed, errors, str(out), message)
    assert (tmp_path / "outputs").read_text() == "not a folder\n"  # left alone


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--task-runner", "dask", "--dask-address", "http://scheduler:8786"], "is not a Dask scheduler address"),
        (["--dask-address", "tcp://127.0.0.1:8786"], "--dask-address needs --task-runner dask"),
    ],
)
def test_bad_task_runner_options(tmp_path: Path, options: list[str], message: str):
    """Refused before any flow run starts (nothing is read or written)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--judge", "static", "--out", str(out), *options])
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.strip()]  # one line, no traceback
    assert line.startswith("error: ") and message in line
    assert not out.exists()
