"""Exceptions raised by django_resto storages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fanout import Outcome
from .transport import UnexpectedStatusCode

__all__ = ["JournalError", "ReplicationError", "UnexpectedStatusCode"]


def describe(error: BaseException | None) -> str:
    """One line about a host's failure, for logs and exception messages."""
    if error is None:
        return "ok"
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


class ReplicationError(Exception):
    """An operation did not succeed on every media server that it had to reach.

    django-resto 1.x re-raised the exception of one failed host, picked at random,
    so the others went unnoticed; this one names every failed host and why.
    """

    def __init__(
        self,
        operation: str,
        name: str,
        failures: Sequence[Outcome],
        total: int | None = None,
        detail: str = "",
    ) -> None:
        self.operation = operation
        self.name = name
        self.failures = list(failures)
        self.total = total if total is not None else len(self.failures)
        self.detail = detail
        hosts = "; ".join(f"{o.host} ({describe(o.error)})" for o in self.failures)
        message = (
            f"{operation} {name!r} failed on {len(self.failures)} of {self.total} "
            f"media server(s): {hosts}"
        )
        if detail:
            message = f"{message}. {detail}"
        super().__init__(message)

    @property
    def hosts(self) -> list[str]:
        return [outcome.host for outcome in self.failures]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation, self.name, self.failures, self.total, self.detail))


class JournalError(ReplicationError):
    """Hosts may be behind and the journal could not record it.

    Raised whatever ``fatal_exceptions`` says: that option trusts the journal to
    repair what failed, and here the journal cannot. A ReplicationError, so code
    that handles failed replications handles this one; ``failures`` names the hosts
    (none when the lost row was an intent, written before anything was sent) and
    ``detail`` why the journal failed. The master copy is intact: run
    ``resto_sync --repair`` once the cause is fixed.
    """

    def __init__(
        self,
        operation: str,
        name: str,
        failures: Sequence[Outcome] = (),
        total: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(operation, name, failures, total, detail)
        if not self.failures:
            # Nothing failed yet: say only what the journal could not record.
            Exception.__init__(self, f"{operation} {name!r}: {detail}")
