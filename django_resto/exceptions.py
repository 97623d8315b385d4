"""Exceptions raised by django_resto storages.

A failed write raises one :class:`ReplicationError` naming every failed host. It is
an :class:`ExceptionGroup` of the hosts' own exceptions, in host order, so that:

* ``except ReplicationError`` sees the whole operation (``hosts``, ``failures``);
* ``except* ConnectionError`` or ``except* UnexpectedStatusCode`` picks the
  hosts that failed that way, as a ReplicationError of those hosts only;
* ``except UnexpectedStatusCode``, the clause django-resto 1.3 code has, still catches
  a failure where every failed host answered an unexpected status: that error is a
  :class:`ReplicationStatusError`, which is both.

A group cannot also be an ``OSError`` (the two have different C layouts), so a
failure with a network error in it is caught by ``except ReplicationError``,
``except* OSError`` or ``error.subgroup(OSError)``, not by a plain ``except OSError``.
Reads that one host answers (DistributedStorage with a single host) raise that
host's exception itself, as 1.3 did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # a leaf module: the fan-out's outcome is only named, never imported
    from .fanout import Outcome

__all__ = [
    "JournalError",
    "JournalStatusError",
    "JournalUnavailable",
    "ReplicationError",
    "ReplicationStatusError",
    "UnexpectedStatusCode",
]


class UnexpectedStatusCode(Exception):
    """A media server answered with a status the protocol does not allow here."""

    def __init__(self, host: str, method: str, url: str, status: int, reason: str = "") -> None:
        self.host = host
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        detail = f"{status} {reason}".strip()
        super().__init__(f"{method} {url} on host {host} answered unexpected status {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process boundaries in task queues; keep them picklable.
        return (type(self), (self.host, self.method, self.url, self.status, self.reason))


class JournalUnavailable(Exception):
    """A journal write failed; the storage turns it into a JournalError for its caller."""


def describe(error: BaseException | None) -> str:
    """One line about a host's failure, for logs and exception messages."""
    if error is None:
        return "ok"
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


def _host_errors(failures: Sequence[Outcome]) -> list[Exception]:
    """The failed hosts' exceptions, as an ExceptionGroup may hold them (Exceptions only)."""
    errors: list[Exception] = []
    for outcome in failures:
        error = outcome.error
        if error is None:
            continue
        if not isinstance(error, Exception):  # a BaseException the fan-out let through
            error = RuntimeError(describe(error))
        errors.append(error)
    return errors


