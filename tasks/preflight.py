"""What every writing flow does before any work: check its parameters and settings, then lock
its output folder for the whole run (``kernelbook_lib.params``, ``kernelbook_lib.outlock``).

:func:`guarded` wraps a flow's function (under ``@flow``): Prefect still sees the function's own
signature (``functools.wraps``), and the wrapper runs inside the flow run, so the check and the
lock come first, and the lock is released on every way out (return, exception, Ctrl-C; a killed
process's lock is released by the kernel and taken over by the next run).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger

from kernelbook_lib import outlock, params

F = TypeVar("F", bound=Callable[..., Any])


def check_and_lock(pipeline: str, values: dict[str, Any]) -> outlock.LockInfo | None:
    """Run the preflight, then take the lock on ``values["out"]`` (the caller must release it)."""
    logger = get_run_logger()
    checked = params.preflight(pipeline, values)
    for warning in checked.warnings:
        logger.warning(warning)
    stale = outlock.acquire(values["out"], pipeline)
    if stale is not None:
        logger.warning(f"{values['out']}: took over the lock left by {stale.describe()}, which is no longer running")
    return stale


def guarded(pipeline: str) -> Callable[[F], F]:
    """Decorate a flow function (below ``@flow``) so that its parameters, the settings and
    ``.env`` are checked and its ``out`` folder is locked before its first task."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            check_and_lock(pipeline, values)
            try:
                return fn(*bound.args, **bound.kwargs)
            finally:
                outlock.release(values["out"], pipeline)

        # Prefect resolves string annotations (``from __future__ import annotations``) in the
        # function's module; the wrapper lives in this one, so it carries them resolved.
        wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
