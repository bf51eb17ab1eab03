"""Errors a user can cause and fix, shown as one clear message (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or configuration.

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``; nothing a user
    can fix ends in a traceback. Never put a secret in the message.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SchemaError(UserError):
    """The input does not have the columns or types the pipeline needs."""


class SourceUnavailableError(UserError):
    """The source could not be read (Hub unreachable, file missing, unreadable file).

    ``transient`` is true when trying again later may work (the Hub could not be reached)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class RunFailedError(UserError):
    """The run finished its work but its result must not be trusted (e.g. too many rows failed
    to be judged). Everything it could write is written; the message says what to do."""

    exit_code = 1


class BatchesPendingError(UserError):
    """``--no-wait``: the LLM requests were handed to the provider's Batch API and the run stops
    before their results exist. Nothing is wrong; the message says how to collect them (run the
    same command again). The CLI prints it as one line, without ``error:``, and exits 3."""

    exit_code = 3
