"""The output-folder lock: one run per folder, a dead holder's lock taken over, never a recycled pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernelbook_lib import outlock
from kernelbook_lib.errors import UserError

#: A second process that takes the lock on argv[1] and holds it until its stdin closes.
HOLDER = textwrap.dedent(
    """
    import sys
    from kernelbook_lib import outlock
    with outlock.output_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def hold_lock(out: Path, pipeline: str = "curate") -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), pipeline],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_holder_and_gets_it_once_released(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(outlock.OutputLockedError) as err:
            outlock.acquire(out, "curate")
        assert err.value.exit_code == 2
        assert f"process {holder.pid}" in str(err.value) and "kernelbook curate" in str(err.value)
        # re-evaluate writes curate's outputs: the same lock
        with pytest.raises(outlock.OutputLockedError):
            outlock.acquire(out, "re-evaluate")
        # generate-prompts writes only its own files: its own lock
        with outlock.output_lock(out, "generate-prompts"):
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (out / outlock.LOCK_FILES["curate"]).exists()  # released and removed
    with outlock.output_lock(out, "curate") as stale:
        assert stale is None


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    holder.kill()  # kill -9: no clean-up ran
    holder.wait(timeout=30)
    assert (out / outlock.LOCK_FILES["curate"]).exists()
    with outlock.output_lock(out, "curate") as stale:
        assert stale is not None and stale.pid == holder.pid
        assert json.loads((out / outlock.LOCK_FILES["curate"]).read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_a_lock_file_naming_a_live_but_unrelated_process_is_stale(tmp_path):
    """pid reuse: the file names a running process that does not hold the lock (its id was
    recycled); liveness comes from the kernel's lock, never from the pid, so it is taken over."""
    out = tmp_path / "out"
    out.mkdir()
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / outlock.LOCK_FILES["curate"]).write_text(json.dumps({"pid": unrelated.pid, "pipeline": "curate"}))
        with outlock.output_lock(out, "curate") as stale:
            assert stale is not None and stale.pid == unrelated.pid
    finally:
        unrelated.kill()
        unrelated.wait()
    (out / outlock.LOCK_FILES["curate"]).write_text(json.dumps({"pid": dead_pid()}))
    with outlock.output_lock(out, "curate") as stale:
        assert stale is not None


def test_the_lock_is_reentrant_in_one_process_and_released_on_an_exception(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outlock.output_lock(out, "re-evaluate"):
            with outlock.output_lock(out, "curate"):  # a subflow of the holder
                assert outlock.is_held_here(out, "curate")
            assert outlock.is_held_here(out, "curate")  # the outer level still holds it
            raise RuntimeError("a failing run")
    assert not outlock.is_held_here(out, "curate")
    assert not (out / outlock.LOCK_FILES["curate"]).exists()


def test_out_that_is_a_file_is_one_clear_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="cannot write to --out|not a folder"):
        outlock.acquire(target, "curate")
    with pytest.raises(UserError, match="cannot write to --out"):
        outlock.acquire(target / "sub", "curate")
