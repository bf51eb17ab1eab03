"""The crash ledger: this process's leases on a concurrency limit, recorded under PREFECT_HOME,
so that the next run gives back the slots of a run killed (``kill -9``) while holding them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.logging import get_logger
from prefect.settings import get_current_settings

from tasks.runtime import on_temporary_server
from kernelbook_lib.processes import process_alive, process_started

_module_logger = get_logger("kernelbook.llm")


class LeaseLedger:
    """This process's leases on one limit, in a small file under PREFECT_HOME, so the next run
    can give back the slots of a run that was killed (``kill -9``) while holding them.

    Why: an ephemeral Prefect server (and the test harness's) runs no lease repossessor, so a
    dead run's slots would stay occupied forever and every later run would wait for them."""

    def __init__(self, limit_name: str, directory: Path) -> None:
        self.directory = directory
        self.limit_name = limit_name
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._leases: dict[str, int] = {}

    @staticmethod
    def directory_for(limit_name: str) -> Path:
        api_url = "ephemeral" if on_temporary_server() else get_current_settings().api.url
        backend = hashlib.sha256(api_url.encode()).hexdigest()[:12]
        return Path(get_current_settings().home) / "kernelbook-llm-leases" / backend / limit_name

    def add(self, lease_id: Any, slots: int) -> None:
        self._leases[str(lease_id)] = slots
        self._save()

    def remove(self, lease_id: Any) -> None:
        if self._leases.pop(str(lease_id), None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self._leases:
                self.path.unlink(missing_ok=True)
                return
            record = {"pid": os.getpid(), "started": process_started(os.getpid()), "leases": self._leases}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)
        except OSError as exc:  # bookkeeping only: never fail a run for it
            _module_logger.warning(f"could not record concurrency leases in {self.path}: {exc}")


async def reclaim_dead_runs_slots(limit_name: str, logger: Any) -> None:
    """Give back the slots that runs which died holding them left on ``limit_name``.

    Each dead run's leases are released by id (a server that still knows a lease frees its
    slots; otherwise nothing happens). On the ephemeral server, which never knows another
    process's leases, the slots that are still counted are decremented directly."""
    directory = LeaseLedger.directory_for(limit_name)
    if not directory.is_dir():
        return
    dead: list[tuple[Path, dict[str, Any]]] = []
    for path in directory.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid() or process_alive(pid, record.get("started")):
            continue
        claimed = path.with_suffix(".reclaiming")
        try:
            os.replace(path, claimed)  # only one starting run reclaims a given dead run
        except OSError:
            continue
        dead.append((claimed, record))
    if not dead:
        return
    stale = sum(int(n) for _, record in dead for n in record.get("leases", {}).values())
    async with get_client() as client:
        before = (await client.read_global_concurrency_limit_by_name(limit_name)).active_slots
        for _, record in dead:
            for lease_id in record.get("leases", {}):
                with contextlib.suppress(Exception):
                    await client.release_concurrency_slots_with_lease(uuid.UUID(lease_id))
        after = (await client.read_global_concurrency_limit_by_name(limit_name)).active_slots
        leaked = min(stale - max(0, before - after), after)
        if leaked > 0 and on_temporary_server():
            await client.release_concurrency_slots(names=[limit_name], slots=leaked, occupancy_seconds=1.0)
    pids = ", ".join(str(record["pid"]) for _, record in dead)
    logger.warning(
        f"gave back {stale} slot(s) of Prefect concurrency limit {limit_name!r} held by run(s) that "
        f"ended without releasing them (pid {pids})"
    )
    for path, _ in dead:
        path.unlink(missing_ok=True)