class ReplicationError(ExceptionGroup[Exception]):
    """An operation did not succeed on every media server that it had to reach.

    django-resto 1.x re-raised the exception of one failed host, picked at random,
    so the others went unnoticed; this one names every failed host and why, and
    holds their exceptions as an ExceptionGroup (``exceptions``, ``except*``).
    ``failures`` pairs each with its host. When every failed host answered an
    unexpected status the error is also an :class:`UnexpectedStatusCode` (see
    :class:`ReplicationStatusError`), so 1.3's ``except UnexpectedStatusCode``
    clauses still catch it.
    """

    #: The class a construction becomes when every failure is an unexpected status.
    status_class: ClassVar[type[ReplicationError] | None] = None

    operation: str
    name: str
    failures: list[Outcome]
    total: int
    detail: str

    def __new__(
        cls,
        operation: str,
        name: str,
        failures: Sequence[Outcome] = (),
        total: int | None = None,
        detail: str = "",
    ) -> ReplicationError:
        failures = list(failures)
        errors = _host_errors(failures)
        target = cls
        variant = cls.status_class
        if (
            errors
            and all(isinstance(error, UnexpectedStatusCode) for error in errors)
            and variant is not None
            and issubclass(variant, cls)
        ):
            target = variant
        message = cls._message(operation, name, failures, total, detail)
        if not errors:
            # A group holds at least one exception; with no host failure (an intent
            # the journal could not record) it holds the reason instead.
            errors = [cls._reason(message, detail)]
        return super().__new__(target, message, errors)

    def __init__(
        self,
        operation: str,
        name: str,
        failures: Sequence[Outcome] = (),
        total: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(self.message, list(self.exceptions))
        self.operation = operation
        self.name = name
        self.failures = list(failures)
        self.total = total if total is not None else len(self.failures)
        self.detail = detail

    @classmethod
    def _message(
        cls,
        operation: str,
        name: str,
        failures: Sequence[Outcome],
        total: int | None,
        detail: str,
    ) -> str:
        count = total if total is not None else len(failures)
        hosts = "; ".join(f"{o.host} ({describe(o.error)})" for o in failures)
        message = (
            f"{operation} {name!r} failed on {len(failures)} of {count} media server(s): {hosts}"
        )
        return f"{message}. {detail}" if detail else message

    @classmethod
    def _reason(cls, message: str, detail: str) -> Exception:
        return RuntimeError(detail or message)

    def __str__(self) -> str:
        # The message alone: ExceptionGroup's own adds "(N sub-exceptions)", and logs
        # and the journal have said exactly this message since before it was a group.
        return self.message

    @property
    def hosts(self) -> list[str]:
        return [outcome.host for outcome in self.failures]

    def derive(  # type: ignore[override]  # not generic: a ReplicationError holds Exceptions
        self, excs: Sequence[Exception]
    ) -> ExceptionGroup[Exception]:
        """The part of this error that ``except*`` or ``split`` kept: the same kind of
        error, about the hosts whose exceptions are in ``excs``."""
        chosen = [o for o in self.failures if any(o.error is error for error in excs)]
        if not chosen:
            return ExceptionGroup(self.message, list(excs))
        family = next(
            klass
            for klass in type(self).__mro__
            if issubclass(klass, ReplicationError) and not issubclass(klass, UnexpectedStatusCode)
        )
        try:
            return family(self.operation, self.name, chosen, self.total, self.detail)
        except TypeError:  # a subclass with a constructor of its own
            return ExceptionGroup(self.message, list(excs))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.operation, self.name, self.failures, self.total, self.detail))


class ReplicationStatusError(ReplicationError, UnexpectedStatusCode):
    """A ReplicationError where every failed host answered an unexpected status.

    Also an UnexpectedStatusCode, as django-resto 1.3 raised for such a failure;
    ``host``, ``method``, ``url``, ``status`` and ``reason`` are the first failed
    host's, and every host's exception stays in ``exceptions`` and ``failures``.
    Never built directly: ReplicationError becomes one when the failures say so.
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
        first = self.exceptions[0]
        if isinstance(first, UnexpectedStatusCode):
            self.host = first.host
            self.method = first.method
            self.url = first.url
            self.status = first.status
            self.reason = first.reason


ReplicationError.status_class = ReplicationStatusError


class JournalError(ReplicationError):
    """Hosts may be behind and the journal could not record it.

    Raised whatever ``fatal_exceptions`` says: that option trusts the journal to
    repair what failed, and here the journal cannot. A ReplicationError, so code
    that handles failed replications handles this one; ``failures`` names the hosts
    (none when the lost row was an intent, written before anything was sent: the
    group then holds the journal's own error) and ``detail`` why the journal failed.
    The master copy is intact: run ``resto_sync --repair`` once the cause is fixed.
    """

    @classmethod
    def _message(
        cls,
        operation: str,
        name: str,
        failures: Sequence[Outcome],
        total: int | None,
        detail: str,
    ) -> str:
        if not failures:
            # Nothing failed yet: say only what the journal could not record.
            return f"{operation} {name!r}: {detail}"
        return super()._message(operation, name, failures, total, detail)

    @classmethod
    def _reason(cls, message: str, detail: str) -> Exception:
        return JournalUnavailable(detail or message)


class JournalStatusError(JournalError, ReplicationStatusError):
    """A JournalError whose failed hosts all answered an unexpected status."""


JournalError.status_class = JournalStatusError
