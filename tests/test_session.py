"""The test session itself: what a run of the suite leaves on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_test_session_leaves_no_folder_in_the_temporary_directory(tmp_path):
    """Each session, and each xdist worker, makes a PREFECT_HOME, LLM cache and datasets cache
    of its own under the temporary directory: they used to stay there, about 13 MB each. (One
    xdist worker here: the controller's folder and a worker's.)"""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this worker's
    env["TMPDIR"] = str(temp)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "1", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "basetemp"), "tests/lib/test_progress.py::test_format_count"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout
    assert sorted(p.name for p in temp.iterdir()) == []
