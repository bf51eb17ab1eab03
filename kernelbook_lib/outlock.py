"""One run at a time per output folder: a lock file held with ``flock`` for the whole run.

``OUT/.kernelbook-<pipeline>.lock`` (``curate`` and ``re-evaluate`` share the curate lock;
``generate-prompts`` has its own, since it writes only its own files) is opened and locked with
``fcntl.flock(LOCK_EX | LOCK_NB)``; the holder writes its process id, host and start time into it
so a second run can name it. Why ``flock`` rather than "a file that exists means locked":

* The kernel drops the lock when the holder dies, even by ``kill -9``; the file it leaves behind
  is a stale lock and the next run simply takes it over (and says so). No process id is ever
  trusted for liveness, so a recycled id cannot keep a folder locked forever (the psutil
  create-time check a pid-only lock needs is not needed).
* Taking it is atomic: of two runs racing for a folder exactly one gets the lock. After locking,
  the holder checks the path still names the file it locked (a holder that just released may
  have unlinked it) and retries otherwise.
* The descriptor is not inherited by child processes (Python opens it non-inheritable), so a
  Prefect server or Dask worker started by the run never keeps the folder locked after it.

A run and the runs it starts in the same process (``re-evaluate`` -> ``curate``, the CLI ->
its flow) share the lock: taking it again in the holding process only counts a level. Works on
local file systems (and on NFS, where Linux emulates ``flock`` with POSIX locks).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kernelbook_lib.errors import UserError

#: The lock of each pipeline; runs of the same pipeline exclude each other in a folder.
LOCK_FILES = {
    "curate": ".kernelbook-curate.lock",
    "re-evaluate": ".kernelbook-curate.lock",  # re-evaluate writes curate's outputs
    "generate-prompts": ".kernelbook-generate-prompts.lock",
}


class OutputLockedError(UserError):
    """Another live process is writing the same outputs into this folder."""


@dataclass(frozen=True)
class LockInfo:
    """What the lock file says about its holder (for messages only, never for liveness)."""

    pid: int | None
    host: str | None
    pipeline: str | None
    started_at: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another process (it is taking the lock right now)"
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        what = f"`kernelbook {self.pipeline}`" if self.pipeline else "a kernelbook run"
        since = f", started {self.started_at}" if self.started_at else ""
        return f"process {self.pid}{where} ({what}{since})"


@dataclass
class _Held:
    fd: int
    path: Path
    depth: int
    took_over: LockInfo | None


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def lock_path(out: str | os.PathLike, pipeline: str) -> Path:
    try:
        name = LOCK_FILES[pipeline]
    except KeyError:
        raise ValueError(f"unknown pipeline {pipeline!r}; known: {sorted(LOCK_FILES)}") from None
    return Path(out).expanduser().absolute() / name


def read_info(path: Path) -> LockInfo:
    """The holder's details from a lock file (all None when it is empty or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return LockInfo(
        pid=pid if isinstance(pid, int) else None,
        host=data.get("host") if isinstance(data.get("host"), str) else None,
        pipeline=data.get("pipeline") if isinstance(data.get("pipeline"), str) else None,
        started_at=data.get("started_at") if isinstance(data.get("started_at"), str) else None,
    )


def _busy_error(out: Path, path: Path, pipeline: str) -> OutputLockedError:
    info = read_info(path)
    for _ in range(20):  # the holder writes its details right after locking: give it a moment
        if info.pid is not None:
            break
        time.sleep(0.05)
        info = read_info(path)
    return OutputLockedError(
        f"--out {out} is in use by {info.describe()}: wait for that run to finish or stop it, "
        f"or choose another --out (lock file {path.name})"
    )


def _open_and_lock(out: Path, path: Path, pipeline: str) -> tuple[int, LockInfo | None]:
    """Lock ``path`` (creating it); return the descriptor and what a stale lock said, if any."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy_error(out, path, pipeline) from None
            raise UserError(f"cannot lock --out {out}: {exc.strerror or exc}") from None
        # The previous holder unlinks the file before letting go: if the path now names another
        # file (or none), this lock guards nothing; try again on the current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = read_info(path)
        return fd, (stale if stale.pid is not None else None)


def acquire(out: str | os.PathLike, pipeline: str) -> LockInfo | None:
    """Take the lock on ``out`` for ``pipeline`` (re-entrant within this process).

    Returns the details of a stale lock that was taken over (its holder died without
    releasing it), else None. Raises :class:`OutputLockedError` (exit code 2) naming the live
    holder when another process holds it."""
    path = lock_path(out, pipeline)
    with _guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
            return None
        fd, stale = _open_and_lock(path.parent, path, pipeline)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pipeline": pipeline,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _held[path] = _Held(fd=fd, path=path, depth=1, took_over=stale)
        return stale


def release(out: str | os.PathLike, pipeline: str) -> None:
    """Give the lock back (the outermost release removes the file, then unlocks it)."""
    path = lock_path(out, pipeline)
    with _guard:
        held = _held.get(path)
        if held is None:
            return
        held.depth -= 1
        if held.depth > 0:
            return
        del _held[path]
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(held.fd)  # closing the descriptor releases the flock


@contextmanager
def output_lock(out: str | os.PathLike, pipeline: str) -> Iterator[LockInfo | None]:
    """Hold the lock on ``out`` for the block; released on every exit (an exception, Ctrl-C).
    Yields the stale lock's details when one was taken over."""
    stale = acquire(out, pipeline)
    try:
        yield stale
    finally:
        release(out, pipeline)


def is_held_here(out: str | os.PathLike, pipeline: str) -> bool:
    """True when this process holds the lock (for tests and assertions)."""
    with _guard:
        return lock_path(out, pipeline) in _held
