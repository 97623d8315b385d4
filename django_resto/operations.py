"""Replication steps as objects: what to do to one name, and how to start it on a target.

An operation is built once per replication and run on every target by the
fan-out. It knows its verb (for logs, errors and the journal), its name and body,
and whether it can be *started* on every target from the calling thread
(:attr:`Operation.phased`): a DELETE, or a PUT of at most :data:`PHASED_BODY`, is
written to every host, one after another, before any answer is awaited, which costs
less than handing each host to a thread. Larger bodies run in the fan-out's threads,
so that their transfers overlap and one slow host cannot hold up the others'.

The storages' stable API still hands callables around (``execute(storage.put_file,
name, body)``, so that rq or Celery can pickle them): :func:`operation_for` turns
such a call into an operation. The stock per-host methods say which operation they
are (:func:`per_host`); any other callable, a subclass's override included, runs
as it is, in a thread per host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .wire import SENDFILE_BLOCK

if TYPE_CHECKING:
    from .targets import Target
    from .transport import Body

logger = logging.getLogger("django_resto.storage")

#: The largest body a PUT starts from the calling thread: what one sendfile(2) call
#: sends (wire.SENDFILE_BLOCK), which the kernel takes at once while the server reads.
#: Up to there the three hand-offs to threads cost more than the sends they overlap: a
#: 1 MiB save to three nginx took 15 % less client CPU, in the same wall time, started
#: from the calling thread (62 futex calls a save in threads, none phased). A host that
#: stops reading holds the sends after it up to its deadline, which the save waits for
#: anyway; the breaker then holds the host open.
PHASED_BODY = SENDFILE_BLOCK

__all__ = ["Call", "Delete", "Operation", "Put", "operation_for", "per_host", "verb_of"]


class Operation:
    """One step for one name, the same on every target."""

    verb: ClassVar[str] = "call"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def phased(self) -> bool:
        """Whether :meth:`start` only writes to the target and never waits for it."""
        return False

    def start(self, target: Target) -> Callable[[], Any]:
        """Put the step on its way to ``target``; the returned callable waits for it."""
        return lambda: self.run(target)

    def run(self, target: Target) -> Any:
        return self.start(target)()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.verb} {self.name!r}>"


class Put(Operation):
    """Store ``body`` as ``name``; True if the target created the file, False if replaced.

    With no body, each target reads it from ``source`` (the master copy) when it
    starts, so a missing master copy is that target's failure, as with any other.
    """

    verb = "PUT"

    def __init__(
        self,
        name: str,
        body: Body | None = None,
        source: Callable[[str], Body] | None = None,
    ) -> None:
        super().__init__(name)
        self.body = body
        self.source = source

    @property
    def phased(self) -> bool:
        return self.body is not None and self.body.size <= PHASED_BODY

    def start(self, target: Target) -> Callable[[], bool]:
        body = self.body
        if body is None:
            if self.source is None:
                raise ValueError(f"No body to PUT {self.name!r} with")
            body = self.source(self.name)
        finish = target.start_put(self.name, body)

        def answered() -> bool:
            created = finish().created
            if not created:
                logger.info("PUT on existing file %s on %s", self.name, target.label)
            return created

        return answered


class Delete(Operation):
    """Delete ``name``; False, with a warning, if the target did not have it."""

    verb = "DELETE"

    @property
    def phased(self) -> bool:
        return True

    def start(self, target: Target) -> Callable[[], bool]:
        finish = target.start_delete(self.name)

        def answered() -> bool:
            existed = finish()
            if not existed:
                logger.warning("DELETE on missing file %s on %s", self.name, target.label)
            return existed

        return answered


class Call(Operation):
    """Any per-host callable, ``func(host, name, *args, **kwargs)``, run as it is."""

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name)
        self.func = func
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.verb = verb_of(func)  # type: ignore[misc]  # per instance: the callable's own

    def run(self, target: Target) -> Any:
        return self.func(target.label, self.name, *self.args, **self.kwargs)


def per_host(kind: type[Operation] | str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Say which operation a stock per-host method performs (or, given a str, its verb).

    Only the method it decorates carries the tag: a subclass's override is a new
    function without it, so :func:`operation_for` runs the override itself.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func.resto_operation = kind  # type: ignore[attr-defined]
        return func

    return decorate


def verb_of(func: Callable[..., Any]) -> str:
    """The verb used for ``func`` in logs, errors and the journal."""
    kind = getattr(func, "resto_operation", None)
    if isinstance(kind, str):
        return kind
    if isinstance(kind, type) and issubclass(kind, Operation):
        return kind.verb
    return getattr(func, "__name__", "call")


def operation_for(
    func: Callable[..., Any],
    name: str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    owner: object = None,
    source: Callable[[str], Body] | None = None,
) -> Operation:
    """The operation that ``func(host, name, *args, **kwargs)`` performs on every host.

    Only a stock method bound to ``owner`` (the storage running it) becomes a
    :class:`Put` or :class:`Delete` on ``owner``'s targets; ``source`` gives a PUT
    without a body its master copy.
    """
    kind = getattr(func, "resto_operation", None)
    if getattr(func, "__self__", None) is not owner:
        kind = None
    if kind is Delete and not args and not kwargs:
        return Delete(name)
    if kind is Put and len(args) + len(kwargs or {}) <= 1:
        body = args[0] if args else (kwargs or {}).get("body")
        return Put(name, body, source=source)
    return Call(func, name, args, kwargs)
