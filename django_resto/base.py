"""What every django_resto backend shares: its Replicator and the per-host operations.

The backends (storage.py) are Storage adapters; this mixin gives each one a
:class:`~django_resto.replicator.Replicator`, shows the replicator's options as
the storage's attributes (``storage.timeout``), and keeps django-resto 1.x's stable
per-host API: ``execute``, ``put_file``, ``delete_file`` and ``converge``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, overload

from .fanout import Outcome
from .names import validate_name
from .operations import Delete, Put, operation_for, per_host
from .registry import Capabilities
from .replicator import Replicator
from .settings import media_path
from .targets import Target
from .transport import Body

if TYPE_CHECKING:
    from .models import PendingReplication

__all__ = ["ReplicatedStorageMixin"]

T = TypeVar("T")


class _Option(Generic[T]):
    """A resolved option, shown on the storage and kept by its replicator."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Option[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | _Option[T]:
        if obj is None:
            return self
        return cast(T, getattr(obj.replicator, self.name))  # type: ignore[attr-defined]

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj.replicator, self.name, value)  # type: ignore[attr-defined]


class ReplicatedStorageMixin:
    """What every django_resto backend shares: its Replicator and the per-host operations.

    Stable API from django-resto 1.x: ``execute`` (and ``execute_one`` on
    AsyncStorage) decide how work runs and are handed picklable callables;
    ``put_file``, ``delete_file`` and ``converge`` act on one host.
    """

    #: What the commands and checks may ask of this backend (registry.py).
    resto_capabilities: ClassVar[Capabilities] = Capabilities(master_copy=True)
    #: Options the backend accepts on top of django_resto's own.
    extra_options: tuple[str, ...] = ()
    #: Hosts that must acknowledge a write unless ``min_replicas`` says otherwise.
    default_min_replicas = 0

    replicator: Replicator
    hosts: _Option[tuple[str, ...]] = _Option()
    timeout: _Option[float] = _Option()
    connect_timeout: _Option[float | None] = _Option()
    min_transfer_rate: _Option[float] = _Option()
    lock_timeout: _Option[float] = _Option()
    breaker_window: _Option[float] = _Option()
    breaker_max_window: _Option[float] = _Option()
    journal_alias: _Option[str | None] = _Option()
    fatal_exceptions: _Option[bool] = _Option()
    show_traceback: _Option[bool] = _Option()
    verify: _Option[bool | str] = _Option()
    token_header: _Option[str] = _Option()
    min_replicas: _Option[int] = _Option()
    max_workers: _Option[int] = _Option()
    async_workers: _Option[int] = _Option()
    replicate_with: _Option[str] = _Option()
    task_backend: _Option[str] = _Option()
    task_queue: _Option[str] = _Option()
    task_retries: _Option[int] = _Option()
    listing_prefix: _Option[str] = _Option()

    def _configure(self, options: dict[str, Any]) -> dict[str, Any]:
        """Resolve django_resto's options; return the ones meant for the parent class."""
        self.replicator = Replicator(
            self,
            options,
            extra_options=self.extra_options,
            default_min_replicas=self.default_min_replicas,
        )
        return {key: value for key, value in options.items() if key in self.extra_options}

    @property
    def journal_key(self) -> str:
        """The STORAGES alias this storage was configured under, which names its journal rows."""
        return self.replicator.journal_key

    def save(self, name: str | None, content: IO[Any], max_length: int | None = None) -> str:
        # Django turns backslashes into slashes before anything else sees the name;
        # we refuse them instead (see names.py), so check the name as it was given.
        # Django's own check runs first thing in Storage.save, right below.
        if name is not None:
            validate_name(str(name))
        return super().save(name, content, max_length=max_length)  # type: ignore[misc]

    @property
    def media_prefix(self) -> str:
        """The URL path of MEDIA_URL, under which media servers keep the files."""
        # FileSystemStorage's (Hybrid, Async) or DistributedStorage's own.
        return media_path(getattr(self, "base_url", None))

    def transport(self, host: str) -> Target:
        """The pooled HTTP transport to ``host`` (rebuilt if MEDIA_URL changed)."""
        return self.replicator.target(host)

    def close(self) -> None:
        """Close pooled connections (they reopen on demand)."""
        self.replicator.close()

    # --- what the master copy holds (the backends say) ----------------------------

    def master_copy(self, name: str) -> Body:
        """The master copy of ``name``, to upload; FileNotFoundError if there is none."""
        raise NotImplementedError(f"{type(self).__name__} keeps no local copy to upload from")

    def expected_state(self, name: str) -> bool:
        """Whether ``name`` should exist on the media servers (it exists in the master copy)."""
        raise NotImplementedError("Only storages with a master copy can derive the state")

    # --- per-host operations (stable: may be passed to execute/execute_one) --------

    @per_host(Put)
    def put_file(self, host: str, name: str, body: Body | None = None) -> bool:
        """Upload ``name`` to one host; from the master copy unless ``body`` is given.

        Returns True if the host created the file, False if it replaced one.
        """
        return bool(Put(name, body, source=self.master_copy).run(self.transport(host)))

    @per_host(Delete)
    def delete_file(self, host: str, name: str) -> bool:
        """Delete ``name`` on one host; a file that was already missing is only a warning."""
        return bool(Delete(name).run(self.transport(host)))

    @per_host("SYNC")
    def converge(self, host: str, name: str) -> str:
        """Bring one host in line with the master copy for ``name``; return the verb used.

        Deriving the action when it runs, under the name's lock, rather than replaying
        the verb that was missed, is what makes retries safe in any order and from any
        process.
        """
        with self.locked(name):
            if self.expected_state(name):
                self.put_file(host, name)
                return "PUT"
            self.delete_file(host, name)
            return "DELETE"

    # --- repair (process_failed_media asks the backend) ----------------------------

    def planned_repair(self, row: PendingReplication) -> str:
        """What repairing ``row`` would do now: PUT or DELETE, from the master copy."""
        return "PUT" if self.expected_state(row.name) else "DELETE"

    def repair(self, row: PendingReplication) -> str:
        """Bring ``row``'s host in line; return the verb used. Raises if it is still behind."""
        return self.converge(row.host, row.name)

    # --- running replication -------------------------------------------------------

    def locked(self, name: str) -> AbstractContextManager[int]:
        """Hold the name's lock, shared by every process and app server; yield ``seq``."""
        return self.replicator.locked(name)

    def execute(self, func: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(host, name, *args, **kwargs)`` on every media server in parallel.

        Runs under the name's lock and applies the failure policy; returns the per-host
        outcomes. Stable API: override it (or :meth:`execute_one` on AsyncStorage) to
        change how work runs.
        """
        operation = operation_for(func, name, args, kwargs, owner=self, source=self.master_copy)
        return self.replicator.execute(operation)

    def record_outcomes(
        self,
        operation: str,
        name: str,
        outcomes: list[Outcome],
        *,
        seq: int,
        below_quorum: bool = False,
    ) -> None:
        """Journal the hosts that may now be behind; forget those that caught up.

        Override to journal elsewhere.
        """
        self.replicator.record(operation, name, outcomes, seq=seq)
