"""The content-keyed reply cache: Prefect's ``ResultStore`` on ``<KERNELBOOK_CACHE_DIR>/llm``.

One JSON record per request key (model + prompt version + full prompt), written atomically the
moment its call succeeds; a record that is unreadable, truncated or fails its checksum is a miss
with a warning (docs/design.md, "The cache"). Failures are never cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from kernelbook_lib import llm
from kernelbook_lib.llm import LLMOutcome, LLMRequest, LLMTask
from kernelbook_lib.settings import Settings
from tasks.prefect_internals import AtomicLocalFileSystem

if TYPE_CHECKING:
    from tasks.llm.state import _RunState

def llm_cache_dir(settings: Settings) -> Path:
    return Path(settings.kernelbook_cache_dir).expanduser().resolve() / "llm"


def result_store(settings: Settings) -> ResultStore:
    """Prefect's result store for LLM results: JSON records under ``<cache dir>/llm``."""
    return ResultStore(
        result_storage=AtomicLocalFileSystem(basepath=str(llm_cache_dir(settings))),
        serializer=JSONSerializer(),
        cache_result_in_memory=False,
    )


def _storage_key(key: str) -> str:
    return f"{key[:2]}/{key}.json"  # two-level layout: no directory with 20k entries


def _read_cached(store: ResultStore, task: LLMTask, request: LLMRequest, run_token: str, label: str,
                 logger: Any) -> tuple[LLMOutcome | None, bool]:
    """The cached outcome for ``request`` (or ``None``), and whether the entry was damaged.
    A damaged entry (unreadable, truncated, failing its checksum) is a miss with a warning."""
    path = llm_cache_dir_path(store) / _storage_key(request.key)
    if not path.exists():
        return None, False
    try:
        record = store.read(_storage_key(request.key)).result
        return llm.outcome_from_cache_record(record, task, request, run_token), False
    except Exception as exc:  # noqa: BLE001 - a damaged entry must never crash or mislead
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        logger.warning(f"{label}: ignoring damaged cache entry {path.name} ({reason}); calling again")
        return None, True


def llm_cache_dir_path(store: ResultStore) -> Path:
    storage = store.result_storage
    assert isinstance(storage, LocalFileSystem) and storage.basepath
    return Path(storage.basepath)


def _write_cached(run: _RunState, request: LLMRequest, result: llm.CallResult, logger: Any) -> None:
    try:
        run.store.write(obj=llm.cache_record(request, result, run.token), key=_storage_key(request.key))
    except Exception as exc:  # noqa: BLE001 - the outcome is still returned; only resuming loses it
        run.cache_warnings += 1
        logger.warning(f"{run.label}: could not write cache entry for {request.key[:12]}: {type(exc).__name__}: {exc}")
