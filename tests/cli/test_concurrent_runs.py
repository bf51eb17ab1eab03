"""Two runs, one folder; a malformed ``.env``: through the real ``kernelbook`` command as
subprocesses (the lock is between processes; the ``.env`` warnings came from Prefect's reads
in this process and in its temporary server), and for the flows a deployment runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kernelbook_cli import app
from kernelbook_lib import outlock

ROOT = Path(__file__).parents[2]

#: A live process that holds the lock of ``argv[2]`` on ``argv[1]`` until its stdin closes (a
#: stand-in for a long curate run: holding the folder is all that matters here).
HOLDER = textwrap.dedent(
    """
    import sys
    from kernelbook_lib import outlock
    with outlock.output_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


class Holder:
    def __init__(self, out: Path, pipeline: str = "curate") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(out), pipeline],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.process.stdout.readline().strip() == "locked"
        self.pid = self.process.pid

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def kernelbook(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed ``kernelbook`` command in a subprocess, with its own Prefect home."""
    environment = {**os.environ, "PREFECT_HOME": str(cwd / "prefect-home"), **(env or {})}
    return subprocess.run(
        [str(Path(sys.executable).parent / "kernelbook"), *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.slow
def test_a_second_curate_into_a_locked_folder_ends_at_once_naming_the_running_process(tmp_path):
    """Two curate runs into one --out used to both exit 0, the second reporting counts of rows
    the folder did not hold. The second now stops before any work, with exit code 2."""
    out = tmp_path / "out"
    with Holder(out) as holder:
        result = kernelbook("curate", "--source", "sample", "--judge", "static", "--out", str(out), cwd=tmp_path)
        assert outlock.lock_path(out, "curate").exists()
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    assert line.startswith("error: --out ") and f"is in use by process {holder.pid} (`kernelbook curate`" in line
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written (the holder removed its lock)
    assert not (tmp_path / "prefect-home").exists()  # it ended before starting Prefect


def test_generate_prompts_into_a_folder_another_generate_is_writing_is_refused(tmp_path):
    out = tmp_path / "out"
    with Holder(out, "generate-prompts") as holder:
        result = CliRunner().invoke(app, ["generate-prompts", "--source", "sample", "--backend", "template", "--out", str(out)])
        # curate's outputs are other files: a curate run into the same folder is not blocked by it
        assert not outlock.lock_path(out, "curate").exists()
    assert result.exit_code == 2, result.output
    [line] = [ln for ln in result.output.splitlines() if ln.strip()]
    assert f"is in use by process {holder.pid} (`kernelbook generate-prompts`" in line


@pytest.mark.usefixtures("prefect_harness")
def test_the_scheduled_reevaluate_stops_when_someone_is_writing_the_folder(tmp_path):
    """The deployment runs the flow itself (no CLI): the flow takes the lock at its start."""
    from flows.reevaluate import reevaluate

    out = tmp_path / "out"
    with Holder(out, "curate") as holder:
        with pytest.raises(outlock.OutputLockedError, match=f"in use by process {holder.pid}"):
            reevaluate({"source": "sample", "judge": "static", "out": str(out)})
        result = CliRunner().invoke(app, ["re-evaluate", "--source", "sample", "--judge", "static", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"is in use by process {holder.pid}" in result.output
    assert not (out / "run_summary.json").exists() and not (out / "filtered").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_a_lock_left_by_a_killed_run_is_taken_over_and_released_at_the_end(tmp_path):
    out = tmp_path / "out"
    holder = Holder(out)
    holder.process.kill()  # kill -9: the lock file stays, the kernel's lock does not
    holder.process.wait()
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--judge", "static", "--limit", "5", "--no-analysis", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"took over the lock left by process {holder.pid}" in result.output
    assert not outlock.lock_path(out, "curate").exists()  # released on the way out
    assert (out / "run_summary.json").is_file()


# --- a malformed .env ----------------------------------------------------------------------


def env_without_test_overrides() -> dict[str, str]:
    """The subprocess reads the ``.env`` of its working directory, like a user's run."""
    return {k: v for k, v in os.environ.items() if k != "KERNELBOOK_ENV_FILE"}


@pytest.mark.slow
def test_a_malformed_env_gives_one_warning_naming_the_lines(tmp_path):
    """A malformed .env printed 648 copies of python-dotenv's warning in a three-row static run
    (half from this process, half from Prefect's temporary server, each reading .env for its own
    settings); 1,956 in the issue's run."""
    (tmp_path / ".env").write_text("PRIME_API_KEY=\nthese are my notes\nJUDGE_MODEL=openai/gpt-5.2\n{oops}: 1\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kernelbook"), "curate", "--source", "sample", "--judge", "static",
         "--limit", "3", "--no-analysis", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env={**env_without_test_overrides(), "PREFECT_HOME": str(tmp_path / "prefect-home")},
        capture_output=True, text=True, timeout=600,
    )
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed
    assert "could not parse" not in printed
    warnings = [line for line in printed.splitlines() if ".env: lines" in line]
    assert warnings == ["warning: .env: lines 2, 4 cannot be parsed (expected NAME=value) and set no variable this project reads; they are ignored"]


@pytest.mark.parametrize(
    ("line", "variable"),
    [("LLM_BASE_URL: http://my-endpoint/v1", "LLM_BASE_URL"), ("export PRIME_API_KEY sk-abc123", "PRIME_API_KEY")],
)
def test_an_unparsable_line_that_sets_a_known_variable_stops_the_run(tmp_path, monkeypatch, line, variable):
    """It used to be skipped silently: LLM_BASE_URL fell back to the default endpoint, which
    would have received the key."""
    env = tmp_path / ".env"
    env.write_text(f"PRIME_API_KEY=\n{line}\n")
    monkeypatch.setenv("KERNELBOOK_ENV_FILE", str(env))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", "--source", "sample", "--judge", "static", "--out", str(out)])
    assert result.exit_code == 2, result.output
    [printed] = [ln for ln in result.output.splitlines() if ln.strip()]
    assert printed.startswith(f"error: {env}: line 2 sets {variable} but cannot be parsed")
    assert "sk-abc123" not in printed and "my-endpoint" not in printed  # the line is never quoted
    assert not out.exists()
