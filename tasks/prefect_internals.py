"""Every place this project leans on a Prefect (or CPython) interface that is not public API.

Everything else uses Prefect's public API. What is here has no public equivalent; each item
names what it relies on, and ``tests/tasks/test_prefect_internals.py`` checks each one against
the installed Prefect so that an upgrade that removes or changes one fails that test, naming
the symbol, instead of misbehaving at run time. ``pyproject.toml`` bounds ``prefect`` to
:data:`TESTED_PREFECT_MINORS`; widen both after that test passes on a new minor version.

This module is imported before prefect (by ``tasks.runtime``), so it imports prefect only
inside functions; ``AtomicLocalFileSystem`` is made on first access.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

#: Prefect minor versions the internals test has passed (keep in step with pyproject.toml).
TESTED_PREFECT_MINORS: tuple[str, ...] = ("3.9",)


# --- 1. An exit hook that runs before `atexit` hooks ------------------------------------------
# Relies on: CPython's `threading._register_atexit` (what Prefect's own event and log workers
# and `concurrent.futures` use). Threading exit hooks run at interpreter exit in reverse order of
# registration, before `atexit` hooks; Prefect stops its temporary server with an `atexit` hook.


def register_before_atexit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit, after threading exit hooks registered later (Prefect's
    worker drains) and before every ``atexit`` hook (Prefect's temporary-server stop)."""
    threading._register_atexit(hook)  # type: ignore[attr-defined]


# --- 2. Counting task runs --------------------------------------------------------------------
# Relies on: the REST route `POST /task_runs/count` (public REST API, but the Python client has
# no method for it; `read_task_runs` pages through whole objects, 200 at a time).


def count_task_runs(client: Any, flow_runs: dict[str, Any], task_runs: dict[str, Any] | None = None) -> int:
    """Task runs matching the (JSON-dumped) flow-run and task-run filters, through a synchronous
    Prefect client."""
    body: dict[str, Any] = {"flow_runs": flow_runs}
    if task_runs is not None:
        body["task_runs"] = task_runs
    response = client.request("POST", "/task_runs/count", json=body)
    response.raise_for_status()
    return int(response.json())


# --- 3. Atomic writes for Prefect's result store ----------------------------------------------
# Relies on: how Prefect's ResultStore calls a storage block (`prefect/_internal/compatibility/
# blocks.py`): `awrite_path(path, content)` from async code, `write_path(path, content, _sync=True)`
# from sync code; and `read_path`/`aread_path` for reads (inherited unchanged).


@cache
def atomic_local_file_system() -> type:
    """The :class:`AtomicLocalFileSystem` class (defined on first use: it imports prefect)."""
    from prefect.filesystems import LocalFileSystem

    class AtomicLocalFileSystem(LocalFileSystem):
        """Prefect's LocalFileSystem, but a write is atomic: a temporary file in the same
        directory, then ``os.replace``. A killed run leaves the old record or the new one, never
        half of one. Reads are LocalFileSystem's."""

        _block_type_slug = "kernelbook-atomic-local-file-system"

        def _target(self, path: str) -> Path:
            """Where ``path`` goes: under the base path (resolved once), never outside it."""
            base = self.__dict__.get("_kernelbook_base")
            if base is None:
                base = str(Path(self.basepath).expanduser().resolve() if self.basepath else Path(".").resolve())
                self.__dict__["_kernelbook_base"] = base
            candidate = os.path.normpath(os.path.join(base, os.path.expanduser(str(path))))
            if candidate == base or not candidate.startswith(base + os.sep):
                raise ValueError(f"Provided path {candidate} is outside of the base path {base}.")
            return Path(candidate)

        def _atomic_write(self, path: str, content: bytes) -> str:
            target = self._target(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return str(target)

        async def awrite_path(self, path: str, content: bytes) -> str:
            return self._atomic_write(path, content)

        def write_path(self, path: str, content: bytes, **_dispatch: Any) -> str:  # type: ignore[override]
            # A plain method: a local write is fast, and Prefect calls `awrite_path` from async code.
            return self._atomic_write(path, content)

    AtomicLocalFileSystem.__qualname__ = "AtomicLocalFileSystem"  # picklable as a module attribute
    return AtomicLocalFileSystem


# --- 4. A new PREFECT_HOME's database from a template ------------------------------------------
# Relies on: Prefect's default database being SQLite at PREFECT_HOME/prefect.db, and on the
# template being exactly what the installed version's migrations make (one template per Prefect
# version, written by scripts/prefect_db_template.py; tests/tasks/test_runtime.py compares it
# with Prefect's own migrations). Prefect migrates a new database at its first start: 115 Alembic
# migrations, about 12 s of CPU, the largest part of a first run.

#: Where the templates are (``prefect-<version>.sql``).
TEMPLATE_DIR = Path(__file__).with_name("prefect_db")
#: Settings that move Prefect's database away from PREFECT_HOME/prefect.db.
_DATABASE_SETTINGS = ("CONNECTION_URL", "DRIVER", "NAME", "HOST")


def template_path(version: str | None = None) -> Path:
    """The database template for Prefect ``version`` (default: the installed one)."""
    import importlib.metadata

    return TEMPLATE_DIR / f"prefect-{version or importlib.metadata.version('prefect')}.sql"


def database_dump(db: Path) -> str:
    """An SQLite database as SQL (schema and rows)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return "\n".join(conn.iterdump()) + "\n"


def seed_prefect_database(home: Path) -> bool:
    """Create ``home/prefect.db`` from the template of the installed Prefect version, if the
    database does not exist yet, the environment does not move it elsewhere, and there is a
    template for this version; otherwise do nothing (Prefect migrates as usual). True if done."""
    for prefix in ("PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_"):
        if any(os.environ.get(prefix + name) for name in _DATABASE_SETTINGS):
            return False
    db = home / "prefect.db"
    if db.exists():
        return False
    template = template_path()
    if not template.is_file():
        return False
    home.mkdir(parents=True, exist_ok=True)
    import sqlite3

    fd, tmp = tempfile.mkstemp(prefix=".prefect.db.", suffix=".tmp", dir=home)
    os.close(fd)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            conn.executescript(template.read_text())
        try:
            os.link(tmp, db)  # atomic, and only if no other process created it meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


# --- 5. The lease id of a concurrency slot just acquired --------------------------------------
# Relies on: `prefect.concurrency.context.ConcurrencyContext.cleanup_lease_ids`, the list to which
# `prefect.concurrency.asyncio.concurrency` appends the id of each lease it acquires inside the
# context (the public API returns no lease id). tasks/llm.py records it to release slots a crashed
# run left behind.


def last_lease_id(context: Any) -> Any | None:
    """The id of the last lease acquired inside ``context`` (a ``ConcurrencyContext``), or None."""
    ids = context.cleanup_lease_ids
    return ids[-1] if ids else None


# --- 6. The lower bound of a jittered retry delay --------------------------------------------
# Relies on: `prefect.utilities.math.lower_clamp_multiple`, the factor Prefect's task engine
# applies to a retry delay's lower bound under `retry_jitter_factor`. tasks/llm.py waits at least
# that long before a retry that a provider asked to delay.


def lower_clamp_multiple(k: float) -> float:
    from prefect.utilities.math import lower_clamp_multiple as clamp

    return clamp(k)


# --- 7. Prefect's own temporary server --------------------------------------------------------
# Relies on: `prefect.server.api.server.SubprocessASGIServer()`, the un-keyed singleton that
# Prefect's clients start in local mode (with `running`, `server_process`, `api_url`, `start()`).


def temporary_server(*, only_if_imported: bool = False) -> Any | None:
    """Prefect's temporary-server singleton; with ``only_if_imported``, None when the server module
    was never imported (then no temporary server was started in this process)."""
    if only_if_imported:
        module = sys.modules.get("prefect.server.api.server")
        if module is None:
            return None
        return module.SubprocessASGIServer()
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


# --- 8. Prefect's server application ---------------------------------------------------------
# Relies on: `prefect.server.api.server.create_app(ephemeral=..., final=...)`, the ASGI app that
# `prefect server start` and the temporary server serve; tasks/local_server.py serves it itself.


def server_app(**options: Any) -> Any:
    from prefect.server.api.server import create_app

    return create_app(**options)


def __getattr__(name: str) -> Any:
    if name == "AtomicLocalFileSystem":
        return atomic_local_file_system()
    raise AttributeError(name)
